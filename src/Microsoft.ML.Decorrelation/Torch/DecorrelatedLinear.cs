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
    private readonly Parameter weight;
    private readonly Parameter? bias;

    /// <summary>Creates the layer with weights initialised as <c>torch.nn.Linear</c> does and R = I.</summary>
    /// <param name="inputSize">D, the number of input features.</param>
    /// <param name="outputSize">O, the number of output features.</param>
    /// <param name="hasBias">Whether the layer adds a learned bias.</param>
    /// <param name="options">Decorrelation hyper-parameters; null for the defaults.</param>
    /// <param name="device">Where the layer's tensors live.</param>
    public DecorrelatedLinear(long inputSize, long outputSize, bool hasBias = true, DecorrelationOptions? options = null, Device? device = null)
        : base(nameof(DecorrelatedLinear), inputSize, options, (options ?? new DecorrelationOptions()).LinearSampleFraction, device)
    {
        OutputSize = outputSize;
        // Borrow nn.Linear's initialisation so that a DBP network starts from the weights its plain twin would.
        using var template = nn.Linear(inputSize, outputSize, hasBias, device);
        using var noGrad = no_grad();
        weight = new Parameter(template.weight!.detach().clone());
        register_parameter(nameof(weight), weight);
        if (hasBias)
        {
            bias = new Parameter(template.bias!.detach().clone());
            register_parameter(nameof(bias), bias);
        }
    }

    /// <summary>O, the number of output features.</summary>
    public long OutputSize { get; }

    /// <inheritdoc />
    public override Parameter Weight => weight;

    /// <inheritdoc />
    public override Parameter? Bias => bias;

    /// <inheritdoc />
    public override Tensor EffectiveWeight() => weight.mm(DecorrelationMatrix);

    private protected override Tensor ApplyEffectiveWeight(Tensor input, Tensor effectiveWeight)
        => nn.functional.linear(input, effectiveWeight, bias);

    private protected override Tensor Decorrelate(Tensor samples)
        => samples.reshape(-1, InputSize).mm(DecorrelationMatrix.t());
}
