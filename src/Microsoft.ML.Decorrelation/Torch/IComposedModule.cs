using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Decorrelation.Torch;

/// <summary>
/// A module built from child modules that <see cref="NetworkConversion"/> can rebuild with converted
/// children (a residual block, for example). <c>Sequential</c> needs no such help.
/// </summary>
public interface IComposedModule
{
    /// <summary>Creates a module of the same kind and configuration whose children are <paramref name="convert"/>(child).</summary>
    /// <param name="convert">Maps each child to its counterpart in the new module.</param>
    nn.Module<Tensor, Tensor> WithConvertedChildren(Func<nn.Module<Tensor, Tensor>, nn.Module<Tensor, Tensor>> convert);
}
