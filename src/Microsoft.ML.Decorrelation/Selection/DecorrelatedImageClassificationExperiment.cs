using System.Diagnostics;
using Microsoft.ML.Runtime;

namespace Microsoft.ML.Decorrelation.Selection;

/// <summary>
/// Model selection in the AutoML manner: samples configurations of <see cref="DecorrelatedImageClassificationTrainer"/>
/// from a <see cref="ImageClassificationSearchSpace"/> (DBP and backprop side by side), runs them by asynchronous successive halving
/// (<see cref="AsynchronousSuccessiveHalving"/>) within a trial and time budget, and returns the best fitted model with a
/// leaderboard of every trial.
/// </summary>
/// <remarks>
/// Every trial is defined by its full run (<see cref="Settings.MaxEpochs"/> epochs, so the step schedule decays where a
/// plain run's would); a rung stops it after the rung's epochs at a checkpoint, and a promotion resumes from that
/// checkpoint, so a trial that reaches the top rung ends exactly where a plain run of the same options would. The trials
/// share one decoded image cache: the data is decoded by the first trial and reused by the others. Trials run one after
/// the other in this process; a study journal (<see cref="Settings.JournalPath"/>) lets a killed experiment resume. Progress
/// goes to ML.NET's log (<c>mlContext.Log</c>) and to <see cref="Settings.Progress"/>. Not built yet: several worker processes
/// sharing one study, k-fold validation, metrics other than micro-accuracy.
/// </remarks>
public sealed class DecorrelatedImageClassificationExperiment
{
    private readonly MLContext _context;
    private readonly Settings _settings;

    /// <summary>What an experiment searches and how long.</summary>
    public sealed class Settings
    {
        /// <summary>Trials to start at most. Default 9.</summary>
        public int MaxTrials { get; set; } = 9;

        /// <summary>Epochs of the lowest rung. Default 1.</summary>
        public int MinEpochs { get; set; } = 1;

        /// <summary>Epochs of a full run (the top rung). Default 6, the trainer's.</summary>
        public int MaxEpochs { get; set; } = 6;

        /// <summary>η: the top 1/η of a rung is promoted. Default 3.</summary>
        public int ReductionFactor { get; set; } = 3;

        /// <summary>Stop starting work after this long (a running trial finishes its rung); null for no limit.</summary>
        public TimeSpan? TimeBudget { get; set; }

        /// <summary>The configurations to sample.</summary>
        public ImageClassificationSearchSpace SearchSpace { get; set; } = new();

        /// <summary>Options every trial shares (columns, image size); the search space's settings override theirs.</summary>
        public DecorrelatedImageClassificationTrainer.Options BaseOptions { get; set; } = new();

        /// <summary>Seed of the sampling and of every trial. Default 0.</summary>
        public int Seed { get; set; }

        /// <summary>Folder for the shared cache and the trials' checkpoints; a new temporary folder (deleted afterwards) when null.</summary>
        public string? WorkFolder { get; set; }

        /// <summary>
        /// An SQLite file recording the study; an experiment killed at any point resumes from it (finished rungs are not
        /// run again). Null for none. With a journal, <see cref="WorkFolder"/> defaults to the journal's path plus ".work".
        /// </summary>
        public string? JournalPath { get; set; }

        /// <summary>Receives each trial's record whenever it changes.</summary>
        public Action<TrialRecord>? Progress { get; set; }
    }

    /// <summary>Creates an experiment in <paramref name="context"/>.</summary>
    public DecorrelatedImageClassificationExperiment(MLContext context, Settings settings)
    {
        ArgumentNullException.ThrowIfNull(context);
        ArgumentNullException.ThrowIfNull(settings);
        settings.SearchSpace.Validate();
        _ = new AsynchronousSuccessiveHalving(settings.MaxTrials, settings.MinEpochs, settings.MaxEpochs, settings.ReductionFactor);
        if (settings.TimeBudget is { } budget && budget <= TimeSpan.Zero)
            throw new ArgumentOutOfRangeException(nameof(settings), budget, "Settings.TimeBudget must be positive.");
        _context = context;
        _settings = settings;
    }

    /// <summary>
    /// Runs the search on <paramref name="data"/>, holding out <paramref name="validationFraction"/> of its rows (ML.NET's
    /// TrainTestSplit, seeded with <see cref="Settings.Seed"/>) to rank the trials by.
    /// </summary>
    /// <param name="data">Rows with a key label column and the feature column.</param>
    /// <param name="validationFraction">The fraction in (0, 1) of the rows to validate on.</param>
    /// <param name="cancellation">Stops the search between steps.</param>
    public ExperimentResult Execute(IDataView data, double validationFraction, CancellationToken cancellation = default)
    {
        ArgumentNullException.ThrowIfNull(data);
        if (!(validationFraction > 0 && validationFraction < 1))
            throw new ArgumentOutOfRangeException(nameof(validationFraction), validationFraction, "The validation fraction must lie in (0, 1).");
        var split = _context.Data.TrainTestSplit(data, validationFraction, seed: _settings.Seed);
        return Execute(split.TrainSet, split.TestSet, cancellation);
    }

    /// <summary>Runs the search: trains on <paramref name="train"/>, ranks by accuracy on <paramref name="validation"/>.</summary>
    /// <param name="train">Training rows with a key label column and the feature column, as the trainer takes them.</param>
    /// <param name="validation">Validation rows, transformed by the same label mapping.</param>
    /// <param name="cancellation">Stops the search between steps.</param>
    /// <exception cref="InvalidOperationException">No trial finished its full run within the budget.</exception>
    public ExperimentResult Execute(IDataView train, IDataView validation, CancellationToken cancellation = default)
    {
        ArgumentNullException.ThrowIfNull(train);
        ArgumentNullException.ThrowIfNull(validation);
        var settings = _settings;
        bool keepFolder = settings.WorkFolder is not null || settings.JournalPath is not null;
        string folder = settings.WorkFolder ?? (settings.JournalPath is { } journalPath ? journalPath + ".work"
            : Path.Combine(Path.GetTempPath(), "dbp-experiment-" + Guid.NewGuid().ToString("N")));
        Directory.CreateDirectory(folder);
        using var journal = settings.JournalPath is null ? null : StudyJournal.Open(settings.JournalPath, Describe(train, validation));
        // The experiment's progress in ML.NET's log (mlContext.Log), as ML.NET's own components report theirs.
        using var channel = ((IHostEnvironment)_context).Register(nameof(DecorrelatedImageClassificationExperiment)).Start("Search");
        channel.Info($"Searching {settings.MaxTrials} trials of {settings.MinEpochs}..{settings.MaxEpochs} epochs (η {settings.ReductionFactor})" +
                     (settings.TimeBudget is { } limit ? $" within {limit}" : "") + (journal is null ? "." : $", journal '{settings.JournalPath}'."));
        try
        {
            var search = new AsynchronousSuccessiveHalving(settings.MaxTrials, settings.MinEpochs, settings.MaxEpochs, settings.ReductionFactor);
            var trials = journal?.Trials(settings.BaseOptions) ?? [];
            // Replay: the scheduler hands out the same work in the same order, so each report lands where it was made.
            foreach (var report in journal?.Reports() ?? [])
            {
                var replayed = search.Next();
                if (replayed is not TrialWork work || work.Trial != report.Trial || work.Rung != report.Rung)
                    throw new InvalidOperationException($"The study journal '{settings.JournalPath}' does not replay: it reports trial {report.Trial} rung {report.Rung} where the search decides {replayed?.ToString() ?? "nothing"}.");
                if (report.Failed)
                    search.ReportFailure(work);
                else
                    search.Report(work, report.Accuracy);
            }
            var clock = Stopwatch.StartNew();
            while (!cancellation.IsCancellationRequested && (settings.TimeBudget is not { } budget || clock.Elapsed < budget) && search.Next() is TrialWork work)
            {
                if (!trials.TryGetValue(work.Trial, out var trial))
                {
                    var configuration = settings.SearchSpace.Sample(settings.Seed, work.Trial);
                    trials[work.Trial] = trial = new TrialRecord(work.Trial, configuration, configuration.Apply(settings.BaseOptions));
                }
                trial.State = TrialState.Running;
                journal?.Save(trial);
                using (var model = RunRung(trial, work, train, validation, folder, cancellation))
                {
                    if (model is not null)
                        _context.Model.Save(model, validation.Schema, ModelPath(folder, trial.Trial));
                }
                bool failed = trial.State == TrialState.Failed;
                if (failed)
                    search.ReportFailure(work);
                else
                    search.Report(work, trial.ValidationAccuracy);
                journal?.Record(trial, work, failed);
                channel.Info($"Rung {work.Rung} ({work.Epochs} epochs) of {trial}");
                settings.Progress?.Invoke(trial);
            }
            cancellation.ThrowIfCancellationRequested();
            var ordered = trials.Values.OrderBy(t => t.Trial).ToList();
            var bestTrial = ordered.Where(t => t.State == TrialState.Completed).MaxBy(t => t.ValidationAccuracy)
                ?? throw new InvalidOperationException($"No trial finished its full {settings.MaxEpochs} epochs within the budget ({ordered.Count} started); raise Settings.TimeBudget or lower MaxEpochs.");
            var (_, best) = DecorrelatedImageClassificationTransformer.Load(_context, ModelPath(folder, bestTrial.Trial));
            channel.Info($"Best: {bestTrial} ({ordered.Count} trials in {clock.Elapsed.TotalSeconds:F0} s).");
            return new ExperimentResult(best, bestTrial, ordered, clock.Elapsed);
        }
        finally
        {
            if (!keepFolder && Directory.Exists(folder))
                Directory.Delete(folder, recursive: true);
        }
    }

    private static string ModelPath(string folder, int trial) => Path.Combine(folder, $"trial-{trial}.zip");

    /// <summary>What identifies the study in a journal: the search settings and the data's shape.</summary>
    private Dictionary<string, string> Describe(IDataView train, IDataView validation)
    {
        var s = _settings;
        static string Data(IDataView data) => $"{data.GetRowCount()?.ToString() ?? "?"} rows; {string.Join(", ", data.Schema.Where(c => !c.IsHidden).Select(c => c.Name + ":" + c.Type))}";
        return new Dictionary<string, string>
        {
            ["search"] = $"trials {s.MaxTrials}, epochs {s.MinEpochs}..{s.MaxEpochs}, η {s.ReductionFactor}, seed {s.Seed}; {s.SearchSpace.Describe()}",
            ["training data"] = Data(train),
            ["validation data"] = Data(validation),
        };
    }

    /// <summary>Thrown inside a trial's Fit to end it at its rung; the checkpoint of the rung's last epoch is on disk.</summary>
    private sealed class RungReachedException() : Exception("The trial reached its rung.");

    private DecorrelatedImageClassificationTransformer? RunRung(TrialRecord trial, TrialWork work, IDataView train, IDataView validation, string folder,
        CancellationToken cancellation)
    {
        var options = trial.Options.Clone();
        options.MaxEpoch = _settings.MaxEpochs;
        options.Seed = _settings.Seed + trial.Trial;
        options.ValidationSet = validation;
        options.ValidationFraction = 0;
        options.CacheDirectory = Path.Combine(folder, "cache");
        options.CheckpointPath = Path.Combine(folder, $"trial-{trial.Trial}.checkpoint");
        options.ResumeFromCheckpoint = true;
        options.MetricsCallback = m =>
        {
            trial.Curve.Add((m.Epoch, m.ValidationAccuracy ?? double.NaN, m.Seconds));
            trial.EpochsRun = (int)Math.Round(m.Epoch);
            trial.ValidationAccuracy = m.ValidationAccuracy ?? double.NaN;
        };
        options.ProgressCallback = p =>
        {
            cancellation.ThrowIfCancellationRequested();
            if (p.Epoch > work.Epochs)
                throw new RungReachedException();
        };
        var clock = Stopwatch.StartNew();
        try
        {
            var model = _context.MulticlassClassification.Trainers.DecorrelatedImageClassification(options).Fit(train);
            trial.State = TrialState.Completed;
            return model;
        }
        catch (RungReachedException)
        {
            trial.State = TrialState.Stopped;
            return null;
        }
        catch (Exception e) when (e is Torch.TrainingDivergedException or InvalidOperationException or ArgumentException or IOException)
        {
            trial.State = TrialState.Failed;
            trial.Error = e.Message;
            return null;
        }
        finally
        {
            trial.Seconds += clock.Elapsed.TotalSeconds;
            trial.Rung = work.Rung;
        }
    }
}

/// <summary>Where a trial stands.</summary>
public enum TrialState
{
    /// <summary>Training.</summary>
    Running,

    /// <summary>Stopped at a rung (it may be promoted later).</summary>
    Stopped,

    /// <summary>Finished its full run: it has a model.</summary>
    Completed,

    /// <summary>Failed with <see cref="TrialRecord.Error"/>.</summary>
    Failed,
}

/// <summary>One trial of an experiment: its options, progress, metric and validation curve.</summary>
public sealed class TrialRecord
{
    internal TrialRecord(int trial, TrialConfiguration configuration, DecorrelatedImageClassificationTrainer.Options options)
    {
        Trial = trial;
        Configuration = configuration;
        Options = options;
    }

    /// <summary>The settings the search chose for it.</summary>
    public TrialConfiguration Configuration { get; }

    /// <summary>The trial's number, in the order trials were started.</summary>
    public int Trial { get; }

    /// <summary>The sampled options (a full run's).</summary>
    public DecorrelatedImageClassificationTrainer.Options Options { get; }

    /// <summary>Where it stands.</summary>
    public TrialState State { get; internal set; } = TrialState.Running;

    /// <summary>The highest rung it has run.</summary>
    public int Rung { get; internal set; }

    /// <summary>Epochs trained so far.</summary>
    public int EpochsRun { get; internal set; }

    /// <summary>Validation accuracy after its last epoch (NaN before the first).</summary>
    public double ValidationAccuracy { get; internal set; } = double.NaN;

    /// <summary>Wall-clock seconds spent on it, data reading included.</summary>
    public double Seconds { get; internal set; }

    /// <summary>(epoch, validation accuracy, training seconds) after every epoch it has run.</summary>
    public List<(double Epoch, double ValidationAccuracy, double Seconds)> Curve { get; } = [];

    /// <summary>Why it failed, or null.</summary>
    public string? Error { get; internal set; }

    /// <summary>A one-line summary for a leaderboard.</summary>
    public override string ToString()
        => $"trial {Trial}: {(Options.UseDecorrelation ? "DBP" : "backprop")} {Options.Architecture}, lr {Options.LearningRate:G3}, batch {Options.BatchSize}, " +
           $"wd {Options.WeightDecay:G2}{(Options.UseDecorrelation ? $", η_R {Options.DecorrelationLearningRate:G3}" : "")}: {State} after {EpochsRun} epochs, " +
           $"validation accuracy {ValidationAccuracy:P2}, {Seconds:F1} s{(Error is null ? "" : ", " + Error)}";
}

/// <summary>The outcome of an experiment: the best model and every trial.</summary>
/// <param name="BestModel">The fitted transformer of the best trial that finished its full run, loaded from its saved model (the caller disposes it).</param>
/// <param name="BestTrial">That trial.</param>
/// <param name="Trials">Every trial, in start order (the leaderboard: sort by <see cref="TrialRecord.ValidationAccuracy"/>).</param>
/// <param name="Duration">The experiment's wall-clock time.</param>
public sealed record ExperimentResult(DecorrelatedImageClassificationTransformer BestModel, TrialRecord BestTrial, IReadOnlyList<TrialRecord> Trials, TimeSpan Duration);
