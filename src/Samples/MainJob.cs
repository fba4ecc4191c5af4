using System.Text.Json;
using Microsoft.ML.Data;
using Microsoft.ML.Decorrelation.Torch.Data;
using Spectre.Console;

namespace Microsoft.ML.Decorrelation.Samples;

/// <summary>Settings of the main job; every one has a command-line option.</summary>
internal sealed record MainJobSettings
{
    public int Epochs { get; init; } = new DecorrelatedImageClassificationTrainer.Options().MaxEpoch;
    public CnnArchitecture Architecture { get; init; } = CnnArchitecture.SmallCnn;
    public int BatchSize { get; init; } = new DecorrelatedImageClassificationTrainer.Options().BatchSize;
    public double LearningRate { get; init; } = new DecorrelatedImageClassificationTrainer.Options().LearningRate;
    public double DecorrelationLearningRate { get; init; } = new DecorrelatedImageClassificationTrainer.Options().DecorrelationLearningRate;
    public double Kappa { get; init; } = new DecorrelatedImageClassificationTrainer.Options().Kappa;
    public double SampleFraction { get; init; } = new DecorrelatedImageClassificationTrainer.Options().DecorrelationSampleFraction;
    public int UpdateInterval { get; init; } = new DecorrelatedImageClassificationTrainer.Options().DecorrelationUpdateInterval;
    public int Seed { get; init; }
    public string? Data { get; init; }
    public int? TrainLimit { get; init; }
    public int? TestLimit { get; init; }
    public string ReportFolder { get; init; } = "report";
}

/// <summary>One arm's accuracy curve.</summary>
internal sealed record ArmResult(string Name, IReadOnlyList<DecorrelatedImageClassificationMetrics> Epochs);

/// <summary>
/// The main job: trains the small CNN on Fashion-MNIST through an ML.NET pipeline twice, with plain
/// backprop and with DBP, from the same initial weights and batch order; shows the accuracy against
/// training time, evaluates the DBP model with ML.NET, saves it, and writes a report folder (two PNG
/// charts and a JSON file with every number printed).
/// </summary>
internal sealed class MainJob(IAnsiConsole console, FashionMnistSource source)
{
    internal sealed class PixelRow
    {
        public string Label { get; set; } = "";

        [VectorType(1, 28, 28)]
        public float[] Features { get; set; } = [];
    }

    public static readonly string[] ClassNames =
        ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"];

    public string Run(MainJobSettings settings)
    {
        var data = source.Locate(settings.Data);
        foreach (var note in source.Notes)
            console.MarkupLineInterpolated($"[grey]{note}[/]");
        var ml = new MLContext(settings.Seed);
        var train = ml.Data.LoadFromEnumerable(ReadRows(data, train: true, settings.TrainLimit));
        var test = ml.Data.LoadFromEnumerable(ReadRows(data, train: false, settings.TestLimit));
        console.MarkupLineInterpolated($"Data: {data.Description}: {train.GetRowCount()} training and {test.GetRowCount()} test images.");

        var labels = ml.Transforms.Conversion.MapValueToKey("Label").Fit(train);
        var trainKeyed = labels.Transform(train);
        var testKeyed = labels.Transform(test);

        WarmUp(ml, settings, trainKeyed);
        var arms = new List<ArmResult>();
        DecorrelatedImageClassificationTransformer? dbpModel = null;
        foreach (var (name, decorrelate) in new[] { ("Backprop", false), ("DBP", true) })
        {
            var (model, epochs) = TrainArm(ml, name, decorrelate, settings, trainKeyed, testKeyed);
            arms.Add(new ArmResult(name, epochs));
            if (decorrelate)
                dbpModel = model;
            else
                model.Dispose();
        }
        using var _ = dbpModel;
        var backprop = arms[0].Epochs;
        var dbp = arms[1].Epochs;

        var table = new Table().Title("Test accuracy against cumulative training time")
            .AddColumns("Epoch", "Backprop accuracy", "Backprop s", "DBP accuracy", "DBP s", "DBP decorrelation loss");
        for (int i = 0; i < Math.Max(backprop.Count, dbp.Count); i++)
        {
            table.AddRow($"{i + 1}", Cell(backprop, i, m => $"{m.ValidationAccuracy:P2}"), Cell(backprop, i, m => $"{m.Seconds:F1}"),
                Cell(dbp, i, m => $"{m.ValidationAccuracy:P2}"), Cell(dbp, i, m => $"{m.Seconds:F1}"), Cell(dbp, i, m => $"{m.DecorrelationLoss:E2}"));
        }
        console.Write(table);

        var scored = dbpModel!.Transform(testKeyed);
        var metrics = ml.MulticlassClassification.Evaluate(scored);
        console.MarkupLineInterpolated($"ML.NET evaluation of the DBP model: micro accuracy [green]{metrics.MicroAccuracy:P2}[/], macro accuracy {metrics.MacroAccuracy:P2}, log-loss {metrics.LogLoss:F4}.");
        var classNames = dbpModel.ClassNames!;   // in key order, as the metrics are
        var perClass = new Table().AddColumns("Class", "Precision", "Recall", "Log-loss");
        for (int c = 0; c < metrics.PerClassLogLoss.Count; c++)
            perClass.AddRow(classNames[c], $"{metrics.ConfusionMatrix.PerClassPrecision[c]:P1}", $"{metrics.ConfusionMatrix.PerClassRecall[c]:P1}", $"{metrics.PerClassLogLoss[c]:F3}");
        console.Write(perClass);

        var headline = Headline(backprop, dbp);
        console.MarkupLine(headline.Markup);

        Directory.CreateDirectory(settings.ReportFolder);
        string modelPath = Path.Combine(settings.ReportFolder, "model.zip");
        var toLabel = ml.Transforms.Conversion.MapKeyToValue("PredictedLabel").Fit(scored);
        ml.Model.Save(new TransformerChain<ITransformer>(dbpModel, toLabel), train.Schema, modelPath);
        string accuracyPng = Path.Combine(settings.ReportFolder, "accuracy-vs-time.png");
        string decorrelationPng = Path.Combine(settings.ReportFolder, "decorrelation-loss.png");
        ReportCharts.AccuracyAgainstTime(arms, accuracyPng);
        ReportCharts.DecorrelationLoss(dbp, decorrelationPng);
        string jsonPath = Path.Combine(settings.ReportFolder, "results.json");
        File.WriteAllText(jsonPath, JsonSerializer.Serialize(new
        {
            data = data.Description,
            machine = $"{Environment.ProcessorCount} CPU cores",
            settings,
            arms = arms.ToDictionary(a => a.Name, a => a.Epochs.Select(m => new
            {
                epoch = m.Epoch,
                trainLoss = m.TrainLoss,
                testAccuracy = m.ValidationAccuracy,
                seconds = m.Seconds,
                decorrelationLoss = m.DecorrelationLoss,
                layerDecorrelationLoss = m.LayerDecorrelationLoss,
            })),
            dbpEvaluation = new
            {
                microAccuracy = metrics.MicroAccuracy,
                macroAccuracy = metrics.MacroAccuracy,
                logLoss = metrics.LogLoss,
                perClass = Enumerable.Range(0, metrics.PerClassLogLoss.Count).Select(c => new
                {
                    @class = classNames[c],
                    precision = metrics.ConfusionMatrix.PerClassPrecision[c],
                    recall = metrics.ConfusionMatrix.PerClassRecall[c],
                    logLoss = metrics.PerClassLogLoss[c],
                }),
                confusionMatrixClasses = classNames,
                confusionMatrix = metrics.ConfusionMatrix.Counts,
            },
            headline = new { text = headline.Text, headline.BackpropBestAccuracy, headline.BackpropSeconds, headline.DbpSeconds, headline.Speedup },
        }, new JsonSerializerOptions { WriteIndented = true, NumberHandling = System.Text.Json.Serialization.JsonNumberHandling.AllowNamedFloatingPointLiterals }));
        console.MarkupLineInterpolated($"Model: {modelPath}. Report: {accuracyPng}, {decorrelationPng}, {jsonPath}.");
        return settings.ReportFolder;
    }

    private (DecorrelatedImageClassificationTransformer, List<DecorrelatedImageClassificationMetrics>) TrainArm(MLContext ml, string name, bool decorrelate,
        MainJobSettings settings, IDataView train, IDataView test)
    {
        var epochs = new List<DecorrelatedImageClassificationMetrics>();
        DecorrelatedImageClassificationTransformer model = null!;
        console.Progress()
            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new ElapsedTimeColumn())
            .Start(context =>
            {
                var tasks = Enumerable.Range(1, settings.Epochs).Select(e => context.AddTask($"{name} epoch {e}", autoStart: false)).ToArray();
                var options = new DecorrelatedImageClassificationTrainer.Options
                {
                    Architecture = settings.Architecture,
                    MaxEpoch = settings.Epochs,
                    BatchSize = settings.BatchSize,
                    LearningRate = settings.LearningRate,
                    UseDecorrelation = decorrelate,
                    DecorrelationLearningRate = settings.DecorrelationLearningRate,
                    Kappa = settings.Kappa,
                    DecorrelationSampleFraction = settings.SampleFraction,
                    DecorrelationUpdateInterval = settings.UpdateInterval,
                    ValidationSet = test,
                    Seed = settings.Seed,
                    MetricsCallback = m =>
                    {
                        epochs.Add(m);
                        tasks[(int)Math.Ceiling(m.Epoch) - 1].Description = $"{name} epoch {m.Epoch}: test accuracy {m.ValidationAccuracy:P2}";
                    },
                    ProgressCallback = p =>
                    {
                        var task = tasks[p.Epoch - 1];
                        if (!task.IsStarted)
                            task.StartTask();
                        task.MaxValue = p.BatchesPerEpoch;
                        task.Value = p.Batch;
                        if (p.Batch % 25 == 0)
                            task.Description = $"{name} epoch {p.Epoch}: loss {p.Loss:F3}, {p.Seconds:F0} s";
                    },
                };
                model = ml.MulticlassClassification.Trainers.DecorrelatedImageClassification(options).Fit(train);
            });
        return (model, epochs);
    }

    /// <summary>
    /// One short untimed fit per arm, so that neither arm's timing includes the process's one-time costs
    /// (JIT compilation, Torch start-up, the first allocations).
    /// </summary>
    private static void WarmUp(MLContext ml, MainJobSettings settings, IDataView train)
    {
        var sample = ml.Data.TakeRows(train, 2 * settings.BatchSize);
        foreach (bool decorrelate in new[] { false, true })
        {
            var options = new DecorrelatedImageClassificationTrainer.Options
            {
                Architecture = settings.Architecture, MaxEpoch = 1, BatchSize = settings.BatchSize, UseDecorrelation = decorrelate, Seed = settings.Seed,
            };
            ml.MulticlassClassification.Trainers.DecorrelatedImageClassification(options).Fit(sample).Dispose();
        }
    }

    internal static IEnumerable<PixelRow> ReadRows(DataSource data, bool train, int? limit)
    {
        using var dataset = FashionMnistSource.Load(data, train, limit);
        var pixels = dataset.Images.mul(255f).data<float>().ToArray();
        var labels = dataset.Labels.data<long>().ToArray();
        var rows = new PixelRow[labels.Length];
        for (int i = 0; i < rows.Length; i++)
            rows[i] = new PixelRow { Label = ClassNames[labels[i]], Features = pixels.AsSpan(i * 784, 784).ToArray() };
        return rows;
    }

    private static string Cell(IReadOnlyList<DecorrelatedImageClassificationMetrics> epochs, int i, Func<DecorrelatedImageClassificationMetrics, string> format)
        => i < epochs.Count ? format(epochs[i]) : "";

    internal sealed record HeadlineResult(string Text, string Markup, double BackpropBestAccuracy, double BackpropSeconds, double? DbpSeconds, double? Speedup);

    internal static HeadlineResult Headline(IReadOnlyList<DecorrelatedImageClassificationMetrics> backprop, IReadOnlyList<DecorrelatedImageClassificationMetrics> dbp)
    {
        var best = backprop.MaxBy(m => m.ValidationAccuracy)!;
        double target = best.ValidationAccuracy!.Value;
        var reached = dbp.FirstOrDefault(m => m.ValidationAccuracy >= target);
        if (reached is null)
        {
            string missed = $"DBP did not reach backprop's best accuracy ({target:P2}) within the epochs run; its best was {dbp.Max(m => m.ValidationAccuracy):P2}.";
            return new HeadlineResult(missed, Markup.Escape(missed), target, best.Seconds, null, null);
        }
        double speedup = best.Seconds / reached.Seconds;
        string text = $"DBP reached backprop's best accuracy ({target:P2}) in {reached.Seconds:F1} s instead of {best.Seconds:F1} s ({speedup:F2}× as fast).";
        return new HeadlineResult(text, $"[bold green]{Markup.Escape(text)}[/]", target, best.Seconds, reached.Seconds, speedup);
    }
}
