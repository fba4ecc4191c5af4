using System.Diagnostics;
using System.Globalization;
using Microsoft.ML.Decorrelation.Torch;
using Microsoft.ML.Decorrelation.Torch.Architectures;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Decorrelation.Tests;

/// <summary>
/// Native work that could kill its process (a libtorch kernel crashing on the CPU at hand), run by the test
/// assembly as a child process so that a crash fails one test instead of aborting the whole run
/// (<see cref="ChildProcess"/>). Each case writes its numbers to a file for the parent to compare.
/// </summary>
internal static class NativeCases
{
    public const string Command = "native-case";

    /// <summary>Runs case <paramref name="args"/>[0] with the rest as its arguments; returns the exit code.</summary>
    public static int Run(string[] args)
    {
        string name = args[0];
        var oneDnn = Enum.Parse<OneDnnMode>(args[1], ignoreCase: true);
        string output = args[2];
        using var kernels = NativeKernelGuard.Enter(oneDnn);
        Console.WriteLine($"oneDNN in libtorch: {NativeKernelGuard.OneDnnEnabledInLibTorch}; {kernels.Decision.Reason}");
        float[] values = name switch
        {
            "conv1x1" => Conv1x1(),
            "resnet" => ResNet(int.Parse(args[3], CultureInfo.InvariantCulture), int.Parse(args[4], CultureInfo.InvariantCulture),
                int.Parse(args[5], CultureInfo.InvariantCulture), Enum.Parse<ResNetStem>(args[6])),
            "trainer" => TrainAndScore(Enum.Parse<CnnArchitecture>(args[3]), int.Parse(args[4], CultureInfo.InvariantCulture),
                int.Parse(args[5], CultureInfo.InvariantCulture), int.Parse(args[6], CultureInfo.InvariantCulture)),
            _ => throw new ArgumentException($"Unknown native case '{name}'."),
        };
        File.WriteAllLines(output, values.Select(v => v.ToString("R", CultureInfo.InvariantCulture)));
        return 0;
    }

    /// <summary>
    /// The 1×1 convolution of PyTorch issue 177227 (<c>Conv2d(1536, 32, 1)</c> on a 1×1536×1×32 input),
    /// forward and backward: the output, the weight gradient and the input gradient.
    /// </summary>
    private static float[] Conv1x1()
    {
        using var scope = NewDisposeScope();
        random.manual_seed(177227);
        var conv = nn.Conv2d(1536, 32, 1);
        var input = randn(1, 1536, 1, 32).requires_grad_();
        var output = conv.forward(input);
        (output * output).sum().backward();
        return [.. output.data<float>(), .. conv.weight!.grad!.data<float>(), .. input.grad!.data<float>()];
    }

    /// <summary>A ResNet of <paramref name="depth"/> forward and backward on a batch of 2: logits, then the gradients of the stem and the classifier.</summary>
    private static float[] ResNet(int depth, int channels, int size, ResNetStem stem)
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
        if (output.shape is not [2, 5])
            throw new InvalidOperationException($"ResNet-{depth} gave logits of shape [{string.Join(", ", output.shape)}].");
        output.sum().backward();
        var gradients = new List<float>();
        foreach (var (name, parameter) in network.named_parameters())
        {
            if (parameter.grad is null || !parameter.grad.shape.SequenceEqual(parameter.shape))
                throw new InvalidOperationException($"{name} has no gradient of its shape.");
            if (name.StartsWith("stem.conv") || name.StartsWith("classifier"))
                gradients.AddRange(parameter.grad.data<float>());
        }
        long parameters = network.parameters().Sum(p => p.numel());
        return [parameters, .. output.data<float>(), .. gradients];
    }

    /// <summary>The native-scan case of the samples: two steps of the trainer on random images, then scoring them.</summary>
    private static float[] TrainAndScore(CnnArchitecture architecture, int channels, int size, int batchSize)
    {
        var clock = Stopwatch.StartNew();
        var scores = Samples.NativeScan.TrainAndScore(architecture, channels, size, batchSize, steps: 1, OneDnnMode.Auto, Console.WriteLine);
        Console.WriteLine($"trained and scored in {clock.ElapsedMilliseconds} ms");
        return scores;
    }
}
