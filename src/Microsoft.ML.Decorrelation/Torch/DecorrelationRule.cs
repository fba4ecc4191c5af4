using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Decorrelation.Torch;

/// <summary>
/// The decorrelation update rule of DBP, as pure tensor functions (docs/design.md, "The algorithm").
/// </summary>
public static class DecorrelationRule
{
    /// <summary>
    /// The step size actually used for each block: <paramref name="learningRate"/>, capped at 1/‖X‖_F, where
    /// ‖X‖_F ≥ λmax(X) is the Frobenius norm of the block's second moment (<see cref="Compute"/> returns it). Without
    /// a cap, R diverges within a few updates once η·λmax exceeds 2, which happens in wide layers whose non-negative
    /// inputs share a large mean (λmax grows with D). The Frobenius norm bounds λmax from above whatever the data —
    /// zero-mean, anti-correlated or not — and is at most √rank(X)·λmax, so the cap is safe and close where it
    /// matters: when one direction dominates X.
    /// </summary>
    /// <param name="learningRate">η, positive.</param>
    /// <param name="secondMomentNorms">‖X‖_F of each block (a vector, on any device); a zero norm leaves η as it is.</param>
    /// <returns>The step sizes, a float64 vector on the device of <paramref name="secondMomentNorms"/>.</returns>
    public static Tensor StableStepSizes(double learningRate, Tensor secondMomentNorms)
    {
        using var scope = NewDisposeScope();
        using var numbers = new KeptScalars();
        var norms = secondMomentNorms.to(ScalarType.Float64);
        var cap = norms.reciprocal().nan_to_num(learningRate, learningRate, learningRate);
        return cap.clamp_max(numbers[learningRate]).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// <see cref="Compute"/> from the samples' second moment X = ZᵀZ/N itself (D×D, or G×d×d for blocks) instead of the
    /// samples: what data-parallel training uses, where X is pooled over the ranks (sums of ZᵀZ and of N all-reduced), so
    /// that the update equals the one over the union of every rank's samples.
    /// </summary>
    public static (Tensor Update, Tensor Loss, Tensor SecondMomentNorm) ComputeFromSecondMoment(Tensor secondMoment, Tensor matrix, double kappa)
    {
        long d = secondMoment.shape[^1];
        long blocks = secondMoment.dim() == 3 ? secondMoment.shape[0] : 1;
        using var scope = NewDisposeScope();
        var variances = secondMoment.diagonal(0, -2, -1);
        var xTimesR = secondMoment.matmul(matrix);
        var frobeniusSquared = secondMoment.square().sum([-2, -1]);
        return Finish(variances, xTimesR, frobeniusSquared, matrix, kappa, blocks, d);
    }

    /// <summary>U, the loss and ‖X‖_F from diag X, X·R and ‖X‖²_F (in the caller's dispose scope; results moved out of it).</summary>
    private static (Tensor Update, Tensor Loss, Tensor SecondMomentNorm) Finish(Tensor variances, Tensor xTimesR, Tensor frobeniusSquared, Tensor matrix,
        double kappa, long blocks, long d)
    {
        using var numbers = new KeptScalars();
        var update = xTimesR.mul_(numbers[1 - kappa]).add_(RowScale(variances, kappa).unsqueeze(-1) * matrix);
        var loss = Loss(variances, frobeniusSquared, kappa, blocks, d);
        var norms = frobeniusSquared.sqrt().reshape(blocks);
        return (update.MoveToOuterDisposeScope(), loss.MoveToOuterDisposeScope(), norms.MoveToOuterDisposeScope());
    }

    /// <summary>
    /// Computes the update direction <c>U = [(1−κ)·C + κ·diag(v)]·R</c> and the monitoring loss
    /// <c>((1−κ)·ΣC² + κ·Σv²) / D²</c> from decorrelated samples.
    /// </summary>
    /// <param name="decorrelated">Z: N×D, one decorrelated input (z = R·x) per row; or G×N×d for the G blocks of a block-diagonal R.</param>
    /// <param name="matrix">R: the D×D decorrelation matrix that produced <paramref name="decorrelated"/>, or its G×d×d blocks.</param>
    /// <param name="kappa">κ ∈ [0, 1].</param>
    /// <returns>
    /// U, shaped like <paramref name="matrix"/> (the caller applies <c>R ← R − η·U</c>); the loss as a scalar
    /// tensor (for blocks, the mean of the blocks' losses); and ‖X‖_F of each block, a vector of G (1 for a full R),
    /// for <see cref="StableStepSizes"/>.
    /// </returns>
    /// <remarks>
    /// With X = ZᵀZ/N, C = X − diag(diag X) and v = diag X − 1, U = (1−κ)·X·R + diag(κ·v − (1−κ)·diag X)·R.
    /// When N &lt; D, X·R is computed as Zᵀ(Z·R)/N (2·N·D² operations instead of N·D² + D³), and
    /// ‖X‖² as ‖Z·Zᵀ‖²/N², so X itself is never formed.
    /// </remarks>
    public static (Tensor Update, Tensor Loss, Tensor SecondMomentNorm) Compute(Tensor decorrelated, Tensor matrix, double kappa)
    {
        long d = decorrelated.shape[^1];
        double n = decorrelated.shape[^2];
        long blocks = decorrelated.dim() == 3 ? decorrelated.shape[0] : 1;
        using var scope = NewDisposeScope();
        using var numbers = new KeptScalars();
        var sampleCount = numbers[n];
        var z = decorrelated;
        var zt = z.transpose(-2, -1);
        var variances = z.square().sum(dim: -2).div_(sampleCount);            // diag X
        Tensor xTimesR, frobeniusSquared;
        if (n < d)
        {
            xTimesR = zt.matmul(z.matmul(matrix)).div_(sampleCount);
            frobeniusSquared = z.matmul(zt).div_(sampleCount).square().sum([-2, -1]);
        }
        else
        {
            var second = zt.matmul(z).div_(sampleCount);
            xTimesR = second.matmul(matrix);
            frobeniusSquared = second.square().sum([-2, -1]);
        }
        return Finish(variances, xTimesR, frobeniusSquared, matrix, kappa, blocks, d);
    }

    /// <summary>
    /// One step of the rule, <c>R − η·U</c>, with each block's step size η capped by <see cref="StableStepSizes"/>: the same
    /// result as <see cref="Compute"/> followed by the subtraction, without forming U. R's rows are scaled by
    /// <c>1 − η·s</c> (s the diagonal coefficients of U) and the product term is added to them by one matrix-product call
    /// that accumulates into its output, so the D×D data are read and written a few times instead of a dozen; in wide
    /// layers those passes had cost more than the update's matrix products (docs/performance.md, "Where DBP's time goes").
    /// </summary>
    /// <param name="decorrelated">Z: N×D, or G×N×d for the G blocks of a block-diagonal R.</param>
    /// <param name="matrix">R: D×D, or G×d×d.</param>
    /// <param name="kappa">κ ∈ [0, 1].</param>
    /// <param name="learningRate">η before the cap, positive.</param>
    /// <returns>
    /// The next R (a new tensor shaped like <paramref name="matrix"/>), the loss before the step (as <see cref="Compute"/>), and
    /// the step size used for each block (a float64 vector of G).
    /// </returns>
    public static (Tensor Next, Tensor Loss, Tensor StepSizes) Step(Tensor decorrelated, Tensor matrix, double kappa, double learningRate)
    {
        long d = decorrelated.shape[^1];
        double n = decorrelated.shape[^2];
        long blocks = decorrelated.dim() == 3 ? decorrelated.shape[0] : 1;
        using var scope = NewDisposeScope();
        using var numbers = new KeptScalars();
        var sampleCount = numbers[n];
        var z = decorrelated;
        var variances = z.square().sum(dim: -2).div_(sampleCount);
        if (n >= d)
            return StepFromSecondMoment(z.transpose(-2, -1).matmul(z).div_(sampleCount), variances, matrix, kappa, learningRate, blocks, d);
        // X·R = Zᵀ(Z·R)/N: the product term is Zᵀ·(c·Z·R) with c = −η(1−κ)/N per block, scaled on the small N×d factor.
        var frobeniusSquared = z.matmul(z.transpose(-2, -1)).div_(sampleCount).square().sum([-2, -1]);
        var (rowFactors, productScale, loss, stepSizes) = Coefficients(variances, frobeniusSquared, kappa, learningRate, blocks, d);
        var next = RowScaled(matrix, rowFactors);
        var scaledProduct = z.matmul(matrix).mul_(PerBlock(productScale.div_(sampleCount), blocks));
        next = blocks == 1 ? next.addmm_(z.t(), scaledProduct) : z.transpose(1, 2).baddbmm(scaledProduct, next);   // TorchSharp: batch1.baddbmm(batch2, input)
        return (next.MoveToOuterDisposeScope(), loss.MoveToOuterDisposeScope(), stepSizes.MoveToOuterDisposeScope());
    }

    /// <summary>
    /// <see cref="Step"/> from the samples' second moment X = ZᵀZ/N itself (D×D, or G×d×d), as data-parallel training pools it
    /// (<see cref="ComputeFromSecondMoment"/>).
    /// </summary>
    public static (Tensor Next, Tensor Loss, Tensor StepSizes) StepFromSecondMoment(Tensor secondMoment, Tensor matrix, double kappa, double learningRate)
    {
        long d = secondMoment.shape[^1];
        long blocks = secondMoment.dim() == 3 ? secondMoment.shape[0] : 1;
        using var scope = NewDisposeScope();
        var (next, loss, stepSizes) = StepFromSecondMoment(secondMoment.clone(), secondMoment.diagonal(0, -2, -1), matrix, kappa, learningRate, blocks, d);
        return (next.MoveToOuterDisposeScope(), loss.MoveToOuterDisposeScope(), stepSizes.MoveToOuterDisposeScope());
    }

    /// <summary>The step from X (overwritten: scaled in place), in the caller's dispose scope; results moved out of it.</summary>
    private static (Tensor Next, Tensor Loss, Tensor StepSizes) StepFromSecondMoment(Tensor secondMoment, Tensor variances, Tensor matrix, double kappa,
        double learningRate, long blocks, long d)
    {
        var frobeniusSquared = secondMoment.square().sum([-2, -1]);
        var (rowFactors, productScale, loss, stepSizes) = Coefficients(variances, frobeniusSquared, kappa, learningRate, blocks, d);
        var next = RowScaled(matrix, rowFactors);
        var scaledSecondMoment = secondMoment.mul_(PerBlock(productScale, blocks));
        next = blocks == 1 ? next.addmm_(scaledSecondMoment, matrix) : scaledSecondMoment.baddbmm(matrix, next);
        return (next.MoveToOuterDisposeScope(), loss.MoveToOuterDisposeScope(), stepSizes.MoveToOuterDisposeScope());
    }

    /// <summary>
    /// From diag X and ‖X‖²_F: each row's factor 1 − η·s (G×d, s from <see cref="RowScale"/>), each block's product scale −η(1−κ) (G),
    /// the loss and the capped step sizes (float64, G).
    /// </summary>
    private static (Tensor RowFactors, Tensor ProductScale, Tensor Loss, Tensor StepSizes) Coefficients(Tensor variances, Tensor frobeniusSquared,
        double kappa, double learningRate, long blocks, long d)
    {
        var loss = Loss(variances, frobeniusSquared, kappa, blocks, d);
        var stepSizes = StableStepSizes(learningRate, frobeniusSquared.sqrt().reshape(blocks));
        var eta = stepSizes.to(variances.dtype).view(blocks == 1 ? [1] : [blocks, 1]);
        using var numbers = new KeptScalars();
        var rowFactors = RowScale(variances, kappa).mul_(eta).neg_().add_(numbers[1]);
        var productScale = eta.reshape(blocks).mul(numbers[-(1 - kappa)]);
        return (rowFactors, productScale, loss, stepSizes);
    }

    /// <summary>s = κ·(diag X − 1) − (1−κ)·diag X, the coefficients of diag(s)·R in U (a new tensor shaped like the variances).</summary>
    private static Tensor RowScale(Tensor variances, double kappa)
    {
        using var numbers = new KeptScalars();
        return variances.sub(numbers[1]).mul_(numbers[kappa]).sub_(variances.mul(numbers[1 - kappa]));
    }

    /// <summary>The monitoring loss ((1−κ)·ΣC² + κ·Σv²) / (G·d²) from diag X and ‖X‖²_F, summed over the blocks.</summary>
    private static Tensor Loss(Tensor variances, Tensor frobeniusSquared, double kappa, long blocks, long d)
    {
        using var numbers = new KeptScalars();
        var offDiagonalSquared = frobeniusSquared.sum() - variances.square().sum();
        return offDiagonalSquared.clamp_min(numbers[0]).mul(numbers[1 - kappa])
            .add_(variances.sub(numbers[1]).square().sum().mul_(numbers[kappa])).div_(numbers[(double)blocks * d * d]);
    }

    /// <summary>diag(factors)·R, block by block.</summary>
    private static Tensor RowScaled(Tensor matrix, Tensor rowFactors) => matrix * rowFactors.unsqueeze(-1);

    /// <summary>A per-block scalar (a vector of G) shaped to multiply a (G×)a×b tensor: a scalar tensor for a full R.</summary>
    private static Tensor PerBlock(Tensor perBlock, long blocks) => blocks == 1 ? perBlock.reshape([]) : perBlock.view(blocks, 1, 1);
}
