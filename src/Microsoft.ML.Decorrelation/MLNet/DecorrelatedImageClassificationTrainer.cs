using System.Diagnostics;
using Microsoft.ML.Data;
using Microsoft.ML.Decorrelation.MLNet.Internals;
using Microsoft.ML.Decorrelation.Torch;
using Microsoft.ML.Decorrelation.Torch.Data;
using Microsoft.ML.Decorrelation.Torch.Training;
using Microsoft.ML.Runtime;
using static TorchSharp.torch;

namespace Microsoft.ML.Decorrelation;

/// <summary>
/// Trains a convolutional network for multiclass image classification with decorrelated
/// backpropagation (DBP): a learned decorrelation matrix in front of every convolution and linear layer
/// (Dalm et al., "Efficient Deep Learning with Decorrelated Backpropagation"). With
/// <see cref="Options.UseDecorrelation"/> false it trains the same network with plain backpropagation.
/// </summary>
/// <remarks>
/// <para>Input: a key-typed label column (the number of classes is the key type's count; rows with a
/// missing label are skipped and counted in the log) and a feature column that is a known-size float
/// vector of pixels (ExtractPixels, dimensions [C, H, W]), an image (LoadImages) or encoded image bytes
/// (LoadRawImageBytes).</para>
/// <para>Pixels are standardised per channel with the mean and standard deviation of the training
/// images; both are stored in the model and applied when scoring. Images from LoadImages or
/// LoadRawImageBytes are read as values in [0, 255] (R, G, B planes, or luminance for
/// <see cref="Options.ImageChannels"/> = 1).</para>
/// <para>Output: <c>Score</c>, the class probabilities (softmax), and <c>PredictedLabel</c>, a key with the
/// label's key values, as ML.NET's multiclass evaluator expects.</para>
/// </remarks>
public sealed class DecorrelatedImageClassificationTrainer : IEstimator<DecorrelatedImageClassificationTransformer>
{
    /// <summary>Options of <see cref="DecorrelatedImageClassificationTrainer"/>.</summary>
    public sealed class Options
    {
        /// <summary>A shallow copy (callbacks and data views are shared).</summary>
        internal Options Clone() => (Options)MemberwiseClone();

        /// <summary>The label column: a key type. Default "Label".</summary>
        public string LabelColumnName = "Label";

        /// <summary>The feature column: pixels, an image or encoded image bytes. Default "Features".</summary>
        public string FeatureColumnName = "Features";

        /// <summary>The output column of class probabilities. Default "Score".</summary>
        public string ScoreColumnName = "Score";

        /// <summary>The output column of predicted label keys. Default "PredictedLabel".</summary>
        public string PredictedLabelColumnName = "PredictedLabel";

        /// <summary>The network. Default <see cref="CnnArchitecture.SmallCnn"/>.</summary>
        public CnnArchitecture Architecture = CnnArchitecture.SmallCnn;

        /// <summary>
        /// The stem of a ResNet. Null (the default): that of the <see cref="PretrainedWeightsPath"/> weights, else the 3×3 small-image
        /// stem for images up to 64×64 and the ImageNet stem (7×7 stride 2, max-pool) for larger ones.
        /// </summary>
        public Torch.Architectures.ResNetStem? Stem;

        /// <summary>
        /// Image channels: for a float vector without dimensions, its channel count; for images, 1 (grayscale)
        /// or 3 (RGB, the default). 0 = infer.
        /// </summary>
        public int ImageChannels;

        /// <summary>Image height, needed only for a float vector without dimensions; for images, the size expected (0 = that of the first image).</summary>
        public int ImageHeight;

        /// <summary>Image width; see <see cref="ImageHeight"/>.</summary>
        public int ImageWidth;

        /// <summary>
        /// Passes over the training data. Default 6: with the default step schedule, batch size and learning rate this is
        /// the benchmark's setting, where DBP ended 1.1 points above backprop (docs/performance.md); backprop needs about
        /// 10 epochs at batch 64 to reach the same accuracy.
        /// </summary>
        public int MaxEpoch = 6;

        /// <summary>Images per training step. Default 128.</summary>
        public int BatchSize = 128;

        /// <summary>
        /// Adam learning rate of the weights (initial, with a decaying <see cref="LearningRateSchedule"/>). Default 2e-3, the
        /// better of {1e-3, 2e-3} for both backprop and DBP under the step schedule in every seed measured (docs/performance.md).
        /// </summary>
        public double LearningRate = 2e-3;

        /// <summary>
        /// L2 weight decay. Default 5e-4: over 3 seeds it kept DBP's final accuracy above backprop's in every seed
        /// (README "Performance"); 0 turns it off.
        /// </summary>
        public double WeightDecay = 5e-4;

        /// <summary>
        /// How the learning rate changes over training. Default <see cref="LearningRateSchedule.Step"/>: ×0.1 after a third
        /// and after two thirds of <see cref="MaxEpoch"/>, for the weights and the decorrelation matrices alike. Over 3 seeds
        /// on Fashion-MNIST it let DBP reach backprop's best accuracy 2.05× as fast (median; 1.21× at a constant rate) and
        /// end 0.7 points higher than at a constant rate (docs/performance.md). Runs of only a few steps learn more at
        /// <see cref="LearningRateSchedule.Constant"/>.
        /// </summary>
        public LearningRateSchedule LearningRateSchedule = LearningRateSchedule.Step;

        /// <summary>
        /// Augmentation: shift each training image by up to this many pixels (padding with its border, then a random
        /// crop). 0 (the default) turns it off. Scoring never augments.
        /// </summary>
        public int RandomCropPadding;

        /// <summary>
        /// Augmentation: mirror each training image left-right with probability ½. Only for classes that a mirror
        /// does not change (not digits or text). Default false.
        /// </summary>
        public bool RandomHorizontalFlip;

        /// <summary>
        /// A pretrained state dict to start from, or null (the default) to train from scratch: a PyTorch file (<c>.pt</c>, <c>.pth</c>:
        /// <c>torch.save(model.state_dict(), path)</c>), safetensors, or TorchSharp's format, with torchvision's ResNet names
        /// (torchvision's <c>resnet18/34/50</c> weights) or this library's (a network of the same <see cref="Architecture"/>). Every
        /// tensor's name and shape is checked. A ResNet then takes the stem of the weights (torchvision's: the ImageNet stem,
        /// whatever the image size); a classifier of another class count is replaced and 1-channel images use the first
        /// convolution's weights summed over its 3 channels (the log says both). With DBP the network starts with R = I, exactly
        /// the pretrained network. See docs/pretrained.md.
        /// </summary>
        public string? PretrainedWeightsPath;

        /// <summary>
        /// How pixels are standardised per channel. Null (the default): <see cref="PixelStandardization.ImageNet"/> with
        /// <see cref="PretrainedWeightsPath"/>, else <see cref="PixelStandardization.TrainingSet"/>.
        /// </summary>
        public PixelStandardization? Standardization;

        /// <summary>
        /// With <see cref="PretrainedWeightsPath"/>: keep the pretrained classifier when it has as many classes as the label (the
        /// same classes, in the same order). Default false: the classifier starts fresh, as for a new task; a classifier of
        /// another class count is always replaced.
        /// </summary>
        public bool KeepPretrainedClassifier;

        /// <summary>
        /// Fine-tuning: train only the classifier for this many epochs (the rest frozen: weights, BatchNorm statistics and
        /// decorrelation matrices), then every layer; <see cref="MaxEpoch"/> or more trains the classifier only. Default 0.
        /// </summary>
        public int HeadOnlyEpochs;

        /// <summary>
        /// Fine-tuning: the learning rate of every layer but the classifier, as a fraction in (0, 1] of <see cref="LearningRate"/>.
        /// Default 1.
        /// </summary>
        public double BackboneLearningRateScale = 1;

        /// <summary>
        /// Data-parallel training over MPI. Default <see cref="DataParallelMode.Auto"/>: when the process was started by an MPI
        /// launcher (<c>mpirun -np N dotnet app.dll</c>, <c>srun</c>), every rank trains on its share of each batch and they
        /// average gradients and pool the decorrelation statistics; otherwise one process trains alone. Every rank reads the
        /// whole IDataView (an IDataView cannot be split by rank in general); only rank 0 logs the epochs and writes checkpoints;
        /// the callbacks run on every rank with the same (global) figures, and every rank returns the same model. See README,
        /// "Data-parallel training".
        /// </summary>
        public DataParallelMode DataParallel = DataParallelMode.Auto;

        /// <summary>True (the default) trains with decorrelated backpropagation; false with plain backpropagation, all else equal.</summary>
        public bool UseDecorrelation = true;

        /// <summary>Learning rate of the decorrelation matrices, per update (see <see cref="DecorrelationUpdateInterval"/>). Default 8e-3.</summary>
        public double DecorrelationLearningRate = new DecorrelationOptions().LearningRate;

        /// <summary>κ ∈ [0, 1]: weight of variance normalisation against decorrelation. Default 0.01.</summary>
        public double Kappa = new DecorrelationOptions().Kappa;

        /// <summary>
        /// Fraction, in (0, 1], of each batch's images whose patches (all of them) feed the convolutions' decorrelation
        /// statistics. Default 0.03 (4 images of a batch of 128: about 3,000 patches of a 28×28 layer); linear layers use a
        /// quarter of the batch's rows.
        /// </summary>
        public double DecorrelationSampleFraction = new DecorrelationOptions().ConvolutionSampleFraction;

        /// <summary>
        /// Update the decorrelation matrices every this many steps; the steps in between skip the statistics.
        /// The learning rate of the matrices applies per update.
        /// </summary>
        public int DecorrelationUpdateInterval = new DecorrelationOptions().UpdateInterval;

        /// <summary>
        /// Leave plain the layers whose input size D (C_in·kh·kw) exceeds this; 0 decorrelates every layer.
        /// Default 1152: every layer of the small CNN, and all of ResNet-18/34 but the 3×3 convolutions of the
        /// last two stages (D = 2304 and 4608), whose W·R products would almost double the step (docs/performance.md).
        /// </summary>
        public int DecorrelationMaxInputSize = 1152;

        /// <summary>
        /// Make R block-diagonal, with blocks of at most this size over groups of input channels, in the layers whose
        /// input size D exceeds it; 0 keeps every R full. Default 576 (<see cref="DecorrelationOptions.DefaultMaxBlockSize"/>):
        /// cheaper than a full R on wide layers, at the cost of the correlations between groups, and on the small CNN
        /// faster to backprop's best accuracy than a full R (docs/performance.md).
        /// </summary>
        public int DecorrelationMaxBlockSize = DecorrelationOptions.DefaultMaxBlockSize;

        /// <summary>Data to measure accuracy on after each epoch; null for none (see <see cref="ValidationFraction"/>).</summary>
        public IDataView? ValidationSet;

        /// <summary>Without a <see cref="ValidationSet"/>: the fraction in [0, 1) of the training rows held out (at random) for validation. Default 0.</summary>
        public double ValidationFraction;

        /// <summary>Stop when validation accuracy has not improved for this many epochs and keep the best epoch's weights; 0 (the default) = off.</summary>
        public int EarlyStoppingPatience;

        /// <summary>Receives the metrics of each epoch, or null. Called on the training thread (not the caller of Fit).</summary>
        public Action<DecorrelatedImageClassificationMetrics>? MetricsCallback;

        /// <summary>
        /// A file to write a checkpoint to after every epoch (through a temporary file renamed into place); null for none.
        /// </summary>
        public string? CheckpointPath;

        /// <summary>Continue from <see cref="CheckpointPath"/> when it exists, ending as an uninterrupted run would (CPU, same seed).</summary>
        public bool ResumeFromCheckpoint;

        /// <summary>
        /// A folder to keep the decoded images in (subfolders <c>train</c> and <c>validation</c>) and reuse in later Fits on
        /// the same data, skipping the decoding; null (the default) decodes into a temporary folder deleted after Fit. A
        /// cache is reused only when a fingerprint of the data (every row's labels, paths and other scalar columns, the
        /// image shape and the feature column) matches and 16 re-decoded images equal the cached ones; otherwise it is
        /// rebuilt. Delete the folder when image files change in place under the same names.
        /// </summary>
        public string? CacheDirectory;

        /// <summary>Receives the progress of the pass that decodes the images into the cache (every 64 images), or null.</summary>
        public Action<DecorrelatedImageClassificationDecodingProgress>? DecodingProgressCallback;

        /// <summary>
        /// How many times to recover from divergence (a non-finite loss or decorrelation matrix) by rolling back to
        /// the start of the epoch and halving the learning rates; 0 (the default) fails at the first divergence.
        /// </summary>
        public int DivergenceRetries;

        /// <summary>Receives the progress of every training step (for progress bars), or null. Called on the training thread (not the caller of Fit).</summary>
        public Action<DecorrelatedImageClassificationProgress>? ProgressCallback;

        /// <summary>Seed of weights, batch order and sampling; null = the MLContext's seed (random when it has none).</summary>
        public int? Seed;

        /// <summary>
        /// Whether convolutions may use oneDNN on the CPU while training. Default <see cref="OneDnnMode.Auto"/>: on, except
        /// on CPUs that hide their cache sizes, where oneDNN's kernels crash the process (the log says when this applies),
        /// or as the environment variable <c>DECORRELATION_ONEDNN</c> (on/off/auto) says. Scoring always follows Auto.
        /// </summary>
        public OneDnnMode OneDnn = OneDnnMode.Auto;
    }

    private readonly IHost _host;
    private readonly Options _options;

    internal DecorrelatedImageClassificationTrainer(IHostEnvironment environment, Options options)
    {
        Contracts.CheckValue(environment, nameof(environment));
        _host = environment.Register(nameof(DecorrelatedImageClassificationTrainer));
        _host.CheckValue(options, nameof(options));
        Validate(options);
        _options = options;
    }

    /// <summary>The trainer's options (the object given at construction).</summary>
    public Options TrainerOptions => _options;

    /// <summary>The input schema plus <c>Score</c> (float vector) and <c>PredictedLabel</c> (key).</summary>
    /// <exception cref="ArgumentOutOfRangeException">The label or feature column is missing or has an unusable type.</exception>
    public SchemaShape GetOutputSchema(SchemaShape inputSchema)
    {
        _host.CheckValue(inputSchema, nameof(inputSchema));
        if (!inputSchema.TryFindColumn(_options.LabelColumnName, out var label))
            throw new ArgumentOutOfRangeException(nameof(inputSchema), $"Label column '{_options.LabelColumnName}' was not found in the input.");
        // The same rule as Fit: a scalar key of uint, which MapValueToKey produces.
        if (!label.IsKey || label.Kind != SchemaShape.Column.VectorKind.Scalar || label.ItemType.RawType != typeof(uint))
            throw new ArgumentOutOfRangeException(nameof(inputSchema),
                $"Label column '{_options.LabelColumnName}' must be a key (use mlContext.Transforms.Conversion.MapValueToKey); it is {label.ItemType} ({label.Kind}).");
        if (!inputSchema.TryFindColumn(_options.FeatureColumnName, out var feature))
            throw new ArgumentOutOfRangeException(nameof(inputSchema), $"Feature column '{_options.FeatureColumnName}' was not found in the input.");
        ImageInput.CheckShape(feature);

        var columns = inputSchema.ToDictionary(c => c.Name);
        var scoreAnnotations = new List<SchemaShape.Column>
        {
            MLNetInternals.ShapeColumn(MLNetInternals.AnnotationKinds.ScoreColumnKind, SchemaShape.Column.VectorKind.Scalar, TextDataViewType.Instance, false),
            MLNetInternals.ShapeColumn(MLNetInternals.AnnotationKinds.ScoreValueKind, SchemaShape.Column.VectorKind.Scalar, TextDataViewType.Instance, false),
            MLNetInternals.ShapeColumn(MLNetInternals.AnnotationKinds.ScoreColumnSetId, SchemaShape.Column.VectorKind.Scalar, NumberDataViewType.UInt32, true),
        };
        var labelAnnotations = new List<SchemaShape.Column>(scoreAnnotations);
        if (label.Annotations.TryFindColumn(MLNetInternals.AnnotationKinds.KeyValues, out var keyValues))
        {
            scoreAnnotations.Add(MLNetInternals.ShapeColumn(MLNetInternals.AnnotationKinds.SlotNames, SchemaShape.Column.VectorKind.Vector, TextDataViewType.Instance, false));
            labelAnnotations.Add(MLNetInternals.ShapeColumn(MLNetInternals.AnnotationKinds.KeyValues, SchemaShape.Column.VectorKind.Vector, LabelKeyValues.StoredType(keyValues.ItemType), false));
        }
        columns[_options.ScoreColumnName] = MLNetInternals.ShapeColumn(_options.ScoreColumnName, SchemaShape.Column.VectorKind.Vector,
            NumberDataViewType.Single, false, new SchemaShape(scoreAnnotations));
        columns[_options.PredictedLabelColumnName] = MLNetInternals.ShapeColumn(_options.PredictedLabelColumnName, SchemaShape.Column.VectorKind.Scalar,
            NumberDataViewType.UInt32, true, new SchemaShape(labelAnnotations));
        return new SchemaShape(columns.Values);
    }

    /// <summary>Trains the network on <paramref name="input"/> and returns the fitted transformer.</summary>
    /// <exception cref="ArgumentOutOfRangeException">A column is missing or has an unusable type.</exception>
    /// <exception cref="ArgumentException">The data cannot train a classifier (no usable rows, a single class).</exception>
    /// <exception cref="TrainingDivergedException">Training produced a non-finite loss or decorrelation matrix.</exception>
    /// <exception cref="OperationCanceledException"><c>mlContext.CancelExecution()</c> was called.</exception>
    /// <exception cref="PlatformNotSupportedException">TorchSharp's native backend cannot load here; the message says why.</exception>
    public DecorrelatedImageClassificationTransformer Fit(IDataView input)
    {
        _host.CheckValue(input, nameof(input));
        Torch.TorchSharpNativeLoader.EnsureLoaded();
        var options = _options;
        var labelColumn = input.Schema.GetColumnOrNull(options.LabelColumnName)
            ?? throw new ArgumentOutOfRangeException(nameof(input), $"Label column '{options.LabelColumnName}' was not found in the input.");
        if (labelColumn.Type is not KeyDataViewType keyType || keyType.RawType != typeof(uint))
            throw new ArgumentOutOfRangeException(nameof(input),
                $"Label column '{options.LabelColumnName}' must be a key (use mlContext.Transforms.Conversion.MapValueToKey); it is {labelColumn.Type}.");
        if (keyType.Count < 2 || keyType.Count > int.MaxValue)
            throw new ArgumentException($"Label column '{options.LabelColumnName}' has {keyType.Count} classes; a classifier needs at least 2.", nameof(input));
        int classCount = (int)keyType.Count;
        var featureColumn = input.Schema.GetColumnOrNull(options.FeatureColumnName)
            ?? throw new ArgumentOutOfRangeException(nameof(input), $"Feature column '{options.FeatureColumnName}' was not found in the input.");
        var imageInput = ImageInput.Create(input, featureColumn, options.ImageChannels, options.ImageHeight, options.ImageWidth);
        CheckArchitectureFits(imageInput.Shape);
        var keyValues = LabelKeyValues.Read(labelColumn, classCount);

        using var channel = _host.Start(nameof(DecorrelatedImageClassificationTrainer));
        void CheckAlive() => MLNetInternals.CheckAlive(_host);

        // One seed for everything random in this run: the held-out rows, the weights, the batch order, the samples.
        int seed = options.Seed ?? MLNetInternals.GetSeed(_host) ?? Random.Shared.Next();
        // The network first: pretrained weights that do not fit fail before the images are decoded.
        var imageNetStatistics = Standardization(options) == PixelStandardization.ImageNet ? ImageNetStatistics(imageInput.Shape.Channels) : default;
        var (gpu, fallback) = MLNetInternals.GetDeviceRequest(_host);
        var device = TorchDevices.Select(gpu, fallback);
        var trainingOptions = EngineOptions(options, seed, device);
        var world = trainingOptions.Communicator;
        bool leader = (world?.Rank ?? 0) == 0;
        if (world is not null)
            channel.Info($"Data-parallel training: rank {world.Rank} of {world.Size} ({(world as Torch.Distributed.MpiCommunicator)?.Library ?? "MPI"}); " +
                         $"each rank takes {options.BatchSize / Math.Max(1, world.Size)} images of every batch of {options.BatchSize}.");
        var (network, stem) = CreateNetwork(imageInput.Shape, classCount, trainingOptions, channel);
        try
        {
            var clock = Stopwatch.StartNew();
            var (train, skipped) = ReadImages(input, imageInput, classCount, "train", channel, CheckAlive);
            using var trainData = train;
            if (skipped > 0)
                channel.Warning($"Skipped {skipped} training rows whose label '{options.LabelColumnName}' is missing.");
            if (train.Count == 0)
                throw new ArgumentException($"The training data has no row with a label in '{options.LabelColumnName}'.", nameof(input));
            channel.Info($"Decoded {train.Count} training images of {imageInput.Shape} in {clock.Elapsed.TotalSeconds:F1} s into a " +
                         $"{(train.StoresBytes ? "byte" : "float32")} cache in '{train.Folder}'.");

            var (trainSet, validation, mean, deviation) = SplitValidation(input, imageInput, classCount, keyValues, trainData, seed, channel, CheckAlive,
                out var validationCache);
            using var validationData = validationCache;
            for (int c = 0; c < deviation.Length; c++)
                deviation[c] = deviation[c] > 1e-6f && float.IsFinite(deviation[c]) ? deviation[c] : 1f;

            if (imageNetStatistics.Mean is not null)
            {
                (mean, deviation) = imageNetStatistics;
                channel.Info($"Standardising pixels with ImageNet's per-channel mean ({string.Join(", ", mean)}) and standard deviation ({string.Join(", ", deviation)}).");
            }
            trainData.Standardize(mean, deviation);
            validationCache?.Standardize(mean, deviation);
            channel.Info($"Training {options.Architecture} with {(options.UseDecorrelation ? "decorrelated backpropagation" : "backpropagation")} " +
                         $"on {device.type}, {trainSet.Count} images, {classCount} classes, {options.MaxEpoch} epochs, seed {trainingOptions.Seed}" +
                         (options.HeadOnlyEpochs > 0 ? $", the classifier only for {Math.Min(options.HeadOnlyEpochs, options.MaxEpoch)} epoch(s)" : "") +
                         (options.BackboneLearningRateScale != 1 ? $", backbone learning rate ×{options.BackboneLearningRateScale}" : "") + ".");
            new NetworkTrainer(trainingOptions).Train(network, trainSet, validation,
                onMetrics: m =>
                {
                    var metrics = new DecorrelatedImageClassificationMetrics
                    {
                        Epoch = m.Epoch,
                        TrainLoss = m.TrainLoss,
                        TrainAccuracy = m.TrainAccuracy,
                        ValidationAccuracy = m.TestAccuracy,
                        ValidationMacroAccuracy = m.TestMacroAccuracy,
                        ValidationLoss = m.TestLoss,
                        LearningRate = m.LearningRate,
                        DecorrelationLearningRate = m.DecorrelationLearningRate,
                        CappedUpdateFraction = m.CappedUpdateFraction,
                        Seconds = m.TrainingSeconds,
                        DecorrelationLoss = m.DecorrelationLoss.Count == 0 ? null : m.DecorrelationLoss.Values.Average(),
                        LayerDecorrelationLoss = m.DecorrelationLoss,
                    };
                    if (leader)
                        channel.Info(metrics.ToString());
                    options.MetricsCallback?.Invoke(metrics);
                },
                onStep: step =>
                {
                    CheckAlive();
                    options.ProgressCallback?.Invoke(new DecorrelatedImageClassificationProgress(step.Epoch, step.Batch, step.BatchesPerEpoch, step.Loss, step.TrainingSeconds));
                },
                onWarning: message => channel.Warning(message));
            var plain = options.UseDecorrelation ? NetworkConversion.ToPlain(network) : network;
            if (!ReferenceEquals(plain, network))
                network.Dispose();
            network = plain;
            var model = new ImageClassifierNetwork(network, options.Architecture, stem, imageInput.Shape, classCount, mean, deviation, device);
            return new DecorrelatedImageClassificationTransformer(_host, model, imageInput, options.LabelColumnName, options.ScoreColumnName,
                options.PredictedLabelColumnName, keyValues);
        }
        catch
        {
            network.Dispose();
            throw;
        }
    }

    /// <summary>Decodes <paramref name="data"/> into an image cache: temporary, or the <paramref name="part"/> folder of <see cref="Options.CacheDirectory"/>.</summary>
    private (ImageCache Images, long SkippedRows) ReadImages(IDataView data, ImageInput imageInput, int classCount, string part, IChannel channel, Action checkAlive)
        => TrainingDataReader.Read(data, imageInput, _options.LabelColumnName, classCount, checkAlive,
            _options.CacheDirectory is { } cacheDirectory ? Path.Combine(cacheDirectory, part) : null, channel.Info, channel.Warning, _options.DecodingProgressCallback);

    /// <summary>
    /// Splits the run's images: the validation images (the ValidationSet, decoded into <paramref name="validationCache"/>
    /// which the caller disposes; rows held out of <paramref name="train"/>; or none) and the images to train on, with
    /// the per-channel statistics of the latter (from the decoding pass, or one pass over the kept rows).
    /// </summary>
    private (IImageSource Train, IImageSource? Validation, float[] Mean, float[] Deviation) SplitValidation(IDataView input, ImageInput imageInput,
        int classCount, LabelKeyValues? keyValues, ImageCache train, int seed, IChannel channel, Action checkAlive, out ImageCache? validationCache)
    {
        var options = _options;
        validationCache = null;
        if (options.ValidationSet is { } validationSet)
        {
            var label = validationSet.Schema.GetColumnOrNull(options.LabelColumnName);
            if (label?.Type is not KeyDataViewType key || key.RawType != typeof(uint) || key.Count != (ulong)classCount)
                throw new ArgumentOutOfRangeException(nameof(options.ValidationSet),
                    $"The validation set's label column '{options.LabelColumnName}' must be a key of {classCount} classes, like the training data's; it is {label?.Type.ToString() ?? "missing"}.");
            var validationKeys = LabelKeyValues.Read(label.Value, classCount);
            if ((keyValues is null) != (validationKeys is null) || (keyValues is not null && !keyValues.SameAs(validationKeys!)))
                throw new ArgumentOutOfRangeException(nameof(options.ValidationSet),
                    $"The validation set's label column '{options.LabelColumnName}' maps keys to other values than the training data's " +
                    $"(training: {Describe(keyValues)}; validation: {Describe(validationKeys)}): key k must mean the same class in both. " +
                    "Transform both with the same fitted MapValueToKey.");
            var (validation, skipped) = ReadImages(validationSet, imageInput, classCount, "validation", channel, checkAlive);
            validationCache = validation;
            if (skipped > 0)
                channel.Warning($"Skipped {skipped} validation rows whose label is missing.");
            var (mean, deviation) = train.ChannelStatistics();
            return (train, validation, mean, deviation);
        }
        if (options.ValidationFraction > 0)
        {
            long held = (long)Math.Round(train.Count * options.ValidationFraction);
            if (held < 1 || held >= train.Count)
                throw new ArgumentOutOfRangeException(nameof(options.ValidationFraction), options.ValidationFraction,
                    $"A validation fraction of {options.ValidationFraction} of {train.Count} rows leaves no validation or no training rows.");
            long[] order;
            using (var generator = new Generator(unchecked((ulong)seed), CPU))
            using (var permutation = randperm(train.Count, generator: generator))
                order = permutation.data<long>().ToArray();
            var kept = order[(int)held..];
            channel.Info($"Holding out {held} of {train.Count} training images for validation.");
            var (mean, deviation) = train.ChannelStatistics(kept);
            return (train.Subset(kept), train.Subset(order[..(int)held]), mean, deviation);
        }
        if (options.EarlyStoppingPatience > 0)
            throw new ArgumentOutOfRangeException(nameof(options.EarlyStoppingPatience), options.EarlyStoppingPatience,
                "Early stopping needs a ValidationSet or a ValidationFraction above 0.");
        var (allMean, allDeviation) = train.ChannelStatistics();
        return (train, null, allMean, allDeviation);
    }

    /// <summary>
    /// Builds the network (with <see cref="NetworkTrainer.CreateNetwork"/>: seeded, decorrelated for DBP), from the pretrained
    /// weights when <see cref="Options.PretrainedWeightsPath"/> names some; returns it with its ResNet stem.
    /// </summary>
    private (TorchSharp.torch.nn.Module<Tensor, Tensor> Network, Torch.Architectures.ResNetStem? Stem) CreateNetwork(ImageShape shape, int classCount,
        TrainingOptions trainingOptions, IChannel channel)
    {
        var options = _options;
        if (options.PretrainedWeightsPath is not { } path)
        {
            var defaultStem = options.Architecture == CnnArchitecture.SmallCnn ? null : options.Stem ?? ImageClassifierNetwork.DefaultStem(options.Architecture, shape);
            return (NetworkTrainer.CreateNetwork(d => ImageClassifierNetwork.Build(options.Architecture, defaultStem, shape, classCount, d),
                trainingOptions, options.UseDecorrelation), defaultStem);
        }
        var weights = Torch.Pretrained.StateDictFile.Read(path);
        try
        {
            var info = Torch.Pretrained.PretrainedWeights.Inspect(weights);
            // The weights' stem (torchvision's: ImageNet), whatever the image size.
            var stem = options.Architecture == CnnArchitecture.SmallCnn ? null : options.Stem ?? info.Stem ?? ImageClassifierNetwork.DefaultStem(options.Architecture, shape);
            channel.Info($"Starting from the pretrained weights '{path}': a {info.Description}" +
                         (stem is { } s ? $"; the {(s == Torch.Architectures.ResNetStem.ImageNet ? "ImageNet" : "small-image")} stem." : "."));
            var network = NetworkTrainer.CreateNetwork(d =>
            {
                var plain = ImageClassifierNetwork.Build(options.Architecture, stem, shape, classCount, d);
                try
                {
                    foreach (var note in Torch.Pretrained.PretrainedWeights.Load(plain, weights, path, replaceClassifier: !options.KeepPretrainedClassifier))
                        channel.Info(note);
                    return plain;
                }
                catch
                {
                    plain.Dispose();
                    throw;
                }
            }, trainingOptions, options.UseDecorrelation);
            return (network, stem);
        }
        catch (InvalidDataException e)
        {
            throw new ArgumentException($"Option {nameof(Options.PretrainedWeightsPath)}: {e.Message}", nameof(Options.PretrainedWeightsPath), e);
        }
        finally
        {
            foreach (var tensor in weights.Values)
                tensor.Dispose();
        }
    }

    /// <summary>The MPI world to train in, or null to train alone (<see cref="Options.DataParallel"/>).</summary>
    private static Torch.Distributed.ICollectiveCommunicator? Communicator(DataParallelMode mode) => mode switch
    {
        DataParallelMode.Enabled => Torch.Distributed.MpiCommunicator.World,
        DataParallelMode.Auto when Torch.Distributed.MpiCommunicator.LaunchedByMpi => Torch.Distributed.MpiCommunicator.World,
        _ => null,
    };

    private static PixelStandardization Standardization(Options options)
        => options.Standardization ?? (options.PretrainedWeightsPath is null ? PixelStandardization.TrainingSet : PixelStandardization.ImageNet);

    /// <summary>
    /// ImageNet's per-channel mean and standard deviation on the 0–255 scale (torchvision's 0.485/0.456/0.406 and
    /// 0.229/0.224/0.225); for one channel, their averages (a gray image is fed as R = G = B).
    /// </summary>
    internal static (float[] Mean, float[] Deviation) ImageNetStatistics(int channels)
    {
        float[] mean = [0.485f * 255, 0.456f * 255, 0.406f * 255];
        float[] deviation = [0.229f * 255, 0.224f * 255, 0.225f * 255];
        return channels switch
        {
            3 => (mean, deviation),
            1 => ([mean.Average()], [deviation.Average()]),
            _ => throw new ArgumentOutOfRangeException(nameof(Options.Standardization), channels,
                $"ImageNet standardisation needs 1 or 3 image channels, not {channels}; use {nameof(PixelStandardization)}.{nameof(PixelStandardization.TrainingSet)}."),
        };
    }

    private void CheckArchitectureFits(ImageShape shape)
    {
        long minimum = _options.Architecture == CnnArchitecture.SmallCnn ? Torch.Architectures.NetworkBuilder.SmallCnnMinimumSize : 1;
        if (shape.Height < minimum || shape.Width < minimum)
            throw new ArgumentOutOfRangeException(nameof(Options.Architecture),
                $"{_options.Architecture} needs images of at least {minimum}×{minimum} pixels; column '{_options.FeatureColumnName}' holds {shape.Width}×{shape.Height}.");
    }

    /// <summary>The engine's options for a run of the trainer's <paramref name="options"/>: the one mapping of the trainer's settings.</summary>
    internal static TrainingOptions EngineOptions(Options options, int seed, TorchSharp.torch.Device device)
        => new()
        {
            Epochs = options.MaxEpoch,
            BatchSize = options.BatchSize,
            LearningRate = options.LearningRate,
            WeightDecay = options.WeightDecay,
            Schedule = options.LearningRateSchedule,
            RandomCropPadding = options.RandomCropPadding,
            RandomHorizontalFlip = options.RandomHorizontalFlip,
            EarlyStoppingPatience = options.EarlyStoppingPatience,
            CheckpointPath = options.CheckpointPath,
            ResumeFromCheckpoint = options.ResumeFromCheckpoint,
            DivergenceRetries = options.DivergenceRetries,
            OneDnn = options.OneDnn,
            HeadOnlyEpochs = options.HeadOnlyEpochs,
            Communicator = Communicator(options.DataParallel),
            BackboneLearningRateScale = options.BackboneLearningRateScale,
            Seed = seed,
            Device = device,
            Decorrelation = new DecorrelationOptions
            {
                LearningRate = options.DecorrelationLearningRate,
                Kappa = options.Kappa,
                ConvolutionSampleFraction = options.DecorrelationSampleFraction,
                UpdateInterval = options.DecorrelationUpdateInterval,
                MaxInputSize = options.DecorrelationMaxInputSize == 0 ? null : options.DecorrelationMaxInputSize,
                MaxBlockSize = options.DecorrelationMaxBlockSize == 0 ? null : options.DecorrelationMaxBlockSize,
            },
        };

    private static string Describe(LabelKeyValues? values)
        => values is null ? "no key values" : string.Join(", ", values.AsText().Take(6)) + (values.Count > 6 ? ", …" : "");

    private static void Validate(Options options)
    {
        static void Check(bool ok, string name, object value, string rule)
        {
            if (!ok)
                throw new ArgumentOutOfRangeException(name, value, $"Option {name} = {value}: {rule}");
        }
        foreach (var (name, value) in new[] { (nameof(Options.LabelColumnName), options.LabelColumnName), (nameof(Options.FeatureColumnName), options.FeatureColumnName),
                     (nameof(Options.ScoreColumnName), options.ScoreColumnName), (nameof(Options.PredictedLabelColumnName), options.PredictedLabelColumnName) })
            Check(!string.IsNullOrWhiteSpace(value), name, value ?? "null", "a column name must not be empty.");
        Check(Enum.IsDefined(options.Architecture), nameof(Options.Architecture), options.Architecture, "unknown architecture.");
        Check(options.ImageChannels >= 0 && options.ImageHeight >= 0 && options.ImageWidth >= 0, nameof(Options.ImageChannels),
            $"{options.ImageChannels}×{options.ImageHeight}×{options.ImageWidth}", "image sizes must not be negative (0 = infer).");
        Check(options.MaxEpoch >= 1, nameof(Options.MaxEpoch), options.MaxEpoch, "must be at least 1.");
        Check(options.BatchSize >= 1, nameof(Options.BatchSize), options.BatchSize, "must be at least 1.");
        Check(options.LearningRate > 0 && double.IsFinite(options.LearningRate), nameof(Options.LearningRate), options.LearningRate, "must be positive and finite.");
        Check(options.WeightDecay >= 0 && double.IsFinite(options.WeightDecay), nameof(Options.WeightDecay), options.WeightDecay, "must be non-negative and finite.");
        Check(options.RandomCropPadding >= 0, nameof(Options.RandomCropPadding), options.RandomCropPadding, "must not be negative (0 = off).");
        Check(options.DecorrelationLearningRate > 0 && double.IsFinite(options.DecorrelationLearningRate), nameof(Options.DecorrelationLearningRate),
            options.DecorrelationLearningRate, "must be positive and finite.");
        Check(options.Kappa >= 0 && options.Kappa <= 1, nameof(Options.Kappa), options.Kappa, "must lie in [0, 1].");
        Check(options.DecorrelationSampleFraction > 0 && options.DecorrelationSampleFraction <= 1, nameof(Options.DecorrelationSampleFraction),
            options.DecorrelationSampleFraction, "must lie in (0, 1].");
        Check(options.DecorrelationMaxInputSize >= 0, nameof(Options.DecorrelationMaxInputSize), options.DecorrelationMaxInputSize, "must not be negative (0 = every layer).");
        Check(options.DecorrelationMaxBlockSize >= 0, nameof(Options.DecorrelationMaxBlockSize), options.DecorrelationMaxBlockSize, "must not be negative (0 = full matrices).");
        Check(options.DecorrelationUpdateInterval >= 1, nameof(Options.DecorrelationUpdateInterval), options.DecorrelationUpdateInterval, "must be at least 1.");
        Check(options.ValidationFraction >= 0 && options.ValidationFraction < 1, nameof(Options.ValidationFraction), options.ValidationFraction, "must lie in [0, 1).");
        Check(options.EarlyStoppingPatience >= 0, nameof(Options.EarlyStoppingPatience), options.EarlyStoppingPatience, "must not be negative.");
        Check(options.DivergenceRetries >= 0, nameof(Options.DivergenceRetries), options.DivergenceRetries, "must not be negative.");
        Check(options.CacheDirectory is null || !string.IsNullOrWhiteSpace(options.CacheDirectory), nameof(Options.CacheDirectory), options.CacheDirectory ?? "",
            "must name a folder, or be null for a temporary cache.");
        Check(!options.ResumeFromCheckpoint || !string.IsNullOrWhiteSpace(options.CheckpointPath), nameof(Options.ResumeFromCheckpoint), options.ResumeFromCheckpoint,
            "needs a CheckpointPath.");
        Check(Enum.IsDefined(options.LearningRateSchedule), nameof(Options.LearningRateSchedule), options.LearningRateSchedule, "unknown schedule.");
        Check(Enum.IsDefined(options.OneDnn), nameof(Options.OneDnn), options.OneDnn, "unknown oneDNN mode.");
        Check(options.PretrainedWeightsPath is null || File.Exists(options.PretrainedWeightsPath), nameof(Options.PretrainedWeightsPath),
            options.PretrainedWeightsPath ?? "", "the file does not exist.");
        Check(options.Standardization is null || Enum.IsDefined(options.Standardization.Value), nameof(Options.Standardization), options.Standardization!, "unknown standardisation.");
        Check(options.Stem is null || Enum.IsDefined(options.Stem.Value), nameof(Options.Stem), options.Stem!, "unknown stem.");
        Check(Enum.IsDefined(options.DataParallel), nameof(Options.DataParallel), options.DataParallel, "unknown data-parallel mode.");
        Check(options.HeadOnlyEpochs >= 0, nameof(Options.HeadOnlyEpochs), options.HeadOnlyEpochs, "must not be negative (0 = train every layer).");
        Check(options.BackboneLearningRateScale > 0 && options.BackboneLearningRateScale <= 1, nameof(Options.BackboneLearningRateScale),
            options.BackboneLearningRateScale, "must lie in (0, 1].");
    }
}
