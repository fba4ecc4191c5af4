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

    /// <summary>
    /// Forward and backward of every ResNet in a child process (oneDNN as the guard decides, as in training): a
    /// native crash of a kernel on this CPU fails this case with the signal instead of killing the test run.
    /// </summary>
    [TestMethod]
    [DynamicData(nameof(ResNetCases))]
    public void ResNetForwardAndBackwardShapes(int depth, int channels, int size, ResNetStem stem)
    {
        var folder = Directory.CreateTempSubdirectory("dbp-resnet").FullName;
        try
        {
            var (result, values) = ChildProcess.RunNativeCase(folder, "resnet", OneDnnMode.Auto,
                depth.ToString(), channels.ToString(), size.ToString(), stem.ToString());
            result.AssertSucceeded($"ResNet-{depth} forward and backward on 2×{channels}×{size}×{size}");
            Assert.IsTrue(values!.All(float.IsFinite), "finite logits and gradients");
            // torchvision's counts for 1000 classes are 11.7M, 21.8M and 25.6M; with 5 classes the classifier shrinks.
            long expected = depth switch { 18 => 11_170_000, 34 => 21_280_000, _ => 23_510_000 };
            Assert.AreEqual(expected, values![0], expected * 0.01, $"ResNet-{depth} parameter count");
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    [TestMethod]
    public void DecorrelatedResNetWithIdentityREqualsThePlainResNetInOutputsAndGradients()
    {
        using var scope = NewDisposeScope();
        random.manual_seed(11);
        var plain = NetworkBuilder.ResNet18(3, 10, ResNetStem.SmallImage);
        // Every convolution and the classifier decorrelated, the wide ones with block-diagonal R (still the identity).
        var decorrelated = NetworkConversion.ToDecorrelated(plain, new DecorrelationOptions { MaxBlockSize = 288 });
        var layers = new DecorrelationController(decorrelated).Layers;
        Assert.AreEqual(plain.modules().Count(m => m is TorchSharp.Modules.Conv2d or TorchSharp.Modules.Linear), layers.Count);
        Assert.IsTrue(layers.Any(l => l.BlockCount > 1));

        var images = randn(4, 3, 16, 16);
        var labels = tensor(new long[] { 0, 3, 7, 9 });
        plain.train();
        decorrelated.train();
        foreach (var layer in layers)
            layer.CollectStatistics = false;
        var plainLogits = plain.forward(images);
        var decorrelatedLogits = decorrelated.forward(images);
        Assert.IsLessThan(1e-4, Reference.MaxAbsDifference(plainLogits, decorrelatedLogits), "forward (training mode, batch statistics)");
        nn.functional.cross_entropy(plainLogits, labels).backward();
        nn.functional.cross_entropy(decorrelatedLogits, labels).backward();

        var decorrelatedParameters = decorrelated.named_parameters().ToDictionary(p => p.name, p => p.parameter);
        int compared = 0;
        foreach (var (name, parameter) in plain.named_parameters())
        {
            var gradient = decorrelatedParameters[name].grad!;
            double scale = Math.Max(1e-3, parameter.grad!.abs().max().item<float>());
            Assert.IsLessThan(1e-3, Reference.MaxAbsDifference(parameter.grad, gradient) / scale, $"gradient of {name}");
            compared++;
        }
        Assert.AreEqual(plain.parameters().Count(), compared);
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
    public void SmallCnnWithBatchNormNormalisesEachConvolutionAndDropsItsBias()
    {
        using var scope = NewDisposeScope();
        var network = NetworkBuilder.SmallCnn(1, 28, 28, 10, batchNorm: true);
        var names = network.named_children().Select(c => c.name).ToList();
        CollectionAssert.AreEqual(new[] { "conv1", "bn1", "relu1", "pool1", "conv2", "bn2", "relu2", "pool2", "conv3", "bn3", "relu3", "pool3", "flatten", "classifier" }, names);
        Assert.IsFalse(network.named_parameters().Any(p => p.name.StartsWith("conv") && p.name.EndsWith(".bias")));
        CollectionAssert.AreEqual(new long[] { 32, 64, 128 }, network.modules().OfType<TorchSharp.Modules.BatchNorm2d>().Select(b => b.weight!.shape[0]).ToArray());

        // In training mode each convolution's output is normalised per channel over the batch.
        network.train();
        var input = randn(16, 1, 28, 28);
        var conv1 = network.named_children().First(c => c.name == "conv1").module;
        var bn1 = network.named_children().First(c => c.name == "bn1").module;
        var normalised = ((nn.Module<Tensor, Tensor>)bn1).forward(((nn.Module<Tensor, Tensor>)conv1).forward(input));
        Assert.IsLessThan(1e-5, normalised.mean([0, 2, 3]).abs().max().item<float>());
        Assert.IsLessThan(1e-3, (normalised.var([0, 2, 3], unbiased: false) - 1).abs().max().item<float>());
        CollectionAssert.AreEqual(new long[] { 16, 10 }, network.forward(input).shape);
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
