using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Decorrelation.Torch;

/// <summary>
/// The decorrelation update rule of DBP, as pure tensor functions (docs/DESIGN.md, "The algorithm").
/// </summary>
public static class DecorrelationRule
{
    /// <summary>
    /// An estimate of the largest eigenvalue of X = ZᵀZ/N by a few power iterations (X·v computed as Zᵀ(Z·v)/N,
    /// never forming X), started from the all-ones direction, which dominates X for non-negative inputs
    /// such as ReLU activations.
    /// </summary>
    /// <param name="decorrelated">Z: N×D.</param>
    /// <param name="iterations">Power iterations.</param>
    public static double LargestEigenvalue(Tensor decorrelated, int iterations = 4)
    {
        ArgumentOutOfRangeException.ThrowIfNotEqual(decorrelated.dim(), 2L, nameof(decorrelated));
        return LargestEigenvalues(decorrelated, iterations)[0];
    }

    /// <summary>
    /// <see cref="LargestEigenvalue"/> of each block: for Z of G×N×d, the largest eigenvalue of each ZₖᵀZₖ/N
    /// (all blocks iterated together); for Z of N×D, one value.
    /// </summary>
    /// <param name="decorrelated">Z: N×D, or G×N×d.</param>
    /// <param name="iterations">Power iterations.</param>
    public static double[] LargestEigenvalues(Tensor decorrelated, int iterations = 4)
    {
        using var scope = NewDisposeScope();
        var z = decorrelated.dim() == 2 ? decorrelated.unsqueeze(0) : decorrelated;
        long blocks = z.shape[0];
        double n = z.shape[1];
        // A unit start vector, so that each iteration's estimate is simply ‖X·v‖.
        var v = full(blocks, z.shape[2], 1, 1 / Math.Sqrt(z.shape[2]), dtype: z.dtype, device: z.device);
        var estimates = new double[blocks];
        for (int i = 0; i < iterations; i++)
        {
            var next = z.transpose(1, 2).bmm(z.bmm(v)).div_(n);
            estimates = next.flatten(1).norm(1).to(ScalarType.Float64).cpu().data<double>().ToArray();
            if (estimates.Any(norm => !(norm > 0) || !double.IsFinite(norm)))
                break;
            v = next.div_(tensor(estimates, device: z.device).to(z.dtype).view(blocks, 1, 1));
        }
        return estimates;
    }

    /// <summary>
    /// The step size actually used: <paramref name="learningRate"/>, capped at 1/λmax(X) so that no direction is
    /// overshot. Without the cap, R diverges within a few updates once η·λmax exceeds 2, which happens in wide
    /// layers whose non-negative inputs share a large mean (λmax grows with D).
    /// </summary>
    public static double StableStepSize(double learningRate, double largestEigenvalue)
        => largestEigenvalue > 0 && double.IsFinite(largestEigenvalue) ? Math.Min(learningRate, 1 / largestEigenvalue) : learningRate;

    /// <summary>
    /// Computes the update direction <c>U = [(1−κ)·C + κ·diag(v)]·R</c> and the monitoring loss
    /// <c>((1−κ)·ΣC² + κ·Σv²) / D²</c> from decorrelated samples.
    /// </summary>
    /// <param name="decorrelated">Z: N×D, one decorrelated input (z = R·x) per row; or G×N×d for the G blocks of a block-diagonal R.</param>
    /// <param name="matrix">R: the D×D decorrelation matrix that produced <paramref name="decorrelated"/>, or its G×d×d blocks.</param>
    /// <param name="kappa">κ ∈ [0, 1].</param>
    /// <returns>
    /// U, shaped like <paramref name="matrix"/> (the caller applies <c>R ← R − η·U</c>), and the loss as a scalar
    /// tensor (for blocks, the mean of the blocks' losses).
    /// </returns>
    /// <remarks>
    /// With X = ZᵀZ/N, C = X − diag(diag X) and v = diag X − 1, U = (1−κ)·X·R + diag(κ·v − (1−κ)·diag X)·R.
    /// When N &lt; D, X·R is computed as Zᵀ(Z·R)/N (2·N·D² operations instead of N·D² + D³), and
    /// ‖X‖² as ‖Z·Zᵀ‖²/N², so X itself is never formed.
    /// </remarks>
    public static (Tensor Update, Tensor Loss) Compute(Tensor decorrelated, Tensor matrix, double kappa)
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
            frobeniusSquared = z.matmul(zt).div_(n).square().sum();
        }
        else
        {
            var second = zt.matmul(z).div_(n);
            xTimesR = second.matmul(matrix);
            frobeniusSquared = second.square().sum();
        }
        var deviations = variances - 1;
        var offDiagonalSquared = frobeniusSquared - variances.square().sum();
        var rowScale = deviations * kappa - variances * (1 - kappa);
        var update = xTimesR.mul_(1 - kappa).add_(rowScale.unsqueeze(-1) * matrix);
        var loss = (offDiagonalSquared.clamp_min(0) * (1 - kappa) + deviations.square().sum() * kappa) / ((double)blocks * d * d);
        return (update.MoveToOuterDisposeScope(), loss.MoveToOuterDisposeScope());
    }
}
