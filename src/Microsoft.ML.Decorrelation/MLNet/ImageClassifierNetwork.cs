using Microsoft.ML.Decorrelation.Torch;
using Microsoft.ML.Decorrelation.Torch.Architectures;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Decorrelation;

/// <summary>
/// A trained plain network (decorrelation folded into its weights) with the per-channel standardisation
/// of its inputs: what a fitted transformer scores with and what a saved model holds.
/// </summary>
internal sealed class ImageClassifierNetwork : IDisposable
{
    private readonly nn.Module<Tensor, Tensor> _network;
    private readonly Tensor _mean;
    private readonly Tensor _standardDeviation;

    /// <summary>Takes ownership of <paramref name="network"/>, which must be a plain network of <paramref name="architecture"/>.</summary>
    public ImageClassifierNetwork(nn.Module<Tensor, Tensor> network, CnnArchitecture architecture, ResNetStem? stem, ImageShape shape, int classCount,
        float[] mean, float[] standardDeviation, Device device)
    {
        _network = network;
        _network.eval();
        Architecture = architecture;
        Stem = stem;
        Shape = shape;
        ClassCount = classCount;
        Mean = mean;
        StandardDeviation = standardDeviation;
        Device = device;
        _mean = tensor(mean, [1, shape.Channels, 1, 1], device: device);
        _standardDeviation = tensor(standardDeviation, [1, shape.Channels, 1, 1], device: device);
    }

    public CnnArchitecture Architecture { get; }

    /// <summary>The stem of a ResNet; null for the small CNN.</summary>
    public ResNetStem? Stem { get; }

    public ImageShape Shape { get; }

    public int ClassCount { get; }

    /// <summary>Per-channel mean subtracted from the pixels.</summary>
    public float[] Mean { get; }

    /// <summary>Per-channel standard deviation the pixels are divided by.</summary>
    public float[] StandardDeviation { get; }

    public Device Device { get; }

    /// <summary>The plain (folded) network.</summary>
    public nn.Module<Tensor, Tensor> Network => _network;

    /// <summary>
    /// The stem a ResNet gets for images of <paramref name="shape"/> when no pretrained weights decide it: small images lose
    /// too much resolution to the ImageNet stem's stride 4. Null for the small CNN.
    /// </summary>
    public static ResNetStem? DefaultStem(CnnArchitecture architecture, ImageShape shape)
        => architecture == CnnArchitecture.SmallCnn ? null
            : Math.Min(shape.Height, shape.Width) <= 64 ? ResNetStem.SmallImage : ResNetStem.ImageNet;

    /// <summary>Builds the plain network of <paramref name="architecture"/> (with <paramref name="stem"/> for a ResNet) for images of <paramref name="shape"/>.</summary>
    public static nn.Module<Tensor, Tensor> Build(CnnArchitecture architecture, ResNetStem? stem, ImageShape shape, int classCount, Device device)
    {
        var resNetStem = stem ?? ResNetStem.ImageNet;
        return architecture switch
        {
            CnnArchitecture.SmallCnn => NetworkBuilder.SmallCnn(shape.Channels, shape.Height, shape.Width, classCount, device),
            CnnArchitecture.ResNet18 => NetworkBuilder.ResNet18(shape.Channels, classCount, resNetStem, device),
            CnnArchitecture.ResNet34 => NetworkBuilder.ResNet34(shape.Channels, classCount, resNetStem, device),
            CnnArchitecture.ResNet50 => NetworkBuilder.ResNet50(shape.Channels, classCount, resNetStem, device),
            _ => throw new ArgumentOutOfRangeException(nameof(architecture), architecture, "Unknown architecture."),
        };
    }

    /// <summary>
    /// Class probabilities (softmax) of <paramref name="rows"/> images whose raw pixels fill
    /// <paramref name="pixels"/>; returns rows × <see cref="ClassCount"/> values, row-major.
    /// Safe to call from several threads at once.
    /// </summary>
    public float[] Score(float[] pixels, int rows)
    {
        using var kernels = NativeKernelGuard.Enter(OneDnnMode.Auto);
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var input = tensor(pixels.AsSpan(0, rows * Shape.Size).ToArray(), [rows, Shape.Channels, Shape.Height, Shape.Width]).to(Device);
        var probabilities = nn.functional.softmax(_network.forward((input - _mean) / _standardDeviation), 1);
        return probabilities.cpu().data<float>().ToArray();
    }

    public void Dispose()
    {
        _network.Dispose();
        _mean.Dispose();
        _standardDeviation.Dispose();
    }
}
