using System.CommandLine;
using Microsoft.ML.Decorrelation.Torch;
using Microsoft.ML.Decorrelation.Torch.Architectures;
using Microsoft.ML.Decorrelation.Torch.Data;
using Microsoft.ML.Decorrelation.Torch.Training;
using Spectre.Console;
using static TorchSharp.torch;

namespace Microsoft.ML.Decorrelation.Samples;

/// <summary>
/// The main job: trains the small CNN on Fashion-MNIST with backprop and with DBP from the same initial
/// weights and batch order, and compares test accuracy against training time.
/// </summary>
internal static class CompareCommand
{
    private static readonly Option<int> Epochs = new("--epochs") { Description = "Epochs per arm.", DefaultValueFactory = _ => 5 };
    private static readonly Option<int> BatchSize = new("--batch-size") { Description = "Images per step.", DefaultValueFactory = _ => 128 };
    private static readonly Option<string?> Data = new("--data") { Description = "Folder with the Fashion-MNIST IDX files (default: the Debian package's)." };
    private static readonly Option<int?> Limit = new("--limit") { Description = "Use only the first N training images." };
    private static readonly Option<int> Seed = new("--seed") { Description = "Seed of weights, batch order and samples.", DefaultValueFactory = _ => 0 };
    private static readonly Option<double> LearningRate = new("--lr") { Description = "Adam learning rate of both arms.", DefaultValueFactory = _ => 1e-3 };
    private static readonly Option<double> DecorrelationRate = new("--eta-r") { Description = "DBP: learning rate of R.", DefaultValueFactory = _ => new DecorrelationOptions().LearningRate };
    private static readonly Option<double> Kappa = new("--kappa") { Description = "DBP: weight of variance normalisation.", DefaultValueFactory = _ => new DecorrelationOptions().Kappa };
    private static readonly Option<int> Threads = new("--threads") { Description = "CPU threads for Torch.", DefaultValueFactory = _ => Environment.ProcessorCount };

    public static void Configure(RootCommand root)
    {
        foreach (var option in new Option[] { Epochs, BatchSize, Data, Limit, Seed, LearningRate, DecorrelationRate, Kappa, Threads })
            root.Options.Add(option);
        root.SetAction(result => Run(
            result.GetValue(Epochs), result.GetValue(BatchSize), result.GetValue(Data), result.GetValue(Limit), result.GetValue(Seed),
            result.GetValue(LearningRate), result.GetValue(DecorrelationRate), result.GetValue(Kappa), result.GetValue(Threads)));
    }

    private static int Run(int epochs, int batchSize, string? data, int? limit, int seed, double learningRate, double decorrelationRate, double kappa, int threads)
    {
        string folder = FashionMnistFiles.Locate(data);
        using var train = FashionMnistFiles.Load(folder, train: true, limit);
        using var test = FashionMnistFiles.Load(folder, train: false);
        var (mean, deviation) = train.ChannelStatistics();
        train.Normalize(mean, deviation);
        test.Normalize(mean, deviation);
        AnsiConsole.MarkupLine($"Data: Fashion-MNIST from [blue]{folder}[/]: {train.Count} training and {test.Count} test images.");

        var options = new TrainingOptions
        {
            Epochs = epochs,
            BatchSize = batchSize,
            LearningRate = learningRate,
            Seed = seed,
            Threads = threads,
            Decorrelation = new DecorrelationOptions { LearningRate = decorrelationRate, Kappa = kappa },
        };
        var arms = new[] { ("Backprop", false), ("DBP", true) };
        var histories = new Dictionary<string, IReadOnlyList<TrainingMetrics>>();
        foreach (var (name, decorrelated) in arms)
        {
            using var network = NetworkTrainer.CreateNetwork(device => NetworkBuilder.SmallCnn(1, 28, 28, 10, device), options, decorrelated);
            histories[name] = TrainWithProgress(name, network, options, train, test);
        }
        Report(histories["Backprop"], histories["DBP"]);
        return 0;
    }

    private static IReadOnlyList<TrainingMetrics> TrainWithProgress(string name, nn.Module<Tensor, Tensor> network, TrainingOptions options, ImageDataset train, ImageDataset test)
    {
        IReadOnlyList<TrainingMetrics> history = [];
        AnsiConsole.Progress()
            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new ElapsedTimeColumn())
            .Start(context =>
            {
                var tasks = Enumerable.Range(1, options.Epochs).Select(e => context.AddTask($"{name} epoch {e}", autoStart: false)).ToArray();
                history = new NetworkTrainer(options).Train(network, train, test,
                    onMetrics: m => tasks[(int)Math.Ceiling(m.Epoch) - 1].Description = $"{name} epoch {Math.Ceiling(m.Epoch)}: accuracy {m.TestAccuracy:P2}",
                    onStep: p =>
                    {
                        var task = tasks[p.Epoch - 1];
                        if (!task.IsStarted)
                            task.StartTask();
                        task.MaxValue = p.BatchesPerEpoch;
                        task.Value = p.Batch;
                        if (p.Batch % 20 == 0)
                            task.Description = $"{name} epoch {p.Epoch}: loss {p.Loss:F3}";
                    });
            });
        return history;
    }

    private static void Report(IReadOnlyList<TrainingMetrics> backprop, IReadOnlyList<TrainingMetrics> dbp)
    {
        var table = new Table().AddColumns("Epoch", "Backprop accuracy", "Backprop seconds", "DBP accuracy", "DBP seconds", "DBP mean decorrelation loss");
        for (int i = 0; i < backprop.Count; i++)
        {
            table.AddRow($"{backprop[i].Epoch:0.#}", $"{backprop[i].TestAccuracy:P2}", $"{backprop[i].TrainingSeconds:F1}",
                $"{dbp[i].TestAccuracy:P2}", $"{dbp[i].TrainingSeconds:F1}", $"{dbp[i].DecorrelationLoss.Values.Average():E2}");
        }
        AnsiConsole.Write(table);

        var best = backprop.MaxBy(m => m.TestAccuracy)!;
        var reached = dbp.FirstOrDefault(m => m.TestAccuracy >= best.TestAccuracy);
        AnsiConsole.MarkupLine(reached is null
            ? $"DBP did not reach backprop's best accuracy ({best.TestAccuracy:P2}); its best was {dbp.Max(m => m.TestAccuracy):P2}."
            : $"DBP reached backprop's best accuracy ({best.TestAccuracy:P2}) in [green]{reached.TrainingSeconds:F1} s[/] instead of {best.TrainingSeconds:F1} s " +
              $"([green]{best.TrainingSeconds / reached.TrainingSeconds:F2}×[/]).");
    }
}
