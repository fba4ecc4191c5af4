using System.Text.RegularExpressions;

namespace Microsoft.ML.Decorrelation.Torch.Pretrained;

/// <summary>
/// The one place that maps torchvision's ResNet state-dict names to this library's (<see cref="Architectures.NetworkBuilder"/>)
/// and back. Module names are never renamed, so saved models keep loading; a file's names are mapped instead.
/// </summary>
/// <remarks>
/// <c>conv1</c> → <c>stem.conv</c>, <c>bn1</c> → <c>stem.bn</c>, <c>layerI.J.convK</c> / <c>bnK</c> →
/// <c>layerI.J.residual.convK</c> / <c>bnK</c>, <c>layerI.J.downsample.0</c> / <c>.1</c> → <c>layerI.J.shortcut.conv</c> /
/// <c>.bn</c>, <c>fc</c> → <c>classifier</c>. Stages, blocks, stride placement (ResNet v1.5: on the 3×3 convolution of a
/// bottleneck) and BatchNorm buffers are the same in both.
/// </remarks>
public static partial class TorchvisionResNetNames
{
    private static readonly (Regex From, string To)[] ToLibraryRules =
    [
        (StemConvolution(), "stem.conv.$1"),
        (StemBatchNorm(), "stem.bn.$1"),
        (BranchLayer(), "layer$1.$2.residual.$3.$4"),
        (DownsampleConvolution(), "layer$1.$2.shortcut.conv.$3"),
        (DownsampleBatchNorm(), "layer$1.$2.shortcut.bn.$3"),
        (Classifier(), "classifier.$1"),
    ];

    private static readonly (Regex From, string To)[] ToTorchvisionRules =
    [
        (LibraryStemConvolution(), "conv1.$1"),
        (LibraryStemBatchNorm(), "bn1.$1"),
        (LibraryBranchLayer(), "layer$1.$2.$3.$4"),
        (LibraryShortcutConvolution(), "layer$1.$2.downsample.0.$3"),
        (LibraryShortcutBatchNorm(), "layer$1.$2.downsample.1.$3"),
        (LibraryClassifier(), "fc.$1"),
    ];

    /// <summary>Whether <paramref name="keys"/> look like a torchvision ResNet's state dict (<c>conv1</c>, <c>bn1</c>, <c>layer1.*</c>).</summary>
    public static bool IsTorchvisionResNet(IEnumerable<string> keys)
    {
        ArgumentNullException.ThrowIfNull(keys);
        var set = keys as IReadOnlySet<string> ?? keys.ToHashSet();
        return set.Contains("conv1.weight") && set.Contains("bn1.weight") && set.Any(k => k.StartsWith("layer1.", StringComparison.Ordinal));
    }

    /// <summary>This library's name of torchvision's <paramref name="key"/>; null when the key is not one of a torchvision ResNet.</summary>
    public static string? ToLibrary(string key) => Map(key, ToLibraryRules);

    /// <summary>torchvision's name of this library's ResNet <paramref name="key"/>; null when the key is not one of this library's ResNets.</summary>
    public static string? ToTorchvision(string key) => Map(key, ToTorchvisionRules);

    private static string? Map(string key, (Regex From, string To)[] rules)
    {
        ArgumentNullException.ThrowIfNull(key);
        foreach (var (from, to) in rules)
        {
            if (from.IsMatch(key))
                return from.Replace(key, to);
        }
        return null;
    }

    [GeneratedRegex(@"^conv1\.(weight)$")] private static partial Regex StemConvolution();
    [GeneratedRegex(@"^bn1\.(\w+)$")] private static partial Regex StemBatchNorm();
    [GeneratedRegex(@"^layer(\d+)\.(\d+)\.((?:conv|bn)\d+)\.(\w+)$")] private static partial Regex BranchLayer();
    [GeneratedRegex(@"^layer(\d+)\.(\d+)\.downsample\.0\.(weight)$")] private static partial Regex DownsampleConvolution();
    [GeneratedRegex(@"^layer(\d+)\.(\d+)\.downsample\.1\.(\w+)$")] private static partial Regex DownsampleBatchNorm();
    [GeneratedRegex(@"^fc\.(weight|bias)$")] private static partial Regex Classifier();
    [GeneratedRegex(@"^stem\.conv\.(weight)$")] private static partial Regex LibraryStemConvolution();
    [GeneratedRegex(@"^stem\.bn\.(\w+)$")] private static partial Regex LibraryStemBatchNorm();
    [GeneratedRegex(@"^layer(\d+)\.(\d+)\.residual\.((?:conv|bn)\d+)\.(\w+)$")] private static partial Regex LibraryBranchLayer();
    [GeneratedRegex(@"^layer(\d+)\.(\d+)\.shortcut\.conv\.(weight)$")] private static partial Regex LibraryShortcutConvolution();
    [GeneratedRegex(@"^layer(\d+)\.(\d+)\.shortcut\.bn\.(\w+)$")] private static partial Regex LibraryShortcutBatchNorm();
    [GeneratedRegex(@"^classifier\.(weight|bias)$")] private static partial Regex LibraryClassifier();
}
