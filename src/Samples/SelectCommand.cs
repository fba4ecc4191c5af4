using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using Microsoft.ML.Decorrelation.Selection;
using Spectre.Console;

namespace Microsoft.ML.Decorrelation.Samples;

/// <summary>What <c>select</c> was asked for.</summary>
internal sealed record SelectSettings
{
    public double Minutes { get; init; } = 10;
    public int Trials { get; init; } = 9;
    public int MinEpochs { get; init; } = 1;
    public int[] MaxEpochs { get; init; } = [6];
    public int Folds { get; init; }
    public SearchStrategy Strategy { get; init; } = SearchStrategy.SuccessiveHalving;
    public int? Limit { get; init; }
    public string? DataFolder { get; init; }
    public DirectoryInfo? Images { get; init; }
    public int Size { get; init; } = 32;
    public string ReportFolder { get; init; } = "select-report";
    public int Workers { get; init; } = 1;
    public bool IsWorker { get; init; }
    public bool SummarizeOnly { get; init; }
    public string? Journal { get; init; }
    public string? Storage { get; init; }
    public string Study { get; init; } = "default";
    public string? WorkFolder { get; init; }
    public double LeaseMinutes { get; init; } = 2;
    public OptimizingMetric Metric { get; init; } = OptimizingMetric.MicroAccuracy;
    public int Seed { get; init; }
    public bool[] Methods { get; init; } = [true, false];

    /// <summary>The study's storage every worker shares: --storage, --journal, or study.sqlite in the report folder with several workers; null for a private one.</summary>
    public string? StudyStorage => Storage ?? Journal ?? (Workers > 1 || IsWorker ? Path.Combine(ReportFolder, "study.sqlite") : null);

    /// <summary>The folder of checkpoints and models: --work, else REPORT/work when the study is shared.</summary>
    public string? StudyWorkFolder => WorkFolder ?? (StudyStorage is null ? null : Path.Combine(ReportFolder, "work"));
}

/// <summary>
/// <c>select</c>: model selection with <see cref="DecorrelatedImageClassificationExperiment"/>, DBP and backprop in one search,
/// on Fashion-MNIST or a folder of images; a live leaderboard while it runs, then the leaderboard (JSON), the validation
/// metric of every trial against its training time (PNG), the best model and a one-line verdict in the report folder.
/// With <c>--workers N</c> it starts N − 1 more worker processes of itself that share the study's journal.
/// </summary>
internal static class SelectCommand
{
    public static System.CommandLine.Command Create()
    {
        var minutes = new Option<string>("--time") { Description = "Time budget: minutes, or with a unit (90s, 10m, 1h).", DefaultValueFactory = _ => "10m" };
        var trials = new Option<int>("--trials") { Description = "Trials to start at most.", DefaultValueFactory = _ => 9 };
        var maxEpochs = new Option<string>("--max-epochs") { Description = "Epochs of a full run, or a comma-separated list to search over (the longest is the top rung).", DefaultValueFactory = _ => "6" };
        var folds = new Option<int>("--folds") { Description = "Rank the trials by k-fold cross-validation over all labelled images instead of a 10 % validation split (0: the split)." };
        var minEpochs = new Option<int>("--min-epochs") { Description = "Epochs of the lowest rung.", DefaultValueFactory = _ => 1 };
        var strategy = new Option<SearchStrategy>("--strategy") { Description = "SuccessiveHalving (trials start short, the best go on) or RandomSearch (every trial runs in full).", DefaultValueFactory = _ => SearchStrategy.SuccessiveHalving };
        var limit = new Option<int?>("--limit") { Description = "Use only the first N training images (10 % of them validate)." };
        var data = new Option<string?>("--data") { Description = "A folder with the four Fashion-MNIST IDX files." };
        var images = new Option<DirectoryInfo?>("--images") { Description = "Instead of Fashion-MNIST: a folder with one sub-folder of images per class." };
        var size = new Option<int>("--size") { Description = "With --images: the side the images are resized to.", DefaultValueFactory = _ => 32 };
        var report = new Option<string>("--report") { Description = "Folder for the leaderboard, chart and best model.", DefaultValueFactory = _ => "select-report" };
        var workers = new Option<int>("--workers") { Description = "Worker processes on this machine sharing the study (this one included).", DefaultValueFactory = _ => 1 };
        var summarize = new Option<bool>("--summarize") { Description = "Run nothing: write the report of the study in --storage/--journal as its workers left it (a cluster's jobs, say)." };
        var worker = new Option<bool>("--worker") { Description = "Run as one more worker of the study in --journal (no report); started by --workers, or by a scheduler." };
        var journal = new Option<string?>("--journal") { Description = "The study's SQLite journal; a killed search resumes from it. Default with several workers: REPORT/study.sqlite." };
        var storage = new Option<string?>("--storage") { Description = "Instead of --journal: sqlite:FILE or postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE, for workers on many machines." };
        var study = new Option<string>("--study") { Description = "The study's name in --storage (a PostgreSQL database holds many).", DefaultValueFactory = _ => "default" };
        var lease = new Option<string>("--lease") { Description = "How long a dead worker's trial waits before another worker takes it over (30s, 2m).", DefaultValueFactory = _ => "2m" };
        var kubernetes = new Option<string?>("--kubernetes") { Description = "Run nothing: write a Kubernetes Indexed Job of --workers worker pods for this study to this YAML file." };
        var slurm = new Option<string?>("--slurm") { Description = "Run nothing: write a Slurm batch script of a --workers-task job array of workers for this study (submit it with sbatch)." };
        var image = new Option<string?>("--image") { Description = "With --kubernetes: the container image holding the samples at /app/Samples.dll." };
        var work = new Option<string?>("--work") { Description = "Folder for checkpoints and trial models, seen by every worker (default REPORT/work)." };
        var metric = new Option<OptimizingMetric>("--metric") { Description = "The validation metric to optimize.", DefaultValueFactory = _ => OptimizingMetric.MicroAccuracy };
        var seed = new Option<int>("--seed") { Description = "Seed of the search and its trials.", DefaultValueFactory = _ => 0 };
        var methods = new Option<string>("--methods") { Description = "Training methods in the search space: both, dbp or backprop.", DefaultValueFactory = _ => "both" };
        var command = new System.CommandLine.Command("select", "Search DBP and backprop configurations by successive halving within a time budget.")
        {
            minutes, trials, maxEpochs, minEpochs, strategy, folds, limit, data, images, size, report, workers, worker, summarize, journal, storage, study, work, lease, kubernetes, slurm, image, metric, seed, methods,
        };
        command.SetAction(result => result.GetValue(kubernetes) is { } manifest
            ? WriteKubernetesJob(AnsiConsole.Console, manifest, result.GetValue(image)!, result.GetValue(workers), result.GetValue(study)!, Environment.GetCommandLineArgs().Skip(1).ToArray())
            : result.GetValue(slurm) is { } batch
            ? WriteSlurmJob(AnsiConsole.Console, batch, result.GetValue(workers), result.GetValue(study)!, result.GetValue(storage) ?? result.GetValue(journal),
                result.GetValue(work), result.GetValue(report)!, Environment.GetCommandLineArgs().Skip(1).ToArray())
            : Run(AnsiConsole.Console, new SelectSettings
        {
            Minutes = ParseMinutes(result.GetValue(minutes)!), Trials = result.GetValue(trials), MinEpochs = result.GetValue(minEpochs), MaxEpochs = ParseEpochs(result.GetValue(maxEpochs)!),
            Folds = result.GetValue(folds), Strategy = result.GetValue(strategy),
            Limit = result.GetValue(limit), DataFolder = result.GetValue(data), Images = result.GetValue(images), Size = result.GetValue(size),
            ReportFolder = result.GetValue(report)!, Workers = result.GetValue(workers), IsWorker = result.GetValue(worker), SummarizeOnly = result.GetValue(summarize), Journal = result.GetValue(journal),
            Storage = result.GetValue(storage), Study = result.GetValue(study)!, WorkFolder = result.GetValue(work),
            LeaseMinutes = ParseMinutes(result.GetValue(lease)!),
            Metric = result.GetValue(metric), Seed = result.GetValue(seed), Methods = ParseMethods(result.GetValue(methods)!),
        }, Environment.GetCommandLineArgs().Skip(1).ToArray()));
        return command;
    }

    /// <summary>
    /// Writes the Kubernetes Indexed Job of <paramref name="workers"/> worker pods (<see cref="KubernetesManifest"/>): each runs this
    /// command line as a worker, its scheduling options replaced; the storage string comes from the Secret dbp-study-storage.
    /// </summary>
    internal static int WriteKubernetesJob(IAnsiConsole console, string path, string image, int workers, string study, string[] commandLine)
    {
        var arguments = Without(commandLine, "--kubernetes", "--image", "--workers", "--journal", "--storage", "--study", "--work", "--report");
        File.WriteAllText(path, KubernetesManifest.Yaml(new KubernetesManifest.Job(study, image, workers, "dbp-study-storage", "dbp-shared", arguments)));
        console.MarkupLineInterpolated($"Wrote the Kubernetes job of {workers} workers to {Path.GetFullPath(path)}: create the Secret dbp-study-storage (key storage: the postgresql:// string) and the ReadWriteMany claim dbp-shared, then kubectl apply -f it.");
        return 0;
    }

    /// <summary>
    /// Writes a Slurm batch script whose job array of <paramref name="workers"/> tasks (one CPU each) runs this command line
    /// as workers of the study in <paramref name="storage"/>; each task logs to REPORT/task-N.log. Submit it with sbatch.
    /// </summary>
    internal static int WriteSlurmJob(IAnsiConsole console, string path, int workers, string study, string? storage, string? workFolder, string reportFolder, string[] commandLine)
    {
        if (workers < 1)
            throw new ArgumentException($"--workers {workers}: the Slurm job array needs at least one task.");
        if (storage is null || !Selection.StudyStorage.Parse(storage, study).IsPostgreSql)
            throw new ArgumentException("--slurm: give --storage postgresql://...: tasks on several machines cannot share an SQLite file.");
        if (workFolder is null)
            throw new ArgumentException("--slurm: give --work, a folder every node sees (checkpoints and trial models).");
        var arguments = Without(commandLine, "--slurm", "--workers", "--journal", "--storage", "--study", "--work", "--report")
            .Concat(["--worker", "--storage", storage, "--study", study, "--work", Path.GetFullPath(workFolder), "--report", Path.GetFullPath(reportFolder)]);
        static string Quote(string text) => "'" + text.Replace("'", "'\\''", StringComparison.Ordinal) + "'";
        string script = $"""
            #!/usr/bin/env bash
            # Workers of the model-selection study '{study}' (written by: select --slurm). Submit with: sbatch {Path.GetFileName(path)}
            #SBATCH --job-name=dbp-select-{study}
            #SBATCH --array=0-{workers - 1}
            #SBATCH --cpus-per-task=1
            #SBATCH --output={Path.GetFullPath(reportFolder)}/task-%a.log
            export OMP_NUM_THREADS=${"{"}SLURM_CPUS_PER_TASK:-1{"}"}   # Torch threads: the CPUs Slurm gave the task
            exec dotnet {Quote(typeof(SelectCommand).Assembly.Location)} {string.Join(' ', arguments.Select(Quote))}

            """;
        Directory.CreateDirectory(reportFolder);
        File.WriteAllText(path, script);
        if (!OperatingSystem.IsWindows())
            File.SetUnixFileMode(path, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);   // it holds the storage string
        console.MarkupLineInterpolated($"Wrote the Slurm job array of {workers} workers to {Path.GetFullPath(path)}: sbatch it; then select --summarize with the same options writes the report.");
        return 0;
    }

    /// <summary><paramref name="commandLine"/> without the valued options <paramref name="replaced"/> and their values: what a worker is started with before its own options are added.</summary>
    private static List<string> Without(string[] commandLine, params string[] replaced)
        => commandLine.Where((argument, i) => !replaced.Contains(argument) && (i == 0 || !replaced.Contains(commandLine[i - 1]))).ToList();

    /// <summary>"10" or "10m" (minutes), "90s", "1.5h".</summary>
    internal static double ParseMinutes(string text)
    {
        static double Number(string digits, string whole) => double.TryParse(digits, NumberStyles.Float, CultureInfo.InvariantCulture, out double value) && value > 0
            ? value : throw new ArgumentException($"--time or --lease '{whole}' is not a positive duration such as 90s, 10m or 1h.");
        return text.Trim() switch
        {
            var t when t.EndsWith('s') => Number(t[..^1], text) / 60,
            var t when t.EndsWith('m') => Number(t[..^1], text),
            var t when t.EndsWith('h') => Number(t[..^1], text) * 60,
            var t => Number(t, text),
        };
    }

    /// <summary>"6" or "4,6": the epochs of a full run to search over.</summary>
    internal static int[] ParseEpochs(string text)
    {
        var parts = text.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries);
        var epochs = parts.Select(p => int.TryParse(p, NumberStyles.None, CultureInfo.InvariantCulture, out int e) && e > 0 ? e : 0).ToArray();
        if (epochs.Length == 0 || epochs.Contains(0))
            throw new ArgumentException($"--max-epochs '{text}' is not a positive number of epochs or a comma-separated list of them, such as 6 or 4,6.");
        return epochs.Distinct().Order().ToArray();
    }

    private static bool[] ParseMethods(string text) => text switch
    {
        "both" => [true, false],
        "dbp" => [true],
        "backprop" => [false],
        _ => throw new ArgumentException($"--methods '{text}' is not one of both, dbp, backprop."),
    };

    /// <summary>Runs the search; <paramref name="commandLine"/> (this process's arguments) is what the extra workers are started with.</summary>
    internal static int Run(IAnsiConsole console, SelectSettings settings, string[]? commandLine = null)
    {
        if (settings.Workers < 1)
            throw new ArgumentException($"--workers {settings.Workers}: at least one worker is needed.");
        if (!console.Profile.Capabilities.Interactive)
            console.Profile.Width = Math.Max(console.Profile.Width, 200);   // a log gets whole lines: one per rung result
        var ml = new MLContext(seed: settings.Seed);
        // The search's warnings (a dead worker's trial taken over, a lost claim) belong in the log of a cluster job.
        ml.Log += (_, e) =>
        {
            if (e.Kind == Runtime.ChannelMessageKind.Warning && e.Source.Contains(nameof(DecorrelatedImageClassificationExperiment), StringComparison.Ordinal))
                console.MarkupLineInterpolated($"[yellow]{e.RawMessage}[/]");
        };
        if (settings.Folds is < 0 or 1)
            throw new ArgumentException($"--folds {settings.Folds}: cross-validation needs at least 2 folds (0 for a validation split).");
        var (train, validation, all, test, description) = LoadData(ml, settings);
        if (settings.IsWorker)
            console.MarkupLineInterpolated($"Worker {Environment.MachineName}/{Environment.ProcessId}{SchedulerTask()} of study '{settings.Study}'; data: {description}.");
        else
            console.MarkupLineInterpolated($"Data: {description}; budget {settings.Minutes:0.##} min, {settings.Trials} trials, {(settings.Strategy == SearchStrategy.RandomSearch ? "random search" : $"rungs from {settings.MinEpochs} to {settings.MaxEpochs.Max()} epochs")} (full runs of {string.Join(" or ", settings.MaxEpochs)}), {settings.Workers} worker(s), optimizing {settings.Metric}{(settings.Folds > 1 ? $" by {settings.Folds}-fold cross-validation" : "")}.");
        Directory.CreateDirectory(settings.ReportFolder);
        var experimentSettings = new DecorrelatedImageClassificationExperiment.Settings
        {
            MaxTrials = settings.Trials, Strategy = settings.Strategy, MinEpochs = settings.MinEpochs, TimeBudget = TimeSpan.FromMinutes(settings.Minutes),
            OptimizingMetric = settings.Metric, Seed = settings.Seed, Storage = settings.StudyStorage, StudyName = settings.Study,
            WorkFolder = settings.StudyWorkFolder, Lease = TimeSpan.FromMinutes(settings.LeaseMinutes),
            SearchSpace = new ImageClassificationSearchSpace { UseDecorrelation = settings.Methods, MaxEpoch = settings.MaxEpochs },
        };
        ExperimentResult LoadStudy(DecorrelatedImageClassificationExperiment experiment)
            => settings.Folds > 1 ? experiment.LoadResult(all, settings.Folds) : experiment.LoadResult(train, validation);
        if (settings.SummarizeOnly)
        {
            if (settings.StudyStorage is null)
                throw new ArgumentException("--summarize reads a study: give --storage or --journal.");
            var study = LoadStudy(new DecorrelatedImageClassificationExperiment(ml, experimentSettings));
            using (study.BestModel)
                WriteReport(console, ml, settings, study, train, test);
            return 0;
        }
        var others = settings.IsWorker ? [] : StartWorkers(settings, commandLine ?? []);
        if (settings.Workers > 1)
            TorchSharp.torch.set_num_threads(ThreadsPerWorker(settings.Workers));   // the workers share the cores instead of oversubscribing them

        ExperimentResult? result = null;
        try
        {
            result = Search(console, ml, settings, experimentSettings, train, validation, all);
            console.MarkupLineInterpolated($"This worker: {result.RungsRun} rung results in {result.Duration.TotalSeconds:F0} s; journal {result.JournalTime.TotalMilliseconds / Math.Max(1, result.RungsRun):F1} ms per rung result.");
        }
        catch (InvalidOperationException e) when (others.Count > 0)
        {
            // This worker's budget ended before a full run was reported; the other workers may still finish one.
            console.MarkupLineInterpolated($"[yellow]{e.Message} Waiting for the other workers.[/]");
        }
        finally
        {
            foreach (var (process, log) in others)
            {
                process.WaitForExit();
                log.Wait();
                if (process.ExitCode != 0)
                    console.MarkupLineInterpolated($"[red]A worker process ended with exit code {process.ExitCode}; see {Path.Combine(settings.ReportFolder, "workers")}.[/]");
                process.Dispose();
            }
        }
        // The other workers may have reported after this one's last look: the final leaderboard is the journal's.
        if (others.Count > 0)
        {
            result?.BestModel.Dispose();
            result = LoadStudy(new DecorrelatedImageClassificationExperiment(ml, experimentSettings));
        }
        using (result!.BestModel)
        {
            if (!settings.IsWorker)
                WriteReport(console, ml, settings, result, train, test);
        }
        return 0;
    }

    /// <summary>Runs this process's worker: under a live leaderboard on a terminal, one line per rung result otherwise.</summary>
    private static ExperimentResult Search(IAnsiConsole console, MLContext ml, SelectSettings settings, DecorrelatedImageClassificationExperiment.Settings experimentSettings,
        IDataView train, IDataView validation, IDataView all)
    {
        ExperimentResult Execute()
        {
            var experiment = new DecorrelatedImageClassificationExperiment(ml, experimentSettings);
            return settings.Folds > 1 ? experiment.Execute(all, settings.Folds) : experiment.Execute(train, validation);
        }
        if (!console.Profile.Capabilities.Interactive || settings.IsWorker)
        {
            experimentSettings.Progress = trial =>
            {
                if (trial.State != TrialState.Running)
                    console.MarkupLineInterpolated($"{trial}");
            };
            return Execute();
        }
        // A live leaderboard, redrawn whenever a trial of any worker changes.
        var trials = new SortedDictionary<int, TrialRecord>();
        return console.Live(Leaderboard([], settings.Metric)).Start(live =>
        {
            experimentSettings.Progress = trial =>
            {
                lock (trials)
                {
                    trials[trial.Trial] = trial;
                    live.UpdateTarget(Leaderboard(trials.Values, settings.Metric));
                }
            };
            return Execute();
        });
    }

    /// <summary>Which task of a scheduler's job this process is (Slurm array task, Kubernetes indexed job), for the log.</summary>
    private static string SchedulerTask()
    {
        var variables = Environment.GetEnvironmentVariables();
        if (variables["SLURM_ARRAY_TASK_ID"] is string task)
            return $", Slurm array task {task} of job {variables["SLURM_ARRAY_JOB_ID"]}";
        if (variables["JOB_COMPLETION_INDEX"] is string index)
            return $", Kubernetes job index {index}";
        return "";
    }

    /// <summary>Training and validation rows (10 % held out), both together (for cross-validation), an optional test set, and a description of the data.</summary>
    internal static (IDataView Train, IDataView Validation, IDataView All, IDataView? Test, string Description) LoadData(MLContext ml, SelectSettings settings)
    {
        if (settings.Images is { } folder)
        {
            var rows = ImageFolderCommands.FolderRows(folder);
            if (settings.Limit is int limit)
                rows = rows.Where((_, i) => i % Math.Max(1, rows.Length / limit) == 0).Take(limit).ToArray();
            var all = ml.Data.ShuffleRows(ml.Data.LoadFromEnumerable(rows), seed: settings.Seed);
            var pixels = ml.Transforms.Conversion.MapValueToKey("Label")
                .Append(ImageFolderCommands.PixelPipeline(ml, "Features", channels: 3, settings.Size, settings.Size)).Fit(all).Transform(all);
            var split = ml.Data.TrainTestSplit(pixels, 0.1, seed: settings.Seed);
            return (split.TrainSet, split.TestSet, pixels, null, $"{folder.FullName}: {rows.Length} images in {rows.Select(r => r.Label).Distinct().Count()} classes, {settings.Size}×{settings.Size} RGB, 10 % validate");
        }
        var source = new FashionMnistSource().Locate(settings.DataFolder);
        var trainRows = MainJob.ReadRows(source, train: true, settings.Limit).ToArray();
        int held = trainRows.Length / 10;
        var keys = ml.Transforms.Conversion.MapValueToKey("Label").Fit(ml.Data.LoadFromEnumerable(trainRows));
        return (keys.Transform(ml.Data.LoadFromEnumerable(trainRows[held..])), keys.Transform(ml.Data.LoadFromEnumerable(trainRows[..held])),
            keys.Transform(ml.Data.LoadFromEnumerable(trainRows)),
            keys.Transform(ml.Data.LoadFromEnumerable(MainJob.ReadRows(source, train: false, null))),
            $"{source.Description}: {trainRows.Length - held} training, {held} validation images");
    }

    /// <summary>Starts the other workers: this command again with --worker and the shared journal, each logging to REPORT/workers/worker-i.log.</summary>
    private static List<(Process Process, Task Log)> StartWorkers(SelectSettings settings, string[] commandLine)
    {
        var started = new List<(Process, Task)>();
        if (settings.Workers == 1)
            return started;
        string logs = Directory.CreateDirectory(Path.Combine(settings.ReportFolder, "workers")).FullName;
        var arguments = Without(commandLine, "--workers", "--journal", "--storage", "--work");
        arguments.AddRange(["--worker", "--storage", settings.StudyStorage!, "--work", settings.StudyWorkFolder!]);
        if (!arguments.Contains("--report"))
            arguments.AddRange(["--report", settings.ReportFolder]);
        for (int i = 1; i < settings.Workers; i++)
        {
            var threads = new Dictionary<string, string> { ["OMP_NUM_THREADS"] = ThreadsPerWorker(settings.Workers).ToString(CultureInfo.InvariantCulture) };
            var process = ChildProcessRunner.Start(ChildProcessRunner.StartInfo(typeof(SelectCommand).Assembly.Location, arguments, threads));
            string log = Path.Combine(logs, $"worker-{i}.log");
            var copy = Task.WhenAll(process.StandardOutput.ReadToEndAsync(), process.StandardError.ReadToEndAsync())
                .ContinueWith(t => File.WriteAllText(log, string.Concat(t.Result)), TaskScheduler.Default);
            started.Add((process, copy));
        }
        return started;
    }

    /// <summary>Torch threads of each of <paramref name="workers"/> processes on this machine: its cores shared out, at least one.</summary>
    private static int ThreadsPerWorker(int workers) => Math.Max(1, Environment.ProcessorCount / workers);

    private static string MetricText(double value, OptimizingMetric metric)
        => double.IsNaN(value) ? "" : metric == OptimizingMetric.LogLoss ? value.ToString("F4", CultureInfo.InvariantCulture) : value.ToString("P2", CultureInfo.InvariantCulture);

    /// <summary>The leaderboard: best first by the optimizing metric, unfinished and failed trials last.</summary>
    private static Table Leaderboard(IEnumerable<TrialRecord> trials, OptimizingMetric metric)
    {
        var table = new Table().AddColumns("trial", "method", "lr", "batch", "weight decay", "η_R", "state", "epochs / full run", metric.ToString(), "seconds");
        foreach (var trial in trials.OrderByDescending(t => metric.Score(t.Metric)).ThenBy(t => t.Trial))
        {
            var o = trial.Options;
            string state = trial.State switch
            {
                TrialState.Stopped => $"stopped at rung {trial.Rung}",
                TrialState.Running when trial.Rung > 0 || trial.EpochsRun > 0 => "promoted, running",
                _ => trial.State.ToString().ToLowerInvariant(),
            };
            table.AddRow(trial.Trial.ToString(CultureInfo.InvariantCulture), o.UseDecorrelation ? "DBP" : "backprop", o.LearningRate.ToString("G3", CultureInfo.InvariantCulture),
                o.BatchSize.ToString(CultureInfo.InvariantCulture), o.WeightDecay.ToString("G2", CultureInfo.InvariantCulture),
                o.UseDecorrelation ? o.DecorrelationLearningRate.ToString("G3", CultureInfo.InvariantCulture) : "", Markup.Escape(state),
                $"{trial.EpochsRun}/{o.MaxEpoch}", MetricText(trial.Metric, metric), trial.Seconds.ToString("F1", CultureInfo.InvariantCulture));
        }
        return table;
    }

    private static void WriteReport(IAnsiConsole console, MLContext ml, SelectSettings settings, ExperimentResult result, IDataView train, IDataView? test)
    {
        console.Write(Leaderboard(result.Trials, settings.Metric));
        string folder = settings.ReportFolder;
        ml.Model.Save(result.BestModel, train.Schema, Path.Combine(folder, "best-model.zip"));
        static double? Value(double v) => double.IsNaN(v) ? null : v;
        File.WriteAllText(Path.Combine(folder, "leaderboard.json"), JsonSerializer.Serialize(result.Trials.Select(t => new
        {
            t.Trial, Method = t.Options.UseDecorrelation ? "DBP" : "backprop", t.Options.LearningRate, t.Options.BatchSize, t.Options.WeightDecay,
            DecorrelationLearningRate = t.Options.UseDecorrelation ? t.Options.DecorrelationLearningRate : (double?)null,
            Kappa = t.Options.UseDecorrelation ? t.Options.Kappa : (double?)null, t.Options.RandomHorizontalFlip, t.Options.RandomCropPadding,
            t.Options.MaxEpoch, State = t.State.ToString(), t.Rung, t.EpochsRun, Metric = settings.Metric.ToString(), MetricValue = Value(t.Metric),
            ValidationAccuracy = Value(t.ValidationAccuracy), t.Seconds, t.Error,
            Curve = t.Curve.Select(c => new { c.Epoch, c.Seconds, ValidationAccuracy = Value(c.ValidationAccuracy), ValidationMacroAccuracy = Value(c.ValidationMacroAccuracy), ValidationLogLoss = Value(c.ValidationLogLoss) }),
        }), new JsonSerializerOptions { WriteIndented = true }));
        bool logLoss = settings.Metric == OptimizingMetric.LogLoss;
        double Plotted(TrialCurvePoint c) => settings.Metric switch
        {
            OptimizingMetric.MacroAccuracy => 100 * c.ValidationMacroAccuracy,
            OptimizingMetric.LogLoss => c.ValidationLogLoss,
            _ => 100 * c.ValidationAccuracy,
        };
        ReportCharts.LineChart(Path.Combine(folder, "validation-vs-time.png"), $"Validation {settings.Metric} of every trial against its training time",
            "training seconds of the trial", logLoss ? "validation log-loss" : $"validation {settings.Metric} (%)", legendAtBottom: true,
            result.Trials.Select(t => new ChartSeries($"{t.Trial} {(t.Options.UseDecorrelation ? "DBP" : "BP")}{(t.Rung > 0 ? " (promoted)" : "")}",
                t.Curve.Select(c => c.Seconds).ToArray(), t.Curve.Select(Plotted).ToArray())).ToArray());

        var bestTrial = result.BestTrial;
        string testText = test is null ? "" : $", test accuracy {ml.MulticlassClassification.Evaluate(result.BestModel.Transform(test)).MicroAccuracy:P2}";
        console.MarkupLineInterpolated($"Best: trial {bestTrial.Trial} ({(bestTrial.Options.UseDecorrelation ? "DBP" : "backprop")}), validation {settings.Metric} {MetricText(bestTrial.Metric, settings.Metric)}{testText}. Report: {Path.GetFullPath(folder)}.");
        console.MarkupLineInterpolated($"Verdict: {Verdict(result.Trials, settings.Metric)}");
    }

    /// <summary>One line: which method's best completed trial won, and by how much.</summary>
    internal static string Verdict(IReadOnlyList<TrialRecord> trials, OptimizingMetric metric)
    {
        TrialRecord? Best(bool dbp) => trials.Where(t => t.State == TrialState.Completed && t.Options.UseDecorrelation == dbp)
            .MaxBy(t => metric.Score(t.Metric));
        var (dbp, backprop) = (Best(true), Best(false));
        if (dbp is null || backprop is null)
            return $"only {(dbp is null ? "backprop" : "DBP")} trials finished a full run ({trials.Count} trials); no comparison.";
        bool dbpWins = metric.Score(dbp.Metric) > metric.Score(backprop.Metric);
        return $"{(dbpWins ? "DBP" : "backprop")} won: best DBP trial {dbp.Trial} {MetricText(dbp.Metric, metric)} against best backprop trial {backprop.Trial} {MetricText(backprop.Metric, metric)} ({metric}, validation).";
    }
}
