using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Decorrelation.Torch.Architectures;

/// <summary>
/// A residual block: <c>relu(residual(x) + shortcut(x))</c>. With a basic or bottleneck
/// <c>residual</c> branch it is the block of ResNet-18/34 or ResNet-50.
/// </summary>
public sealed class ResidualBlock : nn.Module<Tensor, Tensor>, IComposedModule
{
    private readonly nn.Module<Tensor, Tensor> residual;
    private readonly nn.Module<Tensor, Tensor> shortcut;

    /// <summary>Creates the block from its two branches.</summary>
    /// <param name="residual">The residual branch (convolutions, BatchNorm and activations).</param>
    /// <param name="shortcut">The shortcut: identity, or a 1×1 projection when the shape changes.</param>
    public ResidualBlock(nn.Module<Tensor, Tensor> residual, nn.Module<Tensor, Tensor> shortcut)
        : base(nameof(ResidualBlock))
    {
        this.residual = residual;
        this.shortcut = shortcut;
        RegisterComponents();
    }

    /// <summary>The residual branch.</summary>
    internal nn.Module<Tensor, Tensor> Residual => residual;

    /// <summary>The shortcut: identity or a projection.</summary>
    internal nn.Module<Tensor, Tensor> Shortcut => shortcut;

    /// <inheritdoc />
    public override Tensor forward(Tensor input)
    {
        using var scope = NewDisposeScope();
        var sum = residual.forward(input).add_(shortcut.forward(input));
        return nn.functional.relu(sum, inplace: true).MoveToOuterDisposeScope();
    }

    /// <inheritdoc />
    public nn.Module<Tensor, Tensor> WithConvertedChildren(Func<nn.Module<Tensor, Tensor>, nn.Module<Tensor, Tensor>> convert)
        => new ResidualBlock(convert(residual), convert(shortcut));
}
