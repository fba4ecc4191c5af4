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
/// Every trial is defined by its full run (its <see cref="ImageClassificationSearchSpace.MaxEpoch"/> epochs, so the step
/// schedule decays where a plain run's would); a rung stops it after the rung's epochs at a checkpoint, and a promotion resumes
/// from that checkpoint, so a trial that finishes its full run ends exactly where a plain run of the same options would. The trials
/// share one decoded image cache: the data is decoded by the first trial and reused by the others.
/// <para>
/// The study lives in a journal (<see cref="Settings.Storage"/>: an SQLite file, or PostgreSQL for workers on many machines; a
/// temporary SQLite file without it): a killed
/// experiment resumes from it, and several processes that call <see cref="Execute(IDataView, IDataView, CancellationToken)"/>
/// with the same settings, data and journal are workers of one study — each asks the journal for the next piece of work, and a
/// piece whose worker died is handed to another after <see cref="Settings.Lease"/>. Each worker returns when the study has
/// nothing left to do (or its own budget ran out) with the study's best model and every trial, whichever worker ran it.
/// Progress goes to ML.NET's log (<c>mlContext.Log</c>) and to <see cref="Settings.Progress"/>. With k folds
/// (<see cref="Execute(IDataView, int, CancellationToken)"/>) every rung trains one model per fold and ranks by their mean.
/// </para>
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

        /// <summary>How the budget is spent on trials: successive halving (the default) or random search.</summary>
        public SearchStrategy Strategy { get; set; } = SearchStrategy.SuccessiveHalving;

        /// <summary>
        /// Epochs of the lowest rung; rungs grow η-fold up to the longest full run of <see cref="ImageClassificationSearchSpace.MaxEpoch"/>.
        /// Default 1. Not used by random search.
        /// </summary>
        public int MinEpochs { get; set; } = 1;

        /// <summary>η: the top 1/η of a rung is promoted. Default 3. Not used by random search.</summary>
        public int ReductionFactor { get; set; } = 3;

        /// <summary>The validation metric trials are ranked by. Default micro-accuracy.</summary>
        public OptimizingMetric OptimizingMetric { get; set; } = OptimizingMetric.MicroAccuracy;

        /// <summary>Stop starting work after this long (a running trial finishes its rung); null for no limit.</summary>
        public TimeSpan? TimeBudget { get; set; }

        /// <summary>The configurations to sample.</summary>
        public ImageClassificationSearchSpace SearchSpace { get; set; } = new();

        /// <summary>Options every trial shares (columns, image size); the search space's settings override theirs.</summary>
        public DecorrelatedImageClassificationTrainer.Options BaseOptions { get; set; } = new();

        /// <summary>Seed of the sampling and of every trial (trial <c>i</c> trains with seed <c>Seed + i</c>). Default 0.</summary>
        public int Seed { get; set; }

        /// <summary>
        /// Folder for the shared cache, the trials' checkpoints and models; every worker of a study must see the same one.
        /// A new temporary folder (deleted afterwards) when null and there is no journal; the journal's path plus ".work" with one.
        /// </summary>
        public string? WorkFolder { get; set; }

        /// <summary>
        /// Where the study is recorded (<see cref="StudyStorage.Parse"/>): an SQLite file path or <c>sqlite:FILE</c> for one
        /// machine, <c>postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE</c> for workers on many (then <see cref="WorkFolder"/>
        /// must be a folder all of them see). An experiment killed at any point resumes from it (finished rungs are not run
        /// again), and processes that share it share the study. Null for a private, temporary SQLite file.
        /// </summary>
        public string? Storage { get; set; }

        /// <summary>
        /// The study's name within <see cref="Storage"/> (letters, digits, underscores): one PostgreSQL database holds many
        /// studies. Default "default".
        /// </summary>
        public string StudyName { get; set; } = "default";

        /// <summary>
        /// How long a worker's claim on a piece of work stays valid without renewal (the worker renews it every third of
        /// this while it lives). A worker that dies has its work handed to another after this long. Default 2 minutes.
        /// </summary>
        public TimeSpan Lease { get; set; } = TimeSpan.FromMinutes(2);

        /// <summary>How often a worker with nothing to do asks again (the rest waits on other workers' trials). Default 2 s.</summary>
        public TimeSpan PollInterval { get; set; } = TimeSpan.FromSeconds(2);

        /// <summary>Receives a trial's record whenever it changes: this worker's after each epoch, other workers' when seen in the journal.</summary>
        public Action<TrialRecord>? Progress { get; set; }
    }

    /// <summary>Creates an experiment in <paramref name="context"/>.</summary>
    /// <exception cref="ArgumentException">A setting or the search space is invalid; the message names it.</exception>
    public DecorrelatedImageClassificationExperiment(MLContext context, Settings settings)
    {
        ArgumentNullException.ThrowIfNull(context);
        ArgumentNullException.ThrowIfNull(settings);
        settings.SearchSpace.Validate();
        if (!Enum.IsDefined(settings.Strategy))
            throw new ArgumentOutOfRangeException(nameof(settings), settings.Strategy, "Settings.Strategy is not a strategy this experiment knows.");
        AsynchronousSuccessiveHalving.Validate(settings.MaxTrials, LowestRung(settings), settings.SearchSpace.MaxEpoch.Max(), settings.ReductionFactor);
        if (settings.Strategy == SearchStrategy.SuccessiveHalving && settings.SearchSpace.MaxEpoch.Min() < settings.MinEpochs)
            throw new ArgumentOutOfRangeException(nameof(settings), settings.MinEpochs,
                $"Settings.MinEpochs ({settings.MinEpochs}) exceeds the search space's shortest MaxEpoch ({settings.SearchSpace.MaxEpoch.Min()}): the lowest rung cannot be longer than a full run.");
        if (settings.TimeBudget is { } budget && budget <= TimeSpan.Zero)
            throw new ArgumentOutOfRangeException(nameof(settings), budget, "Settings.TimeBudget must be positive.");
        if (settings.Lease < TimeSpan.FromSeconds(1))
            throw new ArgumentOutOfRangeException(nameof(settings), settings.Lease, "Settings.Lease must be at least one second.");
        if (settings.PollInterval <= TimeSpan.Zero)
            throw new ArgumentOutOfRangeException(nameof(settings), settings.PollInterval, "Settings.PollInterval must be positive.");
        if (settings.Storage is { } storage && StudyStorage.Parse(storage, settings.StudyName).IsPostgreSql && settings.WorkFolder is null)
            throw new ArgumentException("Settings.WorkFolder must be set with a PostgreSQL study: a folder every worker sees (checkpoints and models are kept there).", nameof(settings));
        if (!Enum.IsDefined(settings.OptimizingMetric))
            throw new ArgumentOutOfRangeException(nameof(settings), settings.OptimizingMetric, "Settings.OptimizingMetric is not a metric this experiment knows.");
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
        var split = SplitForValidation(data, validationFraction);
        return Execute(split.TrainSet, split.TestSet, cancellation);
    }

    /// <summary>
    /// Runs the search with <paramref name="folds"/>-fold cross-validation (ML.NET's CrossValidationSplit, seeded with
    /// <see cref="Settings.Seed"/>): every rung of a trial trains one model per fold, and the trial is ranked by the mean of
    /// the folds' validation metrics. The returned model is the best trial's model of its best fold.
    /// </summary>
    /// <param name="data">Rows with a key label column and the feature column.</param>
    /// <param name="folds">Folds, at least 2.</param>
    /// <param name="cancellation">Stops the search between steps.</param>
    public ExperimentResult Execute(IDataView data, int folds, CancellationToken cancellation = default)
    {
        ArgumentNullException.ThrowIfNull(data);
        return Execute(SplitIntoFolds(data, folds), cancellation);
    }

    private DataOperationsCatalog.TrainTestData SplitForValidation(IDataView data, double validationFraction)
    {
        if (!(validationFraction > 0 && validationFraction < 1))
            throw new ArgumentOutOfRangeException(nameof(validationFraction), validationFraction, "The validation fraction must lie in (0, 1).");
        return _context.Data.TrainTestSplit(data, validationFraction, seed: _settings.Seed);
    }

    private List<(IDataView Train, IDataView Validation)> SplitIntoFolds(IDataView data, int folds)
    {
        if (folds < 2)
            throw new ArgumentOutOfRangeException(nameof(folds), folds, "Cross-validation needs at least 2 folds.");
        return _context.Data.CrossValidationSplit(data, folds, seed: _settings.Seed).Select(f => (f.TrainSet, f.TestSet)).ToList();
    }

    /// <summary>
    /// Runs the search as one worker of the study: trains on <paramref name="train"/>, ranks by
    /// <see cref="Settings.OptimizingMetric"/> on <paramref name="validation"/>, and returns when the study has nothing left
    /// to do or this worker's <see cref="Settings.TimeBudget"/> ran out.
    /// </summary>
    /// <param name="train">Training rows with a key label column and the feature column, as the trainer takes them.</param>
    /// <param name="validation">Validation rows, transformed by the same label mapping.</param>
    /// <param name="cancellation">Stops the search between steps; the piece of work in hand is handed to another worker after its lease.</param>
    /// <exception cref="InvalidOperationException">No trial finished its full run within the budget, or the journal belongs to another study.</exception>
    /// <exception cref="IOException">The journal cannot be opened or written; the message names it.</exception>
    public ExperimentResult Execute(IDataView train, IDataView validation, CancellationToken cancellation = default)
    {
        ArgumentNullException.ThrowIfNull(train);
        ArgumentNullException.ThrowIfNull(validation);
        return Execute([(train, validation)], cancellation);
    }

    private ExperimentResult Execute(IReadOnlyList<(IDataView Train, IDataView Validation)> folds, CancellationToken cancellation)
    {
        var (train, validation) = folds[0];
        var settings = _settings;
        bool temporary = settings.WorkFolder is null && settings.Storage is null;
        var storage = settings.Storage is { } text ? StudyStorage.Parse(text, settings.StudyName) : null;
        string folder = settings.WorkFolder ?? (storage?.FilePath is { } journalPath ? journalPath + ".work"
            : Path.Combine(Path.GetTempPath(), "dbp-experiment-" + Guid.NewGuid().ToString("N")));
        Directory.CreateDirectory(folder);
        // The experiment's progress in ML.NET's log (mlContext.Log), as ML.NET's own components report theirs.
        using var channel = ((IHostEnvironment)_context).Register(nameof(DecorrelatedImageClassificationExperiment)).Start("Search");
        try
        {
            using var journal = StudyJournal.Open(storage ?? StudyStorage.Parse(Path.Combine(folder, "study.sqlite")), Describe(train, validation, folds.Count));
            string worker = WorkerName();
            channel.Info($"Worker {worker}: searching {settings.MaxTrials} trials of " +
                         (settings.Strategy == SearchStrategy.RandomSearch ? $"{string.Join(" or ", settings.SearchSpace.MaxEpoch)} epochs (random search)"
                             : $"{settings.MinEpochs}..{settings.SearchSpace.MaxEpoch.Max()} epochs (η {settings.ReductionFactor})") + $" by {settings.OptimizingMetric}" +
                         (settings.TimeBudget is { } limit ? $" within {limit}" : "") + (storage is null ? "." : $", journal {journal.Location}."));
            var seen = new Dictionary<int, string>();
            int rungsRun = 0;
            var clock = Stopwatch.StartNew();
            while (settings.TimeBudget is not { } budget || clock.Elapsed < budget)
            {
                cancellation.ThrowIfCancellationRequested();
                var decision = journal.ClaimWork(worker, journal.Now(), settings.Lease, NewSearch(), Score, NewTrial, IsDeadProcessOfThisMachine);
                var trials = journal.Trials(settings.BaseOptions);
                foreach (var other in trials.Values.Where(t => seen.GetValueOrDefault(t.Trial) != t.Summary()))
                {
                    seen[other.Trial] = other.Summary();
                    if (decision.Work?.Trial != other.Trial)
                        settings.Progress?.Invoke(other);
                }
                if (decision.Work is not TrialWork work)
                {
                    if (decision.Finished)
                        break;
                    cancellation.WaitHandle.WaitOne(settings.PollInterval);
                    continue;
                }
                var trial = trials[work.Trial];
                if (decision.Requeued)
                    channel.Warning($"Trial {work.Trial}'s rung {work.Rung} was claimed by a worker that stopped without reporting; continuing it from its last checkpoint.");
                try
                {
                    using var model = RunRung(journal, worker, trial, work, folds, folder, cancellation);
                    if (model is not null)
                        _context.Model.Save(model, validation.Schema, ModelPath(folder, trial.Trial));
                }
                catch (OperationCanceledException)
                {
                    journal.Release(worker, work.Trial);   // the next worker continues it from its last checkpoint
                    throw;
                }
                if (trial.State == TrialState.Running)   // its lease ran out and another worker took it over
                {
                    channel.Warning($"Worker {worker} lost its claim on trial {work.Trial} (lease {settings.Lease}); another worker finishes it.");
                    continue;
                }
                if (!journal.Record(trial, work, trial.State == TrialState.Failed, worker))
                    channel.Warning($"Worker {worker} lost its claim on trial {work.Trial} before reporting rung {work.Rung}; another worker's report counts.");
                seen[trial.Trial] = trial.Summary();
                rungsRun++;
                channel.Info($"Rung {work.Rung} ({work.Epochs} epochs) of {trial}");
                settings.Progress?.Invoke(trial);
            }
            var result = Result(journal, folder, clock.Elapsed) with { RungsRun = rungsRun, JournalTime = journal.Elapsed };
            channel.Info($"Best: {result.BestTrial} ({result.Trials.Count} trials; this worker searched {clock.Elapsed.TotalSeconds:F0} s).");
            return result;
        }
        finally
        {
            if (temporary && Directory.Exists(folder))
                Directory.Delete(folder, recursive: true);
        }
    }

    /// <summary>
    /// The study in <see cref="Settings.Storage"/> as it stands, without running anything: every trial, whichever worker
    /// ran it, and the best model so far. For the process that reports on a study its workers (other processes, a cluster's
    /// jobs) have run with <see cref="Execute(IDataView, IDataView, CancellationToken)"/>.
    /// </summary>
    /// <param name="train">The training rows the study was run with (they identify the study).</param>
    /// <param name="validation">The validation rows the study was run with.</param>
    /// <exception cref="InvalidOperationException">There is no journal, it belongs to another study, or no trial has finished its full run.</exception>
    public ExperimentResult LoadResult(IDataView train, IDataView validation)
    {
        ArgumentNullException.ThrowIfNull(train);
        ArgumentNullException.ThrowIfNull(validation);
        return LoadResult(Describe(train, validation));
    }

    /// <summary>
    /// The study run with <see cref="Execute(IDataView, double, CancellationToken)"/> on <paramref name="data"/>, as it
    /// stands (see <see cref="LoadResult(IDataView, IDataView)"/>).
    /// </summary>
    /// <param name="data">The rows the study was run with.</param>
    /// <param name="validationFraction">The fraction of them the study validated on.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="validationFraction"/> is not in (0, 1).</exception>
    /// <exception cref="InvalidOperationException">There is no journal, it belongs to another study, or no trial has finished its full run.</exception>
    public ExperimentResult LoadResult(IDataView data, double validationFraction)
    {
        ArgumentNullException.ThrowIfNull(data);
        var split = SplitForValidation(data, validationFraction);
        return LoadResult(split.TrainSet, split.TestSet);
    }

    /// <summary>
    /// The study run with <see cref="Execute(IDataView, int, CancellationToken)"/> on <paramref name="data"/>, as it stands
    /// (see <see cref="LoadResult(IDataView, IDataView)"/>): its best model is the best trial's model of its best fold.
    /// </summary>
    /// <param name="data">The rows the study was run with.</param>
    /// <param name="folds">The number of folds it was run with.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="folds"/> is less than 2.</exception>
    /// <exception cref="InvalidOperationException">There is no journal, it belongs to another study (other data or folds), or no trial has finished its full run.</exception>
    public ExperimentResult LoadResult(IDataView data, int folds)
    {
        ArgumentNullException.ThrowIfNull(data);
        var splits = SplitIntoFolds(data, folds);
        return LoadResult(Describe(splits[0].Train, splits[0].Validation, splits.Count));
    }

    private ExperimentResult LoadResult(Dictionary<string, string> description)
    {
        if (_settings.Storage is not { } text)
            throw new InvalidOperationException("LoadResult reads a study's journal: set Settings.Storage.");
        var storage = StudyStorage.Parse(text, _settings.StudyName);
        if (storage.FilePath is { } path && !File.Exists(path))
            throw new InvalidOperationException($"The study journal '{path}' does not exist: no worker has run this study yet.");
        using var journal = StudyJournal.Open(storage, description);
        return Result(journal, _settings.WorkFolder ?? storage.FilePath + ".work", TimeSpan.Zero);
    }

    private ExperimentResult Result(StudyJournal journal, string folder, TimeSpan duration)
    {
        var ordered = journal.Trials(_settings.BaseOptions).Values.OrderBy(t => t.Trial).ToList();
        var bestTrial = ordered.Where(t => t.State == TrialState.Completed).MaxBy(t => Score(t.Metric))
            ?? throw new InvalidOperationException($"No trial finished its full run within the budget ({ordered.Count} started); raise Settings.TimeBudget or lower the search space's MaxEpoch.");
        var (_, best) = DecorrelatedImageClassificationTransformer.Load(_context, ModelPath(folder, bestTrial.Trial));
        return new ExperimentResult(best, bestTrial, ordered, duration);
    }

    /// <summary>A name unique to this call: machine, process id, and a random tag (one process may run several workers).</summary>
    private static string WorkerName() => $"{Environment.MachineName}/{Environment.ProcessId}/{Guid.NewGuid().ToString("N")[..6]}";

    /// <summary>Whether <paramref name="worker"/> names a process of this machine that no longer runs: its work need not wait for the lease.</summary>
    private static bool IsDeadProcessOfThisMachine(string worker)
    {
        var parts = worker.Split('/');
        if (parts.Length != 3 || parts[0] != Environment.MachineName || !int.TryParse(parts[1], out int id))
            return false;
        try
        {
            using var process = System.Diagnostics.Process.GetProcessById(id);
            return process.HasExited;
        }
        catch (ArgumentException)
        {
            return true;   // no process has that id
        }
    }

    /// <summary>Random search is successive halving with one rung, the longest full run: every trial finishes on it.</summary>
    private AsynchronousSuccessiveHalving NewSearch()
        => new(_settings.MaxTrials, LowestRung(_settings), _settings.SearchSpace.MaxEpoch.Max(), _settings.ReductionFactor,
               trial => _settings.SearchSpace.Sample(_settings.Seed, trial).MaxEpoch);

    private static int LowestRung(Settings settings)
        => settings.Strategy == SearchStrategy.RandomSearch ? settings.SearchSpace.MaxEpoch.Max() : settings.MinEpochs;

    private TrialRecord NewTrial(int number)
    {
        var configuration = _settings.SearchSpace.Sample(_settings.Seed, number);
        return new TrialRecord(number, configuration, configuration.Apply(_settings.BaseOptions));
    }

    private double Score(double metric) => _settings.OptimizingMetric.Score(metric);

    private static string ModelPath(string folder, int trial) => Path.Combine(folder, $"trial-{trial}.zip");

    /// <summary>What identifies the study in a journal: the search settings and the data's shape.</summary>
    private Dictionary<string, string> Describe(IDataView train, IDataView validation, int folds = 1)
    {
        var s = _settings;
        static string Data(IDataView data) => $"{data.GetRowCount()?.ToString() ?? "?"} rows; {string.Join(", ", data.Schema.Where(c => !c.IsHidden).Select(c => c.Name + ":" + c.Type))}";
        return new Dictionary<string, string>
        {
            ["search"] = $"{s.Strategy}, trials {s.MaxTrials}, lowest rung {LowestRung(s)} epochs, η {s.ReductionFactor}, seed {s.Seed}; {s.SearchSpace.Describe()}",
            ["metric"] = s.OptimizingMetric.ToString(),
            ["training data"] = Data(train),
            ["validation data"] = Data(validation) + (folds > 1 ? $"; {folds}-fold cross-validation" : ""),
        };
    }

    /// <summary>Thrown inside a trial's Fit to end it at its rung; the checkpoint of the rung's last epoch is on disk.</summary>
    private sealed class RungReachedException() : Exception("The trial reached its rung.");

    /// <summary>Thrown inside a trial's Fit when this worker's claim on it was taken over.</summary>
    private sealed class ClaimLostException() : Exception("The worker's claim on the trial was taken over.");

    private DecorrelatedImageClassificationTransformer? RunRung(StudyJournal journal, string worker, TrialRecord trial, TrialWork work,
        IReadOnlyList<(IDataView Train, IDataView Validation)> folds, string folder, CancellationToken cancellation)
    {
        var clock = Stopwatch.StartNew();
        double secondsBefore = trial.Seconds;
        // The claim is renewed while this worker lives; a worker that loses it (a stall longer than the lease) stops the trial.
        bool lost = false;
        Exception? renewalError = null;
        var period = _settings.Lease / 3;
        using var renewal = new Timer(_ =>
        {
            try
            {
                lost |= !journal.Renew(worker, work.Trial, journal.Now() + (long)_settings.Lease.TotalMilliseconds);
            }
            catch (Exception e) when (e is System.Data.Common.DbException or InvalidOperationException or TimeoutException)
            {
                renewalError = e;   // reported by the training thread below
            }
        }, null, period, period);
        DecorrelatedImageClassificationTransformer? best = null;
        double bestScore = double.NegativeInfinity;
        try
        {
            bool completed = true;
            var foldMetrics = new List<DecorrelatedImageClassificationMetrics>();
            for (int fold = 0; fold < folds.Count; fold++)
            {
                string suffix = folds.Count == 1 ? "" : $"-fold{fold}";
                // With folds, each fold's result of this rung is kept on disk: a worker that takes the trial over after a death
                // does not run a finished fold again below the top rung (and at the top its checkpoint returns the model at once).
                string foldResult = Path.Combine(folder, $"trial-{trial.Trial}{suffix}.rung{work.Rung}.json");
                var saved = folds.Count > 1 && File.Exists(foldResult)
                    ? System.Text.Json.JsonSerializer.Deserialize<DecorrelatedImageClassificationMetrics>(File.ReadAllText(foldResult), FoldJson) : null;
                if (saved is not null && work.Epochs < trial.Options.MaxEpoch)
                {
                    foldMetrics.Add(saved);
                    completed = false;
                    continue;
                }
                var options = trial.Options.Clone();
                options.Seed = _settings.Seed + trial.Trial;
                options.ValidationSet = folds[fold].Validation;
                options.ValidationFraction = 0;
                options.CacheDirectory = Path.Combine(folder, "cache" + suffix);
                options.CheckpointPath = Path.Combine(folder, $"trial-{trial.Trial}{suffix}.checkpoint");
                options.ResumeFromCheckpoint = true;
                DecorrelatedImageClassificationMetrics? last = null;
                options.MetricsCallback = m =>
                {
                    last = m;
                    if (folds.Count == 1)
                        Record(journal, trial, m.Epoch, [m], m.Seconds, secondsBefore + clock.Elapsed.TotalSeconds);
                };
                options.ProgressCallback = p =>
                {
                    cancellation.ThrowIfCancellationRequested();
                    if (renewalError is { } error)
                        throw new IOException($"Renewing the claim on trial {work.Trial} in the study journal failed: {error.Message}", error);
                    if (lost)
                        throw new ClaimLostException();
                    if (p.Epoch > work.Epochs)
                        throw new RungReachedException();
                };
                try
                {
                    var model = _context.MulticlassClassification.Trainers.DecorrelatedImageClassification(options).Fit(folds[fold].Train);
                    last ??= saved;
                    double score = last is null ? double.NegativeInfinity : Score(MetricOf(last));
                    if (best is null || score > bestScore)
                    {
                        best?.Dispose();
                        (best, bestScore) = (model, score);
                    }
                    else
                    {
                        model.Dispose();
                    }
                }
                catch (RungReachedException)
                {
                    completed = false;
                }
                if (last is null)
                    continue;
                foldMetrics.Add(last);
                if (folds.Count > 1)
                    File.WriteAllText(foldResult, System.Text.Json.JsonSerializer.Serialize(last, FoldJson));
            }
            if (folds.Count > 1 && foldMetrics.Count == folds.Count)
                Record(journal, trial, foldMetrics[0].Epoch, foldMetrics, foldMetrics.Sum(m => m.Seconds), secondsBefore + clock.Elapsed.TotalSeconds);
            trial.State = completed ? TrialState.Completed : TrialState.Stopped;
            if (!completed)
            {
                best?.Dispose();
                best = null;
            }
            return best;
        }
        catch (ClaimLostException)
        {
            best?.Dispose();
            trial.State = TrialState.Running;
            return null;
        }
        catch (Exception e) when (e is not OperationCanceledException and not OutOfMemoryException)
        {
            // Whatever ends a trial (divergence, bad data, an error libtorch reports) is its failure, not the experiment's.
            best?.Dispose();
            trial.State = TrialState.Failed;
            trial.Error = e is System.Runtime.InteropServices.ExternalException ? "libtorch: " + e.Message.Split('\n')[0] : e.Message;
            return null;
        }
        finally
        {
            trial.Seconds = secondsBefore + clock.Elapsed.TotalSeconds;
            trial.Rung = work.Rung;
        }
    }

    // A fold's metrics may hold NaN (the capped fraction of an epoch without R updates).
    private static readonly System.Text.Json.JsonSerializerOptions FoldJson = new() { NumberHandling = System.Text.Json.Serialization.JsonNumberHandling.AllowNamedFloatingPointLiterals };

    /// <summary>The optimizing metric's value in <paramref name="metrics"/>.</summary>
    private double MetricOf(DecorrelatedImageClassificationMetrics metrics) => _settings.OptimizingMetric switch
    {
        OptimizingMetric.MacroAccuracy => metrics.ValidationMacroAccuracy ?? double.NaN,
        OptimizingMetric.LogLoss => metrics.ValidationLoss ?? double.NaN,
        _ => metrics.ValidationAccuracy ?? double.NaN,
    };

    /// <summary>
    /// Adds the point after <paramref name="epoch"/> (the mean over the folds' <paramref name="metrics"/>, at
    /// <paramref name="trainingSeconds"/> of training) to the trial's curve, sets its wall-clock <paramref name="seconds"/>, and saves it.
    /// </summary>
    private void Record(StudyJournal journal, TrialRecord trial, double epoch, IReadOnlyList<DecorrelatedImageClassificationMetrics> metrics, double trainingSeconds, double seconds)
    {
        double Mean(Func<DecorrelatedImageClassificationMetrics, double?> value) => metrics.Average(m => value(m) ?? double.NaN);
        trial.Curve.RemoveAll(c => c.Epoch >= epoch);   // epochs a dead worker ran past its last checkpoint are run again
        trial.Curve.Add(new TrialCurvePoint(epoch, trainingSeconds, Mean(m => m.ValidationAccuracy), Mean(m => m.ValidationMacroAccuracy), Mean(m => m.ValidationLoss), DateTimeOffset.UtcNow));
        trial.EpochsRun = (int)Math.Round(epoch);
        trial.ValidationAccuracy = Mean(m => m.ValidationAccuracy);
        trial.Metric = metrics.Average(MetricOf);
        trial.Seconds = seconds;
        journal.Save(trial);   // a worker that takes the trial over finds its curve up to the last checkpoint
        _settings.Progress?.Invoke(trial);
    }
}

/// <summary>How an experiment spends its budget on trials.</summary>
public enum SearchStrategy
{
    /// <summary>
    /// Asynchronous successive halving (<see cref="AsynchronousSuccessiveHalving"/>): every trial starts on the lowest rung and
    /// only the best go on to longer runs.
    /// </summary>
    SuccessiveHalving,

    /// <summary>Random search: every trial runs its full run (one rung); for comparison, or when early rankings mislead.</summary>
    RandomSearch,
}

/// <summary>The validation metric an experiment ranks trials by (the names of ML.NET's <c>MulticlassClassificationMetrics</c>).</summary>
public enum OptimizingMetric
{
    /// <summary>The fraction of validation images classified correctly; higher is better.</summary>
    MicroAccuracy,

    /// <summary>The mean over the classes of each class's accuracy, for unbalanced classes; higher is better.</summary>
    MacroAccuracy,

    /// <summary>The mean cross-entropy of the predicted probabilities; lower is better.</summary>
    LogLoss,
}

/// <summary>Ranking by an <see cref="OptimizingMetric"/>.</summary>
public static class OptimizingMetricExtensions
{
    /// <summary>
    /// A higher-is-better score of <paramref name="value"/> of <paramref name="metric"/>, by which trials are ranked:
    /// the value itself, its negative for log-loss, and −∞ for NaN (not measured).
    /// </summary>
    public static double Score(this OptimizingMetric metric, double value)
        => double.IsNaN(value) ? double.NegativeInfinity : metric == OptimizingMetric.LogLoss ? -value : value;
}

/// <summary>One point of a trial's validation curve, after an epoch.</summary>
/// <param name="Epoch">Epochs trained.</param>
/// <param name="Seconds">The trial's training seconds so far.</param>
/// <param name="ValidationAccuracy">Micro-accuracy on the validation set.</param>
/// <param name="ValidationMacroAccuracy">Macro-accuracy on the validation set.</param>
/// <param name="ValidationLogLoss">Log-loss on the validation set.</param>
/// <param name="RecordedAt">When the point was measured (wall clock, UTC): places it on the study's time line, across trials and workers.</param>
public readonly record struct TrialCurvePoint(double Epoch, double Seconds, double ValidationAccuracy, double ValidationMacroAccuracy, double ValidationLogLoss,
    DateTimeOffset RecordedAt);

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

    /// <summary>The optimizing metric on the validation set after its last epoch (NaN before the first): what the search ranks it by.</summary>
    public double Metric { get; internal set; } = double.NaN;

    /// <summary>Wall-clock seconds spent on it, data reading included.</summary>
    public double Seconds { get; internal set; }

    /// <summary>Its validation metrics after every epoch it has run.</summary>
    public List<TrialCurvePoint> Curve { get; } = [];

    /// <summary>Why it failed, or null.</summary>
    public string? Error { get; internal set; }

    /// <summary>What changes as the trial progresses, to notice changes made by other workers.</summary>
    internal string Summary() => $"{State} {Rung} {EpochsRun} {Curve.Count} {Error}";

    /// <summary>A one-line summary for a leaderboard.</summary>
    public override string ToString()
        => $"trial {Trial}: {(Options.UseDecorrelation ? "DBP" : "backprop")} {Options.Architecture}, lr {Options.LearningRate:G3}, batch {Options.BatchSize}, " +
           $"wd {Options.WeightDecay:G2}{(Options.UseDecorrelation ? $", η_R {Options.DecorrelationLearningRate:G3}" : "")}: {State} after {EpochsRun} of {Options.MaxEpoch} epochs, " +
           $"validation accuracy {ValidationAccuracy:P2}, {Seconds:F1} s{(Error is null ? "" : ", " + Error)}";
}

/// <summary>The outcome of an experiment: the best model and every trial.</summary>
/// <param name="BestModel">The fitted transformer of the best trial that finished its full run, loaded from its saved model (the caller disposes it).</param>
/// <param name="BestTrial">That trial.</param>
/// <param name="Trials">Every trial of the study, in start order, whichever worker ran it (the leaderboard: sort by <see cref="TrialRecord.Metric"/>).</param>
/// <param name="Duration">The wall-clock time this worker searched.</param>
public sealed record ExperimentResult(DecorrelatedImageClassificationTransformer BestModel, TrialRecord BestTrial, IReadOnlyList<TrialRecord> Trials, TimeSpan Duration)
{
    /// <summary>The rung results this worker reported.</summary>
    public int RungsRun { get; init; }

    /// <summary>The time this worker spent in the study journal (claims, renewals, saves, reports): the search's bookkeeping cost.</summary>
    public TimeSpan JournalTime { get; init; }
}
