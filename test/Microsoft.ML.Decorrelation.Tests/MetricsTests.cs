using Microsoft.ML.Data;
using Microsoft.ML.Decorrelation.Torch;
using Microsoft.ML.Decorrelation.Torch.Architectures;
using Microsoft.ML.Decorrelation.Torch.Training;
using Microsoft.VisualStudio.TestTools.UnitTesting;
using static TorchSharp.torch;

namespace Microsoft.ML.Decorrelation.Tests;

/// <summary>The per-epoch metrics hold what they say, checked against independent computations.</summary>
[TestClass]
public class MetricsTests
{
    [TestMethod]
    public void TrainAccuracyIsTheAccuracyOfTheNetworkOnEachBatchBeforeItsStep()
    {
        using var data = FashionMnist.Load(train: true, limit: 200);
        // One batch per epoch and no BatchNorm or dropout: training mode computes what eval mode does.
        var options = new TrainingOptions { Epochs = 2, BatchSize = 200, LearningRate = 0.01, Decorrelation = new DecorrelationOptions { UpdateInterval = 1 } };
        using var network = NetworkTrainer.CreateNetwork(d => NetworkBuilder.SmallCnn(1, 28, 28, 10, d), options, decorrelated: true);
        double initialAccuracy = NetworkTrainer.Evaluate(network, data, 64, CPU);
        double initialLoss = NetworkTrainer.Measure(network, data, 64, CPU).Loss;

        var history = new NetworkTrainer(options).Train(network, data, test: data);

        Assert.AreEqual(initialAccuracy, history[0].TrainAccuracy, 1e-12, "epoch 1's only batch met the initial network");
        Assert.AreEqual(initialLoss, history[0].TrainLoss, 1e-5, "and so did its loss");
        Assert.AreEqual(1.0, history[0].Epoch);
        Assert.AreEqual(2.0, history[1].Epoch);
        var (finalAccuracy, _, finalLoss) = NetworkTrainer.Measure(network, data, 64, CPU);
        Assert.AreEqual(finalAccuracy, history[1].TestAccuracy!.Value, 1e-12);
        Assert.AreEqual(finalLoss, history[1].TestLoss!.Value, 1e-6 * finalLoss, "in float32, summed over other batches");
        Assert.AreEqual(0.01, history[1].LearningRate, 1e-15);
        Assert.AreEqual(new DecorrelationOptions().LearningRate, history[1].DecorrelationLearningRate!.Value, 1e-15, "η_R of a constant schedule");
        Assert.IsTrue(history[1].CappedUpdateFraction is >= 0 and <= 1, $"{history[1].CappedUpdateFraction}");
    }

    [TestMethod]
    public void ValidationMetricsEqualMLNetsEvaluationOfTheFinalModel()
    {
        var ml = new MLContext(seed: 1);
        var train = ml.Data.LoadFromEnumerable(MLNetData.PixelRows(train: true, count: 600));
        var validation = ml.Data.LoadFromEnumerable(MLNetData.PixelRows(train: false, count: 200));
        var keys = ml.Transforms.Conversion.MapValueToKey("Label").Fit(train);
        var reported = new List<DecorrelatedImageClassificationMetrics>();
        var trainer = ml.MulticlassClassification.Trainers.DecorrelatedImageClassification(new DecorrelatedImageClassificationTrainer.Options
        {
            MaxEpoch = 2,
            BatchSize = 64,
            LearningRateSchedule = LearningRateSchedule.Cosine,
            ValidationSet = keys.Transform(validation),
            MetricsCallback = reported.Add,
        });
        using var model = trainer.Fit(keys.Transform(train));
        var evaluation = ml.MulticlassClassification.Evaluate(model.Transform(keys.Transform(validation)));

        Assert.AreEqual(2, reported.Count);
        CollectionAssert.AreEqual(new[] { 1.0, 2.0 }, reported.Select(m => m.Epoch).ToArray());
        var last = reported[^1];
        Assert.AreEqual(evaluation.MicroAccuracy, last.ValidationAccuracy!.Value, 1e-9);
        Assert.AreEqual(evaluation.MacroAccuracy, last.ValidationMacroAccuracy!.Value, 1e-9, "ML.NET's macro-accuracy");
        Assert.AreNotEqual(last.ValidationAccuracy!.Value, last.ValidationMacroAccuracy!.Value, "the classes are unbalanced in 200 rows, so the two differ");
        Assert.AreEqual(evaluation.LogLoss, last.ValidationLoss!.Value, 1e-4, "ML.NET's log-loss of the saved scores");
        Assert.IsTrue(last.TrainAccuracy > 0.3 && last.TrainAccuracy <= 1, $"{last.TrainAccuracy}");
        Assert.IsLessThan(reported[0].LearningRate, last.LearningRate, "the cosine schedule decays");
        Assert.AreEqual(last.LearningRate / new DecorrelatedImageClassificationTrainer.Options().LearningRate,
            last.DecorrelationLearningRate!.Value / new DecorrelatedImageClassificationTrainer.Options().DecorrelationLearningRate, 1e-9, "η_R follows the schedule");
        StringAssert.Contains(last.ToString(), "validation loss");
    }

    [TestMethod]
    public void AnEpochWithoutAnUpdateOfRSaysSoInsteadOfPrintingNaN()
    {
        var withUpdate = new DecorrelatedImageClassificationMetrics { Epoch = 1, DecorrelationLoss = 0.0123, DecorrelationLearningRate = 0.008, CappedUpdateFraction = 0.25 };
        StringAssert.Contains(withUpdate.ToString(), "decorrelation loss 1.23E-002, η_R 0.008, capped 25");
        var without = new DecorrelatedImageClassificationMetrics { Epoch = 4, DecorrelationLoss = double.NaN, DecorrelationLearningRate = 0.0008, CappedUpdateFraction = double.NaN };
        StringAssert.Contains(without.ToString(), "no update of R this epoch, η_R 0.0008");
        Assert.DoesNotContain("NaN", without.ToString());
        Assert.DoesNotContain("decorrelation", new DecorrelatedImageClassificationMetrics { Epoch = 1 }.ToString(), "plain backprop");
    }
}
