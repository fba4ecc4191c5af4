using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using Microsoft.ML.Decorrelation.Torch;
using Microsoft.ML.Decorrelation.Torch.Architectures;
using Microsoft.ML.Decorrelation.Torch.Data;
using Microsoft.ML.Decorrelation.Torch.Training;
using Spectre.Console;
using static TorchSharp.torch;

namespace Microsoft.ML.Decorrelation.Samples;

/// <summary>Settings of one benchmark run.</summary>
internal sealed record BenchSettings
{
    public string Case { get; init; } = "small-cnn";
    public int Seeds { get; init; } = 3;
    /// <summary>The first seed; the run uses seeds FirstSeed … FirstSeed + Seeds − 1 (to add seeds to an earlier run).</summary>
    public int FirstSeed { get; init; }
    public int Epochs { get; init; } = 6;
    public double[] LearningRates { get; init; } = [1e-3, 2e-3];
    public int BatchSize { get; init; } = 128;
    public int Threads { get; init; } = Environment.ProcessorCount;
    public int? Steps { get; init; }
    public int EvaluationsPerEpoch { get; init; } = 2;
    public int? TrainLimit { get; init; }
    public int? TestLimit { get; init; }
    public LearningRateSchedule Schedule { get; init; } = new DecorrelatedImageClassificationTrainer.Options().LearningRateSchedule;
    /// <summary>With the step schedule: epochs between two decays; null decays after a third and two thirds of the run.</summary>
    public int? StepDecayEpochs { get; init; } = new TrainingOptions().StepDecayEpochs;
    /// <summary>With the step schedule: the factor of each decay.</summary>
    public double StepDecayFactor { get; init; } = new TrainingOptions().StepDecayFactor;
    public double WeightDecay { get; init; } = new DecorrelatedImageClassificationTrainer.Options().WeightDecay;
    public int CropPadding { get; init; }
    public bool HorizontalFlip { get; init; }
    /// <summary>Small CNN only: BatchNorm after each convolution, in every arm.</summary>
    public bool BatchNorm { get; init; }
    /// <summary>Run every arm with denormal floats flushed to zero, as the trainer does (<see cref="DenormalFlushing"/>).</summary>
    public bool FlushDenormals { get; init; } = true;
    public DecorrelationOptions Decorrelation { get; init; } = new();
    /// <summary>One DBP arm per entry (per learning rate): the largest decorrelated input size D, null for every layer.</summary>
    public int?[] MaxInputSizes { get; init; } = [null];
    public string? Data { get; init; }
}

/// <summary>One arm of one seed: its learning rate, step times and accuracy curve.</summary>
internal sealed class BenchArm(string name, bool decorrelated, double learningRate)
{
    public string Name { get; } = name;
    public bool Decorrelated { get; } = decorrelated;
    public double LearningRate { get; } = learningRate;
    public List<double> StepMilliseconds { get; } = [];
    public List<StepTimings> Timings { get; } = [];
    public List<(double Epoch, double Seconds, double Accuracy)> Evaluations { get; } = [];
    public double Seconds => StepMilliseconds.Sum() / 1000;
    public double BestAccuracy => Evaluations.Count == 0 ? double.NaN : Evaluations.Max(e => e.Accuracy);
    public double FinalAccuracy => Evaluations.Count == 0 ? double.NaN : Evaluations[^1].Accuracy;

    /// <summary>Training seconds when the arm first reached <paramref name="accuracy"/>, or null.</summary>
    public double? SecondsTo(double accuracy) => Evaluations.Where(e => e.Accuracy >= accuracy).Select(e => (double?)e.Seconds).FirstOrDefault();

    /// <summary>The epoch (fractional) when the arm first reached <paramref name="accuracy"/>, or null.</summary>
    public double? EpochTo(double accuracy) => Evaluations.Where(e => e.Accuracy >= accuracy).Select(e => (double?)e.Epoch).FirstOrDefault();

    /// <summary>The accuracy of the last evaluation at or before <paramref name="seconds"/> of training.</summary>
    public double AccuracyAt(double seconds) => Evaluations.Where(e => e.Seconds <= seconds + 1e-9).Select(e => e.Accuracy).DefaultIfEmpty(double.NaN).Last();
}

/// <summary>A target of the performance issue (medians over 3 seeds, or the worst seed) and the figure a run measured for it.</summary>
/// <param name="Figure">The key of the figure in the benchmark's JSON.</param>
/// <param name="AtLeast">True when the figure must reach the threshold, false when it must stay within it.</param>
/// <param name="Threshold">The bound.</param>
/// <param name="Value">The median over seeds; null when not reached (time ratios).</param>
internal sealed record BenchTarget(string Figure, bool AtLeast, double Threshold, double? Value)
{
    /// <summary>Whether the run met the target; a figure that was not reached does not meet it.</summary>
    public bool Met => Value is double value && (AtLeast ? value >= Threshold : value <= Threshold);

    /// <summary>The targets that apply to a run of <paramref name="settings"/>, measured from its medians over seeds.</summary>
    public static IReadOnlyList<BenchTarget> For(BenchSettings settings, IReadOnlyDictionary<string, object?> medians)
    {
        double? Figure(string key) => medians.TryGetValue(key, out var value) ? (double?)value : null;
        if (settings.MaxInputSizes.Length == 0)
            return [];
        if (settings.Case == "resnet18")
            return [new("stepRatio", AtLeast: false, 1.15, Figure("stepRatio"))];
        var targets = new List<BenchTarget> { new("stepRatio", AtLeast: false, 1.10, Figure("stepRatio")) };
        if (settings.Steps is null)
        {
            targets.Add(new("timeToAccuracyRatio", AtLeast: true, 2.0, Figure("timeToAccuracyRatio")));
            // In every seed, not only by the median.
            targets.Add(new("minTimeToAccuracyRatio", AtLeast: true, 2.0, Figure("minTimeToAccuracyRatio")));
            targets.Add(new("dbpFinalAccuracy", AtLeast: true, Figure("bpFinalAccuracy") ?? double.NaN, Figure("dbpFinalAccuracy")));
        }
        return targets;
    }
}

/// <summary>
/// The benchmark: backprop and DBP trained in ONE process from identical initial weights and batch order,
/// interleaved step by step (the arm that goes first rotates) so that machine noise hits all arms alike;
/// each method at its best learning rate of the same grid; medians over seeds.
/// </summary>
internal sealed class Bench(IAnsiConsole console)
{
    public static System.CommandLine.Command Create()
    {
        var defaults = new BenchSettings();
        var caseOption = new Option<string>("--case")
        {
            Description = "small-cnn (accuracy and time), resnet18 (step time only), short-fit (a 3-epoch Fit through ML.NET on 8,000 PNG files, each in a fresh process) " +
                "or pieces (each piece of DBP's extra work in each layer of the small CNN, timed in isolation).",
            DefaultValueFactory = _ => defaults.Case,
        };
        caseOption.AcceptOnlyFromAmong("small-cnn", "resnet18", "short-fit", "pieces");
        var seeds = new Option<int>("--seeds") { Description = "Seeds; figures are medians over them.", DefaultValueFactory = _ => defaults.Seeds };
        var firstSeed = new Option<int>("--first-seed") { Description = "The first seed (to add seeds to an earlier run).", DefaultValueFactory = _ => defaults.FirstSeed };
        var epochs = new Option<int>("--epochs") { Description = "Epochs per arm.", DefaultValueFactory = _ => defaults.Epochs };
        var grid = new Option<string>("--lr-grid") { Description = "Comma-separated Adam learning rates; each method gets its best.", DefaultValueFactory = _ => "0.001,0.002" };
        var batchSize = new Option<int?>("--batch-size") { Description = "Images per step (default 128; 64 for resnet18)." };
        var threads = new Option<int>("--threads") { Description = "CPU threads for Torch.", DefaultValueFactory = _ => defaults.Threads };
        var steps = new Option<int?>("--steps") { Description = "Time this many steps per arm and stop (no accuracy); default for resnet18: 30." };
        var evaluations = new Option<int>("--evaluations-per-epoch") { Description = "Test-set evaluations per epoch (not counted as training time).", DefaultValueFactory = _ => defaults.EvaluationsPerEpoch };
        var limit = new Option<int?>("--limit") { Description = "Use only the first N training images." };
        var testLimit = new Option<int?>("--test-limit") { Description = "Evaluate on only the first N test images." };
        var schedule = new Option<LearningRateSchedule>("--schedule") { Description = "Learning-rate schedule of every arm.", DefaultValueFactory = _ => defaults.Schedule };
        var stepDecayEpochs = new Option<int?>("--step-decay-epochs") { Description = "With --schedule Step: epochs between two decays of the learning rate (default: decay after a third and two thirds of the run)." };
        var stepDecayFactor = new Option<double>("--step-decay-factor") { Description = "With --schedule Step: the factor of each decay.", DefaultValueFactory = _ => defaults.StepDecayFactor };
        var weightDecay = new Option<double>("--weight-decay") { Description = "Weight decay of every arm (default: the trainer's).", DefaultValueFactory = _ => defaults.WeightDecay };
        var cropPadding = new Option<int>("--crop-padding") { Description = "Augmentation of every arm: random crop after padding by N pixels (0 = off).", DefaultValueFactory = _ => 0 };
        var flip = new Option<bool>("--flip") { Description = "Augmentation of every arm: random horizontal flip." };
        var batchNorm = new Option<bool>("--batch-norm") { Description = "small-cnn: BatchNorm after each convolution, in every arm." };
        var keepDenormals = new Option<bool>("--keep-denormals") { Description = "Do not flush denormal floats to zero (the trainer does): shows their slowdown under weight decay." };
        var etaR = new Option<double>("--eta-r") { Description = "DBP: learning rate of R.", DefaultValueFactory = _ => defaults.Decorrelation.LearningRate };
        var constantEtaR = new Option<bool>("--constant-eta-r") { Description = "DBP: keep η_R constant instead of scaling it with the learning-rate schedule." };
        var kappa = new Option<double>("--kappa") { Description = "DBP: kappa.", DefaultValueFactory = _ => defaults.Decorrelation.Kappa };
        var interval = new Option<int>("--interval") { Description = "DBP: update R every N steps.", DefaultValueFactory = _ => defaults.Decorrelation.UpdateInterval };
        var convFraction = new Option<double>("--conv-fraction") { Description = "DBP: sample fraction of convolutions.", DefaultValueFactory = _ => defaults.Decorrelation.ConvolutionSampleFraction };
        var linearFraction = new Option<double>("--linear-fraction") { Description = "DBP: sample fraction of linear layers.", DefaultValueFactory = _ => defaults.Decorrelation.LinearSampleFraction };
        var maxInputSize = new Option<string>("--max-input-size")
        {
            Description = "DBP: leave plain the layers whose input size D exceeds this; comma-separated values (\"all\" = every layer) give one DBP arm each.",
            DefaultValueFactory = _ => "all",
        };
        var maxBlockSize = new Option<int>("--max-block-size")
        {
            Description = "DBP: block-diagonal R, blocks of at most this size, in layers whose D exceeds it; 0 = full R.",
            DefaultValueFactory = _ => defaults.Decorrelation.MaxBlockSize ?? 0,
        };
        var backpropOnly = new Option<bool>("--backprop-only") { Description = "Time only backprop arms (to compare TorchSharp with build/bench_pytorch.py)." };
        var data = new Option<string?>("--data") { Description = "Folder with the Fashion-MNIST IDX files." };
        var json = new Option<string?>("--json") { Description = "Write every figure and series to this JSON file." };
        var chart = new Option<string?>("--chart") { Description = "Draw the first seed's test accuracy against training time, one line per arm, into this PNG file." };
        var command = new System.CommandLine.Command("bench", "Backprop against DBP: step time, its breakdown, and time to accuracy, interleaved, medians over seeds.")
        {
            caseOption, seeds, firstSeed, epochs, grid, batchSize, threads, steps, evaluations, limit, testLimit, schedule, stepDecayEpochs, stepDecayFactor, weightDecay, cropPadding, flip, batchNorm, keepDenormals, etaR, constantEtaR, kappa, interval, convFraction, linearFraction, maxInputSize, maxBlockSize, backpropOnly, data, json, chart,
        };
        command.SetAction(result =>
        {
            string benchCase = result.GetValue(caseOption)!;
            if (benchCase == "short-fit")
            {
                // Defaults of the short fit: 3 epochs at batch 64 on 8,000 images, unless asked otherwise.
                ShortFitBench.Run(AnsiConsole.Console, new ShortFitBench.Settings(result.GetValue(seeds), result.GetValue(firstSeed), result.GetValue(limit) ?? 8000,
                    result.GetResult(epochs) is null or { Implicit: true } ? 3 : result.GetValue(epochs), result.GetValue(batchSize) ?? 64, result.GetValue(json)));
                return 0;
            }
            var settings = new BenchSettings
            {
                Case = benchCase,
                Seeds = result.GetValue(seeds),
                FirstSeed = result.GetValue(firstSeed),
                Epochs = result.GetValue(epochs),
                LearningRates = result.GetValue(grid)!.Split(',', StringSplitOptions.RemoveEmptyEntries).Select(v => double.Parse(v, CultureInfo.InvariantCulture)).ToArray(),
                BatchSize = result.GetValue(batchSize) ?? (benchCase == "resnet18" ? 64 : 128),
                Threads = result.GetValue(threads),
                // ResNet-18 times steps unless epochs are asked for explicitly.
                Steps = result.GetValue(steps) ?? (benchCase == "resnet18" && result.GetResult(epochs) is null or { Implicit: true } ? 30 : null),
                EvaluationsPerEpoch = result.GetValue(evaluations),
                TrainLimit = result.GetValue(limit),
                TestLimit = result.GetValue(testLimit),
                Schedule = result.GetValue(schedule),
                StepDecayEpochs = result.GetValue(stepDecayEpochs),
                StepDecayFactor = result.GetValue(stepDecayFactor),
                WeightDecay = result.GetValue(weightDecay),
                CropPadding = result.GetValue(cropPadding),
                HorizontalFlip = result.GetValue(flip),
                FlushDenormals = !result.GetValue(keepDenormals),
                BatchNorm = result.GetValue(batchNorm),
                Decorrelation = new DecorrelationOptions
                {
                    LearningRate = result.GetValue(etaR), FollowLearningRateSchedule = !result.GetValue(constantEtaR), Kappa = result.GetValue(kappa), UpdateInterval = result.GetValue(interval),
                    ConvolutionSampleFraction = result.GetValue(convFraction), LinearSampleFraction = result.GetValue(linearFraction),
                    MaxBlockSize = result.GetValue(maxBlockSize) is > 0 and var block ? block : null,
                },
                MaxInputSizes = result.GetValue(backpropOnly) ? [] : result.GetValue(maxInputSize)!.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
                    .Select(v => v == "all" ? (int?)null : int.Parse(v, CultureInfo.InvariantCulture)).ToArray(),
                Data = result.GetValue(data),
            };
            if (benchCase == "pieces" && result.GetValue(chart) is not null)
                throw new ArgumentException("--chart draws accuracy against time, which --case pieces does not measure.");
            var figures = benchCase == "pieces"
                ? PiecesBench.Run(AnsiConsole.Console, settings.BatchSize, settings.Threads, settings.Decorrelation, settings.Data)
                : new Bench(AnsiConsole.Console).Run(settings);
            string serialized = JsonSerializer.Serialize(figures, new JsonSerializerOptions { WriteIndented = true, NumberHandling = System.Text.Json.Serialization.JsonNumberHandling.AllowNamedFloatingPointLiterals });
            if (result.GetValue(json) is string path)
                File.WriteAllText(path, serialized);
            if (result.GetValue(chart) is string png)
            {
                // The figures are drawn from their JSON, as bench-chart draws them from a file: one reader of the format.
                using var document = JsonDocument.Parse(serialized);
                DrawChart(document, png);
            }
            return 0;
        });
        return command;
    }

    /// <summary><c>bench-chart</c>: the chart of <c>bench --chart</c>, drawn from the JSON of an earlier run.</summary>
    public static System.CommandLine.Command CreateChart()
    {
        var json = new Option<string>("--json") { Description = "The JSON that bench --json wrote.", Required = true };
        var chart = new Option<string>("--chart") { Description = "The PNG file to write.", Required = true };
        var seed = new Option<int?>("--seed") { Description = "The seed to draw (default: the run's first)." };
        var command = new System.CommandLine.Command("bench-chart", "Draw one seed's test accuracy against training time from a bench JSON file.") { json, chart, seed };
        command.SetAction(result =>
        {
            using var document = JsonDocument.Parse(File.ReadAllText(result.GetValue(json)!));
            DrawChart(document, result.GetValue(chart)!, result.GetValue(seed));
            return 0;
        });
        return command;
    }

    /// <summary>One seed's arms (their evaluations: accuracy against training seconds), with the CPU in the title.</summary>
    /// <exception cref="ArgumentException">The run has no such seed.</exception>
    internal static void DrawChart(JsonDocument figures, string path, int? seedNumber = null)
    {
        var seeds = figures.RootElement.GetProperty("perSeed").EnumerateArray().ToList();
        var seed = seedNumber is int wanted
            ? seeds.FirstOrDefault(s => s.GetProperty("seed").GetInt32() == wanted) is { ValueKind: JsonValueKind.Object } found ? found
                : throw new ArgumentException($"The bench run has no seed {wanted} (it ran {string.Join(", ", seeds.Select(s => s.GetProperty("seed").GetInt32()))}).", nameof(seedNumber))
            : seeds[0];
        var arms = seed.GetProperty("arms").EnumerateArray().Select(arm => new ChartSeries(arm.GetProperty("name").GetString()!,
            arm.GetProperty("evaluations").EnumerateArray().Select(e => e.GetProperty("seconds").GetDouble()).ToArray(),
            arm.GetProperty("evaluations").EnumerateArray().Select(e => 100 * e.GetProperty("accuracy").GetDouble()).ToArray())).ToArray();
        string cpu = figures.RootElement.TryGetProperty("cpu", out var model) ? $" ({model.GetString()})" : "";
        ReportCharts.AccuracyAgainstTime($"Fashion-MNIST test accuracy against training time, seed {seed.GetProperty("seed").GetInt32()}{cpu}", arms, path);
    }

    public Dictionary<string, object?> Run(BenchSettings settings)
    {
        settings.Decorrelation.Validate();
        if (settings.BatchNorm && settings.Case != "small-cnn")
            throw new ArgumentException("--batch-norm applies to the small-cnn case only (ResNet-18 has BatchNorm already).");
        if (settings.Seeds < 1)
            throw new ArgumentOutOfRangeException(nameof(settings.Seeds), settings.Seeds, "--seeds must be at least 1.");
        if (settings.FirstSeed < 0)
            throw new ArgumentOutOfRangeException(nameof(settings.FirstSeed), settings.FirstSeed, "--first-seed must not be negative.");
        if (settings.EvaluationsPerEpoch < 1)
            throw new ArgumentOutOfRangeException(nameof(settings.EvaluationsPerEpoch), settings.EvaluationsPerEpoch, "--evaluations-per-epoch must be at least 1.");
        var source = new FashionMnistSource().Locate(settings.Data);
        using var train = FashionMnistSource.Load(source, train: true, settings.Steps is int s ? s * settings.BatchSize : settings.TrainLimit);
        using var test = FashionMnistSource.Load(source, train: false, settings.TestLimit);
        var (mean, deviation) = train.ChannelStatistics();
        train.Normalize(mean, deviation);
        test.Normalize(mean, deviation);
        var d = settings.Decorrelation;
        console.MarkupLine(Markup.Escape($"Case {settings.Case}: {source.Description}; {train.Count} training, {test.Count} test images; batch {settings.BatchSize}, {settings.Threads} threads, " +
            $"{settings.Seeds} seed(s) from {settings.FirstSeed}, learning rates {string.Join(", ", settings.LearningRates)}, {settings.Schedule} schedule{(settings.Schedule == LearningRateSchedule.Step ? $" (×{settings.StepDecayFactor} {(settings.StepDecayEpochs is int every ? $"every {every} epochs" : "after a third and two thirds of the run")})" : "")}, weight decay {settings.WeightDecay}, " +
            $"crop padding {settings.CropPadding}, flip {settings.HorizontalFlip}, BatchNorm {settings.BatchNorm}, denormals {(settings.FlushDenormals ? "flushed" : "kept")}; DBP η_R {d.LearningRate}{(d.FollowLearningRateSchedule ? " (scaled with the schedule)" : " (constant)")}, κ {d.Kappa}, every {d.UpdateInterval} step(s), " +
            $"sample fractions {d.ConvolutionSampleFraction} (conv) / {d.LinearSampleFraction} (linear), " +
            (d.MaxBlockSize is int block ? $"block-diagonal R with blocks ≤ {block}" : "full R") + $"; DBP arms: {(settings.MaxInputSizes.Length == 0 ? "none" : string.Join(", ", settings.MaxInputSizes.Select(VariantName)))}."));

        var perSeed = new List<Dictionary<string, object?>>();
        for (int seed = settings.FirstSeed; seed < settings.FirstSeed + settings.Seeds; seed++)
        {
            var arms = settings.FlushDenormals ? DenormalFlushing.Run(() => RunSeed(settings, seed, train, test)) : RunSeed(settings, seed, train, test);
            perSeed.Add(Summarise(settings, seed, arms));
        }
        var figures = new Dictionary<string, object?> { ["case"] = settings.Case, ["cpu"] = MachineInfo.CpuModel(), ["settings"] = settings };
        foreach (var (key, value) in MedianFigures(perSeed))
            figures[key] = value;
        if (settings.Steps is null && settings.MaxInputSizes.Length > 0)
        {
            // The worst seed's time-to-accuracy ratio; a seed that never reached backprop's best makes it null.
            var ratios = perSeed.Select(s => s.GetValueOrDefault("timeToAccuracyRatio") as double?).ToList();
            figures["minTimeToAccuracyRatio"] = ratios.Any(r => r is null) ? null : ratios.Min();
        }
        if (settings.MaxInputSizes.Length > 1)
        {
            var variantsPerSeed = perSeed.Select(s => (List<Dictionary<string, object?>>)s["variants"]!).ToList();
            figures["variants"] = settings.MaxInputSizes.Select((maxInputSize, v) =>
            {
                var medians = new Dictionary<string, object?> { ["dbpArm"] = DbpArmName(settings, maxInputSize) };
                foreach (var (key, value) in MedianFigures(variantsPerSeed.Select(variants => variants[v])))
                    medians[key] = value;
                return medians;
            }).ToList();
        }
        figures["perSeed"] = perSeed;

        var table = new Table().Title("Medians over seeds").AddColumns("Figure", "Value");
        foreach (var (key, value) in figures.Where(kv => kv.Value is double or null && kv.Key != "case"))
            table.AddRow(key, Figure(value));
        console.Write(table);

        var targets = BenchTarget.For(settings, figures);
        figures["targets"] = targets.Select(t => new { figure = t.Figure, atLeast = t.AtLeast, threshold = t.Threshold, value = t.Value, met = t.Met }).ToList();
        if (targets.Count > 0)
        {
            var verdicts = new Table().Title($"Targets of the performance issue (medians over 3 seeds; this run: {settings.Seeds})").AddColumns("Figure", "Target", "Measured", "Verdict");
            foreach (var target in targets)
                verdicts.AddRow(target.Figure, (target.AtLeast ? "≥ " : "≤ ") + Figure(target.Threshold), Figure(target.Value), target.Met ? "met" : "NOT MET");
            console.Write(verdicts);
        }
        return figures;
    }

    private List<BenchArm> RunSeed(BenchSettings settings, int seed, ImageDataset train, ImageDataset test)
    {
        int batchesPerEpoch = (int)(train.Count / settings.BatchSize);   // whole batches only, the same for every arm
        int epochs = settings.Steps is null ? settings.Epochs : 1;
        int totalSteps = settings.Steps ?? batchesPerEpoch * epochs;
        var arms = new List<BenchArm>();
        var sessions = new List<(BenchArm Arm, TrainingSession Session)>();
        try
        {
            foreach (double learningRate in settings.LearningRates)
            {
                // Backprop, then one DBP arm per decorrelated-layer selection.
                foreach (var (decorrelated, maxInputSize) in settings.MaxInputSizes.Select(m => (true, m)).Prepend((false, null)))
                {
                    var decorrelation = settings.Decorrelation.Clone();
                    decorrelation.MaxInputSize = maxInputSize;
                    var options = new TrainingOptions
                    {
                        Epochs = epochs, BatchSize = settings.BatchSize, LearningRate = learningRate, Seed = seed, Threads = settings.Threads,
                        Schedule = settings.Schedule, StepDecayEpochs = settings.StepDecayEpochs, StepDecayFactor = settings.StepDecayFactor, WeightDecay = settings.WeightDecay, Decorrelation = decorrelation,
                        RandomCropPadding = settings.CropPadding, RandomHorizontalFlip = settings.HorizontalFlip,
                    };
                    var network = NetworkTrainer.CreateNetwork(Builder(settings), options, decorrelated);
                    var arm = new BenchArm(decorrelated ? DbpArmName(settings, maxInputSize) : "Backprop", decorrelated, learningRate);
                    arms.Add(arm);
                    sessions.Add((arm, new NetworkTrainer(options).CreateSession(network, batchesPerEpoch)));
                }
            }
            var augmentation = new ImageAugmentation(settings.CropPadding, settings.HorizontalFlip, seed);
            int[] evaluationSteps = settings.Steps is null
                ? Enumerable.Range(1, settings.EvaluationsPerEpoch).Select(i => Math.Max(1, i * batchesPerEpoch / settings.EvaluationsPerEpoch)).Distinct().ToArray()
                : [];
            console.Progress().Start(context =>
            {
                var task = context.AddTask($"Seed {seed}: {sessions.Count} arms interleaved", maxValue: totalSteps);
                long[] permutation = [];
                for (int step = 0; step < totalSteps; step++)
                {
                    int batch = step % batchesPerEpoch;
                    if (batch == 0)
                        permutation = NetworkTrainer.EpochOrder(train.Count, seed, step / batchesPerEpoch + 1);
                    using (var scope = NewDisposeScope())
                    {
                        var indices = tensor(permutation.AsSpan(batch * settings.BatchSize, settings.BatchSize).ToArray());
                        // Augmented once per batch: every arm sees the same images.
                        var images = augmentation.Apply(train.Images.index_select(0, indices), step / batchesPerEpoch + 1, batch);
                        var labels = train.Labels.index_select(0, indices);
                        for (int k = 0; k < sessions.Count; k++)
                        {
                            var (arm, session) = sessions[(step + k) % sessions.Count];
                            long start = Stopwatch.GetTimestamp();
                            session.Step(images, labels);
                            arm.StepMilliseconds.Add(Stopwatch.GetElapsedTime(start).TotalMilliseconds);
                            arm.Timings.Add(session.LastStepTimings);
                        }
                    }
                    if (evaluationSteps.Contains(batch + 1))
                    {
                        double epoch = (double)(step + 1) / batchesPerEpoch;
                        foreach (var (arm, session) in sessions)
                            arm.Evaluations.Add((epoch, arm.Seconds, NetworkTrainer.Evaluate(session.Network, test, 1000, CPU)));
                        task.Description = $"Seed {seed}, epoch {epoch:0.#}: " + string.Join(", ", sessions.Select(s => $"{s.Arm.Name} {s.Arm.LearningRate:G3} {s.Arm.Evaluations[^1].Accuracy:P1}"));
                    }
                    task.Increment(1);
                }
            });
        }
        finally
        {
            foreach (var (_, session) in sessions)
            {
                session.Network.Dispose();
                session.Dispose();
            }
        }
        return arms;
    }

    private Dictionary<string, object?> Summarise(BenchSettings settings, int seed, List<BenchArm> arms)
    {
        bool accuracy = settings.Steps is null;
        // Each method at its best learning rate of the grid (by best test accuracy; by median step for timing-only runs).
        BenchArm Best(IEnumerable<BenchArm> candidates) => candidates.OrderByDescending(a => accuracy ? a.BestAccuracy : -Median(a.StepMilliseconds)).First();
        var bp = Best(arms.Where(a => !a.Decorrelated));
        var dbpVariants = arms.Where(a => a.Decorrelated).GroupBy(a => a.Name).Select(Best).ToList();
        var breakdown = new Table().Title($"Seed {seed}: median step and its breakdown (ms)")
            .AddColumns("Arm", "lr", "Step", "Forward", "Statistics", "Backward", "Optimizer", "R update");
        foreach (var arm in arms)
        {
            breakdown.AddRow(arm.Name, $"{arm.LearningRate:G3}", Ms(Median(arm.StepMilliseconds)), Ms(Median(arm.Timings.Select(t => t.Forward.TotalMilliseconds))),
                Ms(arm.Timings.Average(t => t.Statistics.TotalMilliseconds)), Ms(Median(arm.Timings.Select(t => t.Backward.TotalMilliseconds))),
                Ms(Median(arm.Timings.Select(t => t.Optimizer.TotalMilliseconds))), Ms(arm.Timings.Average(t => t.DecorrelationUpdate.TotalMilliseconds)));
        }
        console.Write(breakdown);
        var comparisons = dbpVariants.Select(dbp => Compare(seed, accuracy, bp, dbp)).ToList();
        // The first DBP arm gives the headline figures; further selections of decorrelated layers are listed beside it.
        var summary = new Dictionary<string, object?> { ["seed"] = seed, ["bpLearningRate"] = bp.LearningRate, ["bpMedianStepMs"] = Median(bp.StepMilliseconds) };
        foreach (var (key, value) in comparisons.FirstOrDefault() ?? [])
            summary[key] = value;
        if (comparisons.Count > 1)
            summary["variants"] = comparisons;
        summary["arms"] = arms.Select(a => new
        {
            name = a.Name,
            learningRate = a.LearningRate,
            medianStepMs = Median(a.StepMilliseconds),
            meanStepMs = a.StepMilliseconds.Average(),
            // The first steps show one-time costs (the first kernels of each shape) that the medians hide.
            firstStepsMs = a.StepMilliseconds.Take(20).ToArray(),
            medianForwardMs = Median(a.Timings.Select(t => t.Forward.TotalMilliseconds)),
            meanStatisticsMs = a.Timings.Average(t => t.Statistics.TotalMilliseconds),
            medianBackwardMs = Median(a.Timings.Select(t => t.Backward.TotalMilliseconds)),
            medianOptimizerMs = Median(a.Timings.Select(t => t.Optimizer.TotalMilliseconds)),
            meanUpdateMs = a.Timings.Average(t => t.DecorrelationUpdate.TotalMilliseconds),
            evaluations = a.Evaluations.Select(e => new { epoch = e.Epoch, seconds = e.Seconds, accuracy = e.Accuracy }),
        }).ToArray();
        return summary;
    }

    private static readonly string[] MedianKeys =
    [
        "bpMedianStepMs", "stepRatio", "meanStepRatio", "timeToAccuracyRatio", "epochsToAccuracyRatio", "timeRatioTo089", "timeRatioTo090",
        "bpBestAccuracy", "bpFinalAccuracy", "dbpBestAccuracy", "dbpFinalAccuracy",
    ];

    /// <summary>The medians over seeds of the figures that every seed has.</summary>
    private static IEnumerable<KeyValuePair<string, object?>> MedianFigures(IEnumerable<Dictionary<string, object?>> perSeed)
    {
        var seeds = perSeed.ToList();
        return MedianKeys.Where(key => seeds.All(s => s.ContainsKey(key)))
            .Select(key => new KeyValuePair<string, object?>(key, Median(seeds.Select(s => (double?)s[key]))));
    }

    /// <summary>The figures of one DBP arm against backprop.</summary>
    private Dictionary<string, object?> Compare(int seed, bool accuracy, BenchArm bp, BenchArm dbp)
    {
        double stepRatio = Median(dbp.StepMilliseconds) / Median(bp.StepMilliseconds);
        var figures = new Dictionary<string, object?>
        {
            ["dbpArm"] = dbp.Name,
            ["bpLearningRate"] = bp.LearningRate,
            ["dbpLearningRate"] = dbp.LearningRate,
            ["stepRatio"] = stepRatio,
            // With an update interval above 1 most DBP steps skip the statistics: the mean, not the median, sets the wall-clock time.
            ["meanStepRatio"] = dbp.StepMilliseconds.Average() / bp.StepMilliseconds.Average(),
            ["bpMedianStepMs"] = Median(bp.StepMilliseconds),
            ["dbpMedianStepMs"] = Median(dbp.StepMilliseconds),
        };
        if (!accuracy)
        {
            console.MarkupLine(Markup.Escape($"Seed {seed}, {dbp.Name}: step ratio {stepRatio:F3} (mean {figures["meanStepRatio"]:F3})."));
            return figures;
        }
        double? Ratio(double target) => bp.SecondsTo(target) is double b && dbp.SecondsTo(target) is double d ? b / d : null;
        double equalSeconds = Math.Min(bp.Seconds, dbp.Seconds);
        figures["bpBestAccuracy"] = bp.BestAccuracy;
        figures["bpFinalAccuracy"] = bp.FinalAccuracy;
        figures["dbpBestAccuracy"] = dbp.BestAccuracy;
        figures["dbpFinalAccuracy"] = dbp.FinalAccuracy;
        figures["timeToAccuracyRatio"] = Ratio(bp.BestAccuracy);
        // The same in epochs: what the time ratio would be if a DBP step cost no more than a backprop step.
        figures["epochsToAccuracyRatio"] = bp.EpochTo(bp.BestAccuracy) is double be && dbp.EpochTo(bp.BestAccuracy) is double de ? be / de : null;
        figures["timeRatioTo089"] = Ratio(0.89);
        figures["timeRatioTo090"] = Ratio(0.90);
        figures["equalSeconds"] = equalSeconds;
        figures["bpAccuracyAtEqualSeconds"] = bp.AccuracyAt(equalSeconds);
        figures["dbpAccuracyAtEqualSeconds"] = dbp.AccuracyAt(equalSeconds);
        console.MarkupLine(Markup.Escape($"Seed {seed}, {dbp.Name}: step ratio {stepRatio:F3}; backprop (lr {bp.LearningRate}) best {bp.BestAccuracy:P2} at {bp.SecondsTo(bp.BestAccuracy):F1} s; " +
            $"DBP (lr {dbp.LearningRate}) reached it at {(dbp.SecondsTo(bp.BestAccuracy) is double t ? $"{t:F1} s" : "never")}, best {dbp.BestAccuracy:P2}, final {dbp.FinalAccuracy:P2}."));
        return figures;
    }

    private static string VariantName(int? maxInputSize) => maxInputSize is int max ? $"(D ≤ {max})" : "(all layers)";

    /// <summary>"DBP", or with several DBP arms "DBP" and which layers the arm decorrelates.</summary>
    private static string DbpArmName(BenchSettings settings, int? maxInputSize)
        => settings.MaxInputSizes.Length == 1 ? "DBP" : "DBP " + VariantName(maxInputSize);

    private static Func<Device, nn.Module<Tensor, Tensor>> Builder(BenchSettings settings) => settings.Case == "resnet18"
        ? device => NetworkBuilder.ResNet18(1, 10, ResNetStem.SmallImage, device)
        : device => NetworkBuilder.SmallCnn(1, 28, 28, 10, device, settings.BatchNorm);

    private static string Figure(object? value) => value is double v ? v.ToString("0.000", CultureInfo.InvariantCulture) : "not reached";

    private static string Ms(double value) => value.ToString("0.0", CultureInfo.InvariantCulture);

    /// <summary>The median of <paramref name="values"/>; NaN when there are none.</summary>
    internal static double Median(IEnumerable<double> values) => Median(values.Select(v => (double?)v)) ?? double.NaN;

    /// <summary>
    /// Median over seeds of a figure that may be missing, where missing (a target not reached) ranks below every value:
    /// the median of {not reached, 1.2, 1.3} is 1.2; null when the middle value (or either of the two middle ones) is missing.
    /// </summary>
    internal static double? Median(IEnumerable<double?> values)
    {
        var sorted = values.OrderBy(v => v ?? double.NegativeInfinity).ToArray();
        if (sorted.Length == 0)
            return null;
        var (lower, upper) = (sorted[(sorted.Length - 1) / 2], sorted[sorted.Length / 2]);
        return lower is double a && upper is double b ? (a + b) / 2 : null;
    }
}
