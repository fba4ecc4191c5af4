using Microsoft.ML.Data;

namespace Microsoft.ML.Decorrelation.Samples;

/// <summary>
/// The README's "Train on your images" code, runnable: it writes Fashion-MNIST images as PNG files into
/// <c>photos/&lt;class&gt;/</c> of a temporary folder, makes that folder the current directory, and runs the README's code
/// there unchanged (a test checks that the code between the markers below is the README's, line for line).
/// </summary>
internal static class PipelineExample
{
    /// <summary>A row of the README's code: an image file and its class.</summary>
    public sealed class ImageRow
    {
        public string ImagePath { get; set; } = "";

        public string Label { get; set; } = "";
    }

    /// <summary>What the README's code reads back from the prediction engine.</summary>
    public sealed class Prediction
    {
        public string PredictedLabel { get; set; } = "";

        public float[] Score { get; set; } = [];
    }

    public static System.CommandLine.Command Create()
    {
        var images = new System.CommandLine.Option<int>("--images") { Description = "How many Fashion-MNIST images to write as PNG files.", DefaultValueFactory = _ => 5000 };
        var command = new System.CommandLine.Command("pipeline-example", "Run the README's \"Train on your images\" code on a photos/<class>/ folder of Fashion-MNIST PNG files.") { images };
        command.SetAction(result => Run(result.GetValue(images)));
        return command;
    }

    /// <summary>Writes <paramref name="imageCount"/> images into <c>photos/&lt;class&gt;/</c> of a temporary folder and runs the README's code in it.</summary>
    internal static int Run(int imageCount = 5000)
    {
        string work = Directory.CreateTempSubdirectory("dbp-readme-example").FullName;
        string previous = Environment.CurrentDirectory;
        try
        {
            var rows = WritePngs(new FashionMnistSource().ShippedSubset(), Path.Combine(work, "flat"), train: true, imageCount);
            foreach (var row in rows)
            {
                // A folder per class, named after it ("T-shirt/top" becomes "T-shirt-top").
                string classFolder = Directory.CreateDirectory(Path.Combine(work, "photos", row.Label.Replace('/', '-'))).FullName;
                File.Move(Path.Combine(work, "flat", row.ImagePath), Path.Combine(classFolder, row.ImagePath));
            }
            Console.WriteLine($"Wrote {rows.Length} PNG files into {Path.Combine(work, "photos")}/<class>/ and runs the README's code there.");
            Environment.CurrentDirectory = work;
            ReadmeCode();
            return 0;
        }
        finally
        {
            Environment.CurrentDirectory = previous;
            Directory.Delete(work, recursive: true);
        }
    }

    private static void ReadmeCode()
    {
        // --- The README example starts here. ---
        var ml = new MLContext(seed: 0);
        var rows = Directory.EnumerateFiles("photos", "*", SearchOption.AllDirectories)
            .Select(f => new ImageRow { ImagePath = Path.GetFullPath(f), Label = Path.GetFileName(Path.GetDirectoryName(f))! });
        var split = ml.Data.TrainTestSplit(ml.Data.LoadFromEnumerable(rows), testFraction: 0.2);

        var pipeline = ml.Transforms.Conversion.MapValueToKey("Label")
            .Append(ml.Transforms.LoadImages("Image", null, "ImagePath"))
            .Append(ml.Transforms.ResizeImages("Image", 64, 64))
            .Append(ml.Transforms.ExtractPixels("Features", "Image"))
            .Append(ml.MulticlassClassification.Trainers.DecorrelatedImageClassification(
                new DecorrelatedImageClassificationTrainer.Options { MaxEpoch = 6, MetricsCallback = Console.WriteLine }))
            .Append(ml.Transforms.Conversion.MapKeyToValue("PredictedLabel"));
        var model = pipeline.Fit(split.TrainSet);
        Console.WriteLine($"Test accuracy {ml.MulticlassClassification.Evaluate(model.Transform(split.TestSet)).MicroAccuracy:P2}");

        ml.Model.Save(model, split.TrainSet.Schema, "model.zip");
        var engine = ml.Model.CreatePredictionEngine<ImageRow, Prediction>(ml.Model.Load("model.zip", out _));
        var prediction = engine.Predict(rows.First());
        Console.WriteLine($"{rows.First().ImagePath}: {prediction.PredictedLabel} ({prediction.Score.Max():P1})");
        // --- The README example ends here. ---
    }

    /// <summary>Writes the first <paramref name="count"/> images of a Fashion-MNIST split as grey PNG files (RGBA) and returns their rows.</summary>
    internal static ImageRow[] WritePngs(DataSource source, string folder, bool train, int count)
    {
        Directory.CreateDirectory(folder);
        using var data = FashionMnistSource.Load(source, train, count);
        var pixels = data.Images.mul(255f).round().to(TorchSharp.torch.ScalarType.Byte).data<byte>().ToArray();
        var labels = data.Labels.data<long>().ToArray();
        var rows = new ImageRow[labels.Length];
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
            rows[i] = new ImageRow { ImagePath = name, Label = MainJob.ClassNames[labels[i]] };
        }
        return rows;
    }
}
