using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Decorrelation.Torch.Architectures;

/// <summary>The first layers of a ResNet.</summary>
public enum ResNetStem
{
    /// <summary>7×7 stride-2 convolution and 3×3 stride-2 max-pool: for ImageNet-sized images (224×224).</summary>
    ImageNet,

    /// <summary>3×3 stride-1 convolution, no max-pool: for small images (28×28, 32×32).</summary>
    SmallImage,
}

/// <summary>
/// Builds the plain networks this library trains; <see cref="NetworkConversion.ToDecorrelated"/> turns any
/// of them into its decorrelated twin.
/// </summary>
public static class NetworkBuilder
{
    /// <summary>
    /// The small CNN: three 3×3 convolutions (32, 64, 128 filters, each followed by ReLU and 2×2
    /// max-pooling) and a linear classifier; BatchNorm after each convolution only when asked for.
    /// </summary>
    /// <param name="channels">Input channels.</param>
    /// <param name="height">Input height; at least 8.</param>
    /// <param name="width">Input width; at least 8.</param>
    /// <param name="classes">Number of classes.</param>
    /// <param name="device">Where the network's tensors live.</param>
    /// <param name="batchNorm">Insert BatchNorm between each convolution and its ReLU (the convolutions then have no bias).</param>
    public static nn.Module<Tensor, Tensor> SmallCnn(long channels, long height, long width, long classes, Device? device = null, bool batchNorm = false)
    {
        CheckShape(channels, height, width, classes, minimumSize: 8, "SmallCnn");
        return ModuleOwnership.Build(() => BuildSmallCnn(channels, height, width, classes, device, batchNorm));
    }

    private static nn.Module<Tensor, Tensor> BuildSmallCnn(long channels, long height, long width, long classes, Device? device, bool batchNorm)
    {
        long h = height, w = width;
        var layers = new List<(string, nn.Module<Tensor, Tensor>)>();
        long inChannels = channels;
        long[] filtersPerStage = [32, 64, 128];
        for (int stage = 1; stage <= filtersPerStage.Length; stage++)
        {
            long filters = filtersPerStage[stage - 1];
            layers.Add(($"conv{stage}", nn.Conv2d(inChannels, filters, 3, padding: 1, bias: !batchNorm, device: device)));
            if (batchNorm)
                layers.Add(($"bn{stage}", nn.BatchNorm2d(filters, device: device)));
            layers.Add(($"relu{stage}", nn.ReLU(inplace: true)));
            layers.Add(($"pool{stage}", nn.MaxPool2d(2)));
            inChannels = filters;
            h /= 2;
            w /= 2;
        }
        layers.Add(("flatten", nn.Flatten()));
        layers.Add(("classifier", nn.Linear(inChannels * h * w, classes, device: device)));
        return nn.Sequential(layers);
    }

    /// <summary>ResNet-18: basic blocks, [2, 2, 2, 2] per stage.</summary>
    /// <param name="channels">Input channels.</param>
    /// <param name="classes">Number of classes.</param>
    /// <param name="stem">ImageNet (7×7/2 + max-pool) or small-image (3×3/1) stem.</param>
    /// <param name="device">Where the network's tensors live.</param>
    /// <param name="width">
    /// Filters of the stem and the first stage; the stages have width, 2·width, 4·width and 8·width (bottleneck blocks
    /// 4× that at their output). Default 64, torchvision's; smaller widths keep the structure and the names.
    /// </param>
    public static nn.Module<Tensor, Tensor> ResNet18(long channels, long classes, ResNetStem stem = ResNetStem.ImageNet, Device? device = null, long width = 64)
        => ResNet(channels, classes, stem, [2, 2, 2, 2], bottleneck: false, device, width);

    /// <summary>ResNet-34: basic blocks, [3, 4, 6, 3] per stage.</summary>
    /// <inheritdoc cref="ResNet18"/>
    public static nn.Module<Tensor, Tensor> ResNet34(long channels, long classes, ResNetStem stem = ResNetStem.ImageNet, Device? device = null, long width = 64)
        => ResNet(channels, classes, stem, [3, 4, 6, 3], bottleneck: false, device, width);

    /// <summary>ResNet-50: bottleneck blocks (expansion 4), [3, 4, 6, 3] per stage.</summary>
    /// <inheritdoc cref="ResNet18"/>
    public static nn.Module<Tensor, Tensor> ResNet50(long channels, long classes, ResNetStem stem = ResNetStem.ImageNet, Device? device = null, long width = 64)
        => ResNet(channels, classes, stem, [3, 4, 6, 3], bottleneck: true, device, width);

    /// <summary>The smallest height and width the small CNN accepts.</summary>
    public const long SmallCnnMinimumSize = 8;

    private static nn.Module<Tensor, Tensor> ResNet(long channels, long classes, ResNetStem stem, int[] blocksPerStage, bool bottleneck, Device? device, long width)
    {
        CheckShape(channels, 1, 1, classes, minimumSize: 1, "ResNet");
        if (width < 1)
            throw new ArgumentOutOfRangeException(nameof(width), width, "The ResNet width must be at least 1.");
        return ModuleOwnership.Build(() => BuildResNet(channels, classes, stem, blocksPerStage, bottleneck, device, width));
    }

    private static nn.Module<Tensor, Tensor> BuildResNet(long channels, long classes, ResNetStem stem, int[] blocksPerStage, bool bottleneck, Device? device, long stemWidth)
    {
        var layers = new List<(string, nn.Module<Tensor, Tensor>)>();
        layers.Add(("stem", stem == ResNetStem.ImageNet
            ? nn.Sequential(
                ("conv", nn.Conv2d(channels, stemWidth, 7, stride: 2, padding: 3, bias: false, device: device)),
                ("bn", nn.BatchNorm2d(stemWidth, device: device)),
                ("relu", nn.ReLU(inplace: true)),
                ("pool", nn.MaxPool2d(3, stride: 2, padding: 1)))
            : nn.Sequential(
                ("conv", nn.Conv2d(channels, stemWidth, 3, stride: 1, padding: 1, bias: false, device: device)),
                ("bn", nn.BatchNorm2d(stemWidth, device: device)),
                ("relu", nn.ReLU(inplace: true)))));

        long expansion = bottleneck ? 4 : 1;
        long inChannels = stemWidth;
        for (int stage = 0; stage < blocksPerStage.Length; stage++)
        {
            long stageWidth = stemWidth << stage;
            var blocks = new List<(string, nn.Module<Tensor, Tensor>)>();
            for (int block = 0; block < blocksPerStage[stage]; block++)
            {
                long stride = block == 0 && stage > 0 ? 2 : 1;
                var residual = bottleneck
                    ? BottleneckBranch(inChannels, stageWidth, expansion, stride, device)
                    : BasicBranch(inChannels, stageWidth, stride, device);
                long outChannels = stageWidth * expansion;
                nn.Module<Tensor, Tensor> shortcut = stride != 1 || inChannels != outChannels
                    ? nn.Sequential(
                        ("conv", nn.Conv2d(inChannels, outChannels, 1, stride: stride, bias: false, device: device)),
                        ("bn", nn.BatchNorm2d(outChannels, device: device)))
                    : nn.Identity();
                blocks.Add(($"{block}", new ResidualBlock(residual, shortcut)));
                inChannels = outChannels;
            }
            layers.Add(($"layer{stage + 1}", nn.Sequential(blocks)));
        }
        layers.Add(("pool", nn.AdaptiveAvgPool2d(1)));
        layers.Add(("flatten", nn.Flatten()));
        layers.Add(("classifier", nn.Linear(inChannels, classes, device: device)));
        return nn.Sequential(layers);
    }

    private static nn.Module<Tensor, Tensor> BasicBranch(long inChannels, long width, long stride, Device? device)
        => nn.Sequential(
            ("conv1", nn.Conv2d(inChannels, width, 3, stride: stride, padding: 1, bias: false, device: device)),
            ("bn1", nn.BatchNorm2d(width, device: device)),
            ("relu1", nn.ReLU(inplace: true)),
            ("conv2", nn.Conv2d(width, width, 3, padding: 1, bias: false, device: device)),
            ("bn2", nn.BatchNorm2d(width, device: device)));

    private static nn.Module<Tensor, Tensor> BottleneckBranch(long inChannels, long width, long expansion, long stride, Device? device)
        => nn.Sequential(
            ("conv1", nn.Conv2d(inChannels, width, 1, bias: false, device: device)),
            ("bn1", nn.BatchNorm2d(width, device: device)),
            ("relu1", nn.ReLU(inplace: true)),
            ("conv2", nn.Conv2d(width, width, 3, stride: stride, padding: 1, bias: false, device: device)),
            ("bn2", nn.BatchNorm2d(width, device: device)),
            ("relu2", nn.ReLU(inplace: true)),
            ("conv3", nn.Conv2d(width, width * expansion, 1, bias: false, device: device)),
            ("bn3", nn.BatchNorm2d(width * expansion, device: device)));

    private static void CheckShape(long channels, long height, long width, long classes, long minimumSize, string architecture)
    {
        if (channels < 1)
            throw new ArgumentOutOfRangeException(nameof(channels), channels, "The number of image channels must be at least 1.");
        if (classes < 2)
            throw new ArgumentOutOfRangeException(nameof(classes), classes, "A classifier needs at least 2 classes.");
        if (height < minimumSize || width < minimumSize)
            throw new ArgumentOutOfRangeException(nameof(height), (height, width),
                $"{architecture} needs images of at least {minimumSize}×{minimumSize} pixels, not {height}×{width}.");
    }
}
