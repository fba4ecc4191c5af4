using Microsoft.ML.Decorrelation.Torch;
using Microsoft.ML.Decorrelation.Torch.Architectures;
using Microsoft.ML.Decorrelation.Torch.Data;
using Microsoft.ML.Decorrelation.Torch.Training;
using Microsoft.VisualStudio.TestTools.UnitTesting;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Decorrelation.Tests;

/// <summary>Every run draws from its own random streams: concurrent runs and the caller do not disturb each other.</summary>
[TestClass]
public class RandomnessTests
{
    private static TrainingOptions Options(int seed) => new()
    {
        Epochs = 1,
        BatchSize = 50,
        Seed = seed,
        Threads = 1,
        // Sampling a quarter of each batch draws from the run's generator at every update.
        Decorrelation = new DecorrelationOptions { UpdateInterval = 1, ConvolutionSampleFraction = 0.25, LinearSampleFraction = 0.5 },
    };

    /// <summary>Trains a DBP network and returns its final state (weights and every R) as flat float arrays.</summary>
    private static Dictionary<string, float[]> Train(ImageDataset data, int seed)
    {
        var options = Options(seed);
        using var network = NetworkTrainer.CreateNetwork(d => NetworkBuilder.SmallCnn(1, 28, 28, 10, d), options, decorrelated: true);
        new NetworkTrainer(options).Train(network, data);
        return network.state_dict().ToDictionary(entry => entry.Key, entry => entry.Value.data<float>().ToArray());
    }

    private static void AssertSameState(Dictionary<string, float[]> expected, Dictionary<string, float[]> actual, string what)
    {
        CollectionAssert.AreEquivalent(expected.Keys.ToList(), actual.Keys.ToList());
        foreach (var (name, values) in expected)
            CollectionAssert.AreEqual(values, actual[name], $"{what}: '{name}' differs");
    }

    [TestMethod]
    public void ConcurrentSeededRunsEqualTheSameRunsAlone()
    {
        using var data = FashionMnist.Load(train: true, limit: 500);
        var aloneA = Train(data, seed: 3);
        var aloneB = Train(data, seed: 8);
        Assert.IsTrue(aloneA["conv1.decorrelation_matrix"].Zip(aloneB["conv1.decorrelation_matrix"]).Any(p => p.First != p.Second),
            "different seeds must give different runs, or this test could not fail");

        using var start = new Barrier(2);
        Dictionary<string, float[]> Concurrent(int seed)
        {
            start.SignalAndWait();
            return Train(data, seed);
        }
        var a = Task.Factory.StartNew(() => Concurrent(3), TaskCreationOptions.LongRunning);
        var b = Task.Factory.StartNew(() => Concurrent(8), TaskCreationOptions.LongRunning);
        AssertSameState(aloneA, a.Result, "seed 3 run beside seed 8");
        AssertSameState(aloneB, b.Result, "seed 8 run beside seed 3");
    }

    [TestMethod]
    public void TrainingLeavesTheCallersGeneratorAndThreadCountAlone()
    {
        using var data = FashionMnist.Load(train: true, limit: 100);
        int threads = get_num_threads();
        random.manual_seed(1234);
        float expected = rand(1).item<float>();
        random.manual_seed(1234);
        var options = Options(5);
        options.Threads = threads == 1 ? 2 : 1;
        using var network = NetworkTrainer.CreateNetwork(d => NetworkBuilder.SmallCnn(1, 28, 28, 10, d), options, decorrelated: true);
        Assert.AreEqual(expected, rand(1).item<float>(), "building the network");
        random.manual_seed(1234);
        options.FlushDenormals = false;   // train on this thread, so its thread count is the one the session sets
        new NetworkTrainer(options).Train(network, data);
        Assert.AreEqual(expected, rand(1).item<float>(), "the caller's random stream continues where it was");
        Assert.AreEqual(threads, get_num_threads(), "the caller's thread count is restored");
    }
}
