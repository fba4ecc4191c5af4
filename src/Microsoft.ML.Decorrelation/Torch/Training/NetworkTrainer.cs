using System.Diagnostics;
using Microsoft.ML.Decorrelation.Torch.Data;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Decorrelation.Torch.Training;

/// <summary>
/// Trains an image classifier with cross-entropy, by plain backpropagation or by decorrelated
/// backpropagation (when the network contains <see cref="DecorrelatedLayer"/>s). Independent of ML.NET.
/// </summary>
public sealed class NetworkTrainer
{
    private readonly TrainingOptions _options;

    /// <summary>Creates a trainer; the options are copied and validated.</summary>
    /// <exception cref="ArgumentOutOfRangeException">An option is out of range (its name is given).</exception>
    public NetworkTrainer(TrainingOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        _options = options.Clone();
        _options.Validate();
    }

    /// <summary>The options in use.</summary>
    public TrainingOptions Options => _options.Clone();

    /// <summary>
    /// Builds the plain network with Torch's global generator seeded by <see cref="TrainingOptions.Seed"/> and, when
    /// <paramref name="decorrelated"/> is set, converts it to its decorrelated twin. The same seed therefore
    /// gives backprop and DBP identical initial weights.
    /// </summary>
    /// <remarks>
    /// Modules draw their initial weights from the global generator, so building holds a process-wide lock and
    /// gives the generator back its previous state afterwards: concurrent builds get their own seeds' weights and
    /// the caller's random stream is unchanged.
    /// </remarks>
    /// <param name="buildPlain">Builds the plain network on the given device.</param>
    /// <param name="options">Supplies the seed, the device and the decorrelation options.</param>
    /// <param name="decorrelated">Whether to return the decorrelated twin.</param>
    public static nn.Module<Tensor, Tensor> CreateNetwork(Func<Device, nn.Module<Tensor, Tensor>> buildPlain, TrainingOptions options, bool decorrelated)
    {
        ArgumentNullException.ThrowIfNull(buildPlain);
        ArgumentNullException.ThrowIfNull(options);
        TorchSharpNativeLoader.EnsureLoaded();
        lock (GlobalGeneratorLock)
        {
            using var live = random.get_rng_state();
            using var callersState = live.clone();   // the tensor TorchSharp returns follows the generator
            try
            {
                random.manual_seed(options.Seed);
                var plain = buildPlain(options.Device);
                if (!decorrelated)
                    return plain;
                // Converting builds layers too, whose constructors draw initial weights that are then overwritten.
                using (plain)
                    return NetworkConversion.ToDecorrelated(plain, options.Decorrelation ?? new DecorrelationOptions());
            }
            finally
            {
                random.set_rng_state(callersState);
            }
        }
    }

    /// <summary>Serialises the uses of Torch's global generator that must not interleave (network initialisation).</summary>
    internal static readonly object GlobalGeneratorLock = new();

    /// <summary>
    /// Prepares <paramref name="network"/> for step-by-step training: applies the native allocator tuning
    /// and thread count, the decorrelation options to its layers, and creates its optimizer.
    /// </summary>
    /// <param name="network">The network, on <see cref="TrainingOptions.Device"/>.</param>
    /// <param name="stepsPerEpoch">Steps in one epoch, for the learning-rate schedule.</param>
    public TrainingSession CreateSession(nn.Module<Tensor, Tensor> network, int stepsPerEpoch)
    {
        ArgumentNullException.ThrowIfNull(network);
        ArgumentOutOfRangeException.ThrowIfLessThan(stepsPerEpoch, 1);
        if (_options.TuneNativeAllocator)
            NativeAllocatorTuning.Apply();
        return new TrainingSession(network, _options, stepsPerEpoch);
    }

    /// <summary>Trains <paramref name="network"/> in place on <paramref name="train"/>.</summary>
    /// <param name="network">The network, on <see cref="TrainingOptions.Device"/>.</param>
    /// <param name="train">The training images.</param>
    /// <param name="test">Images to measure accuracy on at each evaluation point, or null.</param>
    /// <param name="onMetrics">Receives the metrics at each evaluation point, or null.</param>
    /// <param name="onStep">Receives the progress of each step, or null.</param>
    /// <param name="cancellation">Stops training before the next step; the network keeps the weights reached.</param>
    /// <param name="onWarning">Receives notices: a resumed checkpoint, a recovered divergence. Or null.</param>
    /// <returns>The metrics of every evaluation point (for a resumed run, those of the earlier epochs too).</returns>
    /// <exception cref="TrainingDivergedException">The loss or a decorrelation matrix turned non-finite (after the allowed retries).</exception>
    /// <exception cref="OperationCanceledException"><paramref name="cancellation"/> was triggered.</exception>
    /// <exception cref="InvalidDataException">The checkpoint to resume from is damaged or belongs to another network.</exception>
    public IReadOnlyList<TrainingMetrics> Train(nn.Module<Tensor, Tensor> network, IImageSource train, IImageSource? test = null,
        Action<TrainingMetrics>? onMetrics = null, Action<StepProgress>? onStep = null, CancellationToken cancellation = default,
        Action<string>? onWarning = null)
    {
        ArgumentNullException.ThrowIfNull(network);
        ArgumentNullException.ThrowIfNull(train);
        if (train.Count == 0)
            throw new ArgumentException("The training set is empty.", nameof(train));
        if (_options.EarlyStoppingPatience > 0 && test is null)
            throw new ArgumentException("Early stopping needs a test (validation) set to measure accuracy on.", nameof(test));
        return _options.FlushDenormals
            ? DenormalFlushing.Run(() => TrainOnThisThread(network, train, test, onMetrics, onStep, cancellation, onWarning))
            : TrainOnThisThread(network, train, test, onMetrics, onStep, cancellation, onWarning);
    }

    private IReadOnlyList<TrainingMetrics> TrainOnThisThread(nn.Module<Tensor, Tensor> network, IImageSource train, IImageSource? test,
        Action<TrainingMetrics>? onMetrics, Action<StepProgress>? onStep, CancellationToken cancellation, Action<string>? onWarning)
    {
        var options = _options;
        int batchesPerEpoch = StepsPerEpoch(train.Count, options.BatchSize, options.Communicator?.Size ?? 1);
        using var session = CreateSession(network, batchesPerEpoch);
        if (!session.OneDnn.UseOneDnn)
            onWarning?.Invoke(session.OneDnn.Reason + ".");
        foreach (var layer in session.Decorrelation.Layers.Where(l => l.BlockLayoutNote is not null))
            onWarning?.Invoke($"Layer '{layer.DisplayName}': {layer.BlockLayoutNote}.");
        var run = new RunState(session, new BestWeights(network));
        using var best = run.Best;
        if (options.ResumeFromCheckpoint && File.Exists(options.CheckpointPath))
        {
            using var file = File.OpenRead(options.CheckpointPath!);
            run.Load(file);
            onWarning?.Invoke($"Resumed from the checkpoint '{options.CheckpointPath}' after epoch {run.CompletedEpochs}.");
        }
        var evaluationSteps = EvaluationSteps(batchesPerEpoch, options.EvaluationsPerEpoch);
        byte[]? lastGood = options.DivergenceRetries > 0 ? run.Serialize() : null;
        int retriesLeft = options.DivergenceRetries;
        while (run.CompletedEpochs < options.Epochs && !run.Stopped)
        {
            int epoch = run.CompletedEpochs + 1;
            try
            {
                TrainEpoch(run, epoch, train, test, evaluationSteps, onMetrics, onStep, cancellation);
            }
            catch (TrainingDivergedException e) when (retriesLeft > 0 && lastGood is not null)
            {
                retriesLeft--;
                double scale = session.LearningRateScale / 2;
                using (var state = new MemoryStream(lastGood))
                    run.Load(state);
                session.LearningRateScale = scale;
                onWarning?.Invoke($"{e.Message} Rolled back to the start of epoch {epoch} and halved the learning rates (now ×{session.LearningRateScale}); {retriesLeft} retries left.");
                continue;
            }
            if (options.EarlyStoppingPatience > 0 && best.Offer(epoch, run.History[^1].TestAccuracy!.Value) && epoch - best.Epoch >= options.EarlyStoppingPatience)
                run.Stopped = true;
            if (lastGood is null && options.CheckpointPath is null)
                continue;
            var endOfEpoch = run.Serialize();
            if (lastGood is not null)
                lastGood = endOfEpoch;
            if (options.CheckpointPath is { } path && (options.Communicator?.Rank ?? 0) == 0)
                WriteAtomically(path, endOfEpoch);
        }
        if (options.EarlyStoppingPatience > 0)
            best.Restore();
        using (var scope = NewDisposeScope())
        {
            foreach (var (name, parameter) in network.named_parameters())
            {
                if (!isfinite(parameter).all().item<bool>())
                    throw new TrainingDivergedException($"Training ended with non-finite weights in '{name}'; the model is not usable.");
            }
        }
        return run.History;
    }

    private void TrainEpoch(RunState run, int epoch, IImageSource train, IImageSource? test, List<int> evaluationSteps,
        Action<TrainingMetrics>? onMetrics, Action<StepProgress>? onStep, CancellationToken cancellation)
    {
        var options = _options;
        var session = run.Session;
        int batchesPerEpoch = session.StepsPerEpoch;
        var permutation = EpochOrder(train.Count, options.Seed, epoch);
        int localBatchSize = options.BatchSize;
        if (options.Communicator is { Size: > 1 } world)
        {
            permutation = Shard(permutation, options.BatchSize, batchesPerEpoch, world.Rank, world.Size);
            localBatchSize = options.BatchSize / world.Size;
        }
        var augmentation = options.CreateAugmentation();
        var clock = new Stopwatch();
        double lossSum = 0;
        int lossCount = 0;
        long correct = 0, seen = 0;
        bool gpu = options.Device.type == DeviceType.CUDA;
        using var batches = new BatchPrefetcher(train, permutation, localBatchSize, pinMemory: gpu);
        for (int batch = 0; batch < batchesPerEpoch; batch++)
        {
            cancellation.ThrowIfCancellationRequested();
            clock.Start();
            double loss;
            var (batchImages, batchLabels) = batches.Next();
            using (batchImages)
            using (batchLabels)
            using (var scope = NewDisposeScope())
            {
                var images = augmentation.Apply(batchImages.to(options.Device, non_blocking: gpu), epoch, batch);
                loss = session.Step(images, batchLabels.to(options.Device, non_blocking: gpu));
            }
            clock.Stop();
            lossSum += loss;
            lossCount++;
            correct += session.LastStepCorrect;
            seen += session.LastStepSamples;
            double seconds = run.SecondsBefore + clock.Elapsed.TotalSeconds;
            onStep?.Invoke(new StepProgress(epoch, batch + 1, batchesPerEpoch, loss, seconds));

            int evaluationIndex = evaluationSteps.IndexOf(batch + 1);
            if (evaluationIndex < 0)
                continue;
            var measured = test is null ? default
                : Measure(session.Network, test, options.EvaluationBatchSize, options.Device, options.OneDnn);
            bool decorrelated = session.Decorrelation.Layers.Count > 0;
            var metrics = new TrainingMetrics
            {
                Epoch = epoch - 1 + (double)(evaluationIndex + 1) / evaluationSteps.Count,
                Step = session.StepCount,
                TrainLoss = lossSum / lossCount,
                TrainAccuracy = (double)correct / seen,
                TestAccuracy = test is null ? null : measured.Accuracy,
                TestMacroAccuracy = test is null ? null : measured.MacroAccuracy,
                TestLoss = test is null ? null : measured.Loss,
                TrainingSeconds = seconds,
                LearningRate = session.LearningRate,
                DecorrelationLearningRate = decorrelated ? session.Decorrelation.Layers[0].LearningRate : null,
                CappedUpdateFraction = decorrelated ? session.Decorrelation.TakeCappedFraction() : null,
                DecorrelationLoss = session.Decorrelation.TakeMeanLosses(),
            };
            lossSum = 0;
            lossCount = 0;
            correct = 0;
            seen = 0;
            run.History.Add(metrics);
            onMetrics?.Invoke(metrics);
        }
        run.SecondsBefore += clock.Elapsed.TotalSeconds;
        run.CompletedEpochs = epoch;
    }

    private static void WriteAtomically(string path, byte[] content)
    {
        string temporary = path + ".tmp";
        File.WriteAllBytes(temporary, content);
        File.Move(temporary, path, overwrite: true);
    }

    /// <summary>Everything a run needs to continue exactly where it was: what checkpoints and rollbacks save.</summary>
    private sealed class RunState(TrainingSession session, BestWeights best)
    {
        private const string Magic = "DBP-CHECKPOINT";
        private const int Version = 2;

        public TrainingSession Session { get; } = session;
        public BestWeights Best { get; } = best;
        public List<TrainingMetrics> History { get; private set; } = [];
        public int CompletedEpochs { get; set; }
        public double SecondsBefore { get; set; }
        public bool Stopped { get; set; }

        public byte[] Serialize()
        {
            using var stream = new MemoryStream();
            using (var writer = new BinaryWriter(stream, System.Text.Encoding.UTF8, leaveOpen: true))
            {
                writer.Write(Magic);
                writer.Write(Version);
                writer.Write(CompletedEpochs);
                writer.Write(SecondsBefore);
                writer.Write(System.Text.Json.JsonSerializer.Serialize(History));
                Session.SaveState(writer);
                Best.Save(writer);
            }
            return stream.ToArray();
        }

        public void Load(Stream stream)
        {
            using var reader = new BinaryReader(stream, System.Text.Encoding.UTF8, leaveOpen: true);
            try
            {
                if (reader.ReadString() != Magic || reader.ReadInt32() != Version)
                    throw new InvalidDataException("It is not a training checkpoint of this version.");
                CompletedEpochs = reader.ReadInt32();
                SecondsBefore = reader.ReadDouble();
                History = System.Text.Json.JsonSerializer.Deserialize<List<TrainingMetrics>>(reader.ReadString()) ?? [];
                Session.LoadState(reader);
                Best.Load(reader);
            }
            catch (Exception e) when (e is EndOfStreamException or System.Text.Json.JsonException or IOException)
            {
                throw new InvalidDataException($"The training checkpoint is damaged: {e.Message}", e);
            }
        }
    }

    /// <summary>A copy of the weights of the epoch with the best test accuracy, for early stopping.</summary>
    private sealed class BestWeights(nn.Module<Tensor, Tensor> network) : IDisposable
    {
        private Dictionary<string, Tensor>? _state;
        private double _accuracy = double.NegativeInfinity;

        public int Epoch { get; private set; }

        /// <summary>Keeps the weights if <paramref name="accuracy"/> is the best so far; returns whether it was not.</summary>
        public bool Offer(int epoch, double accuracy)
        {
            if (accuracy <= _accuracy)
                return true;
            Dispose();
            _accuracy = accuracy;
            Epoch = epoch;
            using var noGrad = no_grad();
            using var scope = NewDisposeScope();
            _state = network.state_dict().ToDictionary(entry => entry.Key, entry => entry.Value.detach().clone().DetachFromDisposeScope());
            return false;
        }

        public void Save(BinaryWriter writer)
        {
            writer.Write(_state is not null);
            if (_state is null)
                return;
            writer.Write(_accuracy);
            writer.Write(Epoch);
            writer.Write(_state.Count);
            foreach (var (name, tensor) in _state)
            {
                writer.Write(name);
                tensor.Save(writer);
            }
        }

        public void Load(BinaryReader reader)
        {
            Dispose();
            _accuracy = double.NegativeInfinity;
            Epoch = 0;
            if (!reader.ReadBoolean())
                return;
            _accuracy = reader.ReadDouble();
            Epoch = reader.ReadInt32();
            int count = reader.ReadInt32();
            var current = network.state_dict();
            _state = new Dictionary<string, Tensor>(count);
            using var scope = NewDisposeScope();
            for (int i = 0; i < count; i++)
            {
                string name = reader.ReadString();
                var tensor = current[name].detach().clone().DetachFromDisposeScope();
                tensor.Load(reader);
                _state[name] = tensor;
            }
        }

        public void Restore()
        {
            if (_state is null)
                return;
            using var noGrad = no_grad();
            using var scope = NewDisposeScope();
            var current = network.state_dict();
            foreach (var (name, value) in _state)
                current[name].copy_(value);
        }

        public void Dispose()
        {
            foreach (var tensor in _state?.Values ?? Enumerable.Empty<Tensor>())
                tensor.Dispose();
            _state = null;
        }
    }

    /// <summary>Accuracy of <paramref name="network"/> on <paramref name="data"/>, in eval mode and without gradients.</summary>
    /// <param name="network">The network; its training mode is restored afterwards.</param>
    /// <param name="data">The labelled images.</param>
    /// <param name="batchSize">Images per forward pass.</param>
    /// <param name="device">The network's device.</param>
    /// <param name="oneDnn">Whether convolutions may use oneDNN (<see cref="NativeKernelGuard"/>).</param>
    public static double Evaluate(nn.Module<Tensor, Tensor> network, IImageSource data, int batchSize, Device device, OneDnnMode oneDnn = OneDnnMode.Auto)
        => Measure(network, data, batchSize, device, oneDnn).Accuracy;

    /// <summary>
    /// Accuracy, macro-accuracy and mean cross-entropy of <paramref name="network"/> on <paramref name="data"/>, in eval
    /// mode and without gradients; all NaN for an empty set.
    /// </summary>
    /// <inheritdoc cref="Evaluate" path="/param"/>
    public static EvaluationMeasures Measure(nn.Module<Tensor, Tensor> network, IImageSource data, int batchSize, Device device, OneDnnMode oneDnn = OneDnnMode.Auto)
    {
        ArgumentNullException.ThrowIfNull(network);
        ArgumentNullException.ThrowIfNull(data);
        ArgumentOutOfRangeException.ThrowIfLessThan(batchSize, 1);
        if (data.Count == 0)
            return new EvaluationMeasures(double.NaN, double.NaN, double.NaN);
        using var kernels = NativeKernelGuard.Enter(oneDnn);
        bool wasTraining = network.training;
        network.eval();
        try
        {
            using var noGrad = no_grad();
            double lossSum = 0;
            var perClass = new Dictionary<long, (long Correct, long Count)>();
            for (long start = 0; start < data.Count; start += batchSize)
            {
                using var scope = NewDisposeScope();
                long count = Math.Min(batchSize, data.Count - start);
                var rows = new long[count];
                for (long i = 0; i < count; i++)
                    rows[i] = start + i;
                var (images, cpuLabels) = data.Read(rows);   // owned by this scope
                var logits = network.forward(images.to(device));
                var labels = cpuLabels.to(device);
                var predicted = logits.argmax(1).cpu().data<long>().ToArray();
                lossSum += nn.functional.cross_entropy(logits, labels, reduction: nn.Reduction.Sum).to(ScalarType.Float64).item<double>();
                var truth = cpuLabels.to(ScalarType.Int64).data<long>().ToArray();
                for (int i = 0; i < truth.Length; i++)
                {
                    perClass.TryGetValue(truth[i], out var tally);
                    perClass[truth[i]] = (tally.Correct + (predicted[i] == truth[i] ? 1 : 0), tally.Count + 1);
                }
            }
            double correct = perClass.Values.Sum(t => t.Correct);
            // Macro-accuracy as ML.NET's evaluator defines it: the mean over the classes present of each class's accuracy.
            double macro = perClass.Values.Average(t => (double)t.Correct / t.Count);
            return new EvaluationMeasures(correct / data.Count, macro, lossSum / data.Count);
        }
        finally
        {
            network.train(wasTraining);
        }
    }

    /// <summary>The 1-based batch numbers after which an epoch of <paramref name="batches"/> is evaluated.</summary>
    private static List<int> EvaluationSteps(int batches, int perEpoch)
    {
        int points = Math.Min(perEpoch, batches);
        return Enumerable.Range(1, points).Select(i => (int)Math.Round((double)i * batches / points)).Distinct().ToList();
    }

    /// <summary>
    /// Steps in an epoch of <paramref name="count"/> images: one per batch of <paramref name="batchSize"/>, the last one
    /// partial. Over several ranks a last batch with fewer images than ranks is dropped (some rank would get none).
    /// </summary>
    public static int StepsPerEpoch(long count, int batchSize, int ranks = 1)
    {
        long steps = (count + batchSize - 1) / batchSize;
        long last = count - (steps - 1) * batchSize;
        return (int)(ranks > 1 && last < ranks ? steps - 1 : steps);
    }

    /// <summary>
    /// Rank <paramref name="rank"/>'s share of an epoch's <paramref name="order"/>: of each global batch of <paramref name="batchSize"/>
    /// images its slice [rank·m/N, (rank+1)·m/N), m the batch's size; the slices of all ranks together are the batch.
    /// </summary>
    public static long[] Shard(long[] order, int batchSize, int steps, int rank, int ranks)
    {
        var shard = new List<long>(order.Length / ranks + batchSize);
        for (int step = 0; step < steps; step++)
        {
            long start = (long)step * batchSize;
            long size = Math.Min(batchSize, order.Length - start);
            long from = start + rank * size / ranks, to = start + (rank + 1) * size / ranks;
            for (long i = from; i < to; i++)
                shard.Add(order[i]);
        }
        return shard.ToArray();
    }

    /// <summary>
    /// The order in which epoch <paramref name="epoch"/> visits <paramref name="count"/> samples: a shuffle that
    /// depends only on the seed and the epoch, so a resumed run, a benchmark and every arm of a comparison
    /// see the same batches.
    /// </summary>
    public static long[] EpochOrder(long count, int seed, int epoch)
    {
        var permutation = new long[count];
        for (long i = 0; i < count; i++)
            permutation[i] = i;
        new Random(unchecked(seed * 1_000_003 + epoch)).Shuffle(permutation);
        return permutation;
    }
}
