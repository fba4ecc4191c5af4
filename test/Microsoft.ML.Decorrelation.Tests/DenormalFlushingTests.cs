using System.Globalization;
using Microsoft.ML.Decorrelation.Torch;
using Microsoft.ML.Decorrelation.Torch.Architectures;
using Microsoft.ML.Decorrelation.Torch.Training;
using Microsoft.VisualStudio.TestTools.UnitTesting;
using static TorchSharp.torch;

namespace Microsoft.ML.Decorrelation.Tests;

[TestClass]
public class DenormalFlushingTests
{
    // 1e-30 × 1e-10 = 1e-40 is denormal: zero when flushed. Large enough that Torch splits it over its threads.
    private const int Elements = 1 << 20;

    private static long UnflushedProducts()
    {
        using var small = full(Elements, 1e-30f);
        using var product = small.mul(1e-10f);
        return product.count_nonzero().item<long>();
    }

    private static long DenormalInputsKept()
    {
        // 1e-40 as an input (denormals-are-zero): ×1e30 gives 1e-10, or 0 when flushed.
        using var denormal = full(Elements, 1e-40f);
        using var product = denormal.mul(1e30f);
        return product.count_nonzero().item<long>();
    }

    private static float ManagedProduct(string left, string right) => float.Parse(left) * float.Parse(right);

    [TestMethod]
    public void Run_FlushesOnItsThreadAndTorchWorkers_AndLeavesTheCallerAsItWas()
    {
        if (OperatingSystem.IsLinux())
            Assert.IsTrue(DenormalFlushing.IsSupported, "libtorch_cpu's at::Context::setFlushDenormal was not found.");
        int threads = get_num_threads();
        set_num_threads(2);
        try
        {
            Assert.AreEqual(Elements, UnflushedProducts());
            Assert.AreEqual(Elements, DenormalInputsKept());
            Assert.AreNotEqual(0f, ManagedProduct("1e-30", "1e-10"));

            int callerThread = Environment.CurrentManagedThreadId;
            var inside = DenormalFlushing.Run(() => (Thread: Environment.CurrentManagedThreadId, Products: UnflushedProducts(),
                Inputs: DenormalInputsKept(), Managed: ManagedProduct("1e-30", "1e-10")));

            Assert.AreNotEqual(callerThread, inside.Thread);
            Assert.AreEqual(0, inside.Products, "denormal results survived on some Torch thread");
            Assert.AreEqual(0, inside.Inputs, "denormal inputs were not treated as zero on some Torch thread");
            Assert.AreEqual(0f, inside.Managed);
            // The caller's thread and its Torch workers are untouched.
            Assert.AreEqual(Elements, UnflushedProducts());
            Assert.AreNotEqual(0f, ManagedProduct("1e-30", "1e-10"));
        }
        finally
        {
            set_num_threads(threads);
        }
    }

    [TestMethod]
    public void Run_RethrowsTheWorksException()
    {
        var error = Assert.ThrowsExactly<TrainingDivergedException>(() =>
            DenormalFlushing.Run<int>(() => throw new TrainingDivergedException("diverged at step 7")));
        Assert.AreEqual("diverged at step 7", error.Message);
        Assert.Contains(nameof(Run_RethrowsTheWorksException), error.StackTrace!);
    }

    [TestMethod]
    public void Run_KeepsTheCallersCulture()
    {
        var (culture, uiCulture) = (CultureInfo.CurrentCulture, CultureInfo.CurrentUICulture);
        try
        {
            (CultureInfo.CurrentCulture, CultureInfo.CurrentUICulture) = (new CultureInfo("de-DE"), new CultureInfo("fr-FR"));
            Assert.AreEqual("1,5 de-DE fr-FR", DenormalFlushing.Run(() => $"{1.5} {CultureInfo.CurrentCulture.Name} {CultureInfo.CurrentUICulture.Name}"));
        }
        finally
        {
            (CultureInfo.CurrentCulture, CultureInfo.CurrentUICulture) = (culture, uiCulture);
        }
    }

    [TestMethod]
    public void Train_WithAndWithoutFlushing_GivesTheSameModel_OnlyTheThreadDiffers()
    {
        using var train = FashionMnist.Load(train: true, limit: 512);
        var results = new[] { true, false }.Select(flush =>
        {
            var options = new TrainingOptions { Epochs = 1, BatchSize = 64, Seed = 3, FlushDenormals = flush, Decorrelation = new DecorrelationOptions() };
            using var network = NetworkTrainer.CreateNetwork(d => NetworkBuilder.SmallCnn(1, 28, 28, 10, d), options, decorrelated: true);
            var stepThreads = new HashSet<int>();
            var history = new NetworkTrainer(options).Train(network, train, onStep: _ => stepThreads.Add(Environment.CurrentManagedThreadId));
            var weights = network.parameters().Select(p => p.detach().clone()).ToList();
            return (history[^1].TrainLoss, Weights: weights, Threads: stepThreads);
        }).ToList();

        Assert.AreEqual(results[1].TrainLoss, results[0].TrainLoss, 0.0);
        for (int i = 0; i < results[0].Weights.Count; i++)
            Assert.IsTrue(results[0].Weights[i].eq(results[1].Weights[i]).all().item<bool>(), $"parameter {i} differs");
        Assert.HasCount(1, results[0].Threads);
        Assert.AreNotEqual(Environment.CurrentManagedThreadId, results[0].Threads.Single());
        CollectionAssert.AreEqual(new[] { Environment.CurrentManagedThreadId }, results[1].Threads.ToArray());
        foreach (var weight in results.SelectMany(r => r.Weights))
            weight.Dispose();
    }
}
