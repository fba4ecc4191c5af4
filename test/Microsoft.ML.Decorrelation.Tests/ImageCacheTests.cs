using Microsoft.ML.Data;
using Microsoft.ML.Decorrelation.Torch.Architectures;
using Microsoft.ML.Decorrelation.Torch.Data;
using Microsoft.ML.Decorrelation.Torch.Training;
using Microsoft.VisualStudio.TestTools.UnitTesting;
using static TorchSharp.torch;

namespace Microsoft.ML.Decorrelation.Tests;

/// <summary>The decoded image cache: storage type, round trip, statistics, equality with the in-memory path, cleanup.</summary>
[TestClass]
public class ImageCacheTests : TempFolderTest
{
    /// <summary>Writes <paramref name="images"/> (N×size values) and their labels into a cache in a new folder.</summary>
    private ImageCache Write(float[][] images, int[] labels, (int C, int H, int W) shape, int classCount = 10)
    {
        using var writer = new ImageCacheWriter(Path.Combine(TempFolder, Guid.NewGuid().ToString("N")), shape.C, shape.H, shape.W, classCount);
        for (int i = 0; i < images.Length; i++)
            writer.Append(images[i], labels[i]);
        return writer.Complete();
    }

    private static float[][] RandomImages(int count, int size, Func<Random, float> value, int seed = 1)
    {
        var random = new Random(seed);
        return Enumerable.Range(0, count).Select(_ => Enumerable.Range(0, size).Select(_ => value(random)).ToArray()).ToArray();
    }

    private static float[] Row(IImageSource source, long row)
    {
        var (images, labels) = source.Read([row]);
        using (images)
        using (labels)
            return images.data<float>().ToArray();
    }

    [TestMethod]
    public void EightBitValuesAreStoredAsBytesAndReadBackExactly()
    {
        var images = RandomImages(20, 3 * 4 * 5, r => r.Next(256));
        var labels = Enumerable.Range(0, 20).Select(i => i % 7).ToArray();
        using var cache = Write(images, labels, (3, 4, 5));
        Assert.IsTrue(cache.StoresBytes);
        Assert.AreEqual(20L * 60, new FileInfo(Path.Combine(cache.Folder, "images.bin")).Length, "one byte per value");
        for (int i = 0; i < 20; i++)
        {
            CollectionAssert.AreEqual(images[i], Row(cache, i), $"image {i}");
            Assert.AreEqual(labels[i], cache.Label(i));
        }
    }

    [TestMethod]
    public void NonIntegerValuesSwitchTheCacheToFloatsWithoutChangingWhatWasWritten()
    {
        var images = RandomImages(10, 12, r => r.Next(256));
        images[6] = RandomImages(1, 12, r => (float)r.NextDouble())[0];   // scaled pixels from image 6 on
        images[7][3] = 300;                                               // above 255: not a byte either
        using var cache = Write(images, new int[10], (1, 3, 4));
        Assert.IsFalse(cache.StoresBytes);
        Assert.AreEqual(10L * 12 * 4, new FileInfo(Path.Combine(cache.Folder, "images.bin")).Length);
        for (int i = 0; i < 10; i++)
            CollectionAssert.AreEqual(images[i], Row(cache, i), $"image {i}");
    }

    [TestMethod]
    public void StatisticsAndStandardisedBatchesEqualTheInMemoryDataset()
    {
        using var data = FashionMnist.Load(train: true, limit: 600);
        var bytes = data.Images.mul(255).round();
        var pixels = bytes.data<float>().ToArray();
        var images = Enumerable.Range(0, 600).Select(i => pixels.AsSpan(i * 784, 784).ToArray()).ToArray();
        using var cache = Write(images, data.Labels.data<long>().Select(l => (int)l).ToArray(), (1, 28, 28));
        using var memory = new ImageDataset(bytes.clone(), data.Labels.clone(), 10);

        var (mean, deviation) = memory.ChannelStatistics();
        var (cacheMean, cacheDeviation) = cache.ChannelStatistics();
        Assert.AreEqual(mean[0], cacheMean[0], 1e-4 * mean[0]);
        Assert.AreEqual(deviation[0], cacheDeviation[0], 1e-4 * deviation[0]);
        var kept = Enumerable.Range(100, 300).Select(i => (long)i).ToList();
        using var slice = memory.Slice(100, 300);
        Assert.AreEqual(slice.ChannelStatistics().Mean[0], cache.ChannelStatistics(kept).Mean[0], 1e-4, "statistics of a subset");

        memory.Normalize(mean, deviation);
        cache.Standardize(mean, deviation);
        long[] rows = [5, 599, 0, 42];
        var (fromCache, cacheLabels) = cache.Read(rows);
        var (fromMemory, memoryLabels) = memory.Read(rows);
        Assert.AreEqual(0.0, Reference.MaxAbsDifference(fromMemory, fromCache), "bit for bit");
        CollectionAssert.AreEqual(memoryLabels.data<long>().ToArray(), cacheLabels.data<long>().ToArray());
    }

    [TestMethod]
    public void TrainingFromTheCacheGivesExactlyTheRunOfTheInMemoryPath()
    {
        using var data = FashionMnist.Load(train: true, limit: 500);
        var pixels = data.Images.mul(255).round().data<float>().ToArray();
        using var cache = Write(Enumerable.Range(0, 500).Select(i => pixels.AsSpan(i * 784, 784).ToArray()).ToArray(),
            data.Labels.data<long>().Select(l => (int)l).ToArray(), (1, 28, 28));
        using var memory = new ImageDataset(tensor(pixels, [500, 1, 28, 28]), data.Labels.clone(), 10);
        var (mean, deviation) = cache.ChannelStatistics();
        memory.Normalize(mean, deviation);
        cache.Standardize(mean, deviation);

        var options = new TrainingOptions { Epochs = 2, BatchSize = 64, Seed = 9, RandomCropPadding = 2, Decorrelation = new() { UpdateInterval = 1 } };
        double[] Run(IImageSource source)
        {
            using var network = NetworkTrainer.CreateNetwork(d => NetworkBuilder.SmallCnn(1, 28, 28, 10, d), options, decorrelated: true);
            return new NetworkTrainer(options).Train(network, source, source)
                .SelectMany(m => new[] { m.TrainLoss, m.TrainAccuracy, m.TestAccuracy!.Value, m.TestLoss!.Value }).ToArray();
        }
        CollectionAssert.AreEqual(Run(memory), Run(cache), "same seed, same batches, same numbers");
    }

    [TestMethod]
    public void UnfinishedOrFailedWritesLeaveNothingBehind()
    {
        string folder = Path.Combine(TempFolder, "unfinished");
        using (var writer = new ImageCacheWriter(folder, 1, 2, 2, 3))
        {
            writer.Append([1, 2, 3, 4], 0);
            var error = Assert.ThrowsExactly<InvalidDataException>(() => writer.Append([1, float.NaN, 3, 4], 1));
            StringAssert.Contains(error.Message, "Image 1: pixel value 1 is NaN");
            Assert.ThrowsExactly<InvalidDataException>(() => writer.Append([1, 2, 3, 4], 3));
        }
        Assert.IsFalse(Directory.Exists(folder), "the partial cache is deleted");

        string notAFolder = Path.Combine(TempFolder, "file");
        File.WriteAllText(notAFolder, "x");
        var unwritable = Assert.ThrowsExactly<IOException>(() => new ImageCacheWriter(Path.Combine(notAFolder, "cache"), 1, 2, 2, 3));
        StringAssert.Contains(unwritable.Message, notAFolder);

        Assert.ThrowsExactly<InvalidDataException>(() => ImageCache.Open(TempFolder), "a folder without cache.json is no cache");
    }

    [TestMethod]
    public void TrainerDeletesItsCacheAfterSuccessFailureAndCancellation()
    {
        static string[] Caches() => Directory.GetDirectories(Path.GetTempPath(), "dbp-image-cache-*");
        var before = Caches();
        var ml = new MLContext(seed: 1);
        var rows = MLNetData.PixelRows(train: true, count: 300).ToArray();
        var keys = ml.Transforms.Conversion.MapValueToKey("Label").Fit(ml.Data.LoadFromEnumerable(rows));
        var trainer = ml.MulticlassClassification.Trainers.DecorrelatedImageClassification(new DecorrelatedImageClassificationTrainer.Options { MaxEpoch = 1 });

        trainer.Fit(keys.Transform(ml.Data.LoadFromEnumerable(rows))).Dispose();
        CollectionAssert.AreEquivalent(before, Caches(), "after success");

        rows[250].Features[17] = float.PositiveInfinity;
        var error = Assert.ThrowsExactly<InvalidDataException>(() => trainer.Fit(keys.Transform(ml.Data.LoadFromEnumerable(rows))));
        StringAssert.Contains(error.Message, "column 'Features', row 250: pixel 17 is Infinity");
        CollectionAssert.AreEquivalent(before, Caches(), "after a bad pixel");

        rows[250].Features[17] = 0;
        var cancelling = new DecorrelatedImageClassificationTrainer.Options { MaxEpoch = 3, ProgressCallback = p => { if (p.Batch == 2) throw new OperationCanceledException(); } };
        Assert.ThrowsExactly<OperationCanceledException>(() => ml.MulticlassClassification.Trainers.DecorrelatedImageClassification(cancelling)
            .Fit(keys.Transform(ml.Data.LoadFromEnumerable(rows))));
        CollectionAssert.AreEquivalent(before, Caches(), "after cancellation");
    }

    [TestMethod]
    public void KeptCacheIsReusedForTheSameDataAndRebuiltForChangedOrDamagedData()
    {
        var ml = new MLContext(seed: 1);
        var messages = new List<string>();
        ml.Log += (_, e) =>
        {
            if (e.Message.Contains("image cache", StringComparison.Ordinal))
                lock (messages) messages.Add(e.Kind + ": " + e.Message);
        };
        var rows = MLNetData.PixelRows(train: true, count: 200).ToArray();
        var keys = ml.Transforms.Conversion.MapValueToKey("Label").Fit(ml.Data.LoadFromEnumerable(rows));
        string cacheDirectory = Path.Combine(TempFolder, "kept");
        var options = new DecorrelatedImageClassificationTrainer.Options { MaxEpoch = 1, CacheDirectory = cacheDirectory, Seed = 4 };
        float[] Scores(MLNetData.PixelRow[] data)
        {
            using var model = ml.MulticlassClassification.Trainers.DecorrelatedImageClassification(options).Fit(keys.Transform(ml.Data.LoadFromEnumerable(data)));
            return model.Transform(keys.Transform(ml.Data.LoadFromEnumerable(rows.Take(5)))).GetColumn<float[]>("Score").SelectMany(s => s).ToArray();
        }
        string images = Path.Combine(cacheDirectory, "train", "images.bin");

        var first = Scores(rows);
        Assert.IsTrue(File.Exists(images), "the cache is kept");
        var written = File.GetLastWriteTimeUtc(images);
        CollectionAssert.AreEqual(first, Scores(rows), "the reused cache trains the same model");
        Assert.AreEqual(written, File.GetLastWriteTimeUtc(images), "reused, not rewritten");
        Assert.IsTrue(messages.Any(m => m.Contains("Reusing the image cache")), string.Join("\n", messages));

        // The same labels and row count, one image changed: the fingerprint cannot see it, the re-decoded rows can (row 0 is one).
        var changed = rows.Select(r => new MLNetData.PixelRow { Label = r.Label, Features = (float[])r.Features.Clone() }).ToArray();
        changed[0].Features[400] = 255 - changed[0].Features[400];
        Scores(changed);
        Assert.IsTrue(messages.Any(m => m.Contains("re-decoded images differ")), string.Join("\n", messages));

        // Other labels: another fingerprint.
        var relabelled = changed.Select((r, i) => new MLNetData.PixelRow { Label = i == 3 ? "Bag" : r.Label, Features = r.Features }).ToArray();
        Scores(relabelled);
        Assert.IsTrue(messages.Any(m => m.Contains("made from other data")), string.Join("\n", messages));

        File.WriteAllBytes(images, new byte[10]);   // truncated
        Scores(relabelled);
        Assert.IsTrue(messages.Any(m => m.StartsWith("Warning", StringComparison.Ordinal) && m.Contains("it is damaged")), string.Join("\n", messages));
        using var rebuilt = ImageCache.Open(Path.Combine(cacheDirectory, "train"));
        Assert.AreEqual(200, rebuilt.Count);
    }
}
