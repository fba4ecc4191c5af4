using Microsoft.ML.Data;
using Spectre.Console;

namespace Microsoft.ML.Decorrelation.Samples;

/// <summary>
/// The README's pipeline example, runnable: PNG files on disk → LoadImages → ResizeImages → ExtractPixels →
/// DecorrelatedImageClassification → MapKeyToValue, then Evaluate, Model.Save/Load and PredictionEngine.
/// The PNG files are written from the shipped Fashion-MNIST subset into a temporary folder.
/// </summary>
internal static class PipelineExample
{
    public sealed class ImageData
    {
        public string ImagePath { get; set; } = "";

        public string Label { get; set; } = "";
    }

    public sealed class ImagePrediction
    {
        public string PredictedLabel { get; set; } = "";

        public float[] Score { get; set; } = [];
    }

    public static System.CommandLine.Command Create()
    {
        var command = new System.CommandLine.Command("pipeline-example", "Run the README's ML.NET pipeline on PNG files made from the Fashion-MNIST subset.");
        command.SetAction(_ => Run(AnsiConsole.Console));
        return command;
    }

    internal static int Run(IAnsiConsole console, int trainCount = 5000, int testCount = 1000, int? epochs = null)
    {
        string imageFolder = Directory.CreateTempSubdirectory("dbp-pipeline-example").FullName;
        try
        {
            var subset = new FashionMnistSource().ShippedSubset();
            var trainRows = WritePngs(subset, imageFolder, train: true, trainCount);
            var testRows = WritePngs(subset, imageFolder, train: false, testCount);
            console.MarkupLineInterpolated($"Wrote {trainRows.Length} training and {testRows.Length} test PNG files to {imageFolder}.");

            // --- The README example starts here. ---
            var ml = new MLContext(seed: 0);
            IDataView train = ml.Data.LoadFromEnumerable(trainRows);
            IDataView test = ml.Data.LoadFromEnumerable(testRows);

            var pipeline = ml.Transforms.Conversion.MapValueToKey("Label")
                .Append(ml.Transforms.LoadImages("Image", imageFolder, "ImagePath"))
                .Append(ml.Transforms.ResizeImages("Image", 28, 28))
                .Append(ml.Transforms.ExtractPixels("Features", "Image"))
                .Append(ml.MulticlassClassification.Trainers.DecorrelatedImageClassification(
                    new DecorrelatedImageClassificationTrainer.Options { MaxEpoch = epochs ?? new DecorrelatedImageClassificationTrainer.Options().MaxEpoch, MetricsCallback = m => Console.WriteLine(m) }))
                .Append(ml.Transforms.Conversion.MapKeyToValue("PredictedLabel"));
            var model = pipeline.Fit(train);

            var metrics = ml.MulticlassClassification.Evaluate(model.Transform(test));
            Console.WriteLine($"Accuracy {metrics.MicroAccuracy:P2}, log-loss {metrics.LogLoss:F3}");

            string modelPath = Path.Combine(imageFolder, "model.zip");
            ml.Model.Save(model, train.Schema, modelPath);
            var loaded = new MLContext().Model.Load(modelPath, out _);
            var engine = ml.Model.CreatePredictionEngine<ImageData, ImagePrediction>(loaded);
            var prediction = engine.Predict(testRows[0]);
            Console.WriteLine($"{testRows[0].ImagePath}: {prediction.PredictedLabel} ({prediction.Score.Max():P1}), true label {testRows[0].Label}");
            // --- The README example ends here. ---
            return 0;
        }
        finally
        {
            Directory.Delete(imageFolder, recursive: true);
        }
    }

    private static ImageData[] WritePngs(DataSource source, string folder, bool train, int count)
    {
        using var data = FashionMnistSource.Load(source, train, count);
        var pixels = data.Images.mul(255f).round().to(TorchSharp.torch.ScalarType.Byte).data<byte>().ToArray();
        var labels = data.Labels.data<long>().ToArray();
        var rows = new ImageData[labels.Length];
        var rgba = new byte[28 * 28 * 4];
        for (int i = 0; i < rows.Length; i++)
        {
            for (int p = 0; p < 784; p++)
            {
                rgba[4 * p] = rgba[4 * p + 1] = rgba[4 * p + 2] = pixels[i * 784 + p];
                rgba[4 * p + 3] = 255;
            }
            string name = $"{(train ? "train" : "test")}-{i:D5}.png";
            using (var image = MLImage.CreateFromPixels(28, 28, MLPixelFormat.Rgba32, rgba))
                image.Save(Path.Combine(folder, name));
            rows[i] = new ImageData { ImagePath = name, Label = MainJob.ClassNames[labels[i]] };
        }
        return rows;
    }
}
