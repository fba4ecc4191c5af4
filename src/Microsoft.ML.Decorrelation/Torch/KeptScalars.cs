using TorchSharp;

namespace Microsoft.ML.Decorrelation.Torch;

/// <summary>
/// Numbers for libtorch as <see cref="Scalar"/>s that stay alive until this is disposed. TorchSharp turns a bare double
/// into a Scalar that nothing keeps alive during the native call, so the finalizer can free it while libtorch still reads
/// it (docs/platform.md); hold one of these in a <c>using</c> and pass <c>numbers[x]</c> instead of <c>x</c>. A value asked
/// for again gets the same Scalar, so constants used per parameter cost one native object per step.
/// </summary>
internal sealed class KeptScalars : IDisposable
{
    // Keyed by the bits, not the value: 0.0 and -0.0 are equal doubles but different Scalars.
    private readonly Dictionary<long, Scalar> _scalars = [];

    /// <summary>A Scalar of <paramref name="value"/>, alive until <see cref="Dispose"/>.</summary>
    public Scalar this[double value]
    {
        get
        {
            long bits = BitConverter.DoubleToInt64Bits(value);
            if (!_scalars.TryGetValue(bits, out var scalar))
                _scalars.Add(bits, scalar = value.ToScalar());
            return scalar;
        }
    }

    /// <summary>Frees every Scalar handed out.</summary>
    public void Dispose()
    {
        foreach (var scalar in _scalars.Values)
            scalar.Dispose();
        _scalars.Clear();
    }
}
