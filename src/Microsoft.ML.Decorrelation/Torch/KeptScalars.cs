using TorchSharp;

namespace Microsoft.ML.Decorrelation.Torch;

/// <summary>
/// Numbers for libtorch as <see cref="Scalar"/>s that stay alive until this is disposed. TorchSharp turns a bare double
/// into a Scalar that nothing keeps alive during the native call, so the finalizer can free it while libtorch still reads
/// it (docs/platform.md); hold one of these in a <c>using</c> and pass <c>numbers[x]</c> instead of <c>x</c>.
/// </summary>
internal sealed class KeptScalars : IDisposable
{
    private readonly List<Scalar> _scalars = [];

    /// <summary>A Scalar of <paramref name="value"/>, alive until <see cref="Dispose"/>.</summary>
    public Scalar this[double value]
    {
        get
        {
            var scalar = value.ToScalar();
            _scalars.Add(scalar);
            return scalar;
        }
    }

    /// <summary>Frees every Scalar handed out.</summary>
    public void Dispose()
    {
        foreach (var scalar in _scalars)
            scalar.Dispose();
        _scalars.Clear();
    }
}
