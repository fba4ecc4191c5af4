using System.CommandLine;
using Spectre.Console;

namespace Microsoft.ML.Decorrelation.Samples;

/// <summary>The samples' command line: the main job as the root command and every other sample as a sub-command.</summary>
internal static class SamplesCli
{
    /// <summary>Builds the command tree (also used by the README check, which parses every command the README shows).</summary>
    public static RootCommand Create()
    {
        var epochs = new Option<int>("--epochs") { Description = "Epochs per arm.", DefaultValueFactory = _ => new MainJobSettings().Epochs };
        var architecture = new Option<CnnArchitecture>("--arch") { Description = "Network: SmallCnn, ResNet18, ResNet34 or ResNet50.", DefaultValueFactory = _ => CnnArchitecture.SmallCnn };
        var batchSize = new Option<int>("--batch-size") { Description = "Images per step.", DefaultValueFactory = _ => new MainJobSettings().BatchSize };
        var data = new Option<string?>("--data") { Description = "A folder with the four Fashion-MNIST IDX files (default: Debian package, cache, download, shipped subset)." };
        var seed = new Option<int>("--seed") { Description = "Seed of weights, batch order and sampling.", DefaultValueFactory = _ => 0 };
        var learningRate = new Option<double>("--lr") { Description = "Adam learning rate of both arms.", DefaultValueFactory = _ => new MainJobSettings().LearningRate };
        var decorrelationRate = new Option<double>("--eta-r") { Description = "DBP: learning rate of the decorrelation matrices.", DefaultValueFactory = _ => new MainJobSettings().DecorrelationLearningRate };
        var kappa = new Option<double>("--kappa") { Description = "DBP: weight of variance normalisation, in [0, 1].", DefaultValueFactory = _ => new MainJobSettings().Kappa };
        var sampleFraction = new Option<double>("--sample-fraction") { Description = "DBP: fraction of each batch feeding the convolutions' statistics.", DefaultValueFactory = _ => new MainJobSettings().SampleFraction };
        var interval = new Option<int>("--interval") { Description = "DBP: update the decorrelation matrices every N steps.", DefaultValueFactory = _ => new MainJobSettings().UpdateInterval };
        var limit = new Option<int?>("--limit") { Description = "Use only the first N training images." };
        var report = new Option<string>("--report") { Description = "Folder for the model, charts and JSON.", DefaultValueFactory = _ => "report" };

        var root = new RootCommand("Decorrelated backpropagation (DBP) against plain backpropagation on Fashion-MNIST, through ML.NET.")
        {
            epochs, architecture, batchSize, data, seed, learningRate, decorrelationRate, kappa, sampleFraction, interval, limit, report,
        };
        root.SetAction(result =>
        {
            // Under mpirun or srun every rank runs this same job data-parallel (the trainer's DataParallel = Auto); rank 0 alone
            // prints and writes the report, the others work silently into a scratch folder.
            bool follower = Microsoft.ML.Decorrelation.Torch.Distributed.MpiCommunicator.LaunchedByMpi
                && Microsoft.ML.Decorrelation.Torch.Distributed.MpiCommunicator.World.Rank != 0;
            var console = follower ? AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(TextWriter.Null) }) : AnsiConsole.Console;
            string reportFolder = follower ? Directory.CreateTempSubdirectory("dbp-rank-report").FullName : result.GetValue(report)!;
            new MainJob(console, new FashionMnistSource()).Run(new MainJobSettings
            {
                Epochs = result.GetValue(epochs),
                Architecture = result.GetValue(architecture),
                BatchSize = result.GetValue(batchSize),
                Data = result.GetValue(data),
                Seed = result.GetValue(seed),
                LearningRate = result.GetValue(learningRate),
                DecorrelationLearningRate = result.GetValue(decorrelationRate),
                Kappa = result.GetValue(kappa),
                SampleFraction = result.GetValue(sampleFraction),
                UpdateInterval = result.GetValue(interval),
                TrainLimit = result.GetValue(limit),
                ReportFolder = reportFolder,
            });
            return 0;
        });
        root.Subcommands.Add(ImageFolderCommands.Train());
        root.Subcommands.Add(ImageFolderCommands.Predict());
        root.Subcommands.Add(OnnxCommands.Export());
        root.Subcommands.Add(OnnxBench.Create());
        foreach (var command in DataParallelBench.Create())
            root.Subcommands.Add(command);
        root.Subcommands.Add(Bench.Create());
        root.Subcommands.Add(Bench.CreateChart());
        root.Subcommands.Add(ShortFitBench.CreateChild());
        root.Subcommands.Add(PipelineExample.Create());
        root.Subcommands.Add(OneDnnCost.Create());
        root.Subcommands.Add(CacheBench.Create());
        root.Subcommands.Add(SelectCommand.Create());
        root.Subcommands.Add(SelectBench.Create());
        root.Subcommands.Add(TransferBench.Create());
        foreach (var command in NativeScan.Create())
            root.Subcommands.Add(command);
        return root;
    }
}
