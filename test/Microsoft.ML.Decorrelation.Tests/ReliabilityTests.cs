using System.Diagnostics;
using System.IO.Compression;
using Microsoft.ML.Data;
using Microsoft.VisualStudio.TestTools.UnitTesting;

namespace Microsoft.ML.Decorrelation.Tests;

/// <summary>Bad pixels, damaged model files, determinism, concurrency and memory.</summary>
[TestClass]
public class ReliabilityTests : TempFolderTest
{
    private static IDataView Keyed(MLContext ml, IEnumerable<MLNetData.PixelRow> rows)
    {
        var data = ml.Data.LoadFromEnumerable(rows);
        return ml.Transforms.Conversion.MapValueToKey("Label").Fit(data).Transform(data);
    }

    private static DecorrelatedImageClassificationTransformer Train(MLContext ml, IDataView data, int epochs = 1, int seed = 4)
        => ml.MulticlassClassification.Trainers.DecorrelatedImageClassification(new DecorrelatedImageClassificationTrainer.Options { MaxEpoch = epochs, Seed = seed }).Fit(data);

    [TestMethod]
    [DataRow(float.NaN)]
    [DataRow(float.PositiveInfinity)]
    public void NonFinitePixelsAreRejectedWithTheRowAtTrainingAndScoring(float bad)
    {
        var ml = new MLContext(1);
        var rows = MLNetData.PixelRows(train: true, count: 100).ToArray();
        var model = Train(ml, Keyed(ml, rows));
        rows[37].Features[300] = bad;
        var data = Keyed(ml, rows);

        var training = Assert.ThrowsExactly<InvalidDataException>(() => Train(ml, data));
        StringAssert.Contains(training.Message, "'Features', row 37: pixel 300 is");
        var scoring = Assert.ThrowsExactly<InvalidDataException>(() => model.Transform(data).GetColumn<float[]>("Score").ToArray());
        StringAssert.Contains(scoring.Message, "row 37");
    }

    private string SavedModel(MLContext ml, out IDataView data)
    {
        data = Keyed(ml, MLNetData.PixelRows(train: true, count: 64));
        var path = Path.Combine(TempFolder, $"model-{Guid.NewGuid():N}.zip");
        using var model = Train(ml, data);
        ml.Model.Save(model, data.Schema, path);
        return path;
    }

    [TestMethod]
    public void SavedModelLoadsThroughTheTypedLoader()
    {
        var ml = new MLContext(1);
        var path = SavedModel(ml, out var data);
        var (model, classifier) = DecorrelatedImageClassificationTransformer.Load(ml, path);
        Assert.AreEqual(10, classifier.ClassCount);
        Assert.AreEqual(CnnArchitecture.SmallCnn, classifier.Architecture);
        Assert.HasCount(64, model.Transform(data).GetColumn<float[]>("Score").ToArray());
    }

    [TestMethod]
    public void TruncatedModelFileGivesAClearError()
    {
        var ml = new MLContext(1);
        var path = SavedModel(ml, out _);
        var bytes = File.ReadAllBytes(path);
        File.WriteAllBytes(path, bytes[..(bytes.Length / 2)]);
        var error = Assert.ThrowsExactly<InvalidDataException>(() => DecorrelatedImageClassificationTransformer.Load(ml, path));
        StringAssert.Contains(error.Message, path);
    }

    [TestMethod]
    public void CorruptedNetworkWeightsGiveAClearError()
    {
        var ml = new MLContext(1);
        var path = SavedModel(ml, out _);
        using (var zip = ZipFile.Open(path, ZipArchiveMode.Update))
        {
            var entry = zip.Entries.Single(e => e.FullName.EndsWith("Network.bin", StringComparison.Ordinal));
            string name = entry.FullName;
            entry.Delete();
            using var stream = zip.CreateEntry(name).Open();
            stream.Write(Enumerable.Range(0, 4096).Select(i => (byte)(i * 7919 % 251)).ToArray());
        }
        var error = Assert.ThrowsExactly<InvalidDataException>(() => DecorrelatedImageClassificationTransformer.Load(ml, path));
        StringAssert.Contains(error.Message, "network weights");
    }

    [TestMethod]
    public void ModelOfANewerFormatIsRefused()
    {
        var ml = new MLContext(1);
        string path;
        DecorrelatedImageClassificationTransformer.SavedFormatVersion = 0x00020001;
        try
        {
            path = SavedModel(ml, out _);
        }
        finally
        {
            DecorrelatedImageClassificationTransformer.SavedFormatVersion = DecorrelatedImageClassificationTransformer.FormatVersion;
        }
        var error = Assert.ThrowsExactly<InvalidDataException>(() => DecorrelatedImageClassificationTransformer.Load(ml, path));
        StringAssert.Contains(error.Message, "could not be loaded");
        Console.WriteLine(error.Message);
    }

    [TestMethod]
    public void ModelOfAnotherTrainerIsNamed()
    {
        var ml = new MLContext(1);
        var data = Keyed(ml, MLNetData.PixelRows(train: true, count: 20));
        var other = ml.Transforms.NormalizeMinMax("Features").Fit(data);
        var path = Path.Combine(TempFolder, "other.zip");
        ml.Model.Save(other, data.Schema, path);
        var error = Assert.ThrowsExactly<InvalidDataException>(() => DecorrelatedImageClassificationTransformer.Load(ml, path));
        StringAssert.Contains(error.Message, "holds no DecorrelatedImageClassificationTransformer");
    }

    [TestMethod]
    public void SameSeedGivesIdenticalMetricsAndScores()
    {
        float[][] Run(out List<DecorrelatedImageClassificationMetrics> epochs)
        {
            var ml = new MLContext(9);
            var data = Keyed(ml, MLNetData.PixelRows(train: true, count: 600));
            var collected = new List<DecorrelatedImageClassificationMetrics>();
            var options = new DecorrelatedImageClassificationTrainer.Options { MaxEpoch = 2, ValidationFraction = 0.2, MetricsCallback = collected.Add };
            using var model = ml.MulticlassClassification.Trainers.DecorrelatedImageClassification(options).Fit(data);
            epochs = collected;
            return model.Transform(data).GetColumn<float[]>("Score").ToArray();
        }
        var first = Run(out var firstEpochs);
        var second = Run(out var secondEpochs);
        CollectionAssert.AreEqual(firstEpochs.Select(e => (e.TrainLoss, e.ValidationAccuracy, e.DecorrelationLoss)).ToArray(),
            secondEpochs.Select(e => (e.TrainLoss, e.ValidationAccuracy, e.DecorrelationLoss)).ToArray());
        for (int i = 0; i < first.Length; i++)
            CollectionAssert.AreEqual(first[i], second[i], $"row {i}");
    }

    [TestMethod]
    public void TheContextsSeedChoosesTheHeldOutRowsAsAnExplicitSeedWould()
    {
        double?[] ValidationAccuracies(int contextSeed, int? optionSeed)
        {
            var ml = new MLContext(contextSeed);
            var data = Keyed(ml, MLNetData.PixelRows(train: true, count: 400));
            var collected = new List<DecorrelatedImageClassificationMetrics>();
            var options = new DecorrelatedImageClassificationTrainer.Options { MaxEpoch = 1, ValidationFraction = 0.25, Seed = optionSeed, MetricsCallback = collected.Add };
            using var model = ml.MulticlassClassification.Trainers.DecorrelatedImageClassification(options).Fit(data);
            return collected.Select(e => e.ValidationAccuracy).ToArray();
        }
        CollectionAssert.AreEqual(ValidationAccuracies(3, optionSeed: 3), ValidationAccuracies(3, optionSeed: null));
    }

    private sealed class Prediction
    {
        public float[] Score { get; set; } = [];
    }

    [TestMethod]
    public void EightThreadsScoreExactlyAsOneThread()
    {
        var ml = new MLContext(1);
        var rows = MLNetData.PixelRows(train: false, count: 400).ToArray();
        using var model = Train(ml, Keyed(ml, MLNetData.PixelRows(train: true, count: 300)));
        var slices = Enumerable.Range(0, 8).Select(t => rows.Skip(50 * t).Take(50).ToArray()).ToArray();
        var serialTransform = slices.Select(s => model.Transform(ml.Data.LoadFromEnumerable(s)).GetColumn<float[]>("Score").ToArray()).ToArray();

        var transformed = new float[8][][];
        var predicted = new float[8][][];
        var threads = Enumerable.Range(0, 8).Select(t => new Thread(() =>
        {
            transformed[t] = model.Transform(ml.Data.LoadFromEnumerable(slices[t])).GetColumn<float[]>("Score").ToArray();
            var engine = ml.Model.CreatePredictionEngine<MLNetData.PixelRow, Prediction>(model);
            predicted[t] = slices[t].Select(row => engine.Predict(row).Score).ToArray();
        })).ToArray();
        foreach (var thread in threads)
            thread.Start();
        foreach (var thread in threads)
            Assert.IsTrue(thread.Join(TimeSpan.FromMinutes(2)), "a scoring thread hung");

        for (int t = 0; t < 8; t++)
        {
            for (int i = 0; i < 50; i++)
            {
                CollectionAssert.AreEqual(serialTransform[t][i], transformed[t][i], $"thread {t}, row {i}: Transform");
                Assert.AreEqual(0.0, serialTransform[t][i].Zip(predicted[t][i]).Max(p => Math.Abs(p.First - p.Second)), 1e-6, $"thread {t}, row {i}: PredictionEngine");
            }
        }
    }

    private static long ResidentBytes()
    {
        GC.Collect();
        GC.WaitForPendingFinalizers();
        GC.Collect();
        using var process = Process.GetCurrentProcess();
        return process.WorkingSet64;
    }

    [TestMethod]
    public void MemoryStaysFlatOverFiveEpochsAndTenThousandScores()
    {
        var ml = new MLContext(1);
        var data = Keyed(ml, MLNetData.PixelRows(train: true, count: 3000));
        var resident = new List<long>();
        var options = new DecorrelatedImageClassificationTrainer.Options { MaxEpoch = 5, MetricsCallback = _ => resident.Add(ResidentBytes()) };
        using var model = ml.MulticlassClassification.Trainers.DecorrelatedImageClassification(options).Fit(data);
        Console.WriteLine("Resident MB after each epoch: " + string.Join(", ", resident.Select(r => r / (1 << 20))));
        Assert.IsLessThan(1.10 * resident[0], resident.Max(), "training memory grew by 10 % or more after epoch 1");

        var many = ml.Data.LoadFromEnumerable(MLNetData.PixelRows(train: true, count: 10000));
        var scored = model.Transform(many);
        long afterFirst = 0;
        int rows = 0;
        using (var cursor = scored.GetRowCursor(scored.Schema.Where(c => c.Name == "Score")))
        {
            var getter = cursor.GetGetter<VBuffer<float>>(scored.Schema["Score"]);
            VBuffer<float> value = default;
            while (cursor.MoveNext())
            {
                getter(ref value);
                if (++rows == 2000)
                    afterFirst = ResidentBytes();
            }
        }
        long afterAll = ResidentBytes();
        Console.WriteLine($"Resident MB while scoring: {afterFirst >> 20} after 2,000 rows, {afterAll >> 20} after {rows}");
        Assert.AreEqual(10000, rows);
        Assert.IsLessThan(1.10 * afterFirst, afterAll, "scoring memory grew by 10 % or more");
    }
}
