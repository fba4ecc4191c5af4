using Microsoft.ML.Decorrelation.Torch;
using Microsoft.ML.Decorrelation.Torch.Architectures;
using Microsoft.VisualStudio.TestTools.UnitTesting;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.Decorrelation.Tests;

[TestClass]
public class NetworkConversionTests
{
    [TestInitialize]
    public void Seed() => random.manual_seed(42);

    private static void PerturbDecorrelationMatrices(nn.Module network)
    {
        using var noGrad = no_grad();
        foreach (var layer in network.modules().OfType<DecorrelatedLayer>())
            layer.DecorrelationMatrix.add_(randn_like(layer.DecorrelationMatrix).mul_(0.5 / Math.Sqrt(layer.InputSize)));
    }

    [TestMethod]
    [DataRow(false)]
    [DataRow(true)]
    public void SmallCnnTwinComputesExactlyWhatThePlainNetworkComputesAndFoldsBack(bool batchNorm)
    {
        using var scope = NewDisposeScope();
        var plain = NetworkBuilder.SmallCnn(1, 28, 28, 10, batchNorm: batchNorm);
        var input = rand(5, 1, 28, 28);
        if (batchNorm)
        {
            // Non-trivial running statistics, compared in eval mode below.
            plain.train();
            using (no_grad())
                plain.forward(rand(8, 1, 28, 28));
        }
        var decorrelated = NetworkConversion.ToDecorrelated(plain);
        plain.eval();
        decorrelated.eval();

        Assert.AreEqual(0.0, Reference.MaxAbsDifference(plain.forward(input), decorrelated.forward(input)), "R = I: identical outputs");
        Assert.AreEqual(4, decorrelated.modules().OfType<DecorrelatedLayer>().Count(), "three convolutions and the classifier");

        PerturbDecorrelationMatrices(decorrelated);
        var folded = NetworkConversion.ToPlain(decorrelated);
        folded.eval();
        Assert.IsFalse(folded.modules().OfType<DecorrelatedLayer>().Any());
        var expected = decorrelated.forward(input);
        Assert.IsGreaterThan(1e-3, Reference.MaxAbsDifference(expected, plain.forward(input)), "the perturbation must change the outputs");
        Assert.IsLessThan(1e-5, Reference.MaxAbsDifference(folded.forward(input), expected));
    }

    [TestMethod]
    [DataRow(null)]
    [DataRow(288)]
    public void ResNetWithBatchNormAndShortcutsRoundTrips(int? maxBlockSize)
    {
        using var scope = NewDisposeScope();
        var plain = NetworkBuilder.ResNet18(3, 7, ResNetStem.SmallImage);
        // Give BatchNorm non-trivial running statistics, then compare in eval mode.
        plain.train();
        using (no_grad())
            plain.forward(rand(4, 3, 16, 16));
        var decorrelated = NetworkConversion.ToDecorrelated(plain, new DecorrelationOptions { MaxBlockSize = maxBlockSize });
        var layers = decorrelated.modules().OfType<DecorrelatedLayer>().ToList();
        Assert.AreEqual(1 + 16 + 3 + 1, layers.Count, "stem, 16 block convolutions, 3 shortcut projections, classifier");
        Assert.AreEqual(maxBlockSize is null ? 0 : 17, layers.Count(l => l.BlockCount > 1),
            "blocks of 288: every 3×3 convolution after the stem (D ≥ 576) and the classifier (D = 512); the stem (D = 27) and 1×1 shortcuts (D ≤ 256) stay full");
        Assert.IsTrue(layers.All(l => l.BlockSize <= (maxBlockSize ?? int.MaxValue)));
        PerturbDecorrelationMatrices(decorrelated);
        var folded = NetworkConversion.ToPlain(decorrelated);
        foreach (var network in new[] { plain, decorrelated, folded })
            network.eval();
        // Every copy keeps each tensor's type, so a folded network saves into what a freshly built one loads.
        var plainTypes = plain.state_dict().ToDictionary(p => p.Key, p => p.Value.dtype);
        foreach (var (key, value) in folded.state_dict())
            Assert.AreEqual(plainTypes[key], value.dtype, key);
        Assert.AreEqual(ScalarType.Int64, folded.state_dict()["stem.bn.num_batches_tracked"].dtype);

        var input = rand(2, 3, 16, 16);
        var expected = decorrelated.forward(input);
        Assert.IsLessThan(1e-5, Reference.MaxAbsDifference(folded.forward(input), expected));
        CollectionAssert.AreEqual(plain.state_dict().Keys.ToArray(), folded.state_dict().Keys.ToArray(), "folding restores the plain layout");
    }

    [TestMethod]
    public void ConversionCopiesStateAndLeavesTheSourceUntouched()
    {
        using var scope = NewDisposeScope();
        var plain = nn.Sequential(("conv", nn.Conv2d(2, 3, 3)), ("bn", nn.BatchNorm2d(3)), ("flat", nn.Flatten()), ("fc", nn.Linear(12, 2)));
        var before = plain.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.clone());
        var decorrelated = NetworkConversion.ToDecorrelated(plain);
        using (no_grad())
        {
            foreach (var p in decorrelated.parameters())
                p.add_(1);
        }
        foreach (var (name, tensor) in plain.state_dict())
            Assert.AreEqual(0.0, Reference.MaxAbsDifference(tensor, before[name]), name);
        Assert.IsInstanceOfType<BatchNorm2d>(decorrelated.named_children().Single(c => c.name == "bn").module);
    }

    [TestMethod]
    public void IncludeFilterKeepsChosenLayersPlain()
    {
        using var scope = NewDisposeScope();
        var plain = NetworkBuilder.SmallCnn(1, 16, 16, 3);
        var decorrelated = NetworkConversion.ToDecorrelated(plain, include: (path, _) => path != "classifier");
        var names = new DecorrelationController(decorrelated).Layers.Select(l => l.LayerName).ToArray();
        CollectionAssert.AreEqual(new[] { "conv1", "conv2", "conv3" }, names);
    }

    [TestMethod]
    public void MaxInputSizeLeavesWideLayersPlain()
    {
        using var scope = NewDisposeScope();
        var decorrelated = NetworkConversion.ToDecorrelated(NetworkBuilder.ResNet18(1, 10, ResNetStem.SmallImage), new DecorrelationOptions { MaxInputSize = 1152 });
        var layers = decorrelated.modules().OfType<DecorrelatedLayer>().ToArray();
        Assert.IsTrue(layers.All(l => l.InputSize <= 1152));
        Assert.AreEqual(14, layers.Length, "stem, layer1 (4), layer2 (4 + shortcut), layer3 (first conv + shortcut), layer4 shortcut, classifier");
        Assert.AreEqual(21 - 14, decorrelated.modules().OfType<Conv2d>().Count(), "the 3×3 convolutions with D of 2304 or 4608 stay plain");
    }

    [TestMethod]
    public void GroupedConvolutionIsRejectedWithTheLayerPath()
    {
        using var scope = NewDisposeScope();
        var plain = nn.Sequential(("block", nn.Sequential(("depthwise", nn.Conv2d(4, 4, 3, groups: 4)))));
        var error = Assert.ThrowsExactly<NotSupportedException>(() => NetworkConversion.ToDecorrelated(plain));
        StringAssert.Contains(error.Message, "'block.depthwise'");
        StringAssert.Contains(error.Message, "groups = 4");
    }

    [TestMethod]
    public void StatefulModuleOfUnknownKindIsRejected()
    {
        using var scope = NewDisposeScope();
        var plain = nn.Sequential(("norm", nn.LayerNorm(4)), ("fc", nn.Linear(4, 2)));
        var error = Assert.ThrowsExactly<NotSupportedException>(() => NetworkConversion.ToDecorrelated(plain));
        StringAssert.Contains(error.Message, "'norm'");
    }
}
