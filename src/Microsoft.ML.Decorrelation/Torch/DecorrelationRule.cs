using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Decorrelation.Torch;

/// <summary>
/// The decorrelation update rule of DBP, as pure tensor functions (DESIGN.md §2).
/// </summary>
public static class DecorrelationRule
{
    /// <summary>
    /// Computes the update direction <c>U = [(1−κ)·C + κ·diag(v)]·R</c> and the monitoring loss
    /// <c>((1−κ)·ΣC² + κ·Σv²) / D²</c> from decorrelated samples.
    /// </summary>
    /// <param name="decorrelated">Z: N×D, one decorrelated input (z = R·x) per row.</param>
    /// <param name="matrix">R: the D×D decorrelation matrix that produced <paramref name="decorrelated"/>.</param>
    /// <param name="kappa">κ ∈ [0, 1].</param>
    /// <returns>U (D×D; the caller applies <c>R ← R − η·U</c>) and the loss as a scalar tensor.</returns>
    /// <remarks>
    /// With X = ZᵀZ/N, C = X − diag(diag X) and v = diag X − 1, U = (1−κ)·X·R + diag(κ·v − (1−κ)·diag X)·R.
    /// When N &lt; D, X·R is computed as Zᵀ(Z·R)/N (2·N·D² operations instead of N·D² + D³), and
    /// ‖X‖² as ‖Z·Zᵀ‖²/N², so X itself is never formed.
    /// </remarks>
    public static (Tensor Update, Tensor Loss) Compute(Tensor decorrelated, Tensor matrix, double kappa)
    {
        long d = decorrelated.shape[1];
        double n = decorrelated.shape[0];
        using var scope = NewDisposeScope();
        var z = decorrelated;
        var variances = z.square().sum(dim: 0).div_(n);            // diag X
        Tensor xTimesR, frobeniusSquared;
        if (n < d)
        {
            xTimesR = z.t().mm(z.mm(matrix)).div_(n);
            frobeniusSquared = z.mm(z.t()).div_(n).square().sum();
        }
        else
        {
            var second = z.t().mm(z).div_(n);
            xTimesR = second.mm(matrix);
            frobeniusSquared = second.square().sum();
        }
        var deviations = variances - 1;
        var offDiagonalSquared = frobeniusSquared - variances.square().sum();
        var rowScale = deviations * kappa - variances * (1 - kappa);
        var update = xTimesR.mul_(1 - kappa).add_(rowScale.unsqueeze(1) * matrix);
        var loss = (offDiagonalSquared.clamp_min(0) * (1 - kappa) + deviations.square().sum() * kappa) / ((double)d * d);
        return (update.MoveToOuterDisposeScope(), loss.MoveToOuterDisposeScope());
    }
}
