// A consumer application of Microsoft.ML.Decorrelation, built OUTSIDE the repository by build/consumer-check.sh
// (against the packed NuGet package, and against the project by reference). It does what the README's Install section
// shows: PNG files → LoadImages → ResizeImages → ExtractPixels → the trainer, then Evaluate, Save, and Load in a second
// process whose predictions must be identical.
using System.Diagnostics;
using System.IO.Compression;
using Microsoft.ML;
using Microsoft.ML.Data;
using Microsoft.ML.Decorrelation;

if (args is ["score", var work])
    return Score(work);
if (args is not ["train", var subset, var folder, var count])
{
    Console.Error.WriteLine("usage: train SUBSET_FOLDER WORK_FOLDER IMAGE_COUNT | score WORK_FOLDER");
    return 2;
}

string[] classes = ["T-shirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Boot"];
var rows = WritePngs(subset, Path.Combine(folder, "images"), int.Parse(count), classes);
var ml = new MLContext(seed: 1);
var data = ml.Data.LoadFromEnumerable(rows);
var pipeline = ml.Transforms.Conversion.MapValueToKey("Label")
    .Append(ml.Transforms.LoadImages("Image", Path.Combine(folder, "images"), "ImagePath"))
    .Append(ml.Transforms.ResizeImages("Image", 32, 32))
    .Append(ml.Transforms.ExtractPixels("Features", "Image"))
    .Append(ml.MulticlassClassification.Trainers.DecorrelatedImageClassification(new DecorrelatedImageClassificationTrainer.Options { MaxEpoch = 1, BatchSize = 50 }))
    .Append(ml.Transforms.Conversion.MapKeyToValue("PredictedLabel"));
var clock = Stopwatch.StartNew();
ITransformer model;
try
{
    model = pipeline.Fit(data);
}
catch (PlatformNotSupportedException e)
{
    Console.Error.WriteLine($"Training is not possible here: {e.Message}");
    return 3;
}
var metrics = ml.MulticlassClassification.Evaluate(model.Transform(data));
Console.WriteLine($"trained on {rows.Length} PNG files in {clock.Elapsed.TotalSeconds:F1} s; training-set accuracy {metrics.MicroAccuracy:P1}, log-loss {metrics.LogLoss:F3}");
ml.Model.Save(model, data.Schema, Path.Combine(folder, "model.zip"));
File.WriteAllLines(Path.Combine(folder, "rows.tsv"), rows.Select(r => $"{r.ImagePath}\t{r.Label}"));
var first = Predictions(ml, model, data);
File.WriteAllLines(Path.Combine(folder, "predictions-1.txt"), first);

// Load and score in a second process that has never seen the trainer (through dotnet or the app host, as this one runs).
var secondProcess = new ProcessStartInfo(Environment.ProcessPath!) { UseShellExecute = false };
if (Path.GetFileNameWithoutExtension(Environment.ProcessPath!) == "dotnet")
    secondProcess.ArgumentList.Add(typeof(Row).Assembly.Location);
secondProcess.ArgumentList.Add("score");
secondProcess.ArgumentList.Add(folder);
using var score = Process.Start(secondProcess)!;
score.WaitForExit();
if (score.ExitCode != 0)
    return score.ExitCode;
var second = File.ReadAllLines(Path.Combine(folder, "predictions-2.txt"));
if (!first.SequenceEqual(second))
{
    Console.Error.WriteLine("The loaded model's predictions differ from the trained model's.");
    return 1;
}
Console.WriteLine($"the model loaded in a second process predicts the same {second.Length} labels and scores: OK");
return 0;

static int Score(string folder)
{
    var ml = new MLContext();
    var model = ml.Model.Load(Path.Combine(folder, "model.zip"), out _);
    var rows = File.ReadAllLines(Path.Combine(folder, "rows.tsv")).Select(line => line.Split('\t')).Select(p => new Row { ImagePath = p[0], Label = p[1] }).ToArray();
    File.WriteAllLines(Path.Combine(folder, "predictions-2.txt"), Predictions(ml, model, ml.Data.LoadFromEnumerable(rows)));
    return 0;
}

static string[] Predictions(MLContext ml, ITransformer model, IDataView data)
{
    var scored = model.Transform(data);
    var labels = scored.GetColumn<string>("PredictedLabel").ToArray();
    var scores = scored.GetColumn<float[]>("Score").ToArray();
    return labels.Zip(scores, (label, score) => label + " " + string.Join(' ', score.Select(s => s.ToString("R")))).ToArray();
}

// The first IMAGE_COUNT images of the Fashion-MNIST subset as RGB PNG files.
static Row[] WritePngs(string subset, string folder, int count, string[] classes)
{
    Directory.CreateDirectory(folder);
    byte[] Read(string name)
    {
        using var gzip = new GZipStream(File.OpenRead(Path.Combine(subset, name)), CompressionMode.Decompress);
        using var memory = new MemoryStream();
        gzip.CopyTo(memory);
        return memory.ToArray();
    }
    var images = Read("train-images-idx3-ubyte.gz");
    var labels = Read("train-labels-idx1-ubyte.gz");
    var rows = new Row[count];
    for (int i = 0; i < count; i++)
    {
        var rgba = new byte[28 * 28 * 4];
        for (int p = 0; p < 784; p++)
        {
            byte value = images[16 + i * 784 + p];
            rgba[4 * p] = rgba[4 * p + 1] = rgba[4 * p + 2] = value;
            rgba[4 * p + 3] = 255;
        }
        string name = $"image-{i}.png";
        using (var image = MLImage.CreateFromPixels(28, 28, MLPixelFormat.Rgba32, rgba))
            image.Save(Path.Combine(folder, name));
        rows[i] = new Row { ImagePath = name, Label = classes[labels[8 + i]] };
    }
    return rows;
}

sealed class Row
{
    public string ImagePath { get; set; } = "";

    public string Label { get; set; } = "";
}
