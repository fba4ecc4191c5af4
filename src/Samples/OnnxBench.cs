using System.CommandLine;
using System.Diagnostics;
using Microsoft.ML.Data;
using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;
using Spectre.Console;

namespace Microsoft.ML.Decorrelation.Samples;

/// <summary>
/// <c>onnx-bench</c> (docs/performance.md, "ONNX scoring"): scoring throughput of the small CNN and ResNet-18 at 3×224×224, our
/// TorchSharp transformer against ONNX Runtime, one image at a time and in large batches, in alternating rounds (medians);
/// then the size of each model file and of each runtime's native libraries.
/// </summary>
internal static class OnnxBench
{
    private sealed class Row
    {
        public string Label { get; set; } = "";

        public float[] Features { get; set; } = [];
    }

    public static System.CommandLine.Command Create()
    {
        var rounds = new Option<int>("--rounds") { Description = "Alternating rounds of every measurement.", DefaultValueFactory = _ => 3 };
        var batch = new Option<int>("--batch") { Description = "Images per large batch.", DefaultValueFactory = _ => 256 };
        var single = new Option<int>("--single") { Description = "Images scored one at a time per round.", DefaultValueFactory = _ => 32 };
        var command = new System.CommandLine.Command("onnx-bench", "Scoring throughput and deployment size: TorchSharp transformer against ONNX Runtime, at 224×224.")
        {
            rounds, batch, single,
        };
        command.SetAction(result => Run(AnsiConsole.Console, result.GetValue(rounds), result.GetValue(batch), result.GetValue(single)));
        return command;
    }

    private static int Run(IAnsiConsole console, int rounds, int batch, int single)
    {
        const int size = 224;
        var folder = Directory.CreateTempSubdirectory("dbp-onnx-bench").FullName;
        var table = new Table().AddColumns("network", "TorchSharp, 1 image (images/s)", "ONNX Runtime, 1 image", $"TorchSharp, {batch} images (Transform)",
            $"ONNX Runtime, {batch} per Run", "model.zip (MB)", "model.onnx (MB)");
        try
        {
            var random = new Random(1);
            var images = Enumerable.Range(0, batch).Select(i => new Row
            {
                Label = $"class {i % 10}",
                Features = Enumerable.Range(0, 3 * size * size).Select(_ => (float)random.Next(256)).ToArray(),
            }).ToArray();
            var ml = new MLContext(1);
            var definition = SchemaDefinition.Create(typeof(Row));
            definition["Features"].ColumnType = new VectorDataViewType(NumberDataViewType.Single, 3, size, size);
            var data = ml.Data.LoadFromEnumerable(images, definition);
            var keyed = ml.Transforms.Conversion.MapValueToKey("Label").Fit(data).Transform(data);
            foreach (var architecture in new[] { CnnArchitecture.SmallCnn, CnnArchitecture.ResNet18 })
            {
                console.MarkupLineInterpolated($"[grey]{architecture}: a one-epoch fit on 32 images, export, then {rounds} rounds…[/]");
                using var model = ml.MulticlassClassification.Trainers.DecorrelatedImageClassification(new DecorrelatedImageClassificationTrainer.Options
                {
                    Architecture = architecture, MaxEpoch = 1, BatchSize = 16,
                }).Fit(ml.Data.TakeRows(keyed, 32));
                string zip = Path.Combine(folder, $"{architecture}.zip"), onnx = Path.Combine(folder, $"{architecture}.onnx");
                ml.Model.Save(model, data.Schema, zip);
                model.ExportOnnx(onnx);

                using var session = new InferenceSession(onnx);
                string input = session.InputMetadata.Keys.Single();
                var engine = ml.Model.CreatePredictionEngine<Row, Prediction>(model, inputSchemaDefinition: definition);
                var pixels = images.SelectMany(r => r.Features).ToArray();
                var all = new DenseTensor<float>(pixels, [batch, 3, size, size]);
                var measures = new Dictionary<string, List<double>> { ["ts1"] = [], ["ort1"] = [], ["tsN"] = [], ["ortN"] = [] };
                double Rate(int count, Action action)
                {
                    var clock = Stopwatch.StartNew();
                    action();
                    return count / clock.Elapsed.TotalSeconds;
                }
                void TorchSharpSingle() => measures["ts1"].Add(Rate(single, () => { for (int i = 0; i < single; i++) engine.Predict(images[i]); }));
                void OnnxSingle() => measures["ort1"].Add(Rate(single, () =>
                {
                    for (int i = 0; i < single; i++)
                    {
                        var one = new DenseTensor<float>(images[i].Features, [1, 3, size, size]);
                        using var output = session.Run([NamedOnnxValue.CreateFromTensor(input, one)]);
                    }
                }));
                void TorchSharpBatch() => measures["tsN"].Add(Rate(batch, () => model.Transform(data).GetColumn<float[]>("Score").Count()));
                void OnnxBatch() => measures["ortN"].Add(Rate(batch, () =>
                {
                    using var output = session.Run([NamedOnnxValue.CreateFromTensor(input, all)]);
                }));
                // Warm-up, then rounds whose order alternates.
                engine.Predict(images[0]);
                using (session.Run([NamedOnnxValue.CreateFromTensor(input, new DenseTensor<float>(images[0].Features, [1, 3, size, size]))])) { }
                for (int round = 0; round < rounds; round++)
                {
                    Action[] order = round % 2 == 0 ? [TorchSharpSingle, OnnxSingle, TorchSharpBatch, OnnxBatch] : [OnnxSingle, TorchSharpSingle, OnnxBatch, TorchSharpBatch];
                    foreach (var measure in order)
                        measure();
                }
                string Median(string key) => $"{Bench.Median(measures[key]):F1}";
                table.AddRow(architecture.ToString(), Median("ts1"), Median("ort1"), Median("tsN"), Median("ortN"),
                    $"{new FileInfo(zip).Length / 1e6:F1}", $"{new FileInfo(onnx).Length / 1e6:F1}");
                console.MarkupLineInterpolated($"[grey]{architecture}: ONNX Runtime / TorchSharp, 1 image {Ratio(measures["ort1"], measures["ts1"]):F2}×, {batch} images {Ratio(measures["ortN"], measures["tsN"]):F2}×[/]");
            }
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
        console.Write(table);
        string here = AppContext.BaseDirectory;
        long Bytes(Func<string, bool> pick) => Directory.GetFiles(here).Where(f => pick(Path.GetFileName(f))).Sum(f => new FileInfo(f).Length);
        long torch = Bytes(f => f.EndsWith(".so", StringComparison.Ordinal) && (f.StartsWith("libtorch", StringComparison.Ordinal) || f.StartsWith("libc10", StringComparison.Ordinal)
            || f.StartsWith("libgomp", StringComparison.Ordinal) || f == "libLibTorchSharp.so") || f == "TorchSharp.dll");
        long onnxRuntime = Bytes(f => f.StartsWith("libonnxruntime", StringComparison.Ordinal) || f == "Microsoft.ML.OnnxRuntime.dll");
        console.MarkupLineInterpolated($"Runtime on disk (linux-x64): TorchSharp + LibTorch {torch / 1e6:F0} MB; ONNX Runtime {onnxRuntime / 1e6:F0} MB.");
        console.MarkupLineInterpolated($"CPU: {MachineInfo.CpuModel()}, {Environment.ProcessorCount} logical cores.");
        return 0;
    }

    private static double Ratio(List<double> a, List<double> b) => Bench.Median(a) / Bench.Median(b);

    private sealed class Prediction
    {
        public float[] Score { get; set; } = [];
    }
}
