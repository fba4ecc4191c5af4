using System.CommandLine;
using Microsoft.ML.Data;
using Spectre.Console;

namespace Microsoft.ML.Decorrelation.Samples;

/// <summary>
/// <c>train --images DIR</c>: one sub-folder per class, any image size; <c>predict --model M IMAGE...</c>:
/// class and probability of each image, from a fresh process.
/// </summary>
internal static class ImageFolderCommands
{
    private static readonly string[] ImageExtensions = [".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"];

    internal sealed class ImageRow
    {
        public string ImagePath { get; set; } = "";

        public string Label { get; set; } = "";
    }

    public static System.CommandLine.Command Train()
    {
        var images = new Option<DirectoryInfo>("--images") { Description = "A folder with one sub-folder of images per class.", Required = true };
        var model = new Option<FileInfo>("--model") { Description = "Where to save the model.", DefaultValueFactory = _ => new FileInfo("model.zip") };
        var epochs = new Option<int>("--epochs") { Description = "Epochs.", DefaultValueFactory = _ => new DecorrelatedImageClassificationTrainer.Options().MaxEpoch };
        var size = new Option<int?>("--size") { Description = "Images are resized to SIZE×SIZE. Default 32, or 224 with --pretrained (what ImageNet weights expect)." };
        var architecture = new Option<CnnArchitecture>("--arch") { Description = "Network.", DefaultValueFactory = _ => CnnArchitecture.SmallCnn };
        var batchSize = new Option<int>("--batch-size") { Description = "Images per step.", DefaultValueFactory = _ => new DecorrelatedImageClassificationTrainer.Options().BatchSize };
        var plain = new Option<bool>("--backprop") { Description = "Train with plain backpropagation instead of DBP." };
        var pretrained = new Option<FileInfo?>("--pretrained")
        {
            Description = "Start from a pretrained state dict (.pth/.pt, .safetensors or TorchSharp's format; torchvision's resnet18/34/50 or this library's names). " +
                          "Needs the matching --arch.",
        };
        var headOnly = new Option<int>("--head-only-epochs") { Description = "Train only the classifier for this many epochs, then every layer." };
        var backboneScale = new Option<double>("--backbone-lr-scale") { Description = "The backbone's learning rate as a fraction of the classifier's.", DefaultValueFactory = _ => 1 };
        var command = new System.CommandLine.Command("train", "Train an image classifier on a folder of class sub-folders and save it.")
        {
            images, model, epochs, size, architecture, batchSize, plain, pretrained, headOnly, backboneScale,
        };
        command.SetAction(result =>
        {
            var weights = result.GetValue(pretrained);
            return RunTrain(AnsiConsole.Console, new TrainSettings(result.GetValue(images)!, result.GetValue(model)!)
            {
                Epochs = result.GetValue(epochs),
                Size = result.GetValue(size) ?? (weights is null ? 32 : 224),
                Architecture = result.GetValue(architecture),
                BatchSize = result.GetValue(batchSize),
                Decorrelate = !result.GetValue(plain),
                Pretrained = weights,
                HeadOnlyEpochs = result.GetValue(headOnly),
                BackboneLearningRateScale = result.GetValue(backboneScale),
            });
        });
        return command;
    }

    public static System.CommandLine.Command Predict()
    {
        var model = new Option<FileInfo?>("--model") { Description = "A model saved by train or by the main job." };
        var onnx = new Option<FileInfo?>("--onnx") { Description = "Instead of --model: an ONNX model written by export, scored with ONNX Runtime (no TorchSharp)." };
        var images = new Argument<FileInfo[]>("images") { Description = "Image files to classify.", Arity = ArgumentArity.OneOrMore };
        var command = new System.CommandLine.Command("predict", "Classify images with a saved model (ML.NET zip, or ONNX).") { model, onnx, images };
        command.SetAction(result => (result.GetValue(model), result.GetValue(onnx)) switch
        {
            ({ } zip, null) => RunPredict(AnsiConsole.Console, zip, result.GetValue(images)!),
            (null, { } file) => OnnxCommands.RunPredict(AnsiConsole.Console, file, result.GetValue(images)!),
            _ => throw new ArgumentException("predict needs exactly one of --model and --onnx."),
        });
        return command;
    }

    /// <summary>The images of <paramref name="folder"/>, labelled by the name of the sub-folder that holds them.</summary>
    /// <exception cref="DirectoryNotFoundException">The folder does not exist.</exception>
    /// <exception cref="InvalidOperationException">It holds images of fewer than two classes.</exception>
    internal static ImageRow[] FolderRows(DirectoryInfo folder)
    {
        if (!folder.Exists)
            throw new DirectoryNotFoundException($"--images: '{folder.FullName}' does not exist.");
        var rows = folder.GetDirectories().OrderBy(d => d.Name, StringComparer.Ordinal)
            .SelectMany(classFolder => classFolder.EnumerateFiles("*", SearchOption.AllDirectories)
                .Where(file => ImageExtensions.Contains(file.Extension.ToLowerInvariant()))
                .OrderBy(file => file.FullName, StringComparer.Ordinal)
                .Select(file => new ImageRow { ImagePath = file.FullName, Label = classFolder.Name }))
            .ToArray();
        int classes = rows.Select(r => r.Label).Distinct().Count();
        if (classes < 2)
            throw new InvalidOperationException($"--images: '{folder.FullName}' must hold at least two sub-folders with images (found {classes}).");
        return rows;
    }

    /// <summary>The rows of <paramref name="images"/> (paths), after checking that each exists.</summary>
    internal static IDataView ImageRows(MLContext ml, FileInfo[] images)
    {
        foreach (var image in images.Where(i => !i.Exists))
            throw new FileNotFoundException($"Image '{image.FullName}' does not exist.");
        return ml.Data.LoadFromEnumerable(images.Select(i => new ImageRow { ImagePath = i.FullName }));
    }

    /// <summary>
    /// Loads, resizes and extracts the pixels of the ImagePath column into <paramref name="pixelColumn"/> as the main job's
    /// pixel vectors are made: planar, 0–255, the red plane for one channel (the PNGs are gray).
    /// </summary>
    internal static IEstimator<ITransformer> PixelPipeline(MLContext ml, string pixelColumn, int channels, int height, int width)
        => ml.Transforms.LoadImages("Image", imageFolder: null, inputColumnName: "ImagePath")
            .Append(ml.Transforms.ResizeImages("Image", width, height))
            .Append(ml.Transforms.ExtractPixels(pixelColumn, "Image", colorsToExtract: channels == 1
                ? Transforms.Image.ImagePixelExtractingEstimator.ColorBits.Red
                : Transforms.Image.ImagePixelExtractingEstimator.ColorBits.Rgb));

    /// <summary>What <c>train</c> was asked for.</summary>
    internal sealed record TrainSettings(DirectoryInfo Folder, FileInfo ModelFile)
    {
        public int Epochs { get; init; } = new DecorrelatedImageClassificationTrainer.Options().MaxEpoch;
        public int Size { get; init; } = 32;
        public CnnArchitecture Architecture { get; init; } = CnnArchitecture.SmallCnn;
        public int BatchSize { get; init; } = new DecorrelatedImageClassificationTrainer.Options().BatchSize;
        public bool Decorrelate { get; init; } = true;
        public FileInfo? Pretrained { get; init; }
        public int HeadOnlyEpochs { get; init; }
        public double BackboneLearningRateScale { get; init; } = 1;
    }

    internal static int RunTrain(IAnsiConsole console, TrainSettings settings)
    {
        var (folder, modelFile) = (settings.Folder, settings.ModelFile);
        int epochs = settings.Epochs, size = settings.Size;
        if (settings.Pretrained is { Exists: false } missing)
            throw new FileNotFoundException($"--pretrained: '{missing.FullName}' does not exist.", missing.FullName);
        var rows = FolderRows(folder);
        int classes = rows.Select(r => r.Label).Distinct().Count();
        console.MarkupLineInterpolated($"{rows.Length} images in {classes} classes from {folder.FullName}.");

        var ml = new MLContext(seed: 0);
        // The trainer's notes (pretrained weights, standardisation, what it trains); its epochs come through MetricsCallback.
        ml.Log += (_, e) =>
        {
            if (e.Kind == Runtime.ChannelMessageKind.Info && e.Source.EndsWith(nameof(DecorrelatedImageClassificationTrainer), StringComparison.Ordinal)
                && !e.RawMessage.StartsWith("Epoch ", StringComparison.Ordinal) && !e.RawMessage.StartsWith("Decoded ", StringComparison.Ordinal))
                console.MarkupLineInterpolated($"[grey]{e.RawMessage}[/]");
        };
        var data = ml.Data.ShuffleRows(ml.Data.LoadFromEnumerable(rows), seed: 0);
        var labels = ml.Transforms.Conversion.MapValueToKey("Label").Fit(data);
        ProgressTask? decoding = null, training = null;
        var options = new DecorrelatedImageClassificationTrainer.Options
        {
            Architecture = settings.Architecture,
            MaxEpoch = epochs,
            BatchSize = settings.BatchSize,
            UseDecorrelation = settings.Decorrelate,
            PretrainedWeightsPath = settings.Pretrained?.FullName,
            HeadOnlyEpochs = settings.HeadOnlyEpochs,
            BackboneLearningRateScale = settings.BackboneLearningRateScale,
            ValidationFraction = rows.Length >= 50 ? 0.1 : 0,
            MetricsCallback = m => console.MarkupLineInterpolated($"{m}"),
            DecodingProgressCallback = p =>
            {
                decoding!.Value = p.Images;
                decoding.Description = $"Decoding images ({p.Images / Math.Max(p.Seconds, 1e-3):F0}/s)";
            },
            ProgressCallback = p =>
            {
                training!.MaxValue = (double)p.BatchesPerEpoch * epochs;
                training.Value = (double)(p.Epoch - 1) * p.BatchesPerEpoch + p.Batch;
                training.Description = $"Epoch {p.Epoch}/{epochs}, loss {p.Loss:F3}";
            },
        };
        // The saved pipeline starts from ImagePath alone, so predict needs no label column.
        var pipeline = ml.Transforms.LoadImages("Image", imageFolder: null, inputColumnName: "ImagePath")
            .Append(ml.Transforms.ResizeImages("Image", size, size))
            .Append(ml.Transforms.ExtractPixels("Features", "Image"))
            .Append(ml.MulticlassClassification.Trainers.DecorrelatedImageClassification(options))
            .Append(ml.Transforms.Conversion.MapKeyToValue("PredictedLabel"));
        ITransformer model = null!;
        console.Progress()
            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new RemainingTimeColumn())
            .Start(context =>
            {
                decoding = context.AddTask("Decoding images", maxValue: rows.Length);
                training = context.AddTask("Training", autoStart: true, maxValue: 1);
                model = pipeline.Fit(labels.Transform(data));
                decoding.Value = decoding.MaxValue;
                training.Value = training.MaxValue;
            });
        ml.Model.Save(model, data.Schema, modelFile.FullName);
        console.MarkupLineInterpolated($"Saved the model to {modelFile.FullName}.");
        return 0;
    }

    internal static int RunPredict(IAnsiConsole console, FileInfo modelFile, FileInfo[] images)
    {
        if (!modelFile.Exists)
            throw new FileNotFoundException($"--model: '{modelFile.FullName}' does not exist.");
        var ml = new MLContext();
        var model = ml.Model.Load(modelFile.FullName, out var inputSchema);
        var rows = ImageRows(ml, images);
        IDataView input;
        if (inputSchema.GetColumnOrNull("ImagePath") is not null)
        {
            input = rows;
        }
        else if (inputSchema.GetColumnOrNull("Features")?.Type is VectorDataViewType { Dimensions.Length: 3 } pixels)
        {
            // A model trained on pixel vectors (the main job): make the vectors from the images the same way.
            input = PixelPipeline(ml, "Features", pixels.Dimensions[0], pixels.Dimensions[1], pixels.Dimensions[2]).Fit(rows).Transform(rows);
        }
        else
        {
            throw new InvalidOperationException($"The model in '{modelFile.FullName}' takes neither an ImagePath column nor a Features pixel vector with dimensions.");
        }
        var scored = model.Transform(input);
        var predicted = scored.GetColumn<string>("PredictedLabel").ToArray();
        var scores = scored.GetColumn<float[]>("Score").ToArray();
        var table = new Table().AddColumns("Image", "Class", "Probability");
        for (int i = 0; i < images.Length; i++)
            table.AddRow(Markup.Escape(images[i].Name), Markup.Escape(predicted[i]), $"{scores[i].Max():P1}");
        console.Write(table);
        return 0;
    }
}
