using Microsoft.ML.Decorrelation.Torch;
using Microsoft.ML.Decorrelation.Torch.Architectures;
using Microsoft.ML.Decorrelation.Torch.Training;
using Microsoft.VisualStudio.TestTools.UnitTesting;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Decorrelation.Tests;

/// <summary>Defaults, update phases, guards and conversions that an independent review found wrong.</summary>
[TestClass]
public class CorrectnessTests
{
    [TestMethod]
    public void EngineDefaultsUpdateRAtTheIntervalItsLearningRateIsMeantFor()
    {
        using var scope = NewDisposeScope();
        var network = NetworkConversion.ToDecorrelated(NetworkBuilder.SmallCnn(1, 28, 28, 10));
        Assert.AreEqual(4, DecorrelationOptions.DefaultUpdateInterval);
        Assert.AreEqual(new DecorrelationOptions().UpdateInterval, new DecorrelationController(network).UpdateInterval);
        using var session = new NetworkTrainer(new TrainingOptions { Decorrelation = null }).CreateSession(network, 10);
        Assert.AreEqual(DecorrelationOptions.DefaultUpdateInterval, session.Decorrelation.UpdateInterval, "a session that leaves the layers' settings alone");
    }

    [TestMethod]
    public void SimpleCatalogOverloadUsesTheTrainersDefaults()
    {
        var trainer = new MLContext().MulticlassClassification.Trainers.DecorrelatedImageClassification();
        var defaults = new DecorrelatedImageClassificationTrainer.Options();
        Assert.AreEqual(defaults.MaxEpoch, trainer.TrainerOptions.MaxEpoch);
        Assert.AreEqual(defaults.BatchSize, trainer.TrainerOptions.BatchSize);
        Assert.AreEqual(3, new MLContext().MulticlassClassification.Trainers.DecorrelatedImageClassification(maxEpoch: 3).TrainerOptions.MaxEpoch);
    }

    [TestMethod]
    public void RestoredSessionUpdatesROnTheSameStepsAsTheUninterruptedOne()
    {
        using var scope = NewDisposeScope();
        var options = new TrainingOptions { Seed = 4, Decorrelation = new DecorrelationOptions { UpdateInterval = 4 } };
        var network = NetworkTrainer.CreateNetwork(d => NetworkBuilder.SmallCnn(1, 28, 28, 10, d), options, decorrelated: true);
        using var session = new NetworkTrainer(options).CreateSession(network, stepsPerEpoch: 11);
        var images = randn(8, 1, 28, 28);
        var labels = randint(10, [8]);
        List<bool> Steps(int count) => Enumerable.Range(0, count).Select(_ => { session.Step(images, labels); return session.Decorrelation.UpdatesThisStep; }).ToList();

        Steps(11);   // one epoch of 11 steps: the next epoch starts at step 11, not a multiple of 4
        using var saved = new MemoryStream();
        using (var writer = new BinaryWriter(saved, System.Text.Encoding.UTF8, leaveOpen: true))
            session.SaveState(writer);
        var uninterrupted = Steps(6);
        CollectionAssert.AreEqual(new[] { false, true, false, false, false, true }, uninterrupted, "steps 11–16: updates on 12 and 16");

        saved.Position = 0;
        using (var reader = new BinaryReader(saved))
            session.LoadState(reader);   // what a checkpoint resume and a divergence rollback do
        Assert.AreEqual(11, session.StepCount);
        CollectionAssert.AreEqual(uninterrupted, Steps(6));
    }

    [TestMethod]
    public void NonFiniteMatrixFailsTheStepAndKeepsTheLastR()
    {
        using var scope = NewDisposeScope();
        var layer = new DecorrelatedLinear(4, 2, options: new DecorrelationOptions { LearningRate = 1e-3 });
        layer.train();
        using (no_grad())
            layer.DecorrelationMatrix.mul_(1e19f);   // finite, but its products overflow float32
        var before = layer.DecorrelationMatrix.clone();
        layer.forward(ones(8, 4));
        var error = Assert.ThrowsExactly<TrainingDivergedException>(() => layer.UpdateDecorrelation());
        StringAssert.Contains(error.Message, "diverged");
        Assert.AreEqual(0.0, Reference.MaxAbsDifference(before, layer.DecorrelationMatrix));
    }

    [TestMethod]
    public void LayerSettersRejectValuesOutOfRangeNamingTheLayer()
    {
        using var scope = NewDisposeScope();
        var layer = new DecorrelatedLinear(4, 2) { LayerName = "head" };
        StringAssert.Contains(Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => layer.Kappa = 1.5).Message, "Layer 'head': kappa");
        Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => layer.LearningRate = double.NaN);
        Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => layer.LearningRate = 0);
        Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => layer.SampleFraction = 0);
        layer.SampleFraction = 1;
        Assert.AreEqual(1, layer.SampleFraction);
    }

    [TestMethod]
    public void BatchNormCopyKeepsCumulativeAveragingAndWorksWithoutRunningStatistics()
    {
        using var scope = NewDisposeScope();
        var cumulative = nn.BatchNorm2d(4);
        cumulative.momentum = null;
        var stateless = nn.BatchNorm2d(4, track_running_stats: false);
        var plain = nn.Sequential(("conv", nn.Conv2d(2, 4, 3)), ("bn1", cumulative), ("bn2", stateless));
        var converted = NetworkConversion.ToDecorrelated(plain);
        var norms = converted.modules().OfType<TorchSharp.Modules.BatchNorm2d>().ToArray();
        Assert.IsNull(norms[0].momentum, "a cumulative moving average stays cumulative");
        Assert.IsNull(norms[1].running_mean, "no running statistics");
        var input = randn(3, 2, 6, 6);
        plain.eval();
        converted.eval();
        Assert.AreEqual(0.0, Reference.MaxAbsDifference(plain.forward(input), converted.forward(input)), 1e-5);
    }

    [TestMethod]
    public void InputSizeWithoutAFittingSplitKeepsRFullInsteadOfSingleValueBlocks()
    {
        using var scope = NewDisposeScope();
        var prime = new DecorrelatedLinear(13, 2, options: new DecorrelationOptions { MaxBlockSize = 4 });
        Assert.AreEqual(1, prime.BlockCount, "13 features have no split into blocks of at most 4: 1×1 blocks would do nothing");
        StringAssert.Contains(prime.BlockLayoutNote, "R is kept full (13×13)");

        var perChannel = new DecorrelatedConv2d(7, 4, (3, 3), options: new DecorrelationOptions { MaxBlockSize = 20 });
        Assert.AreEqual(7, perChannel.BlockCount, "one 9×9 block per channel fits 20");
        Assert.IsNull(perChannel.BlockLayoutNote);
        var tooWide = new DecorrelatedConv2d(7, 4, (3, 3), options: new DecorrelationOptions { MaxBlockSize = 5 });
        Assert.AreEqual(7, tooWide.BlockCount);
        StringAssert.Contains(tooWide.BlockLayoutNote, "one 9×9 block per channel");
        var even = new DecorrelatedLinear(12, 2, options: new DecorrelationOptions { MaxBlockSize = 4 });
        Assert.AreEqual(3, even.BlockCount);
        Assert.IsNull(even.BlockLayoutNote);
    }

    [TestMethod]
    public void DoubleNetworkConvertsTrainsAndFoldsInDouble()
    {
        using var scope = NewDisposeScope();
        var plain = NetworkBuilder.SmallCnn(1, 16, 16, 3, batchNorm: true).to(ScalarType.Float64);
        var converted = NetworkConversion.ToDecorrelated(plain, new DecorrelationOptions { MaxBlockSize = 100 });
        var layers = new DecorrelationController(converted, updateInterval: 1).Layers;
        Assert.IsTrue(layers.Any(layer => layer.BlockCount > 1), "a block-diagonal R is covered too");
        foreach (var (name, tensor) in converted.state_dict().Where(entry => entry.Value.is_floating_point()))
            Assert.AreEqual(ScalarType.Float64, tensor.dtype, name);

        var input = randn(6, 1, 16, 16, dtype: ScalarType.Float64);
        plain.eval();
        converted.eval();
        Assert.AreEqual(0.0, Reference.MaxAbsDifference(plain.forward(input), converted.forward(input)), 1e-12, "R = I in double");
        converted.train();
        converted.forward(input);
        foreach (var layer in layers)
            Assert.IsTrue(double.IsFinite(layer.UpdateDecorrelation()), layer.LayerName);
        Assert.AreEqual(ScalarType.Float64, layers[0].DecorrelationMatrix.dtype);

        var folded = NetworkConversion.ToPlain(converted);
        folded.eval();
        converted.eval();
        Assert.AreEqual(ScalarType.Float64, folded.parameters().First().dtype);
        Assert.AreEqual(0.0, Reference.MaxAbsDifference(converted.forward(input), folded.forward(input)), 1e-12, "the fold keeps double precision");
    }
}
