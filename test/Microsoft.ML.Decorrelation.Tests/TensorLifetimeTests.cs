using Microsoft.ML.Data;
using Microsoft.ML.Decorrelation.Torch;
using Microsoft.ML.Decorrelation.Torch.Architectures;
using Microsoft.ML.Decorrelation.Torch.Training;
using Microsoft.VisualStudio.TestTools.UnitTesting;
using static TorchSharp.torch;

namespace Microsoft.ML.Decorrelation.Tests;

/// <summary>
/// Every native tensor has an owner: training and scoring leave no tensor to the finalizer.
/// </summary>
/// <remarks>
/// TorchSharp counts the tensors that hold a native handle (<see cref="Tensor.TotalCount"/>, process-wide; tests run
/// one at a time, <see cref="AssemblySetup"/>) and a finalized tensor leaves that count. So the tensors that a piece
/// of work dropped without disposing are exactly those a full collection afterwards removes from the count.
/// </remarks>
[TestClass]
public class TensorLifetimeTests
{
    /// <summary>How many native tensors <paramref name="work"/> left to the finalizer.</summary>
    private static long LeftToFinalizer(Action work)
    {
        Collect();   // what earlier tests dropped is not this work's
        work();
        long afterWork = Tensor.TotalCount;
        Collect();
        return afterWork - Tensor.TotalCount;
    }

    private static void Collect()
    {
        GC.Collect();
        GC.WaitForPendingFinalizers();
        GC.Collect();
    }

    [TestMethod]
    public void LeftToFinalizerSeesADroppedTensor()
    {
        Assert.AreEqual(3, LeftToFinalizer(() =>
        {
            for (int i = 0; i < 3; i++)
                randn(2);
        }));
    }

    [TestMethod]
    public void FitTransformAndPredictLeaveNoTensorToTheFinalizer()
    {
        var ml = new MLContext(seed: 2);
        var train = ml.Data.LoadFromEnumerable(MLNetData.PixelRows(train: true, count: 300));
        var test = ml.Data.LoadFromEnumerable(MLNetData.PixelRows(train: false, count: 40));
        var keys = ml.Transforms.Conversion.MapValueToKey("Label").Fit(train);
        var trainer = ml.MulticlassClassification.Trainers.DecorrelatedImageClassification(new DecorrelatedImageClassificationTrainer.Options
        {
            MaxEpoch = 2,
            BatchSize = 64,
            ValidationFraction = 0.2,
            EarlyStoppingPatience = 1,   // keeps and restores the best weights
            DivergenceRetries = 1,       // keeps a rollback copy of every epoch
        });
        var keyed = keys.Transform(train);
        var testKeyed = keys.Transform(test);

        var row = MLNetData.PixelRows(train: false, count: 1).First();
        Assert.AreEqual(0, LeftToFinalizer(() =>
        {
            using var model = trainer.Fit(keyed);
            Assert.AreEqual(40, model.Transform(testKeyed).GetColumn<uint>("PredictedLabel").Count());
            using var engine = ml.Model.CreatePredictionEngine<MLNetData.PixelRow, Prediction>(keys.Append(model));
            Assert.AreEqual(10, engine.Predict(row).Score.Length);
        }), "tensors of Fit, Transform and Predict left to the finalizer");
    }

    [TestMethod]
    public void ConversionTrainingAndFoldLeaveNoTensorToTheFinalizer()
    {
        using var data = FashionMnist.Load(train: true, limit: 64);
        var options = new TrainingOptions
        {
            Epochs = 2, BatchSize = 32, EarlyStoppingPatience = 1, DivergenceRetries = 1,
            Decorrelation = new DecorrelationOptions { UpdateInterval = 1, MaxBlockSize = 64 },   // block-diagonal R in conv2 and conv3
        };
        Assert.AreEqual(0, LeftToFinalizer(() =>
        {
            using var network = NetworkTrainer.CreateNetwork(d => NetworkBuilder.SmallCnn(1, 28, 28, 10, d, batchNorm: true), options, decorrelated: true);
            new NetworkTrainer(options).Train(network, data, data);
            using var folded = NetworkConversion.ToPlain(network);
        }));
    }

    private sealed class Prediction
    {
        public float[] Score { get; set; } = [];
    }
}
