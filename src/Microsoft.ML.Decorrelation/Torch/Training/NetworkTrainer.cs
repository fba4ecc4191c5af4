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
    /// Seeds Torch with <see cref="TrainingOptions.Seed"/>, builds the plain network and, when
    /// <paramref name="decorrelated"/> is set, converts it to its decorrelated twin. The same seed therefore
    /// gives backprop and DBP identical initial weights.
    /// </summary>
    /// <param name="buildPlain">Builds the plain network on the given device.</param>
    /// <param name="options">Supplies the seed, the device and the decorrelation options.</param>
    /// <param name="decorrelated">Whether to return the decorrelated twin.</param>
    public static nn.Module<Tensor, Tensor> CreateNetwork(Func<Device, nn.Module<Tensor, Tensor>> buildPlain, TrainingOptions options, bool decorrelated)
    {
        ArgumentNullException.ThrowIfNull(buildPlain);
        ArgumentNullException.ThrowIfNull(options);
        random.manual_seed(options.Seed);
        var plain = buildPlain(options.Device);
        if (!decorrelated)
            return plain;
        using (plain)
            return NetworkConversion.ToDecorrelated(plain, options.Decorrelation ?? new DecorrelationOptions());
    }

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
        if (_options.Threads is int threads)
            set_num_threads(threads);
        return new TrainingSession(network, _options, stepsPerEpoch);
    }

    /// <summary>Trains <paramref name="network"/> in place on <paramref name="train"/>.</summary>
    /// <param name="network">The network, on <see cref="TrainingOptions.Device"/>.</param>
    /// <param name="train">The training images.</param>
    /// <param name="test">Images to measure accuracy on at each evaluation point, or null.</param>
    /// <param name="onMetrics">Receives the metrics at each evaluation point, or null.</param>
    /// <param name="onStep">Receives the progress of each step, or null.</param>
    /// <param name="cancellation">Stops training before the next step; the network keeps the weights reached.</param>
    /// <returns>The metrics of every evaluation point.</returns>
    /// <exception cref="TrainingDivergedException">The loss or a decorrelation matrix turned non-finite.</exception>
    /// <exception cref="OperationCanceledException"><paramref name="cancellation"/> was triggered.</exception>
    public IReadOnlyList<TrainingMetrics> Train(nn.Module<Tensor, Tensor> network, ImageDataset train, ImageDataset? test = null,
        Action<TrainingMetrics>? onMetrics = null, Action<StepProgress>? onStep = null, CancellationToken cancellation = default)
    {
        ArgumentNullException.ThrowIfNull(network);
        ArgumentNullException.ThrowIfNull(train);
        if (train.Count == 0)
            throw new ArgumentException("The training set is empty.", nameof(train));
        if (_options.EarlyStoppingPatience > 0 && test is null)
            throw new ArgumentException("Early stopping needs a test (validation) set to measure accuracy on.", nameof(test));
        var options = _options;
        int batchesPerEpoch = (int)((train.Count + options.BatchSize - 1) / options.BatchSize);
        using var session = CreateSession(network, batchesPerEpoch);
        random.manual_seed(options.Seed + 1);   // the statistics samples
        var order = new Random(options.Seed);
        var evaluationSteps = EvaluationSteps(batchesPerEpoch, options.EvaluationsPerEpoch);
        var history = new List<TrainingMetrics>();
        using var best = new BestWeights(network);
        var clock = new Stopwatch();
        double lossSum = 0;
        int lossCount = 0;
        for (int epoch = 1; epoch <= options.Epochs; epoch++)
        {
            var permutation = Shuffle(train.Count, order);
            for (int batch = 0; batch < batchesPerEpoch; batch++)
            {
                cancellation.ThrowIfCancellationRequested();
                clock.Start();
                double loss;
                using (var scope = NewDisposeScope())
                {
                    int start = batch * options.BatchSize;
                    int count = (int)Math.Min(options.BatchSize, train.Count - start);
                    var indices = tensor(permutation.AsSpan(start, count).ToArray());
                    loss = session.Step(train.Images.index_select(0, indices).to(options.Device),
                                        train.Labels.index_select(0, indices).to(options.Device));
                }
                clock.Stop();
                lossSum += loss;
                lossCount++;
                onStep?.Invoke(new StepProgress(epoch, batch + 1, batchesPerEpoch, loss, clock.Elapsed.TotalSeconds));

                int evaluationIndex = evaluationSteps.IndexOf(batch + 1);
                if (evaluationIndex < 0)
                    continue;
                var metrics = new TrainingMetrics
                {
                    Epoch = epoch - 1 + (double)(evaluationIndex + 1) / evaluationSteps.Count,
                    Step = session.StepCount,
                    TrainLoss = lossSum / lossCount,
                    TestAccuracy = test is null ? null : Evaluate(network, test, options.EvaluationBatchSize, options.Device),
                    TrainingSeconds = clock.Elapsed.TotalSeconds,
                    LearningRate = session.LearningRate,
                    DecorrelationLoss = session.Decorrelation.TakeMeanLosses(),
                };
                lossSum = 0;
                lossCount = 0;
                history.Add(metrics);
                onMetrics?.Invoke(metrics);
            }
            if (options.EarlyStoppingPatience > 0 && best.Offer(epoch, history[^1].TestAccuracy!.Value) && epoch - best.Epoch >= options.EarlyStoppingPatience)
                break;
        }
        if (options.EarlyStoppingPatience > 0)
            best.Restore();
        return history;
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
            _state = network.state_dict().ToDictionary(entry => entry.Key, entry => entry.Value.detach().clone().DetachFromDisposeScope());
            return false;
        }

        public void Restore()
        {
            if (_state is null)
                return;
            using var noGrad = no_grad();
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
    public static double Evaluate(nn.Module<Tensor, Tensor> network, ImageDataset data, int batchSize, Device device)
    {
        ArgumentNullException.ThrowIfNull(network);
        ArgumentNullException.ThrowIfNull(data);
        ArgumentOutOfRangeException.ThrowIfLessThan(batchSize, 1);
        if (data.Count == 0)
            return double.NaN;
        bool wasTraining = network.training;
        network.eval();
        try
        {
            using var noGrad = no_grad();
            long correct = 0;
            for (long start = 0; start < data.Count; start += batchSize)
            {
                using var scope = NewDisposeScope();
                long count = Math.Min(batchSize, data.Count - start);
                var predicted = network.forward(data.Images.narrow(0, start, count).to(device)).argmax(1).cpu();
                correct += predicted.eq(data.Labels.narrow(0, start, count)).sum().item<long>();
            }
            return (double)correct / data.Count;
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

    private static long[] Shuffle(long count, Random random)
    {
        var permutation = new long[count];
        for (long i = 0; i < count; i++)
            permutation[i] = i;
        random.Shuffle(permutation);
        return permutation;
    }
}
