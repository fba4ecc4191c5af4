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

    /// <summary>The trainer's temporary caches that exist now.</summary>
    private static string[] Caches() => Directory.GetDirectories(Path.GetTempPath(), "dbp-image-cache-*");

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

    private sealed class PathRow
    {
        public string ImagePath { get; set; } = "";

        public string Label { get; set; } = "";
    }

    [TestMethod]
    public void MixedSizeRgbImagesTrainThroughLoadImagesAndResize()
    {
        var random = new Random(3);
        var rows = new PathRow[2000];
        for (int i = 0; i < rows.Length; i++)
        {
            int width = random.Next(12, 40), height = random.Next(12, 40), label = i % 4;
            var rgba = new byte[width * height * 4];
            for (int p = 0; p < width * height; p++)
            {
                // Class k is brightest in channel k (k = 3: all dark), plus noise: learnable, not trivial.
                for (int c = 0; c < 3; c++)
                    rgba[4 * p + c] = (byte)Math.Clamp((c == label ? 170 : 60) + random.Next(-50, 50), 0, 255);
                rgba[4 * p + 3] = 255;
            }
            string name = $"image-{i}.png";
            using (var image = MLImage.CreateFromPixels(width, height, MLPixelFormat.Rgba32, rgba))
                image.Save(Path.Combine(TempFolder, name));
            rows[i] = new PathRow { ImagePath = name, Label = "class" + label };
        }
        var ml = new MLContext(seed: 2);
        var data = ml.Data.LoadFromEnumerable(rows);
        var decoded = new List<DecorrelatedImageClassificationDecodingProgress>();
        var pipeline = ml.Transforms.Conversion.MapValueToKey("Label")
            .Append(ml.Transforms.LoadImages("Image", TempFolder, "ImagePath"))
            .Append(ml.Transforms.ResizeImages("Image", 24, 24))
            .Append(ml.Transforms.ExtractPixels("Features", "Image"))
            .Append(ml.MulticlassClassification.Trainers.DecorrelatedImageClassification(new DecorrelatedImageClassificationTrainer.Options
            {
                MaxEpoch = 2, BatchSize = 50, DecodingProgressCallback = decoded.Add, CacheDirectory = Path.Combine(TempFolder, "cache"),
            }));
        var model = pipeline.Fit(data);
        Assert.AreEqual(2000, decoded[^1].Images, "every image decoded once");
        using (var cache = ImageCache.Open(Path.Combine(TempFolder, "cache", "train")))
        {
            Assert.IsTrue(cache.StoresBytes, "ExtractPixels of 8-bit images without scaling: one byte per value");
            Assert.AreEqual((3L, 24L, 24L), cache.ImageShape);
        }
        var accuracy = ml.MulticlassClassification.Evaluate(model.Transform(data)).MicroAccuracy;
        Assert.IsGreaterThan(0.9, accuracy, $"accuracy {accuracy}");
    }

    [TestMethod]
    public void CancellingTheDecodingPassLeavesNoCache()
    {
        var before = Caches();
        var ml = new MLContext(seed: 1);
        var rows = MLNetData.PixelRows(train: true, count: 600).ToArray();
        var keyed = ml.Transforms.Conversion.MapValueToKey("Label").Fit(ml.Data.LoadFromEnumerable(rows)).Transform(ml.Data.LoadFromEnumerable(rows));
        var options = new DecorrelatedImageClassificationTrainer.Options
        {
            MaxEpoch = 1,
            DecodingProgressCallback = p => { if (p.Images >= 256) throw new OperationCanceledException("stop decoding"); },
        };
        Assert.ThrowsExactly<OperationCanceledException>(() => ml.MulticlassClassification.Trainers.DecorrelatedImageClassification(options).Fit(keyed));
        CollectionAssert.AreEquivalent(before, Caches(), "the temporary cache is gone");

        options.CacheDirectory = Path.Combine(TempFolder, "kept");
        Assert.ThrowsExactly<OperationCanceledException>(() => ml.MulticlassClassification.Trainers.DecorrelatedImageClassification(options).Fit(keyed));
        Assert.IsFalse(Directory.Exists(Path.Combine(TempFolder, "kept", "train")), "no half-built cache where a later Fit would look");
        Assert.IsEmpty(Directory.GetDirectories(Path.Combine(TempFolder, "kept")), "nor beside it");
    }

    [TestMethod]
    public void TrainingMemoryDoesNotGrowWithTheNumberOfImages()
    {
        // Each size in its own process (the samples' memory run): 2,000 and 8,000 RGB images of 32×32, 20 steps.
        double PeakMegabytes(int count)
        {
            var outcome = Samples.ChildProcessRunner.Run(typeof(Samples.CacheBench).Assembly.Location,
                ["cache-bench", "memory-run", "--count", count.ToString(), "--size", "32", "--steps", "20"], null, TimeSpan.FromMinutes(5));
            Assert.AreEqual(0, outcome.ExitCode, outcome.Output);
            var line = outcome.Output.Split('\n').Last(l => l.StartsWith("RESULT ", StringComparison.Ordinal));
            return double.Parse(line.Split(' ')[3], System.Globalization.CultureInfo.InvariantCulture);
        }
        double small = PeakMegabytes(2000), large = PeakMegabytes(8000);
        double floatMegabytes = 6000 * 3 * 32 * 32 * 4 / 1e6;   // what 6,000 more images took in the old in-memory array
        Console.WriteLine($"peak RssAnon: {small:F0} MB at 2,000 images, {large:F0} MB at 8,000");
        Assert.IsLessThan(floatMegabytes / 2, large - small, $"growth {large - small:F0} MB for 6,000 images ({floatMegabytes:F0} MB as float32)");
    }
}
