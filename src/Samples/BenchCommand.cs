using System.CommandLine;
using System.Diagnostics;
using Microsoft.ML.Decorrelation.Torch;
using Microsoft.ML.Decorrelation.Torch.Architectures;
using Microsoft.ML.Decorrelation.Torch.Training;
using Spectre.Console;
using static TorchSharp.torch;

namespace Microsoft.ML.Decorrelation.Samples;

/// <summary>
/// Measures the training step time of backprop and DBP on the same batches, interleaved step by step so
/// that machine noise hits both arms alike, and prints the medians and their ratio.
/// </summary>
internal static class BenchCommand
{
    public static System.CommandLine.Command Create()
    {
        var caseOption = new Option<string>("--case") { Description = "small-cnn or resnet18.", DefaultValueFactory = _ => "small-cnn" };
        caseOption.AcceptOnlyFromAmong("small-cnn", "resnet18");
        var steps = new Option<int>("--steps") { Description = "Timed steps per arm.", DefaultValueFactory = _ => 60 };
        var warmup = new Option<int>("--warmup") { Description = "Untimed steps per arm first.", DefaultValueFactory = _ => 5 };
        var batchSize = new Option<int?>("--batch-size") { Description = "Images per step (default 128 for small-cnn, 64 for resnet18)." };
        var threads = new Option<int>("--threads") { Description = "CPU threads for Torch.", DefaultValueFactory = _ => Environment.ProcessorCount };
        var data = new Option<string?>("--data") { Description = "Folder with the Fashion-MNIST IDX files (default: the Debian package's)." };
        var command = new System.CommandLine.Command("bench", "Step time of backprop against DBP, interleaved, medians and ratio.")
        {
            caseOption, steps, warmup, batchSize, threads, data,
        };
        command.SetAction(result =>
        {
            string benchCase = result.GetValue(caseOption)!;
            return Run(benchCase, result.GetValue(steps), result.GetValue(warmup),
                result.GetValue(batchSize) ?? (benchCase == "resnet18" ? 64 : 128), result.GetValue(threads), result.GetValue(data));
        });
        return command;
    }

    private static int Run(string benchCase, int steps, int warmup, int batchSize, int threads, string? data)
    {
        using var train = FashionMnistSource.Load(new FashionMnistSource().Locate(data), train: true, limit: (steps + warmup) * batchSize);
        var (mean, deviation) = train.ChannelStatistics();
        train.Normalize(mean, deviation);
        var options = new TrainingOptions { BatchSize = batchSize, Threads = threads, Epochs = 1 };
        Func<Device, nn.Module<Tensor, Tensor>> build = benchCase == "resnet18"
            ? device => NetworkBuilder.ResNet18(1, 10, ResNetStem.SmallImage, device)
            : device => NetworkBuilder.SmallCnn(1, 28, 28, 10, device);
        var trainer = new NetworkTrainer(options);
        int stepsPerEpoch = (int)(train.Count / batchSize);
        using var plainNetwork = NetworkTrainer.CreateNetwork(build, options, decorrelated: false);
        using var decorrelatedNetwork = NetworkTrainer.CreateNetwork(build, options, decorrelated: true);
        using var plain = trainer.CreateSession(plainNetwork, stepsPerEpoch);
        using var decorrelated = trainer.CreateSession(decorrelatedNetwork, stepsPerEpoch);

        var times = new Dictionary<TrainingSession, List<double>> { [plain] = [], [decorrelated] = [] };
        AnsiConsole.MarkupLine($"Case [blue]{benchCase}[/], batch {batchSize}, {threads} threads, native allocator tuning: {(NativeAllocatorTuning.IsApplied ? "on" : "off")}.");
        AnsiConsole.Progress().Start(context =>
        {
            var task = context.AddTask("Interleaved steps", maxValue: steps + warmup);
            for (int step = 0; step < steps + warmup; step++)
            {
                using var scope = NewDisposeScope();
                var images = train.Images.narrow(0, (long)step * batchSize, batchSize);
                var labels = train.Labels.narrow(0, (long)step * batchSize, batchSize);
                // Alternate which arm goes first so that neither always runs on a warmer cache.
                var order = step % 2 == 0 ? new[] { plain, decorrelated } : new[] { decorrelated, plain };
                foreach (var session in order)
                {
                    var clock = Stopwatch.StartNew();
                    session.Step(images, labels);
                    if (step >= warmup)
                        times[session].Add(clock.Elapsed.TotalMilliseconds);
                }
                task.Increment(1);
            }
        });

        double plainMedian = Median(times[plain]), decorrelatedMedian = Median(times[decorrelated]);
        var table = new Table().AddColumns("Arm", "Median step (ms)", "Steps timed");
        table.AddRow("Backprop", $"{plainMedian:F1}", $"{times[plain].Count}");
        table.AddRow("DBP", $"{decorrelatedMedian:F1}", $"{times[decorrelated].Count}");
        AnsiConsole.Write(table);
        AnsiConsole.MarkupLine($"Step ratio DBP / backprop: [green]{decorrelatedMedian / plainMedian:F3}[/]");
        return 0;
    }

    private static double Median(List<double> values)
    {
        var sorted = values.Order().ToArray();
        return sorted.Length % 2 == 1 ? sorted[sorted.Length / 2] : (sorted[sorted.Length / 2 - 1] + sorted[sorted.Length / 2]) / 2;
    }
}
