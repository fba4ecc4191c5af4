using Microsoft.ML.Decorrelation.Torch.Architectures;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Decorrelation.Torch.Pretrained;

/// <summary>What a pretrained state dict holds, as far as building a network for it needs (<see cref="PretrainedWeights.Inspect"/>).</summary>
/// <param name="TorchvisionNames">Whether its names are torchvision's ResNet names (mapped by <see cref="TorchvisionResNetNames"/>).</param>
/// <param name="Description">The network it belongs to, in words: "ResNet-18 (width 64, ImageNet stem, 1000 classes)", "small CNN".</param>
/// <param name="Stem">For a ResNet: the stem its first convolution belongs to (7×7: ImageNet, 3×3: small-image); null otherwise.</param>
/// <param name="InputChannels">Input channels of its first convolution.</param>
/// <param name="Classes">Outputs of its classifier, when it has one.</param>
public sealed record PretrainedWeightsInfo(bool TorchvisionNames, string Description, ResNetStem? Stem, long InputChannels, long? Classes);

/// <summary>
/// Loads a pretrained state dict into a plain network of <see cref="NetworkBuilder"/>: torchvision's ResNet names or this
/// library's, every key and shape checked before anything is copied.
/// </summary>
/// <remarks>
/// Two differences are adapted, and reported in the returned notes: a classifier whose class count differs keeps its fresh
/// initialisation (it is replaced), and a first convolution pretrained on 3 channels feeds a 1-channel network with its
/// weights summed over the channels (a gray image is then seen as R = G = B). Anything else that differs (a missing,
/// unexpected or mis-shaped tensor) is an <see cref="InvalidDataException"/> naming it. See docs/pretrained.md.
/// </remarks>
public static class PretrainedWeights
{
    /// <summary>The name of the classifier module of every <see cref="NetworkBuilder"/> network: the head when fine-tuning.</summary>
    public const string ClassifierName = "classifier";

    /// <summary>Reads <paramref name="path"/> (any <see cref="StateDictFormat"/>) and loads it into <paramref name="network"/>.</summary>
    /// <param name="network">A plain network of <see cref="NetworkBuilder"/> (before any conversion to decorrelated layers).</param>
    /// <param name="path">The state dict file.</param>
    /// <param name="replaceClassifier">Keep the network's fresh classifier even when the file's has the same shape (a new task).</param>
    /// <returns>Notes on what was adapted (empty when the file fit exactly).</returns>
    /// <exception cref="FileNotFoundException">The file does not exist.</exception>
    /// <exception cref="InvalidDataException">The file is unreadable, or does not fit the network (the message names the tensor).</exception>
    public static IReadOnlyList<string> Load(nn.Module network, string path, bool replaceClassifier = false)
    {
        var stateDict = StateDictFile.Read(path);
        try
        {
            return Load(network, stateDict, path, replaceClassifier);
        }
        finally
        {
            foreach (var tensor in stateDict.Values)
                tensor.Dispose();
        }
    }

    /// <summary>Loads <paramref name="stateDict"/> (torchvision's or this library's names) into <paramref name="network"/>; the tensors stay the caller's.</summary>
    /// <param name="network">A plain network of <see cref="NetworkBuilder"/> (before any conversion to decorrelated layers).</param>
    /// <param name="stateDict">The pretrained tensors.</param>
    /// <param name="source">Where the tensors came from, for messages (a file name).</param>
    /// <param name="replaceClassifier">
    /// Keep the network's fresh classifier even when the file's has the same shape (a new task with as many classes). Without
    /// it, the classifier is replaced only when the class counts differ.
    /// </param>
    /// <returns>Notes on what was adapted (empty when the state dict fit exactly).</returns>
    /// <exception cref="InvalidDataException">A tensor is missing, unexpected or mis-shaped; the message names it.</exception>
    public static IReadOnlyList<string> Load(nn.Module network, IReadOnlyDictionary<string, Tensor> stateDict, string source, bool replaceClassifier = false)
    {
        ArgumentNullException.ThrowIfNull(network);
        ArgumentNullException.ThrowIfNull(stateDict);
        var renamed = ToLibraryNames(stateDict, source);
        var target = network.state_dict();
        string firstWeight = network.named_parameters().First().name;

        // Sorted: PyTorch's pickle reader returns the keys in no particular order.
        var unexpected = renamed.Keys.Where(k => !target.ContainsKey(k)).Order(StringComparer.Ordinal).ToList();
        var missing = target.Keys.Where(k => !renamed.ContainsKey(k)).Order(StringComparer.Ordinal).ToList();
        if (unexpected.Count > 0 || missing.Count > 0)
        {
            string fileHolds = Inspect(stateDict).Description;
            string networkIs = Describe(target.ToDictionary(p => p.Key, p => p.Value.shape));
            throw new InvalidDataException($"The pretrained weights '{source}' do not fit the network: the file holds a {fileHolds}, the network is a {networkIs}. " +
                (missing.Count > 0 ? $"Missing: {List(missing)}. " : "") +
                (unexpected.Count > 0 ? $"Unexpected: {List(unexpected.Select(k => renamed[k].OriginalName))}." : ""));
        }

        var notes = new List<string>();
        var plan = new List<(Tensor Target, Tensor Source, bool SumChannels)>();
        string classifierWeight = ClassifierName + ".weight", classifierBias = ClassifierName + ".bias";
        bool classesDiffer = false;
        foreach (var (key, destination) in target)
        {
            var (value, original) = renamed[key];
            var want = destination.shape;
            var have = value.shape;
            if (want.SequenceEqual(have) && !(replaceClassifier && (key == classifierWeight || key == classifierBias)))
            {
                plan.Add((destination, value, false));
                continue;
            }
            if ((key == classifierWeight || key == classifierBias) && want.Length == have.Length && want.Skip(1).SequenceEqual(have.Skip(1)))
            {
                classesDiffer |= want[0] != have[0];
                continue;
            }
            if (key == firstWeight && want.Length == 4 && have.Length == 4 && want[1] == 1 && have[1] == 3 && want[0] == have[0] && want[2] == have[2] && want[3] == have[3])
            {
                plan.Add((destination, value, true));
                notes.Add($"The first convolution '{original}' was pretrained on 3 channels; for these 1-channel images its weights are summed over the channels.");
                continue;
            }
            throw new InvalidDataException($"The pretrained tensor '{original}' in '{source}' has shape [{string.Join(", ", have)}], but the network's " +
                $"'{key}' has shape [{string.Join(", ", want)}]; the file holds a {Inspect(stateDict).Description}.");
        }
        if (classesDiffer || replaceClassifier)
        {
            long fileClasses = renamed[classifierWeight].Tensor.shape[0], classes = target[classifierWeight].shape[0];
            notes.Add($"The pretrained classifier '{renamed[classifierWeight].OriginalName}' has {fileClasses} classes and this network {classes}: " +
                      $"the classifier is replaced{(classesDiffer ? "" : " (as asked)")} (freshly initialised); every other layer is pretrained.");
        }

        using (no_grad())
        using (var scope = NewDisposeScope())
        {
            foreach (var (destination, value, sumChannels) in plan)
            {
                var adapted = sumChannels ? value.sum(1, keepdim: true) : value;
                destination.copy_(adapted.to(destination.dtype));
            }
        }
        return notes;
    }

    /// <summary>What <paramref name="stateDict"/> holds: its naming, network, stem, input channels and classes.</summary>
    public static PretrainedWeightsInfo Inspect(IReadOnlyDictionary<string, Tensor> stateDict)
    {
        ArgumentNullException.ThrowIfNull(stateDict);
        bool torchvision = TorchvisionResNetNames.IsTorchvisionResNet(stateDict.Keys);
        var shapes = new Dictionary<string, long[]>();
        foreach (var (key, value) in stateDict)
            shapes[torchvision ? TorchvisionResNetNames.ToLibrary(key) ?? key : key] = value.shape;
        ResNetStem? stem = shapes.TryGetValue("stem.conv.weight", out var stemShape) && stemShape.Length == 4
            ? stemShape[2] == 7 ? ResNetStem.ImageNet : ResNetStem.SmallImage
            : null;
        var first = shapes.FirstOrDefault(p => p.Value.Length == 4 && p.Key.EndsWith(".weight", StringComparison.Ordinal));
        long channels = stemShape is { Length: 4 } ? stemShape[1] : first.Value is { Length: 4 } ? first.Value[1] : 0;
        long? classes = shapes.TryGetValue(ClassifierName + ".weight", out var classifier) && classifier.Length == 2 ? classifier[0] : null;
        return new PretrainedWeightsInfo(torchvision, Describe(shapes), stem, channels, classes);
    }

    private static Dictionary<string, (Tensor Tensor, string OriginalName)> ToLibraryNames(IReadOnlyDictionary<string, Tensor> stateDict, string source)
    {
        bool torchvision = TorchvisionResNetNames.IsTorchvisionResNet(stateDict.Keys);
        var renamed = new Dictionary<string, (Tensor, string)>(stateDict.Count);
        foreach (var (key, value) in stateDict)
        {
            string name = torchvision ? TorchvisionResNetNames.ToLibrary(key) ?? key : key;
            if (!renamed.TryAdd(name, (value, key)))
                throw new InvalidDataException($"The pretrained weights '{source}' hold both '{renamed[name].Item2}' and '{key}', which name the same tensor.");
        }
        return renamed;
    }

    /// <summary>A network in words, from its state dict's shapes in this library's names.</summary>
    private static string Describe(IReadOnlyDictionary<string, long[]> shapes)
    {
        if (shapes.TryGetValue("stem.conv.weight", out var stem) && stem.Length == 4)
        {
            var blocks = new List<int>();
            for (int stage = 1; ; stage++)
            {
                int count = shapes.Keys.Where(k => k.StartsWith($"layer{stage}.", StringComparison.Ordinal))
                    .Select(k => k.Split('.')[1]).Distinct().Count();
                if (count == 0)
                    break;
                blocks.Add(count);
            }
            bool bottleneck = shapes.ContainsKey("layer1.0.residual.conv3.weight");
            string layout = string.Join(", ", blocks);
            string name = (layout, bottleneck) switch
            {
                ("2, 2, 2, 2", false) => "ResNet-18",
                ("3, 4, 6, 3", false) => "ResNet-34",
                ("3, 4, 6, 3", true) => "ResNet-50",
                ("3, 4, 23, 3", true) => "ResNet-101",
                ("3, 8, 36, 3", true) => "ResNet-152",
                _ => $"ResNet with [{layout}] {(bottleneck ? "bottleneck" : "basic")} blocks",
            };
            string classes = shapes.TryGetValue(ClassifierName + ".weight", out var c) && c.Length == 2 ? $", {c[0]} classes" : "";
            return $"{name} (width {stem[0]}, {(stem[2] == 7 ? "ImageNet" : $"{stem[2]}×{stem[3]}")} stem, {stem[1]} input channels{classes})";
        }
        if (shapes.ContainsKey("conv1.weight") && shapes.ContainsKey("conv3.weight") && shapes.ContainsKey(ClassifierName + ".weight"))
            return $"small CNN ({shapes["conv1.weight"][1]} input channels, {shapes[ClassifierName + ".weight"][0]} classes)";
        return $"network this library does not build (first keys: {List(shapes.Keys)})";
    }

    private static string List(IEnumerable<string> keys)
    {
        var all = keys.ToList();
        return string.Join(", ", all.Take(6).Select(k => $"'{k}'")) + (all.Count > 6 ? $" and {all.Count - 6} more" : "");
    }
}
