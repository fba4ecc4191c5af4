using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using Microsoft.ML.Decorrelation.Selection;
using Spectre.Console;

namespace Microsoft.ML.Decorrelation.Samples;

/// <summary>
/// <c>select-bench</c> (docs/performance.md, "Model selection"): on Fashion-MNIST, for each seed, the same successive-halving search under
/// the same wall-clock budget twice, interleaved — with DBP and backprop in its space, and restricted to backprop — and
/// reports the best validation accuracy each found, the test accuracy of the model each returned, and when the DBP-enabled
/// search first reached the backprop-only search's final best. Also: trials per hour, the journal's cost per rung result,
/// and that the best trial (promoted through the rungs) ends where a plain run of its options does.
/// </summary>
internal static class SelectBench
{
    public static System.CommandLine.Command Create()
    {
        var seeds = new Option<int>("--seeds") { Description = "Seeds (each runs both searches).", DefaultValueFactory = _ => 3 };
        var time = new Option<string>("--time") { Description = "Budget of each search (90s, 5m, 1h).", DefaultValueFactory = _ => "5m" };
        var trials = new Option<int>("--trials") { Description = "Trials to start at most.", DefaultValueFactory = _ => 8 };
        var minEpochs = new Option<int>("--min-epochs") { DefaultValueFactory = _ => 1, Description = "Epochs of the lowest rung." };
        var maxEpochs = new Option<string>("--max-epochs") { DefaultValueFactory = _ => "3", Description = "Epochs of a full run, or a comma-separated list to search over." };
        var firstSeed = new Option<int>("--first-seed") { DefaultValueFactory = _ => 0, Description = "The first seed (to add seeds to an earlier run)." };
        var limit = new Option<int?>("--limit") { Description = "Use only the first N training images." };
        var data = new Option<string?>("--data") { Description = "A folder with the four Fashion-MNIST IDX files." };
        var report = new Option<string>("--report") { Description = "Folder for the journals and results.json.", DefaultValueFactory = _ => "select-bench" };
        var command = new System.CommandLine.Command("select-bench", "DBP-enabled search against a backprop-only search under equal time budgets.")
        {
            seeds, firstSeed, time, trials, minEpochs, maxEpochs, limit, data, report,
        };
        command.SetAction(result => Run(AnsiConsole.Console, result.GetValue(seeds), SelectCommand.ParseMinutes(result.GetValue(time)!), result.GetValue(trials),
            result.GetValue(minEpochs), SelectCommand.ParseEpochs(result.GetValue(maxEpochs)!), result.GetValue(limit), result.GetValue(data), result.GetValue(report)!,
            result.GetValue(firstSeed)));
        return command;
    }

    private sealed record SearchOutcome(string Space, int Seed, double BestValidation, double TestAccuracy, int BestTrial, bool BestIsDbp, int Trials, int RungsRun,
        int EpochsRun, double Minutes, double JournalMsPerRung, (double Minutes, double Best)[] Timeline);

    internal static int Run(IAnsiConsole console, int seeds, double minutes, int trials, int minEpochs, int[] maxEpochs, int? limit, string? dataFolder, string reportFolder,
        int firstSeed = 0)
    {
        if (!console.Profile.Capabilities.Interactive)
            console.Profile.Width = Math.Max(console.Profile.Width, 180);   // a log file gets the whole table
        var ml = new MLContext(seed: 0);
        var (train, validation, _, testSet, description) = SelectCommand.LoadData(ml, new SelectSettings { Limit = limit, DataFolder = dataFolder });
        var test = testSet!;
        Directory.CreateDirectory(reportFolder);
        console.MarkupLineInterpolated($"CPU: {MachineInfo.CpuModel()}; data: {description}; each search {minutes:0.##} min, {trials} trials, rungs {minEpochs}..{maxEpochs.Max()} epochs, full runs of {string.Join(" or ", maxEpochs)} epochs.");

        var outcomes = new List<SearchOutcome>();
        var plainChecks = new List<(int Seed, double Search, double Plain)>();
        for (int seed = firstSeed; seed < firstSeed + seeds; seed++)
        {
            // Alternate which search goes first, so neither always meets a warmer machine.
            var spaces = seed % 2 == 0 ? new[] { "DBP+backprop", "backprop only" } : ["backprop only", "DBP+backprop"];
            foreach (var space in spaces)
            {
                var journal = Path.Combine(reportFolder, $"seed{seed}-{(space == "backprop only" ? "backprop" : "both")}.sqlite");
                foreach (var stale in new[] { journal, journal + "-wal", journal + "-shm" }.Where(File.Exists))
                    File.Delete(stale);
                var settings = new DecorrelatedImageClassificationExperiment.Settings
                {
                    MaxTrials = trials, MinEpochs = minEpochs, TimeBudget = TimeSpan.FromMinutes(minutes), Seed = seed, Storage = journal,
                    SearchSpace = new ImageClassificationSearchSpace { UseDecorrelation = space == "backprop only" ? [false] : [true, false], MaxEpoch = maxEpochs },
                    Progress = t => { if (t.State != TrialState.Running) console.MarkupLineInterpolated($"  [grey]{space}, seed {seed}: {t}[/]"); },
                };
                var start = DateTimeOffset.UtcNow;
                var result = new DecorrelatedImageClassificationExperiment(ml, settings).Execute(train, validation);
                using var best = result.BestModel;
                double testAccuracy = ml.MulticlassClassification.Evaluate(best.Transform(test)).MicroAccuracy;
                // The best validation accuracy seen so far over the study's time line, at each point any trial measured.
                double bestSoFar = 0;
                var timeline = result.Trials.SelectMany(t => t.Curve).OrderBy(c => c.RecordedAt)
                    .Select(c => ((c.RecordedAt - start).TotalMinutes, bestSoFar = Math.Max(bestSoFar, c.ValidationAccuracy))).ToArray();
                var outcome = new SearchOutcome(space, seed, result.BestTrial.ValidationAccuracy, testAccuracy, result.BestTrial.Trial, result.BestTrial.Options.UseDecorrelation,
                    result.Trials.Count, result.RungsRun, result.Trials.Sum(t => t.EpochsRun), result.Duration.TotalMinutes,
                    result.JournalTime.TotalMilliseconds / Math.Max(1, result.RungsRun), timeline);
                outcomes.Add(outcome);
                console.MarkupLineInterpolated($"{space}, seed {seed}: best trial {outcome.BestTrial} ({(outcome.BestIsDbp ? "DBP" : "backprop")}) validation {outcome.BestValidation:P2}, test {testAccuracy:P2}; {outcome.Trials} trials, {outcome.EpochsRun} epochs in {outcome.Minutes:F1} min; journal {outcome.JournalMsPerRung:F1} ms per rung result.");

                if (space == "DBP+backprop")
                {
                    // The best trial went through the rungs (stopped, resumed from checkpoints): a plain Fit of its options must end at the same accuracy.
                    var options = result.BestTrial.Configuration.Apply(new DecorrelatedImageClassificationTrainer.Options());
                    options.Seed = seed + result.BestTrial.Trial;
                    options.ValidationSet = validation;
                    using var plain = ml.MulticlassClassification.Trainers.DecorrelatedImageClassification(options).Fit(train);
                    double plainAccuracy = ml.MulticlassClassification.Evaluate(plain.Transform(validation)).MicroAccuracy;
                    plainChecks.Add((seed, result.BestTrial.ValidationAccuracy, plainAccuracy));
                    console.MarkupLineInterpolated($"  plain run of trial {result.BestTrial.Trial}'s options: validation {plainAccuracy:P2} (search: {result.BestTrial.ValidationAccuracy:P2}).");
                }
            }
        }

        var table = new Table().AddColumns("seed", "search", "best validation", "test (returned model)", "best is", "trials", "epochs", "minutes", "trials / h",
            "journal ms / rung", "reached BP-only best at (min)");
        var reachRatios = new List<double?>();
        foreach (var group in outcomes.GroupBy(o => o.Seed))
        {
            var backprop = group.Single(o => o.Space == "backprop only");
            foreach (var o in group.OrderBy(o => o.Space))
            {
                double? reached = o.Timeline.Where(p => p.Best >= backprop.BestValidation).Select(p => (double?)p.Minutes).FirstOrDefault();
                if (o.Space != "backprop only")
                    reachRatios.Add(reached is double r ? r / backprop.Timeline.First(p => p.Best >= backprop.BestValidation).Minutes : null);
                table.AddRow(o.Seed.ToString(CultureInfo.InvariantCulture), o.Space, o.BestValidation.ToString("P2", CultureInfo.InvariantCulture),
                    o.TestAccuracy.ToString("P2", CultureInfo.InvariantCulture), o.BestIsDbp ? "DBP" : "backprop", o.Trials.ToString(CultureInfo.InvariantCulture),
                    o.EpochsRun.ToString(CultureInfo.InvariantCulture), o.Minutes.ToString("F1", CultureInfo.InvariantCulture),
                    (o.Trials / (o.Minutes / 60)).ToString("F0", CultureInfo.InvariantCulture), o.JournalMsPerRung.ToString("F1", CultureInfo.InvariantCulture),
                    reached?.ToString("F1", CultureInfo.InvariantCulture) ?? "not reached");
            }
        }
        console.Write(table);
        double Median(string space, Func<SearchOutcome, double> figure) => Bench.Median(outcomes.Where(o => o.Space == space).Select(figure));
        // Paired by seed (the two searches of a seed draw the same trial settings but the method): the median of the differences.
        double gain = 100 * Bench.Median(outcomes.GroupBy(o => o.Seed).Select(g => g.Single(o => o.Space == "DBP+backprop").TestAccuracy - g.Single(o => o.Space == "backprop only").TestAccuracy));
        double? reachRatio = Bench.Median(reachRatios);
        console.MarkupLine(Markup.Escape($"Medians over {seeds} seed(s): test accuracy of the returned model {Median("DBP+backprop", o => o.TestAccuracy):P2} (DBP+backprop) vs {Median("backprop only", o => o.TestAccuracy):P2} (backprop only), median per-seed gain {gain:+0.00;-0.00} points; " +
            $"the DBP-enabled search reached the backprop-only best in {(reachRatio is double ratio ? $"{ratio:F2}×" : "(not reached in most seeds)")} the backprop-only search's time to it."));
        console.MarkupLineInterpolated($"Goal (+0.5 points, or at most half the time): {(gain >= 0.5 || reachRatio <= 0.5 ? "MET" : "NOT MET")}.");
        console.MarkupLineInterpolated($"Promoted trials against plain runs: {string.Join("; ", plainChecks.Select(c => $"seed {c.Seed}: search {c.Search:P2}, plain {c.Plain:P2}"))}.");
        File.WriteAllText(Path.Combine(reportFolder, "results.json"), JsonSerializer.Serialize(new
        {
            cpu = MachineInfo.CpuModel(), minutes, trials, minEpochs, maxEpochs, seeds, firstSeed,
            outcomes = outcomes.Select(o => new { o.Space, o.Seed, o.BestValidation, o.TestAccuracy, o.BestTrial, o.BestIsDbp, o.Trials, o.RungsRun, o.EpochsRun, o.Minutes, o.JournalMsPerRung,
                Timeline = o.Timeline.Select(p => new[] { p.Minutes, p.Best }) }),
            testAccuracyGainPoints = gain, reachTimeRatio = reachRatio,
            plainChecks = plainChecks.Select(c => new { c.Seed, c.Search, c.Plain }),
        }, new JsonSerializerOptions { WriteIndented = true }));
        return 0;
    }
}
