using System.Globalization;
using Microsoft.ML.Decorrelation.Selection;

namespace Microsoft.ML.Decorrelation.Tests;

/// <summary>
/// One worker of a model-selection study, as a child process: runs the study of <see cref="Study"/> on the shared journal
/// and writes the work it did (<c>trial@rung accuracy</c>, one per line) and the best trial it returned.
/// </summary>
internal static class SelectionCases
{
    public const string Command = "selection-worker";

    /// <summary>The data of the study: the first 700 subset images to train on, the next 200 to validate.</summary>
    public static (MLContext Context, IDataView Train, IDataView Validation) Data()
    {
        var ml = new MLContext(seed: 1);
        var rows = MLNetData.PixelRows(train: true, count: 900).ToArray();
        var keys = ml.Transforms.Conversion.MapValueToKey("Label").Fit(ml.Data.LoadFromEnumerable(rows));
        return (ml, keys.Transform(ml.Data.LoadFromEnumerable(rows.Take(700))), keys.Transform(ml.Data.LoadFromEnumerable(rows.Skip(700))));
    }

    /// <summary>The study every worker of the tests runs: 6 trials, rungs of 1 and 2 epochs.</summary>
    /// <param name="journal">The study's storage: an SQLite file or the PostgreSQL server's storage string.</param>
    /// <param name="progress">Receives the trials' progress.</param>
    /// <param name="workFolder">The shared folder of checkpoints and models (needed with PostgreSQL).</param>
    /// <param name="study">The study's name in PostgreSQL.</param>
    public static DecorrelatedImageClassificationExperiment.Settings Study(string journal, Action<TrialRecord>? progress = null, string? workFolder = null, string study = "default") => new()
    {
        WorkFolder = workFolder, StudyName = study,
        MaxTrials = 6, MinEpochs = 1, ReductionFactor = 3, Seed = 11, Storage = journal,
        SearchSpace = new ImageClassificationSearchSpace { BatchSize = [100], MaxEpoch = [2] }, Progress = progress, PollInterval = TimeSpan.FromMilliseconds(200),
        Lease = TimeSpan.FromMinutes(10),
    };

    /// <summary>
    /// selection-worker STORAGE OUTPUT [die|live] [WORK STUDY]: with <c>die</c>, the process ends abruptly after the first epoch it
    /// trains; WORK and STUDY are the shared folder and the study's name (for PostgreSQL).
    /// </summary>
    public static int Run(string[] args)
    {
        string journal = args[0], output = args[1];
        bool die = args.Length > 2 && args[2] == "die";
        string? workFolder = args.Length > 4 ? args[3] : null;
        string study = args.Length > 4 ? args[4] : "default";
        var (ml, train, validation) = Data();
        var done = new List<string>();
        ml.Log += (_, e) =>
        {
            if (e.Source.Contains(nameof(DecorrelatedImageClassificationExperiment)) && e.RawMessage.StartsWith("Rung ", StringComparison.Ordinal))
                lock (done) done.Add(e.RawMessage);
        };
        var settings = Study(journal, trial =>
        {
            if (die && trial.State == TrialState.Running && trial.Curve.Count > 0)
                Environment.FailFast("selection-worker: dying mid-trial as asked");
        }, workFolder, study);
        var result = new DecorrelatedImageClassificationExperiment(ml, settings).Execute(train, validation);
        result.BestModel.Dispose();
        File.WriteAllLines(output, [.. done, $"best {result.BestTrial.Trial} {result.BestTrial.ValidationAccuracy.ToString("R", CultureInfo.InvariantCulture)}"]);
        return 0;
    }
}
