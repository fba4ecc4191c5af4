using System.CommandLine;
using System.Diagnostics;
using Microsoft.ML.Decorrelation.Torch;
using Microsoft.ML.Decorrelation.Torch.Architectures;
using Microsoft.ML.Decorrelation.Torch.Training;
using Spectre.Console;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Decorrelation.Samples;

/// <summary>
/// <c>onednn-cost</c>: what the oneDNN fallback (<see cref="NativeKernelGuard"/>) costs. Plain backprop training
/// steps of the small CNN, ResNet-18 and ResNet-50 with oneDNN on and off, alternating step by step in one process
/// (the arm that goes first alternates), on random images; prints the median step times and their ratio.
/// </summary>
internal static class OneDnnCost
{
    private sealed record Case(string Name, Func<nn.Module<Tensor, Tensor>> Build, int Channels, int Size, int BatchSize);

    public static System.CommandLine.Command Create()
    {
        var steps = new Option<int>("--steps") { Description = "Timed steps per arm and network (after 2 warm-up steps each).", DefaultValueFactory = _ => 20 };
        var command = new System.CommandLine.Command("onednn-cost", "Median training-step time with oneDNN on and off, interleaved, per network.") { steps };
        command.SetAction(result => Run(AnsiConsole.Console, result.GetValue(steps)));
        return command;
    }

    private static int Run(IAnsiConsole console, int steps)
    {
        Case[] cases =
        [
            new("small CNN 1×28×28", () => NetworkBuilder.SmallCnn(1, 28, 28, 10), 1, 28, 128),
            new("ResNet-18 small-image 3×32×32", () => NetworkBuilder.ResNet18(3, 10, ResNetStem.SmallImage), 3, 32, 64),
            new("ResNet-50 small-image 3×32×32", () => NetworkBuilder.ResNet50(3, 10, ResNetStem.SmallImage), 3, 32, 32),
            new("ResNet-50 ImageNet 3×224×224", () => NetworkBuilder.ResNet50(3, 10, ResNetStem.ImageNet), 3, 224, 8),
        ];
        console.MarkupLineInterpolated($"CPU: {CpuCacheInfo.ThisMachine}; {get_num_threads()} threads; {steps} steps per arm after 2 warm-up steps.");
        var table = new Table().AddColumns("network", "batch", "oneDNN on (ms)", "oneDNN off (ms)", "off / on");
        foreach (var c in cases)
        {
            random.manual_seed(0);
            var options = new TrainingOptions { BatchSize = c.BatchSize, LearningRate = 1e-3, OneDnn = OneDnnMode.Enabled, Decorrelation = null };
            using var on = c.Build();
            using var off = c.Build();
            off.load_state_dict(on.state_dict());
            using var onSession = new NetworkTrainer(options).CreateSession(on, 1000);
            using var offSession = new NetworkTrainer(options).CreateSession(off, 1000);
            var times = new Dictionary<bool, List<double>> { [true] = [], [false] = [] };
            for (int step = 0; step < steps + 2; step++)
            {
                using var scope = NewDisposeScope();
                var images = randn(c.BatchSize, c.Channels, c.Size, c.Size);
                var labels = randint(10, [c.BatchSize]);
                foreach (bool oneDnn in step % 2 == 0 ? new[] { true, false } : [false, true])
                {
                    using var kernels = NativeKernelGuard.Enter(oneDnn ? OneDnnMode.Enabled : OneDnnMode.Disabled);
                    var clock = Stopwatch.StartNew();
                    (oneDnn ? onSession : offSession).Step(images, labels);
                    if (step >= 2)
                        times[oneDnn].Add(clock.Elapsed.TotalMilliseconds);
                }
            }
            double medianOn = Bench.Median(times[true]), medianOff = Bench.Median(times[false]);
            table.AddRow(c.Name, c.BatchSize.ToString(), $"{medianOn:F1}", $"{medianOff:F1}", $"{medianOff / medianOn:F2}");
            console.MarkupLineInterpolated($"{c.Name}: on {medianOn:F1} ms, off {medianOff:F1} ms, ratio {medianOff / medianOn:F2}");
        }
        console.Write(table);
        return 0;
    }
}
