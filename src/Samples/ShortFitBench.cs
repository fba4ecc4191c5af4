using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using Spectre.Console;

namespace Microsoft.ML.Decorrelation.Samples;

/// <summary>
/// <c>bench --case short-fit</c>: the wall-clock time of a short <c>Fit</c> through the public ML.NET API, as a user pays it —
/// PNG files → LoadImages → ResizeImages → ExtractPixels → trainer, image loading included, each fit in a fresh process so that
/// every one-time cost (Torch start-up, JIT compilation, the first oneDNN kernels of each shape) is counted where it falls.
/// Each arm fits twice per seed (order A B B A) and keeps its faster fit; figures are medians over seeds.
/// </summary>
internal static class ShortFitBench
{
    /// <summary>The issue's target: DBP's short fit costs at most this multiple of backprop's.</summary>
    public const double TargetRatio = 1.15;

    /// <summary>Settings of a short-fit run.</summary>
    public sealed record Settings(int Seeds, int FirstSeed, int Images, int Epochs, int BatchSize, string? Json);

    /// <summary>What one fit in its child process measured.</summary>
    /// <param name="FitSeconds">Wall-clock seconds of <c>pipeline.Fit</c>, image loading included.</param>
    /// <param name="EpochSeconds">The trainer's training seconds of each epoch (from its per-epoch metrics).</param>
    public sealed record FitTiming(double FitSeconds, double[] EpochSeconds)
    {
        /// <summary>Everything of the fit outside its training epochs: image loading, decoding into tensors, set-up, the fold.</summary>
        public double OutsideEpochsSeconds => FitSeconds - EpochSeconds.Sum();
    }

    /// <summary>The hidden command a child process runs: one fit, its timing printed as a RESULT line.</summary>
    public static System.CommandLine.Command CreateChild()
    {
        var folder = new Option<string>("--folder") { Required = true };
        var arm = new Option<string>("--arm") { Required = true };
        arm.AcceptOnlyFromAmong("backprop", "dbp");
        var seed = new Option<int>("--seed");
        var epochs = new Option<int>("--epochs") { DefaultValueFactory = _ => 3 };
        var batchSize = new Option<int>("--batch-size") { DefaultValueFactory = _ => 64 };
        var command = new System.CommandLine.Command("short-fit-run", "One short fit of bench --case short-fit (run by the benchmark in a child process).") { folder, arm, seed, epochs, batchSize };
        command.Hidden = true;
        command.SetAction(result =>
        {
            var timing = FitOnce(result.GetValue(folder)!, result.GetValue(arm) == "dbp", result.GetValue(seed), result.GetValue(epochs), result.GetValue(batchSize));
            ChildProcessRunner.WriteResult(timing.EpochSeconds.Prepend(timing.FitSeconds));
            return 0;
        });
        return command;
    }

    /// <summary>Writes the images once, then runs every seed's two fits, each in a fresh process; prints the table and the verdict.</summary>
    public static Dictionary<string, object?> Run(IAnsiConsole console, Settings settings)
    {
        if (settings.Seeds < 1)
            throw new ArgumentOutOfRangeException(nameof(settings), settings.Seeds, "--seeds must be at least 1.");
        string folder = Directory.CreateTempSubdirectory("dbp-short-fit").FullName;
        try
        {
            var source = new FashionMnistSource().Locate(null);
            var rows = PipelineExample.WritePngs(source, folder, train: true, settings.Images);
            File.WriteAllLines(Path.Combine(folder, "labels.tsv"), rows.Select(r => $"{r.ImagePath}\t{r.Label}"));
            console.MarkupLine(Markup.Escape($"Case short-fit on {MachineInfo.CpuModel()}: {rows.Length} PNG files of 28×28 from {source.Description}; " +
                $"{settings.Epochs} epochs at batch {settings.BatchSize}, {Environment.ProcessorCount} cores; each fit in a fresh process, image loading included."));

            var table = new Table().AddColumns("seed", "backprop fit (s)", "DBP fit (s)", "ratio", "backprop epochs (s)", "DBP epochs (s)", "outside epochs BP / DBP (s)");
            var perSeed = new List<Dictionary<string, object?>>();
            for (int seed = settings.FirstSeed; seed < settings.FirstSeed + settings.Seeds; seed++)
            {
                // Two fits per arm in the order A B B A, A alternating between seeds, so that a drift of the machine
                // favours neither arm; each arm keeps its faster fit (noise only ever adds time).
                bool dbpFirst = seed % 2 == 1;
                var timings = new Dictionary<bool, List<FitTiming>> { [false] = [], [true] = [] };
                foreach (bool decorrelate in new[] { dbpFirst, !dbpFirst, !dbpFirst, dbpFirst })
                {
                    console.MarkupLine($"[grey]seed {seed}: {(decorrelate ? "DBP" : "backprop")} fit…[/]");
                    timings[decorrelate].Add(FitInChild(folder, decorrelate, seed, settings));
                }
                var (bp, dbp) = (timings[false].MinBy(t => t.FitSeconds)!, timings[true].MinBy(t => t.FitSeconds)!);
                double ratio = dbp.FitSeconds / bp.FitSeconds;
                table.AddRow(seed.ToString(CultureInfo.InvariantCulture), F(bp.FitSeconds), F(dbp.FitSeconds), ratio.ToString("F3", CultureInfo.InvariantCulture),
                    string.Join(" / ", bp.EpochSeconds.Select(F)), string.Join(" / ", dbp.EpochSeconds.Select(F)), $"{F(bp.OutsideEpochsSeconds)} / {F(dbp.OutsideEpochsSeconds)}");
                perSeed.Add(new()
                {
                    ["seed"] = seed, ["backpropFitSeconds"] = bp.FitSeconds, ["dbpFitSeconds"] = dbp.FitSeconds, ["fitRatio"] = ratio,
                    ["backpropEpochSeconds"] = bp.EpochSeconds, ["dbpEpochSeconds"] = dbp.EpochSeconds,
                    ["firstEpochRatio"] = dbp.EpochSeconds[0] / bp.EpochSeconds[0],
                    ["laterEpochRatio"] = dbp.EpochSeconds.Skip(1).Sum() / Math.Max(1e-9, bp.EpochSeconds.Skip(1).Sum()),
                });
            }
            console.Write(table);
            double Median(string key) => Bench.Median(perSeed.Select(s => (double)s[key]!));
            var figures = new Dictionary<string, object?>
            {
                ["case"] = "short-fit", ["cpu"] = MachineInfo.CpuModel(), ["settings"] = settings,
                ["fitRatio"] = Median("fitRatio"), ["firstEpochRatio"] = Median("firstEpochRatio"), ["laterEpochRatio"] = Median("laterEpochRatio"),
                ["backpropFitSeconds"] = Median("backpropFitSeconds"), ["dbpFitSeconds"] = Median("dbpFitSeconds"), ["perSeed"] = perSeed,
            };
            double fitRatio = (double)figures["fitRatio"]!;
            console.MarkupLine(Markup.Escape($"Medians over {settings.Seeds} seed(s): fit ratio {fitRatio:F3} (first epoch {(double)figures["firstEpochRatio"]!:F3}, later epochs {(double)figures["laterEpochRatio"]!:F3}); " +
                $"target ≤ {TargetRatio:F2}: {(fitRatio <= TargetRatio ? "MET" : "NOT MET")}."));
            if (settings.Json is string path)
                File.WriteAllText(path, JsonSerializer.Serialize(figures, new JsonSerializerOptions { WriteIndented = true }));
            return figures;
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    private static string F(double seconds) => seconds.ToString("F2", CultureInfo.InvariantCulture);

    private static FitTiming FitInChild(string folder, bool decorrelate, int seed, Settings settings)
    {
        var outcome = ChildProcessRunner.Run(typeof(ShortFitBench).Assembly.Location,
            ["short-fit-run", "--folder", folder, "--arm", decorrelate ? "dbp" : "backprop", "--seed", Invariant(seed), "--epochs", Invariant(settings.Epochs),
             "--batch-size", Invariant(settings.BatchSize)],
            null, TimeSpan.FromMinutes(30));
        var values = outcome.ResultValues()
            ?? throw new InvalidOperationException($"The {(decorrelate ? "DBP" : "backprop")} fit of seed {seed} failed ({outcome.Describe()}):\n{outcome.Output}");
        return new FitTiming(values[0], values[1..]);
    }

    private static string Invariant(int value) => value.ToString(CultureInfo.InvariantCulture);

    /// <summary>One fit of the user's pipeline on the PNG files listed in <c>labels.tsv</c>.</summary>
    private static FitTiming FitOnce(string folder, bool decorrelate, int seed, int epochs, int batchSize)
    {
        var rows = File.ReadLines(Path.Combine(folder, "labels.tsv")).Select(line => line.Split('\t'))
            .Select(parts => new PipelineExample.ImageRow { ImagePath = parts[0], Label = parts[1] }).ToArray();
        var ml = new MLContext(seed: seed);
        var epochSeconds = new List<double>();
        double previous = 0;
        var pipeline = ml.Transforms.Conversion.MapValueToKey("Label")
            .Append(ml.Transforms.LoadImages("Image", folder, "ImagePath"))
            .Append(ml.Transforms.ResizeImages("Image", 28, 28))
            .Append(ml.Transforms.ExtractPixels("Features", "Image"))
            .Append(ml.MulticlassClassification.Trainers.DecorrelatedImageClassification(new DecorrelatedImageClassificationTrainer.Options
            {
                MaxEpoch = epochs, BatchSize = batchSize, UseDecorrelation = decorrelate, Seed = seed,
                MetricsCallback = m =>
                {
                    epochSeconds.Add(m.Seconds - previous);
                    previous = m.Seconds;
                },
            }));
        var clock = Stopwatch.StartNew();
        using var model = pipeline.Fit(ml.Data.LoadFromEnumerable(rows)).LastTransformer;
        double fitSeconds = clock.Elapsed.TotalSeconds;
        return new FitTiming(fitSeconds, epochSeconds.ToArray());
    }
}
