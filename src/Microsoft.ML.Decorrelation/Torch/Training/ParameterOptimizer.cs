using TorchSharp;
using static TorchSharp.torch;
using Parameter = TorchSharp.Modules.Parameter;

namespace Microsoft.ML.Decorrelation.Torch.Training;

/// <summary>
/// Adam, or SGD with momentum, over groups of parameters that each scale the learning rate: torch.optim's update (L2 weight
/// decay added to the gradient) in its order of operations, so it matches TorchSharp's <c>optim.Adam</c> and
/// <c>optim.SGD</c> bit for bit. Ours because those pass their numbers to libtorch as implicitly converted scalars that nothing
/// keeps alive during the native call, which the finalizer can free while libtorch reads them (docs/platform.md); here every
/// scalar is a <see cref="KeptScalars"/> of the step.
/// </summary>
internal sealed class ParameterOptimizer : IDisposable
{
    private const double Beta1 = 0.9, Beta2 = 0.999, Epsilon = 1e-8;

    /// <summary>One parameter's state: Adam's step count and moment estimates, or SGD's momentum buffer (in <see cref="First"/>).</summary>
    private sealed class State
    {
        public long Step;
        public Tensor? First;
        public Tensor? Second;
    }

    private readonly OptimizerKind _kind;
    private readonly double _weightDecay;
    private readonly double _momentum;
    private readonly (IReadOnlyList<Parameter> Parameters, double RateScale)[] _groups;
    private readonly Dictionary<Parameter, State> _states = new(ReferenceEqualityComparer.Instance);

    /// <summary>Creates the optimizer; Adam's moment estimates start at zero, SGD's momentum buffer at the first gradient.</summary>
    /// <param name="kind">Adam or SGD.</param>
    /// <param name="groups">The parameters, in groups that each multiply the learning rate by their scale.</param>
    /// <param name="weightDecay">L2 weight decay, added to every gradient.</param>
    /// <param name="momentum">SGD's momentum (Adam's β are PyTorch's defaults, 0.9 and 0.999).</param>
    public ParameterOptimizer(OptimizerKind kind, IEnumerable<(IReadOnlyList<Parameter> Parameters, double RateScale)> groups, double weightDecay, double momentum)
    {
        _kind = kind;
        _weightDecay = weightDecay;
        _momentum = momentum;
        _groups = groups.ToArray();
        foreach (var parameter in Parameters)
        {
            _states[parameter] = kind == OptimizerKind.Sgd ? new State()
                : new State { First = zeros_like(parameter).DetachFromDisposeScope(), Second = zeros_like(parameter).DetachFromDisposeScope() };
        }
    }

    /// <summary>Every parameter, in group order: the order of the saved state.</summary>
    private IEnumerable<Parameter> Parameters => _groups.SelectMany(g => g.Parameters);

    /// <summary>Sets every gradient to zero (as TorchSharp's optimizers do: gradients are kept, not released).</summary>
    public void ZeroGrad()
    {
        foreach (var parameter in Parameters)
        {
            using var grad = parameter.grad;
            grad?.zero_();
        }
    }

    /// <summary>One update of every parameter that has a gradient, at <paramref name="learningRate"/> times its group's scale.</summary>
    public void Step(double learningRate)
    {
        using var noGrad = no_grad();
        using var scope = NewDisposeScope();
        using var numbers = new KeptScalars();
        var weightDecay = numbers[_weightDecay];
        foreach (var (parameters, rateScale) in _groups)
        {
            double rate = learningRate * rateScale;
            foreach (var parameter in parameters)
            {
                var grad = parameter.grad;
                if (grad is null)
                    continue;
                if (_weightDecay != 0)
                    grad = grad.add(parameter, weightDecay);
                if (_kind == OptimizerKind.Sgd)
                    SgdStep(parameter, grad, _states[parameter], rate, numbers);
                else
                    AdamStep(parameter, grad, _states[parameter], rate, numbers);
            }
        }
    }

    private static void AdamStep(Parameter parameter, Tensor grad, State state, double rate, KeptScalars numbers)
    {
        state.Step++;
        double biasCorrection1 = 1 - Math.Pow(Beta1, state.Step);
        double biasCorrection2 = 1 - Math.Pow(Beta2, state.Step);
        state.First!.mul_(numbers[Beta1]).add_(grad, numbers[1 - Beta1]);
        state.Second!.mul_(numbers[Beta2]).addcmul_(grad, grad, numbers[1 - Beta2]);
        var denominator = state.Second.sqrt().div_(numbers[Math.Sqrt(biasCorrection2)]).add_(numbers[Epsilon]);
        parameter.addcdiv_(state.First, denominator, numbers[-(rate / biasCorrection1)]);
    }

    private void SgdStep(Parameter parameter, Tensor grad, State state, double rate, KeptScalars numbers)
    {
        if (_momentum != 0)
        {
            if (state.First is null)
                state.First = grad.clone().detach().DetachFromDisposeScope();
            else
                state.First.mul_(numbers[_momentum]).add_(grad, numbers[1]);
            grad = state.First;
        }
        parameter.add_(grad, numbers[-rate]);
    }

    /// <summary>Writes every parameter's state, in group order.</summary>
    public void Save(BinaryWriter writer)
    {
        foreach (var parameter in Parameters)
        {
            var state = _states[parameter];
            writer.Write(state.Step);
            foreach (var tensor in new[] { state.First, state.Second })
            {
                writer.Write(tensor is not null);
                tensor?.Save(writer);
            }
        }
    }

    /// <summary>Reads what <see cref="Save"/> wrote, into an optimizer of the same parameters.</summary>
    /// <exception cref="InvalidDataException">A saved tensor does not fit its parameter.</exception>
    public void Load(BinaryReader reader)
    {
        foreach (var parameter in Parameters)
        {
            var state = _states[parameter];
            state.Step = reader.ReadInt64();
            state.First = LoadTensor(reader, parameter, state.First);
            state.Second = LoadTensor(reader, parameter, state.Second);
        }
    }

    private static Tensor? LoadTensor(BinaryReader reader, Parameter parameter, Tensor? current)
    {
        if (!reader.ReadBoolean())
        {
            current?.Dispose();
            return null;
        }
        // Shaped like the parameter either way, so Load's own check of shape and type is the whole check.
        var tensor = current ?? zeros_like(parameter).DetachFromDisposeScope();
        try
        {
            tensor.Load(reader);
        }
        catch (ArgumentException e)
        {
            if (current is null)
                tensor.Dispose();
            throw new InvalidDataException($"A saved optimizer state does not fit a parameter of shape [{string.Join(", ", parameter.shape)}]: {e.Message}", e);
        }
        return tensor;
    }

    /// <summary>Releases every state tensor.</summary>
    public void Dispose()
    {
        foreach (var state in _states.Values)
        {
            state.First?.Dispose();
            state.Second?.Dispose();
        }
        _states.Clear();
    }
}
