using System.Diagnostics;
using Microsoft.ML.Data;
using Microsoft.ML.Decorrelation.Torch.Training;
using Microsoft.VisualStudio.TestTools.UnitTesting;

namespace Microsoft.ML.Decorrelation.Tests;

[TestClass]
public class TrainerTests
{
    private static MLContext Context(int seed = 1) => new(seed) { FallbackToCpu = true };

    private static DecorrelatedImageClassificationTrainer.Options SmallOptions(int epochs = 1) => new()
    {
        MaxEpoch = epochs,
        BatchSize = 64,
        DecorrelationLearningRate = 1e-2,
        // A run of a few steps: the default step schedule would spend two thirds of them at a tenth of the rate.
        LearningRateSchedule = LearningRateSchedule.Constant,
    };

    /// <summary>A small trained pipeline on pixel vectors, shared by the tests that only score.</summary>
    private static (MLContext Context, ITransformer Model, IDataView Test) Trained => _trained.Value;

    private static readonly Lazy<(MLContext, ITransformer, IDataView)> _trained = new(() =>
    {
        var ml = Context();
        var train = ml.Data.LoadFromEnumerable(MLNetData.PixelRows(train: true, count: 2000));
        var test = ml.Data.LoadFromEnumerable(MLNetData.PixelRows(train: false, count: 300));
        var pipeline = ml.Transforms.Conversion.MapValueToKey("Label")
            .Append(ml.MulticlassClassification.Trainers.DecorrelatedImageClassification(SmallOptions(epochs: 2)));
        return (ml, pipeline.Fit(train), test);
    });

    // SchemaShape.Create and MLContext.CancelExecution are internal in ML.NET 5; ML.NET's own tests call them directly.
    internal static SchemaShape ShapeOf(DataViewSchema schema)
        => (SchemaShape)typeof(SchemaShape).GetMethod("Create", System.Reflection.BindingFlags.Static | System.Reflection.BindingFlags.NonPublic, [typeof(DataViewSchema)])!
            .Invoke(null, [schema])!;

    private static void CancelExecution(MLContext ml)
        => typeof(MLContext).GetMethod("CancelExecution", System.Reflection.BindingFlags.Instance | System.Reflection.BindingFlags.NonPublic)!.Invoke(ml, null);

    private static bool TryFind(SchemaShape shape, string name, out SchemaShape.Column column)
    {
        column = shape.FirstOrDefault(c => c.Name == name);
        return column.Name == name;
    }

    private static float[][] Scores(IDataView scored, string column = "Score")
        => scored.GetColumn<float[]>(column).ToArray();

    [TestMethod]
    public void PngPipelineEndToEndReachesSeventyFivePercent()
    {
        var folder = Directory.CreateTempSubdirectory("dbp-png").FullName;
        try
        {
            var ml = Context();
            var train = ml.Data.LoadFromEnumerable(MLNetData.WritePngs(folder, train: true, count: 5000));
            var test = ml.Data.LoadFromEnumerable(MLNetData.WritePngs(folder, train: false, count: 1000));
            var pipeline = ml.Transforms.Conversion.MapValueToKey("Label")
                .Append(ml.Transforms.LoadImages("Image", folder, "ImagePath"))
                .Append(ml.Transforms.ResizeImages("Image", 28, 28))
                .Append(ml.Transforms.ExtractPixels("Features", "Image"))
                .Append(ml.MulticlassClassification.Trainers.DecorrelatedImageClassification(maxEpoch: 2))
                .Append(ml.Transforms.Conversion.MapKeyToValue("PredictedLabel"));
            var model = pipeline.Fit(train);
            var metrics = ml.MulticlassClassification.Evaluate(model.Transform(test));
            Console.WriteLine($"PNG pipeline, 2 epochs: accuracy {metrics.MicroAccuracy:P2}, log-loss {metrics.LogLoss:F3}");
            Assert.IsGreaterThanOrEqualTo(0.75, metrics.MicroAccuracy);
            Assert.IsTrue(double.IsFinite(metrics.LogLoss) && metrics.LogLoss < 1.0, $"log-loss {metrics.LogLoss}");

            var predicted = model.Transform(test).GetColumn<string>("PredictedLabel").ToArray();
            CollectionAssert.IsSubsetOf(predicted.Distinct().ToArray(), MLNetData.ClassNames, "MapKeyToValue gives the class names back");
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    [TestMethod]
    public void SchemaIsTheSameFromEstimatorFittedAndLoadedModel()
    {
        var (ml, model, test) = Trained;
        var estimator = ml.MulticlassClassification.Trainers.DecorrelatedImageClassification();
        var keyed = ml.Transforms.Conversion.MapValueToKey("Label").Fit(test).Transform(test);
        var shape = estimator.GetOutputSchema(ShapeOf(keyed.Schema));
        var fitted = model.GetOutputSchema(test.Schema);
        using var stream = new MemoryStream();
        ml.Model.Save(model, test.Schema, stream);
        stream.Position = 0;
        var loaded = new MLContext().Model.Load(stream, out _).GetOutputSchema(test.Schema);

        Assert.IsTrue(TryFind(shape, "Score", out var scoreShape));
        Assert.AreEqual(SchemaShape.Column.VectorKind.Vector, scoreShape.Kind);
        Assert.AreEqual(NumberDataViewType.Single, scoreShape.ItemType);
        Assert.IsTrue(TryFind(shape, "PredictedLabel", out var labelShape));
        Assert.IsTrue(labelShape.IsKey);
        foreach (var schema in new[] { fitted, loaded })
        {
            var score = schema["Score"];
            Assert.AreEqual(new VectorDataViewType(NumberDataViewType.Single, 10), score.Type);
            var predicted = schema["PredictedLabel"];
            Assert.AreEqual(new KeyDataViewType(typeof(uint), 10), predicted.Type);
            foreach (var kind in new[] { "SlotNames", "ScoreColumnKind", "ScoreValueKind", "ScoreColumnSetId" })
                Assert.IsNotNull(score.Annotations.Schema.GetColumnOrNull(kind), $"Score lacks annotation {kind}");
            Assert.IsTrue(TryFind(scoreShape.Annotations, "SlotNames", out _), "the estimator promises slot names");
            VBuffer<ReadOnlyMemory<char>> slotNames = default;
            score.Annotations.GetValue("SlotNames", ref slotNames);
            VBuffer<ReadOnlyMemory<char>> keyValues = default;
            predicted.Annotations.GetValue("KeyValues", ref keyValues);
            CollectionAssert.AreEqual(slotNames.DenseValues().Select(v => v.ToString()).ToArray(), keyValues.DenseValues().Select(v => v.ToString()).ToArray());
            CollectionAssert.AreEquivalent(MLNetData.ClassNames, slotNames.DenseValues().Select(v => v.ToString()).ToArray());
        }
    }

    [TestMethod]
    public void SaveAndLoadInANewContextGiveIdenticalScores()
    {
        var (ml, model, test) = Trained;
        var path = Path.Combine(Path.GetTempPath(), $"dbp-model-{Guid.NewGuid():N}.zip");
        try
        {
            ml.Model.Save(model, test.Schema, path);
            var loaded = new MLContext().Model.Load(path, out var inputSchema);
            Assert.IsNotNull(inputSchema.GetColumnOrNull("Features"));
            var expected = Scores(model.Transform(test));
            var actual = Scores(loaded.Transform(test));
            Assert.HasCount(300, actual);
            for (int i = 0; i < expected.Length; i++)
                CollectionAssert.AreEqual(expected[i], actual[i], $"row {i}");
            Assert.AreEqual(1.0, expected[0].Sum(), 1e-5, "scores are probabilities");
        }
        finally
        {
            File.Delete(path);
        }
    }

    [TestMethod]
    public void PredictionEngineGivesWhatTransformGives()
    {
        var (ml, model, test) = Trained;
        var engine = ml.Model.CreatePredictionEngine<MLNetData.PixelRow, Prediction>(model);
        var rows = ml.Data.CreateEnumerable<MLNetData.PixelRow>(test, reuseRowObject: false).Take(20).ToArray();
        var expected = Scores(model.Transform(ml.Data.LoadFromEnumerable(rows)));
        var keys = model.Transform(ml.Data.LoadFromEnumerable(rows)).GetColumn<uint>("PredictedLabel").ToArray();
        for (int i = 0; i < rows.Length; i++)
        {
            var prediction = engine.Predict(rows[i]);
            Assert.AreEqual(0.0, expected[i].Zip(prediction.Score).Max(p => Math.Abs(p.First - p.Second)), 1e-6, $"row {i}");
            Assert.AreEqual(keys[i], prediction.PredictedLabel, $"row {i}");
        }
    }

    private sealed class Prediction
    {
        public float[] Score { get; set; } = [];

        public uint PredictedLabel { get; set; }
    }

    [TestMethod]
    public void EvaluateReportsConsistentMetrics()
    {
        var (ml, model, test) = Trained;
        var scored = model.Transform(test);
        var metrics = ml.MulticlassClassification.Evaluate(scored);
        var labels = scored.GetColumn<uint>("Label").ToArray();
        var predicted = scored.GetColumn<uint>("PredictedLabel").ToArray();
        double accuracy = labels.Zip(predicted).Count(p => p.First == p.Second) / (double)labels.Length;
        Assert.AreEqual(accuracy, metrics.MicroAccuracy, 1e-9, "accuracy recomputed from the columns");
        Assert.IsGreaterThan(0.6, accuracy);
        Assert.HasCount(10, metrics.PerClassLogLoss);
        Assert.AreEqual(10, metrics.ConfusionMatrix.NumberOfClasses);
    }

    [TestMethod]
    public void CrossValidateWithAFoldMissingAClass()
    {
        var ml = Context();
        var rows = MLNetData.PixelRows(train: true, count: 600).Where(r => r.Label != "Bag").ToList();
        rows.Add(MLNetData.PixelRows(train: true, count: 1000).First(r => r.Label == "Bag"));   // one row: absent from two folds' test and one fold's training data
        // Keys are assigned once, before splitting: every fold's label key has 10 classes, and the fold
        // whose test set holds the single "Bag" row trains without any example of that class.
        var raw = ml.Data.LoadFromEnumerable(rows);
        var data = ml.Transforms.Conversion.MapValueToKey("Label").Fit(raw).Transform(raw);
        var trainer = ml.MulticlassClassification.Trainers.DecorrelatedImageClassification(SmallOptions());
        var results = ml.MulticlassClassification.CrossValidate(data, trainer, numberOfFolds: 3);
        Assert.HasCount(3, results);
        foreach (var fold in results)
        {
            Assert.AreEqual(10, fold.Metrics.ConfusionMatrix.NumberOfClasses, "class count comes from the key type");
            Assert.IsGreaterThan(0.3, fold.Metrics.MicroAccuracy);
        }
    }

    [TestMethod]
    public void LogsOneInfoPerEpochAndCallsTheMetricsCallback()
    {
        var ml = Context();
        var messages = new List<string>();
        ml.Log += (_, e) =>
        {
            if (e.Kind == Runtime.ChannelMessageKind.Info && e.Source.Contains("DecorrelatedImageClassificationTrainer"))
                lock (messages) messages.Add(e.Message);
        };
        var epochs = new List<DecorrelatedImageClassificationMetrics>();
        var options = SmallOptions(epochs: 2);
        options.MetricsCallback = epochs.Add;
        options.ValidationFraction = 0.2;
        var data = ml.Data.LoadFromEnumerable(MLNetData.PixelRows(train: true, count: 500));
        ml.Transforms.Conversion.MapValueToKey("Label").Append(ml.MulticlassClassification.Trainers.DecorrelatedImageClassification(options)).Fit(data);

        CollectionAssert.AreEqual(new[] { 1.0, 2.0 }, epochs.Select(e => e.Epoch).ToArray());
        Assert.IsTrue(epochs.All(e => e.ValidationAccuracy is > 0 and <= 1 && e.DecorrelationLoss > 0 && e.LayerDecorrelationLoss.Count == 4));
        Assert.AreEqual(2, messages.Count(m => m.Contains("] Epoch ", StringComparison.Ordinal)), string.Join("\n", messages));
    }

    [TestMethod]
    public void CancelExecutionStopsTrainingWithinABatch()
    {
        var ml = Context();
        int batches = 0;
        var options = SmallOptions(epochs: 5);
        var data = ml.Data.LoadFromEnumerable(MLNetData.PixelRows(train: true, count: 2000));
        var pipeline = ml.Transforms.Conversion.MapValueToKey("Label").Append(ml.MulticlassClassification.Trainers.DecorrelatedImageClassification(options));
        options.MetricsCallback = _ => batches++;
        var keyed = ml.Transforms.Conversion.MapValueToKey("Label").Fit(data).Transform(data);
        var trainer = ml.MulticlassClassification.Trainers.DecorrelatedImageClassification(options);
        var clock = Stopwatch.StartNew();
        var cancel = Task.Run(async () =>
        {
            await Task.Delay(1500);
            CancelExecution(ml);
        });
        Assert.ThrowsExactly<OperationCanceledException>(() => trainer.Fit(keyed));
        cancel.Wait();
        Assert.IsLessThan(5.0, clock.Elapsed.TotalSeconds, "5 epochs would take far longer: training stopped early");
        Assert.IsLessThan(5, batches, "not every epoch ran");
    }

    [TestMethod]
    public void PlainBackpropOptionTrainsTheSameNetworkWithoutDecorrelation()
    {
        var ml = Context();
        var epochs = new List<DecorrelatedImageClassificationMetrics>();
        var options = SmallOptions();
        options.UseDecorrelation = false;
        options.MetricsCallback = epochs.Add;
        var data = ml.Data.LoadFromEnumerable(MLNetData.PixelRows(train: true, count: 300));
        var model = ml.Transforms.Conversion.MapValueToKey("Label").Append(ml.MulticlassClassification.Trainers.DecorrelatedImageClassification(options)).Fit(data);
        Assert.IsNull(epochs.Single().DecorrelationLoss);
        Assert.HasCount(300, Scores(model.Transform(data)));
    }

    /// <summary>Trains on 300 rows with <see cref="SmallOptions"/> changed by <paramref name="configure"/>; returns each epoch's metrics.</summary>
    private static List<DecorrelatedImageClassificationMetrics> EpochMetrics(int epochs, Action<DecorrelatedImageClassificationTrainer.Options> configure)
    {
        var ml = Context();
        var metrics = new List<DecorrelatedImageClassificationMetrics>();
        var options = SmallOptions(epochs);
        configure(options);
        options.MetricsCallback = metrics.Add;
        var data = ml.Data.LoadFromEnumerable(MLNetData.PixelRows(train: true, count: 300));
        using var model = (IDisposable)ml.Transforms.Conversion.MapValueToKey("Label").Append(ml.MulticlassClassification.Trainers.DecorrelatedImageClassification(options)).Fit(data).LastTransformer;
        return metrics;
    }

    [TestMethod]
    public void AugmentationOptionsChangeTrainingReproducibly()
    {
        double[] TrainLosses(int cropPadding, bool flip) => EpochMetrics(2, options =>
        {
            options.RandomCropPadding = cropPadding;
            options.RandomHorizontalFlip = flip;
        }).Select(e => e.TrainLoss).ToArray();

        var plain = TrainLosses(0, false);
        var augmented = TrainLosses(2, true);
        CollectionAssert.AreEqual(augmented, TrainLosses(2, true), "the same seed draws the same augmentation");
        Assert.AreNotEqual(plain[0], augmented[0], "the augmentation reached the training batches");
        Assert.AreNotEqual(augmented[0], TrainLosses(2, false)[0], "the flip is drawn too");
    }

    [TestMethod]
    public void BlockSizeOptionSplitsOnlyTheWideLayers()
    {
        IReadOnlyDictionary<string, double> LayerLosses(int maxBlockSize)
            => EpochMetrics(1, options => options.DecorrelationMaxBlockSize = maxBlockSize).Single().LayerDecorrelationLoss;

        var full = LayerLosses(0);
        var blocked = LayerLosses(100);
        Assert.HasCount(4, full);
        // The first convolution (D = 9) keeps its full R and sees the same images: the same loss. The others
        // (D = 288, 576, 1152) are split into blocks and measure only within-block correlations.
        var first = full.Keys.First();
        Assert.AreEqual(full[first], blocked[first], 1e-12, first);
        foreach (var layer in full.Keys.Skip(1))
            Assert.AreNotEqual(full[layer], blocked[layer], layer);
    }
}
