using Microsoft.ML.Decorrelation.Torch.Data;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Decorrelation.Torch.Training;

/// <summary>The optimizer of the network's weights.</summary>
public enum OptimizerKind
{
    /// <summary>Adam (with L2 weight decay when <see cref="TrainingOptions.WeightDecay"/> is set).</summary>
    Adam,

    /// <summary>Stochastic gradient descent with momentum.</summary>
    Sgd,
}

/// <summary>How the learning rate changes over the run.</summary>
public enum LearningRateSchedule
{
    /// <summary>The same learning rate throughout.</summary>
    Constant,

    /// <summary>Cosine decay from the learning rate to 0 over all steps of the run.</summary>
    Cosine,

    /// <summary>
    /// Multiplied by <see cref="TrainingOptions.StepDecayFactor"/> every <see cref="TrainingOptions.StepDecayEpochs"/> epochs,
    /// or, when that is null, after a third and after two thirds of the run.
    /// </summary>
    Step,
}

/// <summary>Options of <see cref="NetworkTrainer"/>.</summary>
public sealed class TrainingOptions
{
    /// <summary>Passes over the training data. Default 5.</summary>
    public int Epochs { get; set; } = 5;

    /// <summary>Images per step. Default 128.</summary>
    public int BatchSize { get; set; } = 128;

    /// <summary>The optimizer's (initial) learning rate. Default 1e-3.</summary>
    public double LearningRate { get; set; } = 1e-3;

    /// <summary>The optimizer. Default Adam.</summary>
    public OptimizerKind Optimizer { get; set; } = OptimizerKind.Adam;

    /// <summary>Momentum of SGD. Default 0.9.</summary>
    public double Momentum { get; set; } = 0.9;

    /// <summary>L2 weight decay. Default 0.</summary>
    public double WeightDecay { get; set; }

    /// <summary>The learning-rate schedule. Default constant.</summary>
    public LearningRateSchedule Schedule { get; set; } = LearningRateSchedule.Constant;

    /// <summary>
    /// With <see cref="LearningRateSchedule.Step"/>: epochs between two decays. Null (the default) decays twice, after a
    /// third and after two thirds of the run's steps, whatever its length.
    /// </summary>
    public int? StepDecayEpochs { get; set; }

    /// <summary>With <see cref="LearningRateSchedule.Step"/>: the factor applied at each decay. Default 0.1.</summary>
    public double StepDecayFactor { get; set; } = 0.1;

    /// <summary>
    /// Training-time augmentation: each training image is padded by this many pixels (border replicated) and
    /// randomly cropped back to its size, i.e. shifted by up to this many pixels. 0 (the default) turns it off.
    /// </summary>
    public int RandomCropPadding { get; set; }

    /// <summary>
    /// Training-time augmentation: mirror each training image left-right with probability ½. Only for data
    /// whose classes do not change when mirrored (not for digits or text). Default false.
    /// </summary>
    public bool RandomHorizontalFlip { get; set; }

    /// <summary>
    /// Decorrelation settings applied to every decorrelated layer of the trained network (and used by
    /// <see cref="NetworkTrainer.CreateNetwork"/> to convert one). A network without decorrelated layers
    /// trains with plain backpropagation whatever this says; null leaves each layer's own settings.
    /// </summary>
    public DecorrelationOptions? Decorrelation { get; set; } = new();

    /// <summary>
    /// Fine-tuning: the name of the head module (its parameters and decorrelation matrices are the head; everything else is
    /// the backbone). Default <see cref="Pretrained.PretrainedWeights.ClassifierName"/>, the classifier of every network of
    /// <see cref="Architectures.NetworkBuilder"/>.
    /// </summary>
    public string HeadModuleName { get; set; } = Pretrained.PretrainedWeights.ClassifierName;

    /// <summary>
    /// Fine-tuning: train only the head for this many epochs, then every layer; at least <see cref="Epochs"/> trains the head
    /// only throughout. While the backbone is frozen its weights, BatchNorm statistics (BatchNorm in eval mode) and
    /// decorrelation matrices do not change, and no gradient is computed for it. Default 0.
    /// </summary>
    public int HeadOnlyEpochs { get; set; }

    /// <summary>
    /// Fine-tuning: the backbone's learning rate as a fraction of the head's (<see cref="LearningRate"/>, scheduled), in (0, 1].
    /// Default 1 (one rate for all).
    /// </summary>
    public double BackboneLearningRateScale { get; set; } = 1;

    /// <summary>Seed of the initial weights, the batch order and the statistics samples. Default 0.</summary>
    public int Seed { get; set; }

    /// <summary>
    /// Stop when the test accuracy at the end of an epoch has not improved for this many epochs, and
    /// restore the weights of the best epoch; 0 (the default) trains every epoch. Needs a test set.
    /// </summary>
    public int EarlyStoppingPatience { get; set; }

    /// <summary>
    /// A file to write a checkpoint to after every epoch (weights, decorrelation matrices, optimizer and
    /// random state, metrics), through a temporary file renamed into place so that a crash never leaves a
    /// broken checkpoint; null (the default) writes none.
    /// </summary>
    public string? CheckpointPath { get; set; }

    /// <summary>
    /// Continue from <see cref="CheckpointPath"/> when that file exists: the run then ends with the metrics
    /// an uninterrupted run would have (on the CPU, with the same seed). Default false.
    /// </summary>
    public bool ResumeFromCheckpoint { get; set; }

    /// <summary>
    /// How many times training may recover from divergence (a non-finite loss or decorrelation matrix) by
    /// rolling back to the state at the start of the epoch and halving every learning rate. 0 (the default)
    /// throws <see cref="TrainingDivergedException"/> at the first divergence.
    /// </summary>
    public int DivergenceRetries { get; set; }

    /// <summary>Test-set evaluations per epoch (at equal step intervals; the last at the epoch's end). Default 1.</summary>
    public int EvaluationsPerEpoch { get; set; } = 1;

    /// <summary>Images per evaluation batch. Default 1000.</summary>
    public int EvaluationBatchSize { get; set; } = 1000;

    /// <summary>The device to train on. Default the CPU; see <see cref="TorchDevices.Select"/>.</summary>
    public Device Device { get; set; } = CPU;

    /// <summary>
    /// Data-parallel training: the processes that train together (e.g. <see cref="Distributed.MpiCommunicator.World"/>); null (the
    /// default) trains alone. Every rank runs the same run on its shard of each global batch of <see cref="BatchSize"/>
    /// images, starts from rank 0's weights, averages the gradients and pools the decorrelation statistics, so it takes the
    /// steps one process would take on the whole batch (docs/design.md, "Data-parallel training"). Only rank 0 writes checkpoints.
    /// </summary>
    public Distributed.ICollectiveCommunicator? Communicator { get; set; }

    /// <summary>Threads Torch may use on the CPU; null leaves Torch's setting alone.</summary>
    public int? Threads { get; set; }

    /// <summary>
    /// Apply <see cref="NativeAllocatorTuning"/> before training (Linux only; a guard against per-step mmap/munmap of activations, see docs/platform.md).
    /// Default true.
    /// </summary>
    public bool TuneNativeAllocator { get; set; } = true;

    /// <summary>
    /// Train with denormal floats flushed to zero (<see cref="DenormalFlushing"/>): where supported, <see cref="NetworkTrainer.Train"/>
    /// then runs on a thread of its own, and its callbacks are invoked there. Without it, weight decay makes CPU
    /// steps several times slower within a few epochs. Default true.
    /// </summary>
    public bool FlushDenormals { get; set; } = true;

    /// <summary>
    /// Whether convolutions may use oneDNN on the CPU (<see cref="NativeKernelGuard"/>). Default
    /// <see cref="OneDnnMode.Auto"/>: on, except where the CPU hides its cache sizes and oneDNN would crash the
    /// process, or where the environment variable <c>DECORRELATION_ONEDNN</c> says otherwise.
    /// </summary>
    public OneDnnMode OneDnn { get; set; } = OneDnnMode.Auto;

    /// <summary>Returns a copy of these options (the decorrelation options copied too).</summary>
    public TrainingOptions Clone()
    {
        var copy = (TrainingOptions)MemberwiseClone();
        copy.Decorrelation = Decorrelation?.Clone();
        return copy;
    }

    /// <summary>Throws an <see cref="ArgumentOutOfRangeException"/> naming the first option out of range.</summary>
    public void Validate()
    {
        Positive(Epochs, nameof(Epochs));
        Positive(BatchSize, nameof(BatchSize));
        Positive(EvaluationsPerEpoch, nameof(EvaluationsPerEpoch));
        Positive(EvaluationBatchSize, nameof(EvaluationBatchSize));
        if (StepDecayEpochs is int decayEpochs)
            Positive(decayEpochs, nameof(StepDecayEpochs));
        if (RandomCropPadding < 0)
            throw new ArgumentOutOfRangeException(nameof(RandomCropPadding), RandomCropPadding, "The crop padding must not be negative.");
        if (DivergenceRetries < 0)
            throw new ArgumentOutOfRangeException(nameof(DivergenceRetries), DivergenceRetries, "The number of divergence retries must not be negative.");
        if (ResumeFromCheckpoint && string.IsNullOrWhiteSpace(CheckpointPath))
            throw new ArgumentException("ResumeFromCheckpoint needs a CheckpointPath.", nameof(ResumeFromCheckpoint));
        if (EarlyStoppingPatience < 0)
            throw new ArgumentOutOfRangeException(nameof(EarlyStoppingPatience), EarlyStoppingPatience, "The early stopping patience must not be negative.");
        if (!(LearningRate > 0) || double.IsInfinity(LearningRate))
            throw new ArgumentOutOfRangeException(nameof(LearningRate), LearningRate, "The learning rate must be positive and finite.");
        if (!(Momentum >= 0 && Momentum < 1))
            throw new ArgumentOutOfRangeException(nameof(Momentum), Momentum, "Momentum must lie in [0, 1).");
        if (!(WeightDecay >= 0) || double.IsInfinity(WeightDecay))
            throw new ArgumentOutOfRangeException(nameof(WeightDecay), WeightDecay, "Weight decay must be non-negative and finite.");
        if (!(StepDecayFactor > 0 && StepDecayFactor <= 1))
            throw new ArgumentOutOfRangeException(nameof(StepDecayFactor), StepDecayFactor, "The step decay factor must lie in (0, 1].");
        if (HeadOnlyEpochs < 0)
            throw new ArgumentOutOfRangeException(nameof(HeadOnlyEpochs), HeadOnlyEpochs, "The number of head-only epochs must not be negative.");
        if (!(BackboneLearningRateScale > 0 && BackboneLearningRateScale <= 1))
            throw new ArgumentOutOfRangeException(nameof(BackboneLearningRateScale), BackboneLearningRateScale, "The backbone's learning-rate scale must lie in (0, 1].");
        if ((HeadOnlyEpochs > 0 || BackboneLearningRateScale != 1) && string.IsNullOrWhiteSpace(HeadModuleName))
            throw new ArgumentException("Fine-tuning (HeadOnlyEpochs, BackboneLearningRateScale) needs a HeadModuleName.", nameof(HeadModuleName));
        if (Communicator is { Size: > 1 } world && BatchSize % world.Size != 0)
            throw new ArgumentOutOfRangeException(nameof(BatchSize), BatchSize, $"Data-parallel training over {world.Size} ranks needs a batch size divisible by {world.Size}.");
        if (Threads is < 1)
            throw new ArgumentOutOfRangeException(nameof(Threads), Threads, "The thread count must be at least 1.");
        if (!Enum.IsDefined(OneDnn))
            throw new ArgumentOutOfRangeException(nameof(OneDnn), OneDnn, "Unknown oneDNN mode.");
        Decorrelation?.Validate();
    }

    /// <summary>The augmentation these options ask for (seeded with <see cref="Seed"/>); identity when none.</summary>
    public ImageAugmentation CreateAugmentation() => new(RandomCropPadding, RandomHorizontalFlip, Seed);

    /// <summary>The learning rate at <paramref name="step"/> (0-based) of a run of <paramref name="totalSteps"/>.</summary>
    public double LearningRateAt(long step, long totalSteps, long stepsPerEpoch) => Schedule switch
    {
        LearningRateSchedule.Cosine => LearningRate * 0.5 * (1 + Math.Cos(Math.PI * Math.Min(step, totalSteps) / totalSteps)),
        LearningRateSchedule.Step => LearningRate * Math.Pow(StepDecayFactor, StepDecayEpochs is int decayEpochs
            ? step / stepsPerEpoch / decayEpochs
            : Math.Min(2, 3 * step / totalSteps)),
        _ => LearningRate,
    };

    private static void Positive(int value, string name)
    {
        if (value < 1)
            throw new ArgumentOutOfRangeException(name, value, $"{name} must be at least 1.");
    }
}
