using Microsoft.ML.Decorrelation.Torch;
using Microsoft.ML.Decorrelation.Torch.Architectures;
using Microsoft.ML.Decorrelation.Torch.Pretrained;
using Microsoft.VisualStudio.TestTools.UnitTesting;
using TorchSharp;
using TorchSharp.PyBridge;
using static TorchSharp.torch;

namespace Microsoft.ML.Decorrelation.Tests;

/// <summary>
/// Pretrained weights against real PyTorch: the fixtures are torchvision ResNets (reduced widths) with PyTorch's
/// eval-mode logits, written by build/make_pretrained_fixtures.py.
/// </summary>
[TestClass]
public class PretrainedWeightsTests : TempFolderTest
{
    internal static string Fixture(string name) => Path.Combine(AppContext.BaseDirectory, "Fixtures", "pretrained", name);

    private static nn.Module<Tensor, Tensor> ReducedResNet(string name, long channels, long classes = 5) => name switch
    {
        "resnet18-w8" => NetworkBuilder.ResNet18(channels, classes, ResNetStem.ImageNet, width: 8),
        _ => NetworkBuilder.ResNet50(channels, classes, ResNetStem.ImageNet, width: 4),
    };

    internal static bool Same(Tensor a, Tensor b) => a.shape.SequenceEqual(b.shape) && a.eq(b).all().item<bool>();

    /// <summary>Largest |a − b| relative to the largest |b|.</summary>
    private static double RelativeError(Tensor actual, Tensor expected)
        => (actual - expected).abs().max().item<float>() / (double)expected.abs().max().item<float>();

    [TestMethod]
    [DataRow("resnet18-w8", "resnet18-w8.pth")]
    [DataRow("resnet18-w8", "resnet18-w8.safetensors")]
    [DataRow("resnet50-w4", "resnet50-w4.pth")]
    public void LoadedTorchvisionResNetGivesPyTorchsLogits(string network, string file)
    {
        using var scope = NewDisposeScope();
        var expected = Safetensors.LoadStateDict(Fixture($"{network}.expected.safetensors"));
        var model = ReducedResNet(network, 3);
        var notes = PretrainedWeights.Load(model, Fixture(file));
        Assert.AreEqual(0, notes.Count, string.Join("\n", notes));
        model.eval();
        using (no_grad())
        {
            var logits = model.forward(expected["input"]);
            Assert.IsLessThan(1e-4, RelativeError(logits, expected["logits"]), $"{file}: logits against PyTorch's");
        }
        // BatchNorm's buffers came from the file too (torchvision's random statistics, num_batches_tracked = 1234).
        var state = model.state_dict();
        Assert.AreEqual(1234L, state["stem.bn.num_batches_tracked"].item<long>());
        Assert.AreNotEqual(0f, state["layer1.0.residual.bn1.running_mean"].abs().sum().item<float>());
    }

    [TestMethod]
    [DataRow("resnet18-w8")]
    [DataRow("resnet50-w4")]
    public void GrayscaleNetworkSumsTheFirstConvolutionAndMatchesPyTorchOnRepeatedChannels(string network)
    {
        using var scope = NewDisposeScope();
        var expected = Safetensors.LoadStateDict(Fixture($"{network}.expected.safetensors"));
        var model = ReducedResNet(network, 1);
        var notes = PretrainedWeights.Load(model, Fixture($"{network}.pth"));
        Assert.AreEqual(1, notes.Count);
        StringAssert.Contains(notes[0], "'conv1.weight'");
        StringAssert.Contains(notes[0], "summed over the channels");
        model.eval();
        using (no_grad())
            Assert.IsLessThan(1e-4, RelativeError(model.forward(expected["gray_input"]), expected["gray_logits"]));
    }

    [TestMethod]
    public void ClassifierOfAnotherClassCountIsReplacedAndSaid()
    {
        using var scope = NewDisposeScope();
        random.manual_seed(3);
        var model = NetworkBuilder.ResNet18(3, 7, ResNetStem.ImageNet, width: 8);
        var fresh = model.state_dict()["classifier.weight"].clone();
        var notes = PretrainedWeights.Load(model, Fixture("resnet18-w8.safetensors"));
        Assert.AreEqual(1, notes.Count);
        StringAssert.Contains(notes[0], "'fc.weight' has 5 classes and this network 7");
        Assert.IsTrue(Same(model.state_dict()["classifier.weight"], fresh), "the classifier keeps its initialisation");
        using var file = new DisposableStateDict(StateDictFile.Read(Fixture("resnet18-w8.safetensors")));
        Assert.IsTrue(Same(model.state_dict()["layer4.1.residual.conv2.weight"], file.Tensors["layer4.1.conv2.weight"]), "the backbone is pretrained");
    }

    [TestMethod]
    public void ClassifierOfTheSameClassCountIsReplacedWhenAsked()
    {
        using var scope = NewDisposeScope();
        random.manual_seed(3);
        var model = ReducedResNet("resnet18-w8", 3);
        var fresh = model.state_dict()["classifier.bias"].clone();
        var notes = PretrainedWeights.Load(model, Fixture("resnet18-w8.pth"), replaceClassifier: true);
        StringAssert.Contains(notes.Single(), "has 5 classes and this network 5: the classifier is replaced (as asked)");
        Assert.IsTrue(Same(model.state_dict()["classifier.bias"], fresh));
        var kept = ReducedResNet("resnet18-w8", 3);
        Assert.AreEqual(0, PretrainedWeights.Load(kept, Fixture("resnet18-w8.pth")).Count);
        Assert.IsFalse(Same(kept.state_dict()["classifier.bias"], fresh), "by default a same-sized classifier is loaded");
    }

    [TestMethod]
    public void TorchSharpFormatInEitherNamingLoadsToTheSameNetwork()
    {
        using var scope = NewDisposeScope();
        var expected = Safetensors.LoadStateDict(Fixture("resnet18-w8.expected.safetensors"));
        var reference = ReducedResNet("resnet18-w8", 3);
        PretrainedWeights.Load(reference, Fixture("resnet18-w8.pth"));
        // This library's names: module.save, TorchSharp's own format.
        string ours = Path.Combine(TempFolder, "ours.dat");
        reference.save(ours);
        // torchvision's names in TorchSharp's format (what TorchSharp's exportsd.py writes).
        string theirs = Path.Combine(TempFolder, "torchvision.dat");
        using (var file = new DisposableStateDict(StateDictFile.Read(Fixture("resnet18-w8.pth"))))
        using (var writer = new BinaryWriter(File.Create(theirs)))
        {
            writer.Write7BitEncodedInt64(file.Tensors.Count);
            foreach (var (key, value) in file.Tensors)
            {
                writer.Write(key);
                value.Save(writer);
            }
        }
        foreach (var path in new[] { ours, theirs })
        {
            Assert.AreEqual(StateDictFormat.TorchSharp, StateDictFile.DetectFormat(path));
            var model = ReducedResNet("resnet18-w8", 3);
            PretrainedWeights.Load(model, path);
            model.eval();
            using (no_grad())
                Assert.IsLessThan(1e-4, RelativeError(model.forward(expected["input"]), expected["logits"]), path);
        }
    }

    [TestMethod]
    public void NamesMapBothWays()
    {
        using var file = new DisposableStateDict(StateDictFile.Read(Fixture("resnet50-w4.pth")));
        var ours = ReducedResNet("resnet50-w4", 3).state_dict().Keys.ToHashSet();
        foreach (var key in file.Tensors.Keys)
        {
            string mapped = TorchvisionResNetNames.ToLibrary(key) ?? throw new AssertFailedException($"'{key}' has no mapping");
            Assert.Contains(mapped, ours);
            Assert.AreEqual(key, TorchvisionResNetNames.ToTorchvision(mapped));
        }
        Assert.AreEqual(ours.Count, file.Tensors.Count);
        Assert.AreEqual("layer2.0.shortcut.bn.running_var", TorchvisionResNetNames.ToLibrary("layer2.0.downsample.1.running_var"));
        Assert.IsNull(TorchvisionResNetNames.ToLibrary("features.0.weight"));
    }

    [TestMethod]
    public void InspectDescribesTheFile()
    {
        using var file = new DisposableStateDict(StateDictFile.Read(Fixture("resnet50-w4.pth")));
        var info = PretrainedWeights.Inspect(file.Tensors);
        Assert.IsTrue(info.TorchvisionNames);
        Assert.AreEqual(ResNetStem.ImageNet, info.Stem);
        Assert.AreEqual(3L, info.InputChannels);
        Assert.AreEqual(5L, info.Classes);
        Assert.AreEqual("ResNet-50 (width 4, ImageNet stem, 3 input channels, 5 classes)", info.Description);
    }

    [TestMethod]
    public void WrittenPyTorchFileReadsBackEqual()
    {
        using var scope = NewDisposeScope();
        using var file = new DisposableStateDict(StateDictFile.Read(Fixture("resnet18-w8.pth")));
        string path = Path.Combine(TempFolder, "copy.pth");
        StateDictFile.WritePyTorch(path, file.Tensors);
        Assert.AreEqual(StateDictFormat.PyTorch, StateDictFile.DetectFormat(path));
        using var again = new DisposableStateDict(StateDictFile.Read(path));
        CollectionAssert.AreEquivalent(file.Tensors.Keys.ToList(), again.Tensors.Keys.ToList());
        foreach (var (key, value) in file.Tensors)
            Assert.IsTrue(Same(value, again.Tensors[key]), key);
    }

    // ---- errors: each names the file and the tensor or cause ----

    [TestMethod]
    public void WrongArchitecturesWeightsAreRefusedNamingBoth()
    {
        var model = ReducedResNet("resnet18-w8", 3);
        var e = Assert.ThrowsExactly<InvalidDataException>(() => PretrainedWeights.Load(model, Fixture("resnet50-w4.pth")));
        StringAssert.Contains(e.Message, "the file holds a ResNet-50 (width 4, ImageNet stem, 3 input channels, 5 classes)");
        StringAssert.Contains(e.Message, "the network is a ResNet-18 (width 8");
        StringAssert.Contains(e.Message, "Unexpected: 'layer1.0.bn3.bias'");
        // Same architecture at another width: a shape error naming the tensor.
        var wide = NetworkBuilder.ResNet18(3, 5, ResNetStem.ImageNet, width: 16);
        e = Assert.ThrowsExactly<InvalidDataException>(() => PretrainedWeights.Load(wide, Fixture("resnet18-w8.pth")));
        StringAssert.Contains(e.Message, "'conv1.weight'");
        StringAssert.Contains(e.Message, "[8, 3, 7, 7]");
        StringAssert.Contains(e.Message, "[16, 3, 7, 7]");
        // The small-image stem against ImageNet weights.
        var small = NetworkBuilder.ResNet18(3, 5, ResNetStem.SmallImage, width: 8);
        e = Assert.ThrowsExactly<InvalidDataException>(() => PretrainedWeights.Load(small, Fixture("resnet18-w8.pth")));
        StringAssert.Contains(e.Message, "[8, 3, 3, 3]");
    }

    [TestMethod]
    public void MissingExtraAndMisShapedTensorsAreNamedAndNothingIsLoaded()
    {
        using var scope = NewDisposeScope();
        var file = StateDictFile.Read(Fixture("resnet18-w8.pth"));
        var model = ReducedResNet("resnet18-w8", 3);
        var before = model.state_dict().ToDictionary(p => p.Key, p => p.Value.clone());

        var missing = new Dictionary<string, Tensor>(file);
        missing.Remove("layer3.1.bn2.running_var");
        var e = Assert.ThrowsExactly<InvalidDataException>(() => PretrainedWeights.Load(model, missing, "missing.pth"));
        StringAssert.Contains(e.Message, "Missing: 'layer3.1.residual.bn2.running_var'");

        var extra = new Dictionary<string, Tensor>(file) { ["layer4.1.conv9.weight"] = zeros(2) };
        e = Assert.ThrowsExactly<InvalidDataException>(() => PretrainedWeights.Load(model, extra, "extra.pth"));
        StringAssert.Contains(e.Message, "Unexpected: 'layer4.1.conv9.weight'");

        var misShaped = new Dictionary<string, Tensor>(file) { ["layer2.0.downsample.0.weight"] = zeros(16, 8, 3, 3) };
        e = Assert.ThrowsExactly<InvalidDataException>(() => PretrainedWeights.Load(model, misShaped, "shape.pth"));
        StringAssert.Contains(e.Message, "'layer2.0.downsample.0.weight' in 'shape.pth' has shape [16, 8, 3, 3], but the network's 'layer2.0.shortcut.conv.weight' has shape [16, 8, 1, 1]");

        foreach (var (key, value) in model.state_dict())
            Assert.IsTrue(Same(value, before[key]), $"'{key}' unchanged after the refused loads");
    }

    [TestMethod]
    public void UnreadableFilesAreClearErrors()
    {
        var model = ReducedResNet("resnet18-w8", 3);
        var e = Assert.ThrowsExactly<InvalidDataException>(() => PretrainedWeights.Load(model, Fixture("truncated.pth")));
        StringAssert.Contains(e.Message, "truncated.pth");
        StringAssert.Contains(e.Message, "PyTorch state dict");

        e = Assert.ThrowsExactly<InvalidDataException>(() => PretrainedWeights.Load(model, Fixture("not-a-state-dict.pt")));
        StringAssert.Contains(e.Message, "not-a-state-dict.pt");
        StringAssert.Contains(e.Message, "torch.save(model.state_dict(), path)");

        e = Assert.ThrowsExactly<InvalidDataException>(() => PretrainedWeights.Load(model, Fixture("whole-module.pt")));
        StringAssert.Contains(e.Message, "whole-module.pt");
        StringAssert.Contains(e.Message, "entire model");

        string cutSafetensors = Path.Combine(TempFolder, "cut.safetensors");
        var bytes = File.ReadAllBytes(Fixture("resnet18-w8.safetensors"));
        File.WriteAllBytes(cutSafetensors, bytes[..(bytes.Length - 1000)]);
        e = Assert.ThrowsExactly<InvalidDataException>(() => PretrainedWeights.Load(model, cutSafetensors));
        StringAssert.Contains(e.Message, "cut.safetensors");
        StringAssert.Contains(e.Message, "safetensors");

        string cutTorchSharp = Path.Combine(TempFolder, "cut.dat");
        model.save(cutTorchSharp);
        bytes = File.ReadAllBytes(cutTorchSharp);
        File.WriteAllBytes(cutTorchSharp, bytes[..(bytes.Length / 2)]);
        e = Assert.ThrowsExactly<InvalidDataException>(() => PretrainedWeights.Load(model, cutTorchSharp));
        StringAssert.Contains(e.Message, "truncated");

        string text = Path.Combine(TempFolder, "notes.txt");
        File.WriteAllText(text, "these are not weights");
        e = Assert.ThrowsExactly<InvalidDataException>(() => PretrainedWeights.Load(model, text));
        StringAssert.Contains(e.Message, "notes.txt");

        Assert.ThrowsExactly<FileNotFoundException>(() => PretrainedWeights.Load(model, Path.Combine(TempFolder, "absent.pth")));
    }

    /// <summary>Disposes the tensors of a state dict read in a test.</summary>
    internal sealed class DisposableStateDict(Dictionary<string, Tensor> tensors) : IDisposable
    {
        public Dictionary<string, Tensor> Tensors { get; } = tensors;

        public void Dispose()
        {
            foreach (var tensor in Tensors.Values)
                tensor.Dispose();
        }
    }
}
