using Microsoft.ML.Decorrelation.Torch;
using Microsoft.ML.Decorrelation.Torch.Architectures;
using Microsoft.VisualStudio.TestTools.UnitTesting;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Decorrelation.Tests;

[TestClass]
public class ArchitectureTests
{
    public static IEnumerable<object[]> ResNetCases()
    {
        foreach (var depth in new[] { 18, 34, 50 })
        {
            yield return [depth, 1, 28, ResNetStem.SmallImage];
            yield return [depth, 3, 32, ResNetStem.SmallImage];
            yield return [depth, 3, 224, ResNetStem.ImageNet];
        }
    }

    [TestMethod]
    [DynamicData(nameof(ResNetCases))]
    public void ResNetForwardAndBackwardShapes(int depth, int channels, int size, ResNetStem stem)
    {
        using var scope = NewDisposeScope();
        random.manual_seed(depth);
        var network = depth switch
        {
            18 => NetworkBuilder.ResNet18(channels, 5, stem),
            34 => NetworkBuilder.ResNet34(channels, 5, stem),
            _ => NetworkBuilder.ResNet50(channels, 5, stem),
        };
        var output = network.forward(randn(2, channels, size, size));
        CollectionAssert.AreEqual(new long[] { 2, 5 }, output.shape);
        output.sum().backward();
        foreach (var (name, parameter) in network.named_parameters())
        {
            Assert.IsNotNull(parameter.grad, $"{name} has no gradient");
            CollectionAssert.AreEqual(parameter.shape, parameter.grad.shape, name);
        }
        long parameters = network.parameters().Sum(p => p.numel());
        // torchvision's counts for 1000 classes are 11.7M, 21.8M and 25.6M; with 5 classes the classifier shrinks.
        long expected = depth switch { 18 => 11_170_000, 34 => 21_280_000, _ => 23_510_000 };
        Assert.AreEqual(expected, parameters, expected * 0.01, $"ResNet-{depth} parameter count");
    }

    [TestMethod]
    public void DecorrelatedResNetTrainsOneStep()
    {
        using var scope = NewDisposeScope();
        var network = NetworkConversion.ToDecorrelated(NetworkBuilder.ResNet18(1, 10, ResNetStem.SmallImage));
        var controller = new DecorrelationController(network);
        network.train();
        controller.BeginStep();
        var loss = nn.functional.cross_entropy(network.forward(randn(4, 1, 28, 28)), tensor(new long[] { 0, 1, 2, 3 }));
        loss.backward();
        controller.Update();
        Assert.IsTrue(controller.Layers.All(l => double.IsFinite(l.LastDecorrelationLoss)));
        Assert.IsTrue(controller.Layers.Any(l => l.LayerName == "layer4.0.shortcut.conv"), "1×1 shortcut projections are decorrelated");
    }

    [TestMethod]
    public void SmallCnnAcceptsAnyChannelCountClassCountAndSize()
    {
        using var scope = NewDisposeScope();
        var network = NetworkBuilder.SmallCnn(3, 40, 24, 4);
        CollectionAssert.AreEqual(new long[] { 2, 4 }, network.forward(randn(2, 3, 40, 24)).shape);
    }

    [TestMethod]
    public void InvalidShapesAreRejectedWithTheValue()
    {
        var tooSmall = Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => NetworkBuilder.SmallCnn(1, 6, 28, 10));
        StringAssert.Contains(tooSmall.Message, "6×28");
        Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => NetworkBuilder.SmallCnn(0, 28, 28, 10));
        Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => NetworkBuilder.ResNet18(3, 1));
    }
}
