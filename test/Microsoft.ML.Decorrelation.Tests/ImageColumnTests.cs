using Microsoft.ML.Data;
using Microsoft.VisualStudio.TestTools.UnitTesting;

namespace Microsoft.ML.Decorrelation.Tests;

/// <summary>The trainer reads MLImage columns (LoadImages) and encoded bytes (LoadRawImageBytes) as well as pixel vectors.</summary>
[TestClass]
public class ImageColumnTests : TempFolderTest
{
    [TestMethod]
    public void TrainsOnImagesAndOnEncodedBytesAndScoresAfterReload()
    {
        var ml = new MLContext(2);
        var rows = ml.Data.LoadFromEnumerable(MLNetData.WritePngs(TempFolder, train: true, count: 300));
        var keyed = ml.Transforms.Conversion.MapValueToKey("Label").Fit(rows).Transform(rows);
        var images = ml.Transforms.LoadImages("Image", TempFolder, "ImagePath").Fit(keyed).Transform(keyed);
        var bytes = ml.Transforms.LoadRawImageBytes("Bytes", TempFolder, "ImagePath").Fit(keyed).Transform(keyed);

        foreach (var (data, column, channels) in new[] { (images, "Image", 1), (bytes, "Bytes", 3) })
        {
            var options = new DecorrelatedImageClassificationTrainer.Options { FeatureColumnName = column, ImageChannels = channels, MaxEpoch = 1 };
            using var model = ml.MulticlassClassification.Trainers.DecorrelatedImageClassification(options).Fit(data);
            Assert.AreEqual((channels, 28, 28), model.ImageSize, column);
            var scores = model.Transform(data).GetColumn<float[]>("Score").ToArray();
            Assert.HasCount(300, scores);
            Assert.IsTrue(scores.All(s => s.Length == 10 && Math.Abs(s.Sum() - 1) < 1e-4), column);

            using var stream = new MemoryStream();
            ml.Model.Save(model, data.Schema, stream);
            stream.Position = 0;
            var reloaded = new MLContext().Model.Load(stream, out _).Transform(data).GetColumn<float[]>("Score").ToArray();
            for (int i = 0; i < scores.Length; i++)
                CollectionAssert.AreEqual(scores[i], reloaded[i], $"{column} row {i}");
        }
    }

    [TestMethod]
    public void GrayImageReadAsOneChannelEqualsItsPixelVector()
    {
        var ml = new MLContext(2);
        var rows = ml.Data.LoadFromEnumerable(MLNetData.WritePngs(TempFolder, train: true, count: 40));
        var keyed = ml.Transforms.Conversion.MapValueToKey("Label").Fit(rows).Transform(rows);
        var data = ml.Transforms.LoadImages("Image", TempFolder, "ImagePath")
            .Append(ml.Transforms.ResizeImages("Image", 28, 28))
            .Append(ml.Transforms.ExtractPixels("Features", "Image", colorsToExtract: Transforms.Image.ImagePixelExtractingEstimator.ColorBits.Red))
            .Fit(keyed).Transform(keyed);
        var fromPixels = ml.MulticlassClassification.Trainers.DecorrelatedImageClassification(new DecorrelatedImageClassificationTrainer.Options { MaxEpoch = 1, Seed = 5 }).Fit(data);
        var fromImages = ml.MulticlassClassification.Trainers.DecorrelatedImageClassification(
            new DecorrelatedImageClassificationTrainer.Options { MaxEpoch = 1, Seed = 5, FeatureColumnName = "Image", ImageChannels = 1 }).Fit(data);
        var a = fromPixels.Transform(data).GetColumn<float[]>("Score").ToArray();
        var b = fromImages.Transform(data).GetColumn<float[]>("Score").ToArray();
        for (int i = 0; i < a.Length; i++)
            Assert.AreEqual(0.0, a[i].Zip(b[i]).Max(p => Math.Abs(p.First - p.Second)), 1e-4, $"row {i}");
    }

    [TestMethod]
    public void UndecodableBytesNameTheRow()
    {
        var ml = new MLContext(2);
        var paths = MLNetData.WritePngs(TempFolder, train: true, count: 6);
        File.WriteAllBytes(Path.Combine(TempFolder, paths[3].ImagePath), [1, 2, 3, 4, 5]);
        var rows = ml.Data.LoadFromEnumerable(paths);
        var keyed = ml.Transforms.Conversion.MapValueToKey("Label").Fit(rows).Transform(rows);
        var bytes = ml.Transforms.LoadRawImageBytes("Bytes", TempFolder, "ImagePath").Fit(keyed).Transform(keyed);
        var trainer = ml.MulticlassClassification.Trainers.DecorrelatedImageClassification(new DecorrelatedImageClassificationTrainer.Options { FeatureColumnName = "Bytes" });
        var error = Assert.ThrowsExactly<InvalidDataException>(() => trainer.Fit(bytes));
        StringAssert.Contains(error.Message, "'Bytes', row 3");
    }
}
