using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.Decorrelation.Torch;

/// <summary>
/// A fully connected layer with a decorrelation matrix in front: <c>y = W·(R·x) + b</c>, computed as one
/// <c>linear</c> call with the effective weight <c>W·R</c>. Inputs are (…, D).
/// </summary>
public sealed class DecorrelatedLinear : DecorrelatedLayer
{
    /// <summary>Creates the layer with weights initialised as <c>torch.nn.Linear</c> does and R = I.</summary>
    /// <param name="inputSize">D, the number of input features.</param>
    /// <param name="outputSize">O, the number of output features.</param>
    /// <param name="hasBias">Whether the layer adds a learned bias.</param>
    /// <param name="options">Decorrelation hyper-parameters; null for the defaults.</param>
    /// <param name="device">Where the layer's tensors live.</param>
    /// <param name="dtype">The element type of W, b and R; default float32.</param>
    public DecorrelatedLinear(long inputSize, long outputSize, bool hasBias = true, DecorrelationOptions? options = null, Device? device = null, ScalarType? dtype = null)
        : this(nn.Linear(inputSize, outputSize, hasBias, device, dtype), options)
    {
    }

    // Borrows nn.Linear's initialisation, so that a DBP network starts from the weights its plain twin would.
    private DecorrelatedLinear(Linear template, DecorrelationOptions? options)
        : base(nameof(DecorrelatedLinear), template, template.in_features, options, (options ?? new DecorrelationOptions()).LinearSampleFraction,
               groups: template.in_features)
    {
        OutputSize = template.out_features;
        template.Dispose();
    }

    /// <summary>O, the number of output features.</summary>
    public long OutputSize { get; }

    /// <inheritdoc />
    public override Tensor EffectiveWeight() => TimesR(Weight);

    private protected override Tensor ApplyEffectiveWeight(Tensor input, Tensor effectiveWeight)
        => nn.functional.linear(input, effectiveWeight, Bias);

    private protected override Tensor Decorrelate(Tensor samples)
    {
        var rows = samples.reshape(-1, InputSize);
        if (BlockCount == 1)
            return rows.mm(DecorrelationMatrix.t());
        // Each block's slice of the features times that block's Rᵀ.
        return PerBlock(rows).bmm(DecorrelationMatrix.transpose(1, 2)).transpose(0, 1).reshape(-1, InputSize);
    }
}
