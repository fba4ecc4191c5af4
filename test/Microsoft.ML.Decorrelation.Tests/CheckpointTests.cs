using Microsoft.ML.Decorrelation.Torch;
using Microsoft.ML.Decorrelation.Torch.Architectures;
using Microsoft.ML.Decorrelation.Torch.Data;
using Microsoft.ML.Decorrelation.Torch.Training;
using Microsoft.VisualStudio.TestTools.UnitTesting;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Decorrelation.Tests;

/// <summary>Checkpoints, resuming after an interruption, and recovery from divergence.</summary>
[TestClass]
public class CheckpointTests : TempFolderTest
{
    private static ImageDataset _train = null!;
    private static ImageDataset _test = null!;

    [ClassInitialize]
    public static void LoadData(TestContext _)
    {
        _train = FashionMnist.Load(train: true, limit: 1024);
        _test = FashionMnist.Load(train: false, limit: 500);
    }

    [ClassCleanup]
    public static void DisposeData()
    {
        _train.Dispose();
        _test.Dispose();
    }
    private static nn.Module<Tensor, Tensor> SmallCnn(Device device) => NetworkBuilder.SmallCnn(1, 28, 28, 10, device);

    private static TrainingOptions Options(string? checkpoint = null, bool resume = false) => new()
    {
        // Batch 100 gives 11 steps per epoch, not a multiple of the update interval 4: a resumed run must keep the update phase.
        Epochs = 3, BatchSize = 100, Seed = 21, Threads = 2, EvaluationsPerEpoch = 2, CheckpointPath = checkpoint, ResumeFromCheckpoint = resume,
        Schedule = LearningRateSchedule.Cosine,
        RandomCropPadding = 2, RandomHorizontalFlip = true,   // a resumed run must also redraw the same augmentation
    };

    private static double[] Figures(IEnumerable<TrainingMetrics> history)
        => history.SelectMany(m => new[] { m.Epoch, m.TrainLoss, m.TestAccuracy!.Value, m.LearningRate }.Concat(m.DecorrelationLoss.Values)).ToArray();

    [TestMethod]
    public void RunInterruptedMidEpochAndResumedEndsLikeAnUninterruptedRun()
    {
        var options = Options();
        using var uninterrupted = NetworkTrainer.CreateNetwork(SmallCnn, options, decorrelated: true);
        var expected = new NetworkTrainer(options).Train(uninterrupted, _train, _test);

        string checkpoint = Path.Combine(TempFolder, "run.ckpt");
        var checkpointed = Options(checkpoint);
        using (var interrupted = NetworkTrainer.CreateNetwork(SmallCnn, checkpointed, decorrelated: true))
        using (var cancellation = new CancellationTokenSource())
        {
            Assert.ThrowsExactly<OperationCanceledException>(() => new NetworkTrainer(checkpointed).Train(interrupted, _train, _test,
                onStep: p =>
                {
                    if (p.Epoch == 2 && p.Batch == 5)
                        cancellation.Cancel();
                }, cancellation: cancellation.Token));
        }
        Assert.IsTrue(File.Exists(checkpoint), "the checkpoint of epoch 1 was written");
        Assert.IsFalse(File.Exists(checkpoint + ".tmp"), "no temporary file is left behind");

        var resumeOptions = Options(checkpoint, resume: true);
        using var resumed = NetworkTrainer.CreateNetwork(SmallCnn, resumeOptions, decorrelated: true);
        var warnings = new List<string>();
        var actual = new NetworkTrainer(resumeOptions).Train(resumed, _train, _test, onWarning: warnings.Add);

        StringAssert.Contains(WithoutPlatformNotices(warnings).Single(), "after epoch 1");
        CollectionAssert.AreEqual(Figures(expected), Figures(actual));
        foreach (var (name, tensor) in uninterrupted.state_dict())
            Assert.AreEqual(0.0, Reference.MaxAbsDifference(tensor, resumed.state_dict()[name]), name);
    }

    [TestMethod]
    public void CheckpointOfAnotherNetworkIsRefused()
    {
        string checkpoint = Path.Combine(TempFolder, "run.ckpt");
        var options = Options(checkpoint);
        options.Epochs = 1;
        using (var network = NetworkTrainer.CreateNetwork(SmallCnn, options, decorrelated: true))
            new NetworkTrainer(options).Train(network, _train);
        var resume = Options(checkpoint, resume: true);
        using var plain = NetworkTrainer.CreateNetwork(SmallCnn, resume, decorrelated: false);
        var error = Assert.ThrowsExactly<InvalidDataException>(() => new NetworkTrainer(resume).Train(plain, _train));
        StringAssert.Contains(error.Message, "does not fit this network");
    }

    [TestMethod]
    public void DivergenceRollsBackAndHalvesTheLearningRatesWhenAllowed()
    {
        // A weight learning rate of 1e8 makes the loss overflow; halvings bring it back to a size that stays finite.
        var options = new TrainingOptions
        {
            Epochs = 2, BatchSize = 64, Seed = 3, Threads = 2, DivergenceRetries = 60, LearningRate = 1e8,
            Decorrelation = new DecorrelationOptions { LearningRate = 1e-3, UpdateInterval = 1 },
        };
        using var network = NetworkTrainer.CreateNetwork(SmallCnn, options, decorrelated: true);
        var warnings = new List<string>();
        var history = new NetworkTrainer(options).Train(network, _train, _test, onWarning: warnings.Add);

        var recoveries = WithoutPlatformNotices(warnings);
        Assert.IsNotEmpty(recoveries, "training diverged at least once");
        StringAssert.Contains(recoveries[0], "Rolled back to the start of epoch 1 and halved the learning rates");
        Assert.HasCount(2, history);
        Assert.AreEqual(1e8 * Math.Pow(0.5, recoveries.Count), history[^1].LearningRate, 1e-6, "the learning rate was halved at each recovery");
        foreach (var layer in new DecorrelationController(network).Layers)
        {
            Assert.IsTrue(isfinite(layer.DecorrelationMatrix).all().item<bool>(), layer.LayerName);
            Assert.AreEqual(1e-3 * Math.Pow(0.5, recoveries.Count), layer.LearningRate, 1e-15, $"{layer.LayerName}: η_R was halved too");
        }
        Assert.IsTrue(history.All(m => double.IsFinite(m.TrainLoss)), "no non-finite loss is reported");
    }

    /// <summary>
    /// The training's own notices, without the platform's: on a CPU that hides its cache sizes every run first says that
    /// oneDNN is switched off (docs/platform.md), which is not what these tests are about.
    /// </summary>
    private static List<string> WithoutPlatformNotices(IEnumerable<string> warnings)
        => warnings.Where(w => !w.StartsWith("oneDNN ", StringComparison.Ordinal)).ToList();
}
