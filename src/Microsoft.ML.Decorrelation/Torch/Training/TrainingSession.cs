using System.Diagnostics;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Decorrelation.Torch.Training;

/// <summary>
/// One network being trained step by step: its optimizer, its learning-rate schedule and its
/// decorrelation controller. Created by <see cref="NetworkTrainer.CreateSession"/>; used by
/// <see cref="NetworkTrainer.Train"/> and by benchmarks that interleave the steps of several networks.
/// </summary>
/// <remarks>
/// A session draws its randomness from its own generator, seeded by <see cref="TrainingOptions.Seed"/>, and sets
/// <see cref="TrainingOptions.Threads"/> only for the thread that creates it, so sessions running side by side on
/// different threads do not disturb each other or the caller.
/// </remarks>
public sealed class TrainingSession : IDisposable
{
    private readonly TrainingOptions _options;
    private readonly ParameterOptimizer _optimizer;
    private readonly long _totalSteps;
    private readonly double[] _decorrelationRates;
    private readonly bool _decorrelationFollowsSchedule;
    private readonly NativeKernelScope _kernels;
    private readonly Generator _sampling;
    private readonly int? _callersThreads;
    private double _learningRateScale = 1;
    private double _decorrelationScheduleFactor = 1;
    private readonly long _headOnlySteps;
    private readonly IReadOnlyList<TorchSharp.Modules.Parameter> _backboneParameters;
    private readonly IReadOnlyList<nn.Module> _backboneBatchNorms;
    private readonly IReadOnlyList<DecorrelatedLayer> _backboneLayers;
    private bool _backboneFrozen;
    private readonly Distributed.MeteredCommunicator? _gradientTraffic;
    private readonly Distributed.MeteredCommunicator? _statisticsTraffic;

    internal TrainingSession(nn.Module<Tensor, Tensor> network, TrainingOptions options, int stepsPerEpoch)
    {
        _options = options;
        Network = network;
        StepsPerEpoch = stepsPerEpoch;
        _totalSteps = (long)stepsPerEpoch * options.Epochs;
        var decorrelation = options.Decorrelation;
        _sampling = new Generator(unchecked((ulong)(options.Seed + 1L)), CPU);
        if (options.Communicator is { Size: > 1 } world)
        {
            // Every rank starts from rank 0's weights, buffers and decorrelation matrices; collectives are metered per kind.
            using (no_grad())
            {
                foreach (var (_, state) in network.state_dict())
                    world.Broadcast(state, root: 0);
            }
            _gradientTraffic = new Distributed.MeteredCommunicator(world);
            _statisticsTraffic = new Distributed.MeteredCommunicator(world);
        }
        Decorrelation = new DecorrelationController(network, decorrelation?.UpdateInterval ?? DecorrelationOptions.DefaultUpdateInterval)
        {
            SamplingGenerator = _sampling,
            Communicator = _statisticsTraffic,
        };
        if (decorrelation is not null)
        {
            foreach (var layer in Decorrelation.Layers)
            {
                layer.LearningRate = decorrelation.LearningRate;
                layer.Kappa = decorrelation.Kappa;
                layer.SampleFraction = layer is DecorrelatedConv2d ? decorrelation.ConvolutionSampleFraction : decorrelation.LinearSampleFraction;
            }
        }
        (_backboneParameters, _backboneBatchNorms, _backboneLayers) = Backbone(network, options, Decorrelation.Layers);
        _headOnlySteps = (long)Math.Min(options.HeadOnlyEpochs, options.Epochs) * stepsPerEpoch;
        // One group, or two (backbone, then head) when the backbone learns at its own rate.
        var backbone = _backboneParameters.ToHashSet();
        IReadOnlyList<TorchSharp.Modules.Parameter> all = network.parameters().ToList();
        _optimizer = new ParameterOptimizer(options.Optimizer, options.BackboneLearningRateScale == 1 ? [(all, 1.0)]
            : [(_backboneParameters, options.BackboneLearningRateScale), (all.Where(p => !backbone.Contains(p)).ToList(), 1.0)],
            options.WeightDecay, options.Momentum);
        LearningRate = options.LearningRate;
        _decorrelationRates = Decorrelation.Layers.Select(layer => layer.LearningRate).ToArray();
        _decorrelationFollowsSchedule = decorrelation?.FollowLearningRateSchedule ?? true;
        _kernels = NativeKernelGuard.Enter(options.OneDnn);
        if (options.Threads is int threads)
        {
            // libtorch's intra-op thread count belongs to the calling thread (OpenMP); it is restored at Dispose.
            _callersThreads = get_num_threads();
            set_num_threads(threads);
        }
    }

    /// <summary>
    /// The backbone of a fine-tuning run: the parameters, BatchNorm modules and decorrelated layers outside the head module.
    /// Empty when the options ask for no fine-tuning control.
    /// </summary>
    private static (IReadOnlyList<TorchSharp.Modules.Parameter>, IReadOnlyList<nn.Module>, IReadOnlyList<DecorrelatedLayer>) Backbone(
        nn.Module<Tensor, Tensor> network, TrainingOptions options, IReadOnlyList<DecorrelatedLayer> layers)
    {
        if (options.HeadOnlyEpochs == 0 && options.BackboneLearningRateScale == 1)
            return ([], [], []);
        string head = options.HeadModuleName;
        bool InHead(string name) => name == head || name.StartsWith(head + ".", StringComparison.Ordinal);
        var parameters = network.named_parameters().ToList();
        if (!parameters.Any(p => InHead(p.name)))
            throw new ArgumentException($"Fine-tuning needs a head, but the network has no parameter under the module '{head}' ({nameof(TrainingOptions.HeadModuleName)}).");
        var batchNorms = network.named_modules()
            .Where(m => !InHead(m.name) && m.module is TorchSharp.Modules.BatchNorm1d or TorchSharp.Modules.BatchNorm2d or TorchSharp.Modules.BatchNorm3d)
            .Select(m => m.module).ToList();
        return (parameters.Where(p => !InHead(p.name)).Select(p => p.parameter).ToList(), batchNorms,
            layers.Where(l => !InHead(l.LayerName)).ToList());
    }

    /// <summary>Whether the backbone is frozen at the current step (the head-only epochs of <see cref="TrainingOptions.HeadOnlyEpochs"/>).</summary>
    public bool BackboneFrozen => _backboneFrozen;

    private void FreezeBackbone(bool frozen)
    {
        if (frozen == _backboneFrozen)
            return;
        foreach (var parameter in _backboneParameters)
            parameter.requires_grad = !frozen;
        _backboneFrozen = frozen;
    }

    /// <summary>
    /// Whether this session's convolutions may use oneDNN, and why (<see cref="TrainingOptions.OneDnn"/>); in force
    /// from the session's creation until it is disposed.
    /// </summary>
    public OneDnnDecision OneDnn => _kernels.Decision;

    /// <summary>
    /// A factor on the scheduled learning rate and on every decorrelation learning rate; 1 at the start,
    /// halved each time training recovers from divergence.
    /// </summary>
    public double LearningRateScale
    {
        get => _learningRateScale;
        set
        {
            ArgumentOutOfRangeException.ThrowIfNegativeOrZero(value);
            _learningRateScale = value;
            ApplyDecorrelationRates();
        }
    }

    private void ApplyDecorrelationRates()
    {
        for (int i = 0; i < _decorrelationRates.Length; i++)
            Decorrelation.Layers[i].LearningRate = _decorrelationRates[i] * _learningRateScale * _decorrelationScheduleFactor;
    }

    /// <summary>
    /// Writes the network's weights and buffers, the optimizer's state, the step count, the learning-rate scale and
    /// the state of the generator that samples the decorrelation statistics.
    /// </summary>
    public void SaveState(BinaryWriter writer)
    {
        writer.Write(StepCount);
        writer.Write(_learningRateScale);
        using (var sampling = _sampling.get_state())
            sampling.Save(writer);
        Network.save(writer);
        _optimizer.Save(writer);
    }

    /// <summary>Restores what <see cref="SaveState"/> wrote, into a session of the same network and options.</summary>
    /// <exception cref="InvalidDataException">The state belongs to another network.</exception>
    public void LoadState(BinaryReader reader)
    {
        StepCount = reader.ReadInt64();
        LearningRateScale = reader.ReadDouble();
        try
        {
            using (var sampling = _sampling.get_state())
            {
                sampling.Load(reader);
                _sampling.set_state(sampling);
            }
            Network.load(reader, strict: true);
            _optimizer.Load(reader);
        }
        catch (Exception e) when (e is ArgumentException or InvalidOperationException or EndOfStreamException or InvalidDataException or System.Runtime.InteropServices.ExternalException)
        {
            throw new InvalidDataException($"The saved training state does not fit this network: {e.Message}", e);
        }
    }

    /// <summary>The network being trained.</summary>
    public nn.Module<Tensor, Tensor> Network { get; }

    /// <summary>The network's decorrelated layers and their update schedule (no layers for plain backprop).</summary>
    public DecorrelationController Decorrelation { get; }

    /// <summary>Steps in one epoch, for the learning-rate schedule and for messages.</summary>
    public int StepsPerEpoch { get; }

    /// <summary>Steps taken so far.</summary>
    public long StepCount { get; private set; }

    /// <summary>How many images of the last step's batch the network classified correctly (before the step's update).</summary>
    public long LastStepCorrect { get; private set; }

    /// <summary>How many images the last step's batch held (over every rank in data-parallel training).</summary>
    public long LastStepSamples { get; private set; }

    /// <summary>
    /// Replaces every gradient by the batch's mean gradient over all ranks: each rank's mean gradient weighted by its share
    /// of the batch, summed in one all-reduce.
    /// </summary>
    private void AverageGradients(Distributed.ICollectiveCommunicator world, long localCount, long totalCount)
    {
        using var noGrad = no_grad();
        using var scope = NewDisposeScope();
        var gradients = Network.parameters().Where(p => p.requires_grad && p.grad is not null).Select(p => p.grad!).ToList();
        if (gradients.Count == 0)
            return;
        using var numbers = new KeptScalars();
        var flat = cat(gradients.Select(g => g.flatten()).ToList()).mul_(numbers[(double)localCount / totalCount]);
        world.AllReduceSum(flat);
        long offset = 0;
        foreach (var gradient in gradients)
        {
            gradient.copy_(flat.narrow(0, offset, gradient.NumberOfElements).view_as(gradient));
            offset += gradient.NumberOfElements;
        }
    }

    /// <summary>Where the last step's time went.</summary>
    public StepTimings LastStepTimings { get; private set; }

    /// <summary>The learning rate of the last step.</summary>
    public double LearningRate { get; private set; }

    /// <summary>
    /// One training step on a batch: forward, cross-entropy, backward, optimizer step, then the
    /// decorrelation update. The network is put in training mode.
    /// </summary>
    /// <param name="images">(B, C, H, W) float32, on the network's device.</param>
    /// <param name="labels">(B) int64 class indices, on the network's device.</param>
    /// <returns>The batch's loss before the step.</returns>
    /// <exception cref="TrainingDivergedException">The loss or a decorrelation matrix turned non-finite.</exception>
    public double Step(Tensor images, Tensor labels)
    {
        using var scope = NewDisposeScope();
        long step = StepCount + 1;
        int epoch = (int)(StepCount / StepsPerEpoch) + 1;
        double scheduled = _options.LearningRateAt(StepCount, _totalSteps, StepsPerEpoch);
        LearningRate = scheduled * _learningRateScale;
        _decorrelationScheduleFactor = _decorrelationFollowsSchedule ? scheduled / _options.LearningRate : 1;
        ApplyDecorrelationRates();

        FreezeBackbone(StepCount < _headOnlySteps);
        Network.train();
        Decorrelation.BeginStep(StepCount);
        if (_backboneFrozen)
        {
            // A frozen backbone keeps its BatchNorm statistics and its decorrelation matrices as well as its weights.
            foreach (var batchNorm in _backboneBatchNorms)
                batchNorm.eval();
            foreach (var layer in _backboneLayers)
                layer.CollectStatistics = false;
        }
        long start = Stopwatch.GetTimestamp();
        _optimizer.ZeroGrad();
        var logits = Network.forward(images);
        var loss = nn.functional.cross_entropy(logits, labels);
        // One device-to-host copy: the loss and how many of the batch the network got right before the step.
        long localCount = labels.shape[0];
        using var numbers = new KeptScalars();
        var summaryTensor = stack([loss.detach().to(ScalarType.Float64).mul(numbers[localCount]), logits.detach().argmax(1).eq(labels).sum().to(ScalarType.Float64),
            tensor((double)localCount, device: loss.device)]).cpu();
        // Data-parallel: the batch's loss, correct count and size over every rank, so all ranks decide alike.
        _options.Communicator?.AllReduceSum(summaryTensor);
        var summary = summaryTensor.data<double>().ToArray();
        double lossValue = summary[0] / summary[2];
        LastStepCorrect = (long)summary[1];
        LastStepSamples = (long)summary[2];
        long forwardDone = Stopwatch.GetTimestamp();
        if (!double.IsFinite(lossValue))
            throw new TrainingDivergedException($"The training loss became {lossValue} at epoch {epoch}, step {step}. Lower the learning rate.")
            {
                Epoch = epoch,
                Step = step,
            };
        loss.backward();
        if (_gradientTraffic is not null)
            AverageGradients(_gradientTraffic, localCount, LastStepSamples);
        long backwardDone = Stopwatch.GetTimestamp();
        _optimizer.Step(LearningRate);
        long optimizerDone = Stopwatch.GetTimestamp();
        try
        {
            Decorrelation.Update();
        }
        catch (TrainingDivergedException e)
        {
            throw new TrainingDivergedException($"{e.Message} (epoch {epoch}, step {step})", e.LayerName, e) { Epoch = epoch, Step = step };
        }
        long updateDone = Stopwatch.GetTimestamp();
        var statistics = TimeSpan.Zero;
        foreach (var layer in Decorrelation.Layers)
            statistics += layer.TakeStatisticsTime();
        var (gradientTime, gradientBytes) = _gradientTraffic?.Take() ?? default;
        var (statisticsTime, statisticsBytes) = _statisticsTraffic?.Take() ?? default;
        LastStepTimings = new StepTimings(
            Forward: Stopwatch.GetElapsedTime(start, forwardDone) - statistics,
            Statistics: statistics,
            Backward: Stopwatch.GetElapsedTime(forwardDone, backwardDone) - gradientTime,
            Optimizer: Stopwatch.GetElapsedTime(backwardDone, optimizerDone),
            DecorrelationUpdate: Stopwatch.GetElapsedTime(optimizerDone, updateDone) - statisticsTime)
        {
            GradientAllReduce = gradientTime,
            StatisticsAllReduce = statisticsTime,
            GradientBytes = gradientBytes,
            StatisticsBytes = statisticsBytes,
        };
        StepCount = step;
        return lossValue;
    }

    /// <summary>
    /// Releases the optimizer's state and the sampling generator, unfreezes a frozen backbone, and gives the calling
    /// thread back its oneDNN setting and Torch thread count. Dispose on the thread that created the session.
    /// </summary>
    public void Dispose()
    {
        FreezeBackbone(false);
        _optimizer.Dispose();
        _kernels.Dispose();
        Decorrelation.SamplingGenerator = null;
        _sampling.Dispose();
        if (_callersThreads is int threads)
            set_num_threads(threads);
    }
}

/// <summary>Where one training step's wall-clock time went (CPU timings; on a GPU, kernels may finish later).</summary>
/// <param name="Forward">The forward pass and loss, without the decorrelation statistics.</param>
/// <param name="Statistics">Sampling and decorrelating the layers' inputs (inside the forward pass).</param>
/// <param name="Backward">The backward pass.</param>
/// <param name="Optimizer">The optimizer step.</param>
/// <param name="DecorrelationUpdate">The update of every decorrelation matrix.</param>
public readonly record struct StepTimings(TimeSpan Forward, TimeSpan Statistics, TimeSpan Backward, TimeSpan Optimizer, TimeSpan DecorrelationUpdate)
{
    /// <summary>Data-parallel: the gradient all-reduce (and the batch summary's), not counted in <see cref="Backward"/>.</summary>
    public TimeSpan GradientAllReduce { get; init; }

    /// <summary>Data-parallel: the all-reduce of the decorrelation statistics, not counted in <see cref="DecorrelationUpdate"/>.</summary>
    public TimeSpan StatisticsAllReduce { get; init; }

    /// <summary>Data-parallel: bytes this rank contributed to the gradient all-reduce.</summary>
    public long GradientBytes { get; init; }

    /// <summary>Data-parallel: bytes this rank contributed to the statistics all-reduce.</summary>
    public long StatisticsBytes { get; init; }

    /// <summary>The whole step.</summary>
    public TimeSpan Total => Forward + Statistics + Backward + Optimizer + DecorrelationUpdate + GradientAllReduce + StatisticsAllReduce;
}
