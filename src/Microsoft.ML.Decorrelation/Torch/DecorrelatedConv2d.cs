using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.Decorrelation.Torch;

/// <summary>
/// A 2-D convolution with a decorrelation matrix in front of every patch: each output is
/// <c>W·(R·p) + b</c>, where p is the unfolded patch in PyTorch's (channel, row, column) order and
/// D = C_in·kh·kw. Computed as one <c>conv2d</c> call with the effective filters <c>W·R</c>.
/// </summary>
/// <remarks>
/// Grouped convolutions are not supported: R mixes the channels of a patch (all of them, or those of one
/// group of <see cref="DecorrelatedLayer.BlockCount"/> when R is block-diagonal).
/// </remarks>
public sealed class DecorrelatedConv2d : DecorrelatedLayer
{
    /// <summary>Creates the layer with weights initialised as <c>torch.nn.Conv2d</c> does and R = I.</summary>
    /// <param name="inputChannels">C_in.</param>
    /// <param name="outputChannels">C_out.</param>
    /// <param name="kernelSize">(kh, kw).</param>
    /// <param name="stride">Stride (rows, columns); default 1.</param>
    /// <param name="padding">Zero padding (rows, columns); default 0.</param>
    /// <param name="dilation">Dilation (rows, columns); default 1.</param>
    /// <param name="hasBias">Whether the layer adds a learned bias.</param>
    /// <param name="options">Decorrelation hyper-parameters; null for the defaults.</param>
    /// <param name="device">Where the layer's tensors live.</param>
    /// <param name="dtype">The element type of W, b and R; default float32.</param>
    public DecorrelatedConv2d(long inputChannels, long outputChannels, (long Height, long Width) kernelSize,
        (long, long)? stride = null, (long, long)? padding = null, (long, long)? dilation = null,
        bool hasBias = true, DecorrelationOptions? options = null, Device? device = null, ScalarType? dtype = null)
        : this(ModuleOwnership.Build(() => nn.Conv2d(inputChannels, outputChannels, kernelSize, bias: hasBias, device: device, dtype: dtype)), kernelSize, options)
    {
        Stride = AsArray(stride ?? (1, 1), nameof(stride), minimum: 1);
        Padding = AsArray(padding ?? (0, 0), nameof(padding), minimum: 0);
        Dilation = AsArray(dilation ?? (1, 1), nameof(dilation), minimum: 1);
    }

    // Borrows nn.Conv2d's initialisation, so that a DBP network starts from the weights its plain twin would.
    private DecorrelatedConv2d(Conv2d template, (long Height, long Width) kernelSize, DecorrelationOptions? options)
        : base(nameof(DecorrelatedConv2d), template, template.in_channels * kernelSize.Height * kernelSize.Width, options,
               (options ?? new DecorrelationOptions()).ConvolutionSampleFraction, groups: template.in_channels)
    {
        InputChannels = template.in_channels;
        OutputChannels = template.out_channels;
        KernelSize = kernelSize;
        template.Dispose();
    }

    /// <summary>C_in, the number of input channels.</summary>
    public long InputChannels { get; }

    /// <summary>C_out, the number of filters.</summary>
    public long OutputChannels { get; }

    /// <summary>(kh, kw).</summary>
    public (long Height, long Width) KernelSize { get; }

    /// <summary>Stride (rows, columns).</summary>
    public long[] Stride { get; } = [];

    /// <summary>Zero padding (rows, columns).</summary>
    public long[] Padding { get; } = [];

    /// <summary>Dilation (rows, columns).</summary>
    public long[] Dilation { get; } = [];

    /// <inheritdoc />
    public override Tensor EffectiveWeight()
        => TimesR(Weight.view(OutputChannels, InputSize)).view(Weight.shape);

    private protected override Tensor ApplyEffectiveWeight(Tensor input, Tensor effectiveWeight)
        => nn.functional.conv2d(input, effectiveWeight, Bias, Stride, Padding, Dilation);

    /// <remarks>
    /// R·p for every patch is a convolution whose D filters are the rows of R, so the patches are never
    /// unfolded into memory; with a block-diagonal R it is a grouped convolution, one group per block.
    /// </remarks>
    private protected override Tensor Decorrelate(Tensor samples)
    {
        var filters = DecorrelationMatrix.view(InputSize, InputChannels / BlockCount, KernelSize.Height, KernelSize.Width);
        var decorrelated = nn.functional.conv2d(samples, filters, null, Stride, Padding, Dilation, groups: BlockCount);
        return decorrelated.permute(0, 2, 3, 1).reshape(-1, InputSize);
    }

    private static long[] AsArray((long Rows, long Columns) pair, string name, long minimum)
    {
        if (pair.Rows < minimum || pair.Columns < minimum)
            throw new ArgumentOutOfRangeException(name, pair, $"Convolution {name} must be at least {minimum}.");
        return [pair.Rows, pair.Columns];
    }
}
