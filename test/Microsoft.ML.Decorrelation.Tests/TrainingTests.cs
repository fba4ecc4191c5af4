using Microsoft.ML.Decorrelation.Torch;
using Microsoft.ML.Decorrelation.Torch.Architectures;
using Microsoft.ML.Decorrelation.Torch.Data;
using Microsoft.ML.Decorrelation.Torch.Training;
using Microsoft.VisualStudio.TestTools.UnitTesting;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Decorrelation.Tests;

[TestClass]
public class TrainingTests
{
    private static ImageDataset _train = null!;
    private static ImageDataset _test = null!;

    [ClassInitialize]
    public static void LoadData(TestContext _)
    {
        _train = FashionMnist.Load(train: true, limit: 8000);
        _test = FashionMnist.Load(train: false, limit: 2000);
        var (mean, deviation) = _train.ChannelStatistics();
        _train.Normalize(mean, deviation);
        _test.Normalize(mean, deviation);
    }

    [ClassCleanup]
    public static void DisposeData()
    {
        _train.Dispose();
        _test.Dispose();
    }

    private static nn.Module<Tensor, Tensor> SmallCnn(Device device) => NetworkBuilder.SmallCnn(1, 28, 28, 10, device);

    /// <summary>
    /// Each layer's decorrelation loss on one batch, with its learned R and with R replaced by I. A layer's
    /// own R does not change its input, so both are measured on the same inputs.
    /// </summary>
    private static Dictionary<string, (double Learned, double Identity)> LossesAgainstIdentity(nn.Module<Tensor, Tensor> network, Tensor batch)
    {
        var controller = new DecorrelationController(network, updateInterval: 1);   // every BeginStep collects samples
        var result = new Dictionary<string, (double, double)>();
        network.train();
        foreach (var layer in controller.Layers)
        {
            using var scope = NewDisposeScope();
            using var noGrad = no_grad();
            var learnedR = layer.DecorrelationMatrix.clone();
            layer.SampleFraction = 1;
            controller.BeginStep();
            network.forward(batch);
            double learned = layer.PendingDecorrelationLoss();
            layer.DecorrelationMatrix.copy_(eye(layer.BlockSize));   // broadcast over the blocks of a block-diagonal R
            network.forward(batch);
            double identity = layer.PendingDecorrelationLoss();
            layer.DecorrelationMatrix.copy_(learnedR);
            result[layer.LayerName] = (learned, identity);
        }
        return result;
    }

    [TestMethod]
    public void DecorrelatedTrainingDecorrelatesEveryLayerAndKeepsUpWithBackprop()
    {
        var options = new TrainingOptions
        {
            Epochs = 2,
            BatchSize = 128,
            Seed = 7,
            Threads = 2,
            // Every step, with the paper's sample fractions: this test is about the algorithm, not the fast defaults.
            Decorrelation = new DecorrelationOptions { LearningRate = 1e-2, UpdateInterval = 1, ConvolutionSampleFraction = 0.1, LinearSampleFraction = 1, MaxBlockSize = null },
        };
        var trainer = new NetworkTrainer(options);
        using var plain = NetworkTrainer.CreateNetwork(SmallCnn, options, decorrelated: false);
        using var decorrelated = NetworkTrainer.CreateNetwork(SmallCnn, options, decorrelated: true);
        var plainHistory = trainer.Train(plain, _train, _test);
        var history = trainer.Train(decorrelated, _train, _test);

        using var batch = _train.Images.narrow(0, 0, 256).clone();
        var losses = LossesAgainstIdentity(decorrelated, batch);
        CollectionAssert.AreEqual(new[] { "conv1", "conv2", "conv3", "classifier" }, losses.Keys.ToArray());
        foreach (var (layer, (learned, identity)) in losses)
            Console.WriteLine($"{layer}: decorrelation loss {learned:E3} with the learned R, {identity:E3} with R = I ({identity / learned:F0}x)");
        Console.WriteLine($"test accuracy after 2 epochs: backprop {plainHistory[^1].TestAccuracy:P2}, DBP {history[^1].TestAccuracy:P2}");
        foreach (var (layer, (learned, identity)) in losses)
            Assert.IsLessThan(identity / 10, learned, $"{layer}: loss {learned:E3} with the learned R, {identity:E3} with R = I");
        foreach (var metrics in history)
            Assert.AreEqual(4, metrics.DecorrelationLoss.Count);
        Assert.IsEmpty(plainHistory[^1].DecorrelationLoss);

        double bp = plainHistory[^1].TestAccuracy!.Value, dbp = history[^1].TestAccuracy!.Value;
        Assert.IsGreaterThan(0.75, bp, "backprop must learn");
        Assert.IsGreaterThanOrEqualTo(bp - 0.01, dbp, $"DBP {dbp:P1} against backprop {bp:P1}");
    }

    [TestMethod]
    public void ShippedDefaultsDecorrelateEveryLayerTenfold()
    {
        // Exactly what a user of the trainer gets without setting an option: η_R 8e-3 per update every 4 steps, sample
        // fractions 0.03 and 0.25, η_R following the step schedule, blocks of R at most 576 (the classifier's R is two
        // blocks), 6 epochs at batch 128.
        var defaults = new DecorrelatedImageClassificationTrainer.Options();
        var options = DecorrelatedImageClassificationTrainer.EngineOptions(defaults, seed: 5, CPU);
        Assert.AreEqual(8e-3, options.Decorrelation!.LearningRate);
        Assert.AreEqual(4, options.Decorrelation.UpdateInterval);
        Assert.AreEqual(0.03, options.Decorrelation.ConvolutionSampleFraction);
        Assert.AreEqual(0.25, options.Decorrelation.LinearSampleFraction);
        Assert.IsTrue(options.Decorrelation.FollowLearningRateSchedule);
        Assert.AreEqual(576, options.Decorrelation.MaxBlockSize);
        Assert.AreEqual(LearningRateSchedule.Step, options.Schedule);

        using var network = NetworkTrainer.CreateNetwork(SmallCnn, options, decorrelated: true);
        var history = new NetworkTrainer(options).Train(network, _train);
        using var batch = _train.Images.narrow(0, 0, 256).clone();
        var losses = LossesAgainstIdentity(network, batch);
        CollectionAssert.AreEqual(new[] { "conv1", "conv2", "conv3", "classifier" }, losses.Keys.ToArray(), "every layer is decorrelated at 28×28");
        CollectionAssert.AreEqual(new long[] { 2, 576, 576 }, network.modules().OfType<DecorrelatedLayer>().Last().DecorrelationMatrix.shape, "the classifier's R (D = 1152)");
        foreach (var (layer, (learned, identity)) in losses)
            Console.WriteLine($"{layer}: decorrelation loss {learned:E3} learned, {identity:E3} with R = I ({identity / learned:F1}x)");
        foreach (var (layer, (learned, identity)) in losses)
            Assert.IsLessThan(identity / 10, learned, $"{layer}: loss {learned:E3} with the learned R, {identity:E3} with R = I");
        Assert.IsTrue(history.All(m => m.CappedUpdateFraction is >= 0 and <= 1));
    }

    [TestMethod]
    public void SameSeedGivesIdenticalInitialWeightsForBackpropAndDbp()
    {
        var options = new TrainingOptions { Seed = 3 };
        using var plain = NetworkTrainer.CreateNetwork(SmallCnn, options, decorrelated: false);
        using var decorrelated = NetworkTrainer.CreateNetwork(SmallCnn, options, decorrelated: true);
        using var folded = NetworkConversion.ToPlain(decorrelated);
        foreach (var (name, tensor) in plain.state_dict())
            Assert.AreEqual(0.0, Reference.MaxAbsDifference(tensor, folded.state_dict()[name]), name);
    }

    [TestMethod]
    public void SameSeedGivesIdenticalMetrics()
    {
        var options = new TrainingOptions { Epochs = 1, Seed = 11, Threads = 2, EvaluationsPerEpoch = 2 };
        using var subset = _train.Slice(0, 1024);
        double[] Run()
        {
            using var network = NetworkTrainer.CreateNetwork(SmallCnn, options, decorrelated: true);
            return new NetworkTrainer(options).Train(network, subset, _test)
                .SelectMany(m => new[] { m.TrainLoss, m.TestAccuracy!.Value }.Concat(m.DecorrelationLoss.Values)).ToArray();
        }
        var first = Run();
        CollectionAssert.AreEqual(first, Run());
        Assert.HasCount(2 * (2 + 4), first);
    }

    [TestMethod]
    public void SchedulesProduceTheExpectedLearningRates()
    {
        var cosine = new TrainingOptions { LearningRate = 0.1, Schedule = LearningRateSchedule.Cosine };
        Assert.AreEqual(0.1, cosine.LearningRateAt(0, 100, 10), 1e-12);
        Assert.AreEqual(0.05, cosine.LearningRateAt(50, 100, 10), 1e-12);
        Assert.AreEqual(0.0, cosine.LearningRateAt(100, 100, 10), 1e-12);
        var step = new TrainingOptions { LearningRate = 0.1, Schedule = LearningRateSchedule.Step, StepDecayEpochs = 2, StepDecayFactor = 0.5 };
        Assert.AreEqual(0.1, step.LearningRateAt(19, 100, 10), 1e-12);
        Assert.AreEqual(0.05, step.LearningRateAt(20, 100, 10), 1e-12);
        Assert.AreEqual(0.025, step.LearningRateAt(45, 100, 10), 1e-12);
        // Without StepDecayEpochs: ×0.1 after a third and after two thirds of the run, and no further.
        var thirds = new TrainingOptions { LearningRate = 0.1, Schedule = LearningRateSchedule.Step };
        long[] steps = [0, 29, 30, 59, 60, 89, 90];
        double[] expected = [0.1, 0.1, 0.01, 0.01, 0.001, 0.001, 0.001];
        for (int i = 0; i < steps.Length; i++)
            Assert.AreEqual(expected[i], thirds.LearningRateAt(steps[i], 90, 9), 1e-12, $"step {steps[i]} of 90");
    }

    [TestMethod]
    [DataRow(true)]
    [DataRow(false)]
    public void DecorrelationRateFollowsTheScheduleOnlyWhenAsked(bool follow)
    {
        var options = new TrainingOptions
        {
            Epochs = 3, BatchSize = 32, LearningRate = 2e-3, Schedule = LearningRateSchedule.Step, StepDecayEpochs = 1, StepDecayFactor = 0.5,
            Seed = 3, Threads = 2, Decorrelation = new DecorrelationOptions { LearningRate = 4e-3, FollowLearningRateSchedule = follow },
        };
        using var network = NetworkTrainer.CreateNetwork(SmallCnn, options, decorrelated: true);
        using var session = new NetworkTrainer(options).CreateSession(network, stepsPerEpoch: 2);
        using var images = _train.Images.narrow(0, 0, 32);
        using var labels = _train.Labels.narrow(0, 0, 32);
        var expected = new List<(double Weights, double R)>();
        var actual = new List<(double Weights, double R)>();
        for (int step = 0; step < 6; step++)
        {
            if (step == 4)
                session.LearningRateScale = 0.25;   // as after a divergence: scales both rates on top of the schedule
            session.Step(images, labels);
            double schedule = Math.Pow(0.5, step / 2);
            double scale = step >= 4 ? 0.25 : 1;
            expected.Add((2e-3 * schedule * scale, 4e-3 * (follow ? schedule : 1) * scale));
            actual.Add((session.LearningRate, session.Decorrelation.Layers.Select(l => l.LearningRate).Distinct().Single()));
        }
        for (int i = 0; i < expected.Count; i++)
        {
            Assert.AreEqual(expected[i].Weights, actual[i].Weights, 1e-15, $"weights' rate at step {i + 1}");
            Assert.AreEqual(expected[i].R, actual[i].R, 1e-15, $"R's rate at step {i + 1}");
        }
    }

    [TestMethod]
    public void SgdWithMomentumWeightDecayAndCosineScheduleLearns()
    {
        var options = new TrainingOptions
        {
            Epochs = 2, Optimizer = OptimizerKind.Sgd, LearningRate = 0.05, Momentum = 0.9, WeightDecay = 5e-4,
            Schedule = LearningRateSchedule.Cosine, Seed = 5, Threads = 2,
        };
        using var subset = _train.Slice(0, 2048);
        using var network = NetworkTrainer.CreateNetwork(SmallCnn, options, decorrelated: true);
        var history = new NetworkTrainer(options).Train(network, subset, _test);
        Assert.IsGreaterThan(0.65, history[^1].TestAccuracy!.Value);
        Assert.IsLessThan(history[0].TrainLoss, history[^1].TrainLoss);
        Assert.AreEqual(0.0, history[^1].LearningRate, 1e-3, "cosine decays to zero");
    }

    [TestMethod]
    public void CancellationStopsBeforeTheNextStep()
    {
        var options = new TrainingOptions { Epochs = 1, BatchSize = 32, Threads = 2 };
        using var subset = _train.Slice(0, 1024);
        using var network = NetworkTrainer.CreateNetwork(SmallCnn, options, decorrelated: true);
        using var cancellation = new CancellationTokenSource();
        int steps = 0;
        Assert.ThrowsExactly<OperationCanceledException>(() => new NetworkTrainer(options).Train(network, subset, onStep: p =>
        {
            steps = p.Batch;
            if (p.Batch == 3)
                cancellation.Cancel();
        }, cancellation: cancellation.Token));
        Assert.AreEqual(3, steps);
    }

    [TestMethod]
    public void DivergingTrainingNamesEpochAndStep()
    {
        // An absurd weight learning rate makes the logits overflow within a few steps.
        var options = new TrainingOptions { Epochs = 1, Threads = 2, LearningRate = 1e8 };
        using var subset = _train.Slice(0, 512);
        using var network = NetworkTrainer.CreateNetwork(SmallCnn, options, decorrelated: true);
        var error = Assert.ThrowsExactly<TrainingDivergedException>(() => new NetworkTrainer(options).Train(network, subset));
        Assert.AreEqual(1, error.Epoch);
        Assert.IsNotNull(error.Step);
        StringAssert.Contains(error.Message, $"epoch 1, step {error.Step}");
        StringAssert.Contains(error.Message, "training loss");
        foreach (var layer in new DecorrelationController(network).Layers)
            Assert.IsTrue(isfinite(layer.DecorrelationMatrix).all().item<bool>(), $"{layer.LayerName}: R stays finite");
    }

    [TestMethod]
    public void InvalidOptionsNameTheOption()
    {
        StringAssert.Contains(Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => new NetworkTrainer(new TrainingOptions { BatchSize = 0 })).ParamName, "BatchSize");
        StringAssert.Contains(Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => new NetworkTrainer(new TrainingOptions { LearningRate = double.NaN })).ParamName, "LearningRate");
        var kappa = Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => new NetworkTrainer(new TrainingOptions { Decorrelation = new DecorrelationOptions { Kappa = 1.5 } }));
        Assert.AreEqual("Kappa", kappa.ParamName);
        Assert.AreEqual("StepDecayEpochs", Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => new NetworkTrainer(new TrainingOptions { StepDecayEpochs = 0 })).ParamName);
        var fraction = Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => new DecorrelationOptions { ConvolutionSampleFraction = 0 }.Validate());
        Assert.AreEqual("ConvolutionSampleFraction", fraction.ParamName);
    }

    [TestMethod]
    public void TrainingTunesTheNativeAllocatorOnLinux()
    {
        var options = new TrainingOptions { Epochs = 1, Threads = 2 };
        using var subset = _train.Slice(0, 128);
        using var network = NetworkTrainer.CreateNetwork(SmallCnn, options, decorrelated: false);
        new NetworkTrainer(options).Train(network, subset);
        bool optedOut = Environment.GetEnvironmentVariable(NativeAllocatorTuning.EnvironmentVariable) is "0" or "false";
        Assert.AreEqual(OperatingSystem.IsLinux() && !optedOut, NativeAllocatorTuning.IsApplied);
    }
}
