using System.Buffers.Binary;
using Microsoft.ML.Data;
using Microsoft.ML.Decorrelation.Samples;
using Microsoft.ML.Decorrelation.Torch.Architectures;
using Microsoft.VisualStudio.TestTools.UnitTesting;

namespace Microsoft.ML.Decorrelation.Tests;

/// <summary>
/// ONNX export against ONNX Runtime: the exported model is scored by test/OnnxScorer, a separate process that references
/// ONNX Runtime and ML.NET's OnnxTransformer but not TorchSharp (as a deployment would), through ONNX Runtime's API and
/// through ML.NET's ApplyOnnxModel; both must equal the transformer's scores and labels.
/// </summary>
[TestClass]
public class OnnxExportTests : TempFolderTest
{
    private const int Images = 64;
    private const int Size = 16;

    private static string ScorerFolder => Path.Combine(AppContext.BaseDirectory, "onnx-scorer");

    public static IEnumerable<object?[]> Networks()
    {
        yield return [CnnArchitecture.SmallCnn, null, 1];
        yield return [CnnArchitecture.SmallCnn, null, 3];
        foreach (var architecture in new[] { CnnArchitecture.ResNet18, CnnArchitecture.ResNet34, CnnArchitecture.ResNet50 })
            foreach (var stem in new[] { ResNetStem.SmallImage, ResNetStem.ImageNet })
                foreach (int channels in new[] { 1, 3 })
                    yield return [architecture, stem, channels];
    }

    private sealed class Row
    {
        public string Label { get; set; } = "";

        public float[] Features { get; set; } = [];
    }

    /// <summary>
    /// <see cref="Images"/> images of <paramref name="channels"/>×16×16 (0–255): a ramp whose direction and slope vary per image
    /// and per channel, plus noise; the class is the quadrant of the ramp's direction. Different enough that even a barely
    /// trained network tells them apart, so the labels test something.
    /// </summary>
    private static IDataView RandomImages(MLContext ml, int channels, int seed)
    {
        var random = new Random(seed);
        var rows = Enumerable.Range(0, Images).Select(_ =>
        {
            double a = 2 * random.NextDouble() - 1, b = 2 * random.NextDouble() - 1;
            var pixels = new float[channels * Size * Size];
            for (int c = 0; c < channels; c++)
                for (int y = 0; y < Size; y++)
                    for (int x = 0; x < Size; x++)
                        pixels[(c * Size + y) * Size + x] = (float)Math.Clamp(128 + (c + 1) * 14 * (a * (x - 7.5) + b * (y - 7.5)) + 20 * random.NextDouble(), 0, 255);
            return new Row { Label = $"class {(a > 0 ? 1 : 0) + (b > 0 ? 2 : 0)}", Features = pixels };
        }).ToArray();
        var definition = SchemaDefinition.Create(typeof(Row));
        definition["Features"].ColumnType = new VectorDataViewType(NumberDataViewType.Single, channels, Size, Size);
        return ml.Data.LoadFromEnumerable(rows, definition);
    }

    /// <summary>Runs the scorer on <paramref name="onnx"/>; returns (raw ONNX Runtime, ML.NET ApplyOnnxModel) scores and labels.</summary>
    private (float[] Scores, uint[] Labels)[] ScoreInChildProcess(string onnx, IDataView data)
    {
        var images = data.GetColumn<float[]>("Features").ToArray();
        int count = images.Length;
        var pixels = images.SelectMany(p => p).ToArray();
        string input = Path.Combine(TempFolder, "pixels.bin");
        var bytes = new byte[pixels.Length * 4];
        for (int i = 0; i < pixels.Length; i++)
            BinaryPrimitives.WriteSingleLittleEndian(bytes.AsSpan(4 * i), pixels[i]);
        File.WriteAllBytes(input, bytes);
        string prefix = Path.Combine(TempFolder, "scored");
        var outcome = ChildProcessRunner.Run(Path.Combine(ScorerFolder, "OnnxScorer.dll"), [onnx, input, count.ToString(), prefix], null, TimeSpan.FromMinutes(3));
        outcome.AssertSucceeded("the ONNX scorer");
        return new[] { "raw", "mlnet" }.Select(kind => (
            Floats(File.ReadAllBytes($"{prefix}.{kind}.scores")),
            Enumerable.Range(0, count).Select(i => BitConverter.ToUInt32(File.ReadAllBytes($"{prefix}.{kind}.labels"), 4 * i)).ToArray())).ToArray();

        static float[] Floats(byte[] raw) => Enumerable.Range(0, raw.Length / 4).Select(i => BitConverter.ToSingle(raw, 4 * i)).ToArray();
    }

    [TestMethod]
    [DynamicData(nameof(Networks))]
    public void OnnxRuntimeScoresEqualTheTransformers(CnnArchitecture architecture, ResNetStem? stem, int channels)
    {
        var ml = new MLContext(1);
        var data = RandomImages(ml, channels, seed: channels);
        var keyed = ml.Transforms.Conversion.MapValueToKey("Label").Fit(data).Transform(data);
        using var model = ml.MulticlassClassification.Trainers.DecorrelatedImageClassification(new DecorrelatedImageClassificationTrainer.Options
        {
            Architecture = architecture, Stem = stem, MaxEpoch = 1, BatchSize = 32, Seed = 3,
        }).Fit(keyed);
        var expectedScores = model.Transform(data).GetColumn<float[]>("Score").ToArray();
        var expectedLabels = model.Transform(data).GetColumn<uint>("PredictedLabel").ToArray();
        // Scores that depend on the image, so equal scores mean something. (After two steps a deep network's BatchNorm statistics
        // are still near their start and it may predict one class for all; the small CNN's labels do vary, checked below.)
        Assert.IsGreaterThan(1e-3, expectedScores.Max(s => s.Zip(expectedScores[0]).Max(p => Math.Abs(p.First - p.Second))));
        if (architecture == CnnArchitecture.SmallCnn)
            Assert.IsGreaterThan(1, expectedLabels.Distinct().Count(), "labels that vary, so equal labels test ArgMax + 1");

        string onnx = Path.Combine(TempFolder, "model.onnx");
        model.ExportOnnx(onnx);
        foreach (var (path, (scores, labels)) in new[] { "ONNX Runtime", "ML.NET ApplyOnnxModel" }.Zip(ScoreInChildProcess(onnx, data)))
        {
            double worst = 0;
            for (int i = 0; i < Images; i++)
                for (int k = 0; k < 4; k++)
                    worst = Math.Max(worst, Math.Abs(scores[i * 4 + k] - expectedScores[i][k]));
            Assert.IsLessThanOrEqualTo(1e-5, worst, $"{architecture} {stem} {channels} channels, {path}: largest score difference");
            CollectionAssert.AreEqual(expectedLabels, labels, $"{path}: PredictedLabel");
        }
    }

    [TestMethod]
    public void ConvertToOnnxOfThePixelStageEqualsExportOnnxAndKeepsTheClassNames()
    {
        var ml = new MLContext(1);
        var data = RandomImages(ml, 3, seed: 7);
        var keyed = ml.Transforms.Conversion.MapValueToKey("Label").Fit(data).Transform(data);
        using var model = ml.MulticlassClassification.Trainers.DecorrelatedImageClassification(new DecorrelatedImageClassificationTrainer.Options
        {
            Architecture = CnnArchitecture.ResNet18, MaxEpoch = 1, BatchSize = 32,
        }).Fit(keyed);
        string converted = Path.Combine(TempFolder, "converted.onnx");
        using (var stream = File.Create(converted))
            ml.Model.ConvertToOnnx(model, ml.Data.LoadFromEnumerable(Array.Empty<PixelsOnly>(), DefinitionOf(data)), stream, "Score", "PredictedLabel");
        var expected = model.Transform(data).GetColumn<float[]>("Score").ToArray();
        var (scores, _) = ScoreInChildProcess(converted, data)[0];
        for (int i = 0; i < Images; i++)
            for (int k = 0; k < 4; k++)
                Assert.AreEqual(expected[i][k], scores[i * 4 + k], 1e-5);
        // ML.NET writes the Score column's slot names (the class names) into the graph.
        var text = System.Text.Encoding.UTF8.GetString(File.ReadAllBytes(converted));
        foreach (var name in new[] { "class 0", "class 1", "class 2", "class 3" })
            StringAssert.Contains(text, name);
    }

    private sealed class PixelsOnly
    {
        public float[] Features { get; set; } = [];
    }

    /// <summary>A schema of the pixel column alone, typed as in <paramref name="data"/>: the graph's only input.</summary>
    private static SchemaDefinition DefinitionOf(IDataView data)
    {
        var definition = SchemaDefinition.Create(typeof(PixelsOnly));
        definition["Features"].ColumnType = data.Schema["Features"].Type;
        return definition;
    }

    [TestMethod]
    public void ImageOrBytesInputIsAClearErrorAndExportOnnxStillWritesTheNetwork()
    {
        var ml = new MLContext(2);
        var rows = ml.Data.LoadFromEnumerable(MLNetData.WritePngs(TempFolder, train: true, count: 40));
        var keyed = ml.Transforms.Conversion.MapValueToKey("Label").Fit(rows).Transform(rows);
        var images = ml.Transforms.LoadImages("Image", TempFolder, "ImagePath").Fit(keyed).Transform(keyed);
        using var onImages = ml.MulticlassClassification.Trainers.DecorrelatedImageClassification(
            new DecorrelatedImageClassificationTrainer.Options { FeatureColumnName = "Image", ImageChannels = 1, MaxEpoch = 1 }).Fit(images);
        var e = Assert.ThrowsExactly<InvalidOperationException>(() => ml.Model.ConvertToOnnx(onImages, images, new MemoryStream()));
        StringAssert.Contains(e.Message, "reads the image column 'Image'");
        StringAssert.Contains(e.Message, "Export from the pixel-vector stage");

        // A whole pipeline whose pixels come from ExtractPixels: the walk back stops there, and the classifier says why.
        var pipeline = ml.Transforms.LoadImages("Image", TempFolder, "ImagePath")
            .Append(ml.Transforms.ResizeImages("Image", 28, 28))
            .Append(ml.Transforms.ExtractPixels("Features", "Image", colorsToExtract: Transforms.Image.ImagePixelExtractingEstimator.ColorBits.Red))
            .Append(ml.MulticlassClassification.Trainers.DecorrelatedImageClassification(new DecorrelatedImageClassificationTrainer.Options { MaxEpoch = 1 }));
        var fitted = pipeline.Fit(keyed);
        e = Assert.ThrowsExactly<InvalidOperationException>(() => ml.Model.ConvertToOnnx(fitted, keyed, new MemoryStream()));
        StringAssert.Contains(e.Message, "The pixel column 'Features' is made by a step that cannot be expressed in ONNX");

        // The direct route starts at the pixels whatever the model read.
        string onnx = Path.Combine(TempFolder, "from-images.onnx");
        onImages.ExportOnnx(onnx);
        var pixels = ml.Transforms.ResizeImages("Image", 28, 28)
            .Append(ml.Transforms.ExtractPixels("Features", "Image", colorsToExtract: Transforms.Image.ImagePixelExtractingEstimator.ColorBits.Red)).Fit(images).Transform(images);
        var expectedScores = onImages.Transform(images).GetColumn<float[]>("Score").ToArray();
        var expectedLabels = onImages.Transform(images).GetColumn<uint>("PredictedLabel").ToArray();
        var (scores, labels) = ScoreInChildProcess(onnx, pixels)[0];
        for (int i = 0; i < expectedScores.Length; i++)
            for (int k = 0; k < 10; k++)
                Assert.AreEqual(expectedScores[i][k], scores[i * 10 + k], 1e-5, $"row {i}: the gray PNG's red plane is its luminance");
        CollectionAssert.AreEqual(expectedLabels, labels);
    }

    [TestMethod]
    public void TheScorerCarriesNoTorchSharp()
    {
        var files = Directory.GetFiles(ScorerFolder, "*", SearchOption.AllDirectories).Select(Path.GetFileName).ToArray();
        Assert.Contains("OnnxScorer.dll", files);
        Assert.IsTrue(files.Any(f => f!.Contains("onnxruntime", StringComparison.OrdinalIgnoreCase)), "ONNX Runtime's natives ship with it");
        Assert.IsFalse(files.Any(f => f!.Contains("TorchSharp", StringComparison.OrdinalIgnoreCase) || f!.Contains("libtorch", StringComparison.OrdinalIgnoreCase)),
            string.Join(", ", files.Where(f => f!.Contains("orch", StringComparison.OrdinalIgnoreCase))));
        StringAssert.DoesNotMatch(File.ReadAllText(Path.Combine(ScorerFolder, "OnnxScorer.deps.json")), new System.Text.RegularExpressions.Regex("TorchSharp|Decorrelation"));
    }
}
