using Microsoft.ML.Data;
using Microsoft.ML.Decorrelation.Torch;
using Microsoft.ML.Decorrelation.Torch.Architectures;
using Microsoft.ML.Decorrelation.Torch.Data;
using Microsoft.ML.Decorrelation.Torch.Pretrained;
using Microsoft.ML.Decorrelation.Torch.Training;
using Microsoft.VisualStudio.TestTools.UnitTesting;
using TorchSharp;
using TorchSharp.PyBridge;
using static TorchSharp.torch;

namespace Microsoft.ML.Decorrelation.Tests;

/// <summary>Fine-tuning from pretrained weights: the engine's head-only phase and backbone learning rate, and the trainer's options.</summary>
[TestClass]
public class FineTuningTests : TempFolderTest
{
    private static Dictionary<string, Tensor> Snapshot(nn.Module network)
        => network.state_dict().ToDictionary(p => p.Key, p => p.Value.detach().clone());

    private static ImageDataset RandomImages(int count, int channels, int size, int classes, int seed)
    {
        using var generator = new Generator((ulong)seed, CPU);
        return new ImageDataset(randn([count, channels, size, size], generator: generator),
            randint(classes, [count], generator: generator), classes);
    }

    [TestMethod]
    public void DecorrelatedNetworkFromPretrainedWeightsIsThePretrainedNetworkAtStepZero()
    {
        using var scope = NewDisposeScope();
        var expected = Safetensors.LoadStateDict(PretrainedWeightsTests.Fixture("resnet18-w8.expected.safetensors"));
        var options = new TrainingOptions { Seed = 4, Decorrelation = new DecorrelationOptions() };
        var network = NetworkTrainer.CreateNetwork(d =>
        {
            var plain = NetworkBuilder.ResNet18(3, 5, ResNetStem.ImageNet, d, width: 8);
            PretrainedWeights.Load(plain, PretrainedWeightsTests.Fixture("resnet18-w8.pth"));
            return plain;
        }, options, decorrelated: true);
        var layers = new DecorrelationController(network).Layers;
        Assert.AreEqual(21, layers.Count, "every convolution and the classifier decorrelated");
        network.eval();
        using (no_grad())
        {
            var logits = network.forward(expected["input"]);
            double error = (logits - expected["logits"]).abs().max().item<float>() / (double)expected["logits"].abs().max().item<float>();
            Assert.IsLessThan(1e-4, error, "R = I: the decorrelated network computes PyTorch's logits");
        }
    }

    [TestMethod]
    [DataRow(true)]
    [DataRow(false)]
    public void HeadOnlyEpochsLeaveTheBackboneItsStatisticsAndItsMatricesAlone(bool decorrelated)
    {
        using var scope = NewDisposeScope();
        using var data = RandomImages(96, 3, 16, 4, seed: 8);
        var options = new TrainingOptions
        {
            Epochs = 2, HeadOnlyEpochs = 1, BatchSize = 32, LearningRate = 1e-2, Seed = 5, FlushDenormals = false,
            Decorrelation = new DecorrelationOptions { UpdateInterval = 1, MaxInputSize = null },
        };
        var network = NetworkTrainer.CreateNetwork(d => NetworkBuilder.ResNet18(3, 4, ResNetStem.SmallImage, d, width: 4), options, decorrelated);
        var start = Snapshot(network);
        var afterHeadOnly = new Dictionary<string, Tensor>();
        bool? frozenDuringFirstEpoch = null, frozenDuringSecondEpoch = null;
        using var session = new NetworkTrainer(options).CreateSession(network, 3);
        foreach (int epoch in new[] { 1, 2 })
        {
            for (int batch = 0; batch < 3; batch++)
            {
                using var step = NewDisposeScope();
                var (images, labels) = data.Read(Enumerable.Range(batch * 32, 32).Select(i => (long)i).ToArray());
                session.Step(images, labels);
                if (epoch == 1) frozenDuringFirstEpoch = session.BackboneFrozen; else frozenDuringSecondEpoch = session.BackboneFrozen;
            }
            if (epoch == 1)
                afterHeadOnly = Snapshot(network);
        }
        Assert.IsTrue(frozenDuringFirstEpoch);
        Assert.IsFalse(frozenDuringSecondEpoch);
        int backboneChecked = 0;
        foreach (var (key, value) in start)
        {
            bool changedInHeadOnly = !PretrainedWeightsTests.Same(value, afterHeadOnly[key]);
            bool changedLater = !PretrainedWeightsTests.Same(afterHeadOnly[key], network.state_dict()[key]);
            if (key.StartsWith("classifier.", StringComparison.Ordinal))
            {
                if (key != "classifier.decorrelation_matrix" || decorrelated)
                    Assert.IsTrue(changedInHeadOnly, $"head '{key}' trains in the head-only epoch");
                continue;
            }
            Assert.IsFalse(changedInHeadOnly, $"backbone '{key}' (weights, BatchNorm statistics, R) frozen in the head-only epoch");
            if (key.EndsWith("weight", StringComparison.Ordinal) || key.EndsWith("running_mean", StringComparison.Ordinal) || key.EndsWith("decorrelation_matrix", StringComparison.Ordinal))
                Assert.IsTrue(changedLater, $"backbone '{key}' trains once unfrozen");
            backboneChecked++;
        }
        Assert.AreEqual(decorrelated ? 140 : 120, backboneChecked, "every backbone tensor of ResNet-18 (and its 20 R) checked");
        session.Dispose();
        Assert.IsTrue(network.parameters().All(p => p.requires_grad), "the session gives every parameter back its gradient");
    }

    [TestMethod]
    public void BackboneLearningRateScaleScalesTheBackbonesFirstUpdateOnly()
    {
        using var scope = NewDisposeScope();
        using var data = RandomImages(16, 1, 12, 3, seed: 2);
        var (images, labels) = data.Read(Enumerable.Range(0, 16).Select(i => (long)i).ToArray());
        Dictionary<string, Tensor> Update(double scale)
        {
            var options = new TrainingOptions { Optimizer = OptimizerKind.Sgd, Momentum = 0, LearningRate = 0.05, BackboneLearningRateScale = scale, Seed = 9, FlushDenormals = false };
            var network = NetworkTrainer.CreateNetwork(d => NetworkBuilder.SmallCnn(1, 12, 12, 3, d), options, decorrelated: false);
            var before = Snapshot(network);
            using var session = new NetworkTrainer(options).CreateSession(network, 1);
            session.Step(images, labels);
            return network.state_dict().ToDictionary(p => p.Key, p => p.Value.detach() - before[p.Key]);
        }
        var full = Update(1);
        var scaled = Update(0.1);
        foreach (var (key, delta) in full)
        {
            double factor = key.StartsWith("classifier.", StringComparison.Ordinal) ? 1 : 0.1;
            Assert.IsGreaterThan(0f, delta.abs().max().item<float>(), key);
            Assert.IsTrue((scaled[key] - factor * delta).abs().max().item<float>() <= 1e-6 * (1 + delta.abs().max().item<float>()),
                $"'{key}': update ×{factor}");
        }
    }

    [TestMethod]
    public void FineTuningOptionsAreValidated()
    {
        Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => new NetworkTrainer(new TrainingOptions { HeadOnlyEpochs = -1 }));
        Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => new NetworkTrainer(new TrainingOptions { BackboneLearningRateScale = 0 }));
        Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => new NetworkTrainer(new TrainingOptions { BackboneLearningRateScale = 1.5 }));
        using var network = NetworkBuilder.SmallCnn(1, 8, 8, 2);
        var trainer = new NetworkTrainer(new TrainingOptions { HeadOnlyEpochs = 1, HeadModuleName = "fc" });
        var e = Assert.ThrowsExactly<ArgumentException>(() => trainer.CreateSession(network, 1));
        StringAssert.Contains(e.Message, "'fc'");
    }

    // ---- the trainer ----

    /// <summary>The first <paramref name="count"/> Fashion-MNIST training images as 1×28×28 pixel vectors, labels keyed.</summary>
    private static IDataView KeyedPixels(MLContext ml, int count)
    {
        var rows = ml.Data.LoadFromEnumerable(MLNetData.PixelRows(train: true, count: count));
        return ml.Transforms.Conversion.MapValueToKey("Label").Fit(rows).Transform(rows);
    }

    /// <summary>A full-width ResNet-18 with random weights, written as torchvision would name it (a stand-in for torchvision's file).</summary>
    private string TorchvisionResNet18File(int classes)
    {
        using var scope = NewDisposeScope();
        random.manual_seed(21);
        using var network = NetworkBuilder.ResNet18(3, classes, ResNetStem.ImageNet);
        var renamed = network.state_dict().ToDictionary(p => TorchvisionResNetNames.ToTorchvision(p.Key)!, p => p.Value);
        string path = Path.Combine(TempFolder, "resnet18.pth");
        StateDictFile.WritePyTorch(path, renamed);
        return path;
    }

    [TestMethod]
    public void TrainerFineTunesTorchvisionWeightsOnGrayscaleImagesAndTheModelKeepsTheirStem()
    {
        string weights = TorchvisionResNet18File(classes: 7);
        var ml = new MLContext(3);
        var messages = new List<string>();
        ml.Log += (_, e) =>
        {
            if (e.Kind == Runtime.ChannelMessageKind.Info && e.Source.Contains("DecorrelatedImageClassificationTrainer"))
                lock (messages) messages.Add(e.Message);
        };
        var data = KeyedPixels(ml, 96);
        var options = new DecorrelatedImageClassificationTrainer.Options
        {
            Architecture = CnnArchitecture.ResNet18, PretrainedWeightsPath = weights, MaxEpoch = 1, HeadOnlyEpochs = 1, BatchSize = 32,
            LearningRateSchedule = LearningRateSchedule.Constant,
        };
        using var model = ml.MulticlassClassification.Trainers.DecorrelatedImageClassification(options).Fit(data);
        string log = string.Join("\n", messages);
        StringAssert.Contains(log, "a ResNet-18 (width 64, ImageNet stem, 3 input channels, 7 classes); the ImageNet stem");
        StringAssert.Contains(log, "'fc.weight' has 7 classes and this network 10");
        StringAssert.Contains(log, "'conv1.weight' was pretrained on 3 channels");
        StringAssert.Contains(log, "ImageNet's per-channel mean");
        Assert.AreEqual(ResNetStem.ImageNet, model.Network.Stem, "28×28 images, yet the weights' stem");
        Assert.AreEqual((0.485f + 0.456f + 0.406f) / 3 * 255, model.Network.Mean[0], 1e-3);
        Assert.AreEqual((0.229f + 0.224f + 0.225f) / 3 * 255, model.Network.StandardDeviation[0], 1e-3);

        // Head only: the folded backbone is the file's (R stayed I), summed over channels for the stem.
        using (var file = new PretrainedWeightsTests.DisposableStateDict(StateDictFile.Read(weights)))
        using (var scope = NewDisposeScope())
        {
            var trained = model.Network.Network.state_dict();
            Assert.IsTrue((trained["layer3.1.residual.conv2.weight"] - file.Tensors["layer3.1.conv2.weight"]).abs().max().item<float>() < 1e-6);
            Assert.IsTrue((trained["stem.conv.weight"] - file.Tensors["conv1.weight"].sum(1, keepdim: true)).abs().max().item<float>() < 1e-5);
            Assert.IsTrue(trained["layer1.0.residual.bn1.running_mean"].equal(file.Tensors["layer1.0.bn1.running_mean"]).all().item<bool>());
        }

        string path = Path.Combine(TempFolder, "model.zip");
        ml.Model.Save(model, data.Schema, path);
        var (loadedModel, loaded) = DecorrelatedImageClassificationTransformer.Load(ml, path);
        using (loaded)
        {
            Assert.AreEqual(ResNetStem.ImageNet, loaded.Network.Stem);
            var expected = model.Transform(data).GetColumn<float[]>("Score").ToArray();
            var actual = loadedModel.Transform(data).GetColumn<float[]>("Score").ToArray();
            for (int i = 0; i < expected.Length; i++)
                CollectionAssert.AreEqual(expected[i], actual[i], $"row {i}");
        }
    }

    [TestMethod]
    public void ModelsWrittenBeforeStemsWereStoredStillLoad()
    {
        var ml = new MLContext(2);
        var data = KeyedPixels(ml, 64);
        using var model = ml.MulticlassClassification.Trainers.DecorrelatedImageClassification(new DecorrelatedImageClassificationTrainer.Options
        {
            Architecture = CnnArchitecture.ResNet18, MaxEpoch = 1, BatchSize = 32,
        }).Fit(data);
        string path = Path.Combine(TempFolder, "old.zip");
        DecorrelatedImageClassificationTransformer.SavedFormatVersion = 0x00010002;
        try
        {
            ml.Model.Save(model, data.Schema, path);
        }
        finally
        {
            DecorrelatedImageClassificationTransformer.SavedFormatVersion = DecorrelatedImageClassificationTransformer.FormatVersion;
        }
        var (loadedModel, loaded) = DecorrelatedImageClassificationTransformer.Load(ml, path);
        using (loaded)
        {
            Assert.AreEqual(ResNetStem.SmallImage, loaded.Network.Stem, "chosen by image size, as that format did");
            CollectionAssert.AreEqual(model.Transform(data).GetColumn<float[]>("Score").First(), loadedModel.Transform(data).GetColumn<float[]>("Score").First());
        }
    }

    [TestMethod]
    public void TrainerRefusesWeightsThatDoNotFitNamingTheOptionAndTheNetworks()
    {
        var ml = new MLContext(1);
        var data = KeyedPixels(ml, 32);
        var options = new DecorrelatedImageClassificationTrainer.Options
        {
            Architecture = CnnArchitecture.ResNet34, PretrainedWeightsPath = TorchvisionResNet18File(classes: 10), MaxEpoch = 1,
        };
        var e = Assert.ThrowsExactly<ArgumentException>(() => ml.MulticlassClassification.Trainers.DecorrelatedImageClassification(options).Fit(data));
        StringAssert.Contains(e.Message, "Option PretrainedWeightsPath");
        StringAssert.Contains(e.Message, "the file holds a ResNet-18");
        StringAssert.Contains(e.Message, "the network is a ResNet-34");
        StringAssert.Contains(e.Message, "Missing: 'layer1.2.residual.bn1.bias'");

        options.PretrainedWeightsPath = Path.Combine(TempFolder, "absent.pth");
        var missing = Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => ml.MulticlassClassification.Trainers.DecorrelatedImageClassification(options));
        StringAssert.Contains(missing.Message, "absent.pth");
    }
}
