using Microsoft.ML.Data;
using System.Globalization;
using Microsoft.ML.Decorrelation.Torch;
using Microsoft.ML.Decorrelation.Torch.Architectures;
using Microsoft.ML.Decorrelation.Torch.Distributed;
using Microsoft.ML.Decorrelation.Torch.Training;
using static TorchSharp.torch;

namespace Microsoft.ML.Decorrelation.Tests;

/// <summary>
/// One training run of the data-parallel tests, as a child process: alone, or as one rank under <c>mpirun</c>. Trains the
/// small CNN on the first images of the Fashion-MNIST subset and writes every tensor of the final state (weights and R)
/// to a file (rank 0 only), for the parent to compare.
/// </summary>
internal static class DataParallelCases
{
    public const string Command = "data-parallel";

    /// <summary>data-parallel (dbp|backprop) STEPS BATCH OUTPUT [CHECKPOINT [EPOCHS]]: writes OUTPUT.state (TorchSharp format) and OUTPUT.metrics.</summary>
    public static int Run(string[] args)
    {
        bool decorrelated = args[0] == "dbp";
        int steps = int.Parse(args[1], CultureInfo.InvariantCulture);
        int batchSize = int.Parse(args[2], CultureInfo.InvariantCulture);
        string output = args[3];
        var world = MpiCommunicator.LaunchedByMpi ? MpiCommunicator.World : null;
        // For the fault test: which process each rank is.
        File.WriteAllText($"{output}.rank{world?.Rank ?? 0}.pid", Environment.ProcessId.ToString(CultureInfo.InvariantCulture));
        using var train = FashionMnist.Load(train: true, limit: steps * batchSize);
        var (mean, deviation) = train.ChannelStatistics();
        train.Normalize(mean, deviation);
        var options = new TrainingOptions
        {
            Epochs = args.Length > 5 ? int.Parse(args[5], CultureInfo.InvariantCulture) : 1,
            BatchSize = batchSize, LearningRate = 2e-3, Seed = 7, Communicator = world, FlushDenormals = true,
            CheckpointPath = args.Length > 4 ? args[4] : null, ResumeFromCheckpoint = args.Length > 4,
            // Every sample feeds the statistics, so the ranks' samples together are the single process's.
            Decorrelation = new DecorrelationOptions { UpdateInterval = 1, ConvolutionSampleFraction = 1, LinearSampleFraction = 1 },
        };
        using var network = NetworkTrainer.CreateNetwork(d => NetworkBuilder.SmallCnn(1, 28, 28, 10, d), options, decorrelated);
        var history = new NetworkTrainer(options).Train(network, train);
        Console.WriteLine($"rank {world?.Rank ?? 0} of {world?.Size ?? 1}: train loss {history[^1].TrainLoss:R}, accuracy {history[^1].TrainAccuracy:R}");
        if ((world?.Rank ?? 0) == 0)
        {
            network.save(output + ".state");
            File.WriteAllLines(output + ".metrics", [history[^1].TrainLoss.ToString("R", CultureInfo.InvariantCulture),
                history[^1].TrainAccuracy.ToString("R", CultureInfo.InvariantCulture), world?.Size.ToString(CultureInfo.InvariantCulture) ?? "1"]);
        }
        return 0;
    }

    public const string TrainerCommand = "data-parallel-trainer";

    /// <summary>
    /// data-parallel-trainer OUTPUT: the ML.NET trainer, unchanged, on 512 Fashion-MNIST pixel rows (backprop, 2 epochs, batch 64); rank 0
    /// writes the scores of the rows to OUTPUT.scores and the trainer's log to OUTPUT.log; every rank prints its first log line.
    /// </summary>
    public static int RunTrainer(string output)
    {
        var ml = new MLContext(3);
        var log = new List<string>();
        ml.Log += (_, e) =>
        {
            if (e.Kind == Runtime.ChannelMessageKind.Info && e.Source.EndsWith("DecorrelatedImageClassificationTrainer", StringComparison.Ordinal))
                lock (log) log.Add(e.RawMessage);
        };
        var rows = ml.Data.LoadFromEnumerable(MLNetData.PixelRows(train: true, count: 512));
        var data = ml.Transforms.Conversion.MapValueToKey("Label").Fit(rows).Transform(rows);
        using var model = ml.MulticlassClassification.Trainers.DecorrelatedImageClassification(new DecorrelatedImageClassificationTrainer.Options
        {
            MaxEpoch = 2, BatchSize = 64, UseDecorrelation = false, LearningRateSchedule = LearningRateSchedule.Constant,
        }).Fit(data);
        var scores = model.Transform(data).GetColumn<float[]>("Score").SelectMany(s => s).ToArray();
        var world = MpiCommunicator.LaunchedByMpi ? MpiCommunicator.World : null;
        Console.WriteLine(log.FirstOrDefault(l => l.StartsWith("Data-parallel", StringComparison.Ordinal)) ?? "alone");
        if ((world?.Rank ?? 0) == 0)
        {
            File.WriteAllLines(output + ".scores", scores.Select(v => v.ToString("R", CultureInfo.InvariantCulture)));
            File.WriteAllLines(output + ".log", log);
        }
        return 0;
    }
}
