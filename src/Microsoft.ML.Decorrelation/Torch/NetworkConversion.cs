using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.Decorrelation.Torch;

/// <summary>
/// Converts a plain network (built from <c>Sequential</c>, <see cref="IComposedModule"/> blocks, Conv2d,
/// Linear, BatchNorm2d and parameter-free modules) into its decorrelated twin and folds a trained
/// decorrelated network back into plain layers.
/// </summary>
/// <remarks>
/// Both directions build a NEW network that shares nothing with the source: weights are copied, and
/// parameter-free modules (activations, pooling, flatten) are re-created, so either network can be
/// disposed on its own.
/// </remarks>
public static class NetworkConversion
{
    /// <summary>
    /// Builds the decorrelated twin of <paramref name="network"/>: every Conv2d and Linear (or those
    /// <paramref name="include"/> accepts, up to <see cref="DecorrelationOptions.MaxInputSize"/>) becomes a <see cref="DecorrelatedConv2d"/> or
    /// <see cref="DecorrelatedLinear"/> with the same weights and R = I, so the twin computes exactly what
    /// the original computes.
    /// </summary>
    /// <param name="network">The plain network.</param>
    /// <param name="options">Decorrelation hyper-parameters of the new layers; null for the defaults.</param>
    /// <param name="include">Optional filter on (path, module): false keeps that layer plain.</param>
    /// <exception cref="NotSupportedException">A layer cannot be converted or copied (its message names it).</exception>
    public static nn.Module<Tensor, Tensor> ToDecorrelated(nn.Module<Tensor, Tensor> network, DecorrelationOptions? options = null,
        Func<string, nn.Module, bool>? include = null)
    {
        ArgumentNullException.ThrowIfNull(network);
        options ??= new DecorrelationOptions();
        options.Validate();
        return Convert(network, "", (path, module) =>
        {
            if ((module is Conv2d || module is Linear) && ((include is not null && !include(path, module)) || InputSize(module) > options.MaxInputSize))
                return CopyLeaf(path, module);
            return module switch
            {
                Conv2d conv => Decorrelate(path, conv, options),
                Linear linear => Decorrelate(linear, options),
                _ => CopyLeaf(path, module),
            };
        });
    }

    /// <summary>
    /// Folds every decorrelated layer into a plain Conv2d or Linear whose weight is the effective weight
    /// W·R: the result computes what <paramref name="network"/> computes, at the cost of a plain network.
    /// </summary>
    /// <param name="network">A network containing decorrelated layers.</param>
    /// <exception cref="NotSupportedException">A layer cannot be copied (its message names it).</exception>
    public static nn.Module<Tensor, Tensor> ToPlain(nn.Module<Tensor, Tensor> network)
    {
        ArgumentNullException.ThrowIfNull(network);
        return Convert(network, "", (path, module) => module switch
        {
            DecorrelatedConv2d conv => Fold(conv),
            DecorrelatedLinear linear => Fold(linear),
            _ => CopyLeaf(path, module),
        });
    }

    private static nn.Module<Tensor, Tensor> Convert(nn.Module<Tensor, Tensor> module, string path,
        Func<string, nn.Module<Tensor, Tensor>, nn.Module<Tensor, Tensor>> convertLeaf)
    {
        nn.Module<Tensor, Tensor> result;
        if (module is Sequential sequential)
        {
            var children = sequential.named_children()
                .Select(child => (child.name, (nn.Module<Tensor, Tensor>)Convert(AsTensorModule(child.module, Join(path, child.name)), Join(path, child.name), convertLeaf)))
                .ToArray();
            result = nn.Sequential(children);
        }
        else if (module is IComposedModule composed)
        {
            var names = new Dictionary<object, string>(ReferenceEqualityComparer.Instance);
            foreach (var (name, child) in module.named_children())
                names[child] = name;
            result = composed.WithConvertedChildren(child =>
                Convert(child, Join(path, names.TryGetValue(child, out var name) ? name : child.GetName()), convertLeaf));
        }
        else
        {
            result = convertLeaf(path, module);
        }
        result.train(module.training);
        return result;
    }

    private static long InputSize(nn.Module module) => module switch
    {
        Conv2d conv => conv.in_channels / conv.groups * conv.kernel_size[0] * conv.kernel_size[1],
        Linear linear => linear.in_features,
        _ => 0,
    };

    private static nn.Module<Tensor, Tensor> AsTensorModule(nn.Module module, string path)
        => module as nn.Module<Tensor, Tensor>
           ?? throw new NotSupportedException($"Layer '{path}' ({module.GetType().Name}) is not a Tensor-to-Tensor module and cannot be converted.");

    private static string Join(string path, string name) => path.Length == 0 ? name : path + "." + name;

    private static DecorrelatedConv2d Decorrelate(string path, Conv2d conv, DecorrelationOptions options)
    {
        if (conv.groups != 1)
            throw new NotSupportedException($"Layer '{path}' is a grouped convolution (groups = {conv.groups}); decorrelation needs groups = 1.");
        if (conv.padding_mode != PaddingModes.Zeros)
            throw new NotSupportedException($"Layer '{path}' pads with {conv.padding_mode}; only zero padding can be decorrelated.");
        var padding = ExplicitPadding(path, conv);
        var result = new DecorrelatedConv2d(conv.in_channels, conv.out_channels, (conv.kernel_size[0], conv.kernel_size[1]),
            (conv.stride[0], conv.stride[1]), padding, (conv.dilation[0], conv.dilation[1]),
            hasBias: conv.bias is not null, options, conv.weight!.device, conv.weight.dtype);
        CopyWeights(conv.weight!, conv.bias, result);
        return result;
    }

    /// <summary>A convolution's padding as explicit (height, width) amounts; zero padding only ("same" only where it is symmetric).</summary>
    internal static (long, long) ExplicitPadding(string path, Conv2d conv)
    {
        if (conv.padding_type is null)
            return (conv.padding![0], conv.padding[1]);
        if (conv.padding_type == TorchSharp.Padding.Valid)
            return (0, 0);
        // 'Same' padding: symmetric only when every dilated kernel extent is odd.
        long Half(int axis) => conv.dilation[axis] * (conv.kernel_size[axis] - 1);
        if (conv.stride[0] != 1 || conv.stride[1] != 1 || Half(0) % 2 != 0 || Half(1) % 2 != 0)
            throw new NotSupportedException($"Layer '{path}' uses asymmetric 'same' padding, which cannot be decorrelated.");
        return (Half(0) / 2, Half(1) / 2);
    }

    private static DecorrelatedLinear Decorrelate(Linear linear, DecorrelationOptions options)
    {
        var result = new DecorrelatedLinear(linear.in_features, linear.out_features, hasBias: linear.bias is not null, options, linear.weight!.device, linear.weight.dtype);
        CopyWeights(linear.weight!, linear.bias, result);
        return result;
    }

    private static void CopyWeights(Tensor weight, Tensor? bias, DecorrelatedLayer target)
    {
        using var noGrad = no_grad();
        using var scope = NewDisposeScope();
        target.Weight.copy_(weight);
        target.Bias?.copy_(bias!);
    }

    private static Conv2d Fold(DecorrelatedConv2d layer)
    {
        var conv = ModuleOwnership.Build(() => nn.Conv2d(layer.InputChannels, layer.OutputChannels, layer.KernelSize,
            stride: (layer.Stride[0], layer.Stride[1]), padding: (layer.Padding[0], layer.Padding[1]),
            dilation: (layer.Dilation[0], layer.Dilation[1]), bias: layer.Bias is not null, device: layer.Weight.device, dtype: layer.Weight.dtype));
        CopyFolded(layer, conv.weight!, conv.bias);
        return conv;
    }

    private static Linear Fold(DecorrelatedLinear layer)
    {
        var linear = nn.Linear(layer.InputSize, layer.OutputSize, layer.Bias is not null, layer.Weight.device, layer.Weight.dtype);
        CopyFolded(layer, linear.weight!, linear.bias);
        return linear;
    }

    private static void CopyFolded(DecorrelatedLayer layer, Tensor weight, Tensor? bias)
    {
        using var noGrad = no_grad();
        using var scope = NewDisposeScope();
        weight.copy_(layer.EffectiveWeight());
        bias?.copy_(layer.Bias!);
    }

    private static nn.Module<Tensor, Tensor> CopyLeaf(string path, nn.Module<Tensor, Tensor> module)
    {
        switch (module)
        {
            case BatchNorm2d norm:
                // The device and type of whichever tensor the layer has (neither affine weights nor running statistics are required).
                var first = norm.parameters().Concat(norm.buffers()).FirstOrDefault();
                var copy = nn.BatchNorm2d(norm.num_features, norm.eps, norm.momentum ?? 0.1, norm.affine, norm.track_running_stats, first?.device, first?.dtype);
                copy.momentum = norm.momentum;   // null (a cumulative average) must stay null
                // TorchSharp gives num_batches_tracked the module's dtype when one is passed; PyTorch and a module built
                // without one keep it int64, which saved models must match.
                if (norm.num_batches_tracked is { } tracked && copy.num_batches_tracked is { } copied && copied.dtype != tracked.dtype)
                    copy.num_batches_tracked = zeros_like(tracked);
                CopyState(module, copy);
                return copy;
            case Conv2d conv:
                var convCopy = ModuleOwnership.Build(() => nn.Conv2d(conv.in_channels, conv.out_channels, (conv.kernel_size[0], conv.kernel_size[1]),
                    stride: (conv.stride[0], conv.stride[1]), padding: ExplicitPadding(path, conv), dilation: (conv.dilation[0], conv.dilation[1]),
                    padding_mode: conv.padding_mode, groups: conv.groups, bias: conv.bias is not null, device: conv.weight!.device, dtype: conv.weight.dtype));
                CopyState(module, convCopy);
                return convCopy;
            case Linear linear:
                var linearCopy = nn.Linear(linear.in_features, linear.out_features, linear.bias is not null, linear.weight!.device, linear.weight.dtype);
                CopyState(module, linearCopy);
                return linearCopy;
            case ReLU relu:
                return nn.ReLU(relu.inplace);
            case MaxPool2d pool:
                return nn.MaxPool2d(pool.kernel_size, pool.stride, pool.padding, pool.dilation, pool.ceil_mode);
            case AvgPool2d pool:
                return nn.AvgPool2d(pool.kernel_size, pool.stride, pool.padding, pool.ceil_mode, pool.count_include_pad, pool.divisor_override);
            case AdaptiveAvgPool2d pool:
                return nn.AdaptiveAvgPool2d(pool.output_size);
            case Flatten flatten:
                return nn.Flatten(flatten.start_dim, flatten.end_dim);
            case Identity:
                return nn.Identity();
            case Dropout dropout:
                return nn.Dropout(dropout.p, dropout.inplace);
            default:
                throw new NotSupportedException(
                    $"Layer '{path}' ({module.GetType().Name}) cannot be copied. Build the network from Sequential, IComposedModule blocks, " +
                    "Conv2d, Linear, BatchNorm2d, ReLU, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d, Flatten, Identity and Dropout, " +
                    "or wrap other modules in an IComposedModule that rebuilds them.");
        }
    }

    private static void CopyState(nn.Module source, nn.Module target)
    {
        using var noGrad = no_grad();
        using var scope = NewDisposeScope();
        var targetState = target.state_dict();
        foreach (var (name, tensor) in source.state_dict())
            targetState[name].copy_(tensor);
    }
}
