using System.CommandLine;
using System.Diagnostics;
using Microsoft.ML.Data;
using Microsoft.ML.OnnxRuntime;
using Spectre.Console;

namespace Microsoft.ML.Decorrelation.Samples;

/// <summary>
/// <c>export --model model.zip --onnx model.onnx</c>: the trained network as ONNX (docs/onnx.md); <c>predict --onnx model.onnx
/// IMAGE...</c>: classifies images with ONNX Runtime through ML.NET's ApplyOnnxModel, without TorchSharp.
/// </summary>
internal static class OnnxCommands
{
    public static System.CommandLine.Command Export()
    {
        var model = new Option<FileInfo>("--model") { Description = "A model saved by train or by the main job.", Required = true };
        var onnx = new Option<FileInfo>("--onnx") { Description = "The ONNX file to write.", DefaultValueFactory = _ => new FileInfo("model.onnx") };
        var command = new System.CommandLine.Command("export", "Write a trained model's network as ONNX (input: the pixel vector).") { model, onnx };
        command.SetAction(result => RunExport(AnsiConsole.Console, result.GetValue(model)!, result.GetValue(onnx)!));
        return command;
    }

    internal static int RunExport(IAnsiConsole console, FileInfo modelFile, FileInfo onnxFile)
    {
        if (!modelFile.Exists)
            throw new FileNotFoundException($"--model: '{modelFile.FullName}' does not exist.");
        var ml = new MLContext();
        var clock = Stopwatch.StartNew();
        var (_, classifier) = DecorrelatedImageClassificationTransformer.Load(ml, modelFile.FullName);
        using (classifier)
            classifier.ExportOnnx(onnxFile.FullName);
        using var session = new InferenceSession(onnxFile.FullName);
        var (name, input) = session.InputMetadata.Single();
        console.MarkupLineInterpolated(
            $"Wrote {onnxFile.FullName} ({onnxFile.Length / 1e6:F1} MB) in {clock.Elapsed.TotalSeconds:F1} s: input '{name}' [[{string.Join(", ", input.Dimensions)}]], outputs {string.Join(", ", session.OutputMetadata.Keys)}.");
        return 0;
    }

    internal static int RunPredict(IAnsiConsole console, FileInfo onnxFile, FileInfo[] images)
    {
        if (!onnxFile.Exists)
            throw new FileNotFoundException($"--onnx: '{onnxFile.FullName}' does not exist.");
        var ml = new MLContext();
        var rows = ImageFolderCommands.ImageRows(ml, images);
        string inputName, scoreOutput, labelOutput;
        int[] dimensions;
        using (var session = new InferenceSession(onnxFile.FullName))
        {
            (inputName, dimensions) = session.InputMetadata.Select(p => (p.Key, p.Value.Dimensions)).Single();
            scoreOutput = session.OutputMetadata.Keys.Single(k => k.StartsWith("Score", StringComparison.Ordinal));
            labelOutput = session.OutputMetadata.Keys.Single(k => k.StartsWith("PredictedLabel", StringComparison.Ordinal));
        }
        if (dimensions.Length != 4)
            throw new InvalidDataException($"'{onnxFile.FullName}' takes [{string.Join(", ", dimensions)}], not the N×C×H×W pixels export writes.");
        // ML.NET's OnnxTransformer names the columns without ML.NET's ".output" suffix and restores Score's slot names (the class names).
        var scored = ImageFolderCommands.PixelPipeline(ml, inputName, dimensions[1], dimensions[2], dimensions[3])
            .Append(ml.Transforms.ApplyOnnxModel([scoreOutput, labelOutput], [inputName], onnxFile.FullName))
            .Fit(rows).Transform(rows);
        VBuffer<ReadOnlyMemory<char>> names = default;
        scored.Schema["Score"].GetSlotNames(ref names);
        var classNames = names.DenseValues().Select(n => n.ToString()).ToArray();
        var keys = scored.GetColumn<uint[]>("PredictedLabel").ToArray();
        var scores = scored.GetColumn<float[]>("Score").ToArray();
        var table = new Table().AddColumns("Image", "Class", "Probability");
        for (int i = 0; i < images.Length; i++)
        {
            uint key = keys[i][0];
            string label = key >= 1 && key <= classNames.Length ? classNames[key - 1] : $"key {key}";
            table.AddRow(Markup.Escape(images[i].Name), Markup.Escape(label), $"{scores[i].Max():P1}");
        }
        console.Write(table);
        return 0;
    }
}
