using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using Microsoft.ML.Decorrelation.Selection;
using Spectre.Console;

namespace Microsoft.ML.Decorrelation.Samples;

/// <summary>
/// <c>select</c>: model selection on Fashion-MNIST with <see cref="DecorrelatedImageClassificationExperiment"/>, DBP and
/// backprop in one search; prints each trial as it reports and the leaderboard, and writes the leaderboard (JSON), the
/// validation accuracy of every trial against its training time (PNG) and the best model into the report folder.
/// </summary>
internal static class SelectCommand
{
    public static System.CommandLine.Command Create()
    {
        var minutes = new Option<double>("--time") { Description = "Time budget in minutes.", DefaultValueFactory = _ => 10 };
        var trials = new Option<int>("--trials") { Description = "Trials to start at most.", DefaultValueFactory = _ => 9 };
        var maxEpochs = new Option<int>("--max-epochs") { Description = "Epochs of a full run (the top rung).", DefaultValueFactory = _ => 6 };
        var minEpochs = new Option<int>("--min-epochs") { Description = "Epochs of the lowest rung.", DefaultValueFactory = _ => 1 };
        var limit = new Option<int?>("--limit") { Description = "Use only the first N training images (10 % of them validate)." };
        var data = new Option<string?>("--data") { Description = "A folder with the four Fashion-MNIST IDX files." };
        var report = new Option<string>("--report") { Description = "Folder for the leaderboard, chart and best model.", DefaultValueFactory = _ => "select-report" };
        var command = new System.CommandLine.Command("select", "Search DBP and backprop configurations by successive halving within a time budget.")
        {
            minutes, trials, maxEpochs, minEpochs, limit, data, report,
        };
        command.SetAction(result => Run(AnsiConsole.Console, result.GetValue(minutes), result.GetValue(trials), result.GetValue(minEpochs), result.GetValue(maxEpochs),
            result.GetValue(limit), result.GetValue(data), result.GetValue(report)!));
        return command;
    }

    internal static int Run(IAnsiConsole console, double minutes, int trials, int minEpochs, int maxEpochs, int? limit, string? dataFolder, string reportFolder)
    {
        var source = new FashionMnistSource().Locate(dataFolder);
        var ml = new MLContext(seed: 0);
        var rows = MainJob.ReadRows(source, train: true, limit).ToArray();
        int held = rows.Length / 10;
        var keys = ml.Transforms.Conversion.MapValueToKey("Label").Fit(ml.Data.LoadFromEnumerable(rows));
        var train = keys.Transform(ml.Data.LoadFromEnumerable(rows[held..]));
        var validation = keys.Transform(ml.Data.LoadFromEnumerable(rows[..held]));
        var test = keys.Transform(ml.Data.LoadFromEnumerable(MainJob.ReadRows(source, train: false, null)));
        console.MarkupLineInterpolated($"Data: {source.Description}: {rows.Length - held} training, {held} validation images; budget {minutes} min, {trials} trials, rungs from {minEpochs} to {maxEpochs} epochs.");

        var experiment = new DecorrelatedImageClassificationExperiment(ml, new DecorrelatedImageClassificationExperiment.Settings
        {
            MaxTrials = trials, MinEpochs = minEpochs, MaxEpochs = maxEpochs, TimeBudget = TimeSpan.FromMinutes(minutes),
            Progress = trial => console.MarkupLineInterpolated($"{trial}"),
        });
        var result = experiment.Execute(train, validation);
        using var best = result.BestModel;

        var table = new Table().AddColumns("trial", "method", "lr", "batch", "weight decay", "η_R", "state", "epochs", "validation", "seconds");
        foreach (var trial in result.Trials.OrderByDescending(t => double.IsNaN(t.ValidationAccuracy) ? -1 : t.ValidationAccuracy))
        {
            var o = trial.Options;
            table.AddRow(trial.Trial.ToString(CultureInfo.InvariantCulture), o.UseDecorrelation ? "DBP" : "backprop", o.LearningRate.ToString("G3", CultureInfo.InvariantCulture),
                o.BatchSize.ToString(CultureInfo.InvariantCulture), o.WeightDecay.ToString("G2", CultureInfo.InvariantCulture),
                o.UseDecorrelation ? o.DecorrelationLearningRate.ToString("G3", CultureInfo.InvariantCulture) : "", trial.State.ToString(),
                trial.EpochsRun.ToString(CultureInfo.InvariantCulture), trial.ValidationAccuracy.ToString("P2", CultureInfo.InvariantCulture),
                trial.Seconds.ToString("F1", CultureInfo.InvariantCulture));
        }
        console.Write(table);

        Directory.CreateDirectory(reportFolder);
        ml.Model.Save(best, train.Schema, Path.Combine(reportFolder, "best-model.zip"));
        File.WriteAllText(Path.Combine(reportFolder, "leaderboard.json"), JsonSerializer.Serialize(result.Trials.Select(t => new
        {
            t.Trial, Method = t.Options.UseDecorrelation ? "DBP" : "backprop", t.Options.LearningRate, t.Options.BatchSize, t.Options.WeightDecay,
            DecorrelationLearningRate = t.Options.UseDecorrelation ? t.Options.DecorrelationLearningRate : (double?)null,
            State = t.State.ToString(), t.EpochsRun, ValidationAccuracy = double.IsNaN(t.ValidationAccuracy) ? (double?)null : t.ValidationAccuracy, t.Seconds, t.Error,
            Curve = t.Curve.Select(c => new { c.Epoch, c.ValidationAccuracy, c.Seconds }),
        }), new JsonSerializerOptions { WriteIndented = true }));
        ReportCharts.LineChart(Path.Combine(reportFolder, "validation-vs-time.png"), "Validation accuracy of every trial against its training time",
            "training seconds of the trial", "validation accuracy (%)", legendAtBottom: true,
            result.Trials.Select(t => new ChartSeries($"{t.Trial} {(t.Options.UseDecorrelation ? "DBP" : "BP")}", t.Curve.Select(c => c.Seconds).ToArray(),
                t.Curve.Select(c => 100 * c.ValidationAccuracy).ToArray())).ToArray());
        double testAccuracy = ml.MulticlassClassification.Evaluate(best.Transform(test)).MicroAccuracy;
        console.MarkupLineInterpolated($"Best: trial {result.BestTrial.Trial} ({(result.BestTrial.Options.UseDecorrelation ? "DBP" : "backprop")}), validation {result.BestTrial.ValidationAccuracy:P2}, test {testAccuracy:P2}, after {result.Duration.TotalMinutes:F1} min. Report: {Path.GetFullPath(reportFolder)}.");
        return 0;
    }
}
