using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using Microsoft.ML.Decorrelation.Torch;
using Microsoft.ML.Decorrelation.Torch.Architectures;
using Microsoft.ML.Decorrelation.Torch.Distributed;
using Microsoft.ML.Decorrelation.Torch.Training;
using Spectre.Console;
using static TorchSharp.torch;

namespace Microsoft.ML.Decorrelation.Samples;

/// <summary>
/// <c>dp-bench</c> (docs/performance.md, "Data-parallel training"): DBP step time and its breakdown for 1 process × 2 threads against
/// 2 ranks × 1 thread under <c>mpirun</c>, alternating, medians over rounds; bytes all-reduced per step; and a scaling model
/// from those measurements for 2–16 nodes.
/// </summary>
internal static class DataParallelBench
{
    private sealed record Measurement(string Arch, int Ranks, double StepMs, double ComputeMs, double GradientMs, double StatisticsMs,
        double GradientBytes, double StatisticsBytes);

    public static IEnumerable<System.CommandLine.Command> Create()
    {
        var steps = new Option<int>("--steps") { Description = "Training steps per run (the first 5 are not timed).", DefaultValueFactory = _ => 40 };
        var rounds = new Option<int>("--rounds") { Description = "Alternating pairs of runs.", DefaultValueFactory = _ => 3 };
        var bench = new System.CommandLine.Command("dp-bench", "Data-parallel DBP: 1 process × 2 threads against mpirun -np 2 × 1 thread; communication; scaling model.")
        {
            steps, rounds,
        };
        bench.SetAction(result => Run(result.GetValue(steps), result.GetValue(rounds)));
        var architecture = new Option<CnnArchitecture>("--arch") { Required = true };
        var threads = new Option<int>("--threads") { Required = true };
        var child = new System.CommandLine.Command("dp-bench-run", "One run of dp-bench (as a single process or one MPI rank).") { Hidden = true };
        child.Options.Add(architecture);
        child.Options.Add(steps);
        child.Options.Add(threads);
        child.SetAction(result => RunOne(result.GetValue(architecture), result.GetValue(steps), result.GetValue(threads)));
        return [bench, child];
    }

    private static int Run(int steps, int rounds)
    {
        var console = AnsiConsole.Console;
        var results = new List<Measurement>();
        foreach (var architecture in new[] { CnnArchitecture.SmallCnn, CnnArchitecture.ResNet18 })
        {
            for (int round = 0; round < rounds; round++)
            {
                foreach (int ranks in round % 2 == 0 ? new[] { 1, 2 } : [2, 1])
                {
                    console.MarkupLineInterpolated($"[grey]{architecture}, round {round + 1}: {(ranks == 1 ? "1 process × 2 threads" : "2 ranks × 1 thread")}…[/]");
                    results.Add(Launch(architecture, steps, ranks));
                }
            }
        }
        var table = new Table().AddColumns("network", "run", "step (ms)", "compute", "gradient all-reduce", "statistics all-reduce", "gradient KB/step", "statistics KB/step");
        var medians = new Dictionary<(string, int), Measurement>();
        foreach (var group in results.GroupBy(r => (r.Arch, r.Ranks)))
        {
            double Median(Func<Measurement, double> pick) => Bench.Median(group.Select(pick));
            var m = new Measurement(group.Key.Arch, group.Key.Ranks, Median(r => r.StepMs), Median(r => r.ComputeMs), Median(r => r.GradientMs),
                Median(r => r.StatisticsMs), Median(r => r.GradientBytes), Median(r => r.StatisticsBytes));
            medians[group.Key] = m;
            table.AddRow(m.Arch, m.Ranks == 1 ? "1 process × 2 threads" : "2 ranks × 1 thread", $"{m.StepMs:F1}", $"{m.ComputeMs:F1}", $"{m.GradientMs:F2}",
                $"{m.StatisticsMs:F2}", $"{m.GradientBytes / 1024:F0}", $"{m.StatisticsBytes / 1024:F0}");
        }
        console.Write(table);

        // The model: a global batch split over N nodes computes in T/N; a ring all-reduce of B bytes costs 2(N−1)/N·B/bandwidth
        // plus 2(N−1) message latencies (20 µs each assumed) for each of the step's two all-reduces.
        var model = new Table().AddColumns("network", "device", "network", "N = 2", "N = 4", "N = 8", "N = 16");
        foreach (var architecture in medians.Keys.Select(k => k.Item1).Distinct())
        {
            var single = medians[(architecture, 1)];
            var pair = medians[(architecture, 2)];
            double bytes = pair.GradientBytes + pair.StatisticsBytes;
            foreach (var (device, computeMs) in new[] { ("this CPU", single.StepMs), ("GPU (assumed 20× faster)", single.StepMs / 20) })
            {
                foreach (double gigabits in new[] { 10.0, 100.0 })
                {
                    string Efficiency(int n)
                    {
                        double communicationMs = 2.0 * (n - 1) / n * bytes * 8 / (gigabits * 1e9) * 1e3 + 2 * 2 * (n - 1) * 0.02;
                        double stepMs = computeMs / n + communicationMs;
                        return $"{computeMs / stepMs:F1}× ({computeMs / n / stepMs:P0})";
                    }
                    model.AddRow(architecture, device, $"{gigabits:F0} Gbit/s", Efficiency(2), Efficiency(4), Efficiency(8), Efficiency(16));
                }
            }
        }
        console.MarkupLine("Scaling model (speed-up over one node, and efficiency), from the measured step time and bytes:");
        console.Write(model);
        console.MarkupLineInterpolated($"CPU: {MachineInfo.CpuModel()}, {Environment.ProcessorCount} logical cores.");
        return 0;
    }

    private static Measurement Launch(CnnArchitecture architecture, int steps, int ranks)
    {
        var outcome = ChildProcessRunner.Run(typeof(DataParallelBench).Assembly.Location,
            ["dp-bench-run", "--arch", architecture.ToString(), "--steps", steps.ToString(CultureInfo.InvariantCulture), "--threads", ranks == 1 ? "2" : "1"],
            null, TimeSpan.FromHours(1), ranks);
        if (outcome.ExitCode != 0)
            throw new InvalidOperationException($"The {ranks}-rank run was {outcome.Describe()}: {outcome.Output}");
        string output = outcome.Output;
        // The JSON line, without any terminal control sequence a launcher put before it.
        var line = output.Split('\n').First(l => l.Contains("{\"Arch\"", StringComparison.Ordinal));
        return JsonSerializer.Deserialize<Measurement>(line[line.IndexOf('{')..])!;
    }

    private static int RunOne(CnnArchitecture architecture, int steps, int threads)
    {
        var world = MpiCommunicator.LaunchedByMpi ? MpiCommunicator.World : null;
        int batchSize = architecture == CnnArchitecture.SmallCnn ? 128 : 64;
        var source = new FashionMnistSource();
        using var train = FashionMnistSource.Load(source.Locate(null), train: true, limit: steps * batchSize);
        var (mean, deviation) = train.ChannelStatistics();
        train.Normalize(mean, deviation);
        // The trainer's defaults for the decorrelated layers (DecorrelationMaxInputSize 1152: ResNet-18's widest 3×3 convolutions stay plain).
        var options = new TrainingOptions
        {
            Epochs = 1, BatchSize = batchSize, LearningRate = 2e-3, Seed = 1, Threads = threads, Communicator = world,
            Decorrelation = new DecorrelationOptions { MaxInputSize = new DecorrelatedImageClassificationTrainer.Options().DecorrelationMaxInputSize },
        };
        using var network = NetworkTrainer.CreateNetwork(d => architecture == CnnArchitecture.SmallCnn
            ? NetworkBuilder.SmallCnn(1, 28, 28, 10, d)
            : NetworkBuilder.ResNet18(1, 10, ResNetStem.SmallImage, d), options, decorrelated: true);
        var trainer = new NetworkTrainer(options);
        var order = NetworkTrainer.EpochOrder(train.Count, 1, 1);
        if (world is not null)
            order = NetworkTrainer.Shard(order, batchSize, steps, world.Rank, world.Size);
        int local = batchSize / (world?.Size ?? 1);
        var timings = new List<StepTimings>();
        DenormalFlushing.Run(() =>
        {
            // The session sets the thread count of the thread that creates it: this one, which trains.
            using var session = trainer.CreateSession(network, steps);
            for (int step = 0; step < steps; step++)
            {
                using var scope = NewDisposeScope();
                var (images, labels) = train.Read(order.AsSpan(step * local, local));
                session.Step(images, labels);
                if (step >= 5)
                    timings.Add(session.LastStepTimings);
            }
            return 0;
        });
        double Median(Func<StepTimings, double> pick) => Bench.Median(timings.Select(pick));
        var measurement = new Measurement(architecture.ToString(), world?.Size ?? 1, Median(t => t.Total.TotalMilliseconds),
            Median(t => (t.Total - t.GradientAllReduce - t.StatisticsAllReduce).TotalMilliseconds),
            Median(t => t.GradientAllReduce.TotalMilliseconds), timings.Average(t => t.StatisticsAllReduce.TotalMilliseconds),
            timings.Average(t => t.GradientBytes), timings.Average(t => t.StatisticsBytes));
        if ((world?.Rank ?? 0) == 0)
            Console.WriteLine(JsonSerializer.Serialize(measurement));
        return 0;
    }
}
