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
        var norms = secondMomentNorms.to(ScalarType.Float64);
        var cap = norms.reciprocal().nan_to_num(learningRate, learningRate, learningRate);
        return cap.clamp_max(learningRate).MoveToOuterDisposeScope();
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
        var deviations = variances - 1;
        var offDiagonalSquared = frobeniusSquared.sum() - variances.square().sum();
        var rowScale = deviations * kappa - variances * (1 - kappa);
        var update = xTimesR.mul_(1 - kappa).add_(rowScale.unsqueeze(-1) * matrix);
        var loss = (offDiagonalSquared.clamp_min(0) * (1 - kappa) + deviations.square().sum() * kappa) / ((double)blocks * d * d);
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
        var z = decorrelated;
        var zt = z.transpose(-2, -1);
        var variances = z.square().sum(dim: -2).div_(n);            // diag X
        Tensor xTimesR, frobeniusSquared;
        if (n < d)
        {
            xTimesR = zt.matmul(z.matmul(matrix)).div_(n);
            frobeniusSquared = z.matmul(zt).div_(n).square().sum([-2, -1]);
        }
        else
        {
            var second = zt.matmul(z).div_(n);
            xTimesR = second.matmul(matrix);
            frobeniusSquared = second.square().sum([-2, -1]);
        }
        return Finish(variances, xTimesR, frobeniusSquared, matrix, kappa, blocks, d);
    }
}
