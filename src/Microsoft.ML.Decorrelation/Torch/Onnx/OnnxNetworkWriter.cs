using Microsoft.ML.Decorrelation.Torch.Architectures;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.Decorrelation.Torch.Onnx;

/// <summary>
/// Where <see cref="OnnxNetworkWriter"/> writes: an ONNX graph under construction. The library implements it over
/// ML.NET's ONNX writer (its <c>OnnxContext</c>); the engine itself writes no protobuf.
/// </summary>
public interface IOnnxGraphBuilder
{
    /// <summary>Adds a float32 constant; returns its (unique) name.</summary>
    string AddInitializer(string name, float[] values, long[] dimensions);

    /// <summary>Adds an int64 constant; returns its (unique) name.</summary>
    string AddInitializer(string name, long[] values, long[] dimensions);

    /// <summary>A new, unique name for an intermediate value.</summary>
    string NewVariable(string name);

    /// <summary>Adds a node of the default ONNX domain.</summary>
    /// <param name="opType">The operator (Conv, Relu, …).</param>
    /// <param name="inputs">Names of its inputs.</param>
    /// <param name="outputs">Names of its outputs.</param>
    /// <param name="attributes">Its attributes: <see cref="long"/>, <see cref="long"/>[] or <see cref="float"/> values.</param>
    void AddNode(string opType, string[] inputs, string[] outputs, IReadOnlyDictionary<string, object>? attributes = null);
}

/// <summary>
/// Writes a plain network of <see cref="NetworkBuilder"/> (decorrelation folded, <see cref="NetworkConversion.ToPlain"/>) as
/// ONNX nodes in eval mode: Conv, BatchNormalization, Relu, MaxPool, GlobalAveragePool, Flatten, Gemm and the residual Add.
/// </summary>
public static class OnnxNetworkWriter
{
    /// <summary>
    /// Writes <paramref name="network"/> applied to <paramref name="input"/> (N×C×H×W float32) into <paramref name="graph"/>;
    /// returns the name of its output (the logits).
    /// </summary>
    /// <exception cref="NotSupportedException">The network holds a module that has no ONNX form here (named in the message).</exception>
    public static string Write(nn.Module<Tensor, Tensor> network, IOnnxGraphBuilder graph, string input)
    {
        ArgumentNullException.ThrowIfNull(network);
        ArgumentNullException.ThrowIfNull(graph);
        return WriteModule("network", network, graph, input);
    }

    private static string WriteModule(string path, nn.Module module, IOnnxGraphBuilder graph, string input)
    {
        switch (module)
        {
            case Sequential sequential:
                foreach (var (name, child) in sequential.named_children())
                    input = WriteModule($"{path}.{name}", child, graph, input);
                return input;
            case ResidualBlock block:
                string residual = WriteModule($"{path}.residual", block.Residual, graph, input);
                string shortcut = WriteModule($"{path}.shortcut", block.Shortcut, graph, input);
                string sum = graph.NewVariable($"{path}.add");
                graph.AddNode("Add", [residual, shortcut], [sum]);
                return Node(graph, "Relu", path + ".relu", [sum]);
            case Identity:
                return input;
            case Conv2d conv:
                return WriteConvolution(path, conv, graph, input);
            case BatchNorm2d norm:
                return WriteBatchNorm(path, norm, graph, input);
            case ReLU:
                return Node(graph, "Relu", path, [input]);
            case MaxPool2d pool:
            {
                long[] padding = pool.padding ?? [0, 0];
                if (pool.dilation is { } dilation && dilation.Any(d => d != 1))
                    throw new NotSupportedException($"Module '{path}' is a dilated max-pool, which is not exported.");
                return Node(graph, "MaxPool", path, [input], new Dictionary<string, object>
                {
                    ["kernel_shape"] = pool.kernel_size,
                    ["strides"] = pool.stride ?? pool.kernel_size,
                    ["pads"] = new[] { padding[0], padding[^1], padding[0], padding[^1] },
                    ["ceil_mode"] = pool.ceil_mode ? 1L : 0L,
                });
            }
            case AdaptiveAvgPool2d pool when pool.output_size.All(s => s == 1):
                return Node(graph, "GlobalAveragePool", path, [input]);
            case Flatten flatten when flatten.start_dim == 1 && flatten.end_dim == -1:
                return Node(graph, "Flatten", path, [input], new Dictionary<string, object> { ["axis"] = 1L });
            case Linear linear:
            {
                var (weight, bias) = Parameters(linear, path);
                string output = graph.NewVariable(path);
                var inputs = bias is null ? new[] { input, weight } : [input, weight, bias];
                graph.AddNode("Gemm", inputs, [output], new Dictionary<string, object> { ["transB"] = 1L });
                return output;
            }
            default:
                throw new NotSupportedException($"Module '{path}' ({module.GetType().Name}) cannot be exported to ONNX; the exporter knows the modules of " +
                                                "NetworkBuilder's networks (Conv2d, BatchNorm2d, ReLU, MaxPool2d, AdaptiveAvgPool2d(1), Flatten, Linear, residual blocks).");
        }

        (string Weight, string? Bias) Parameters(nn.Module layer, string name)
        {
            string weight = graph.AddInitializer(name + ".weight", Values(layer.get_parameter("weight")!), layer.get_parameter("weight")!.shape);
            var bias = layer.get_parameter("bias");
            return (weight, bias is null ? null : graph.AddInitializer(name + ".bias", Values(bias), bias.shape));
        }

        string WriteConvolution(string name, Conv2d conv, IOnnxGraphBuilder g, string x)
        {
            if (conv.padding_mode != PaddingModes.Zeros)
                throw new NotSupportedException($"Module '{name}' pads with {conv.padding_mode}; only zero padding is exported.");
            var (padHeight, padWidth) = NetworkConversion.ExplicitPadding(name, conv);
            var (weight, bias) = Parameters(conv, name);
            string output = g.NewVariable(name);
            g.AddNode("Conv", bias is null ? [x, weight] : [x, weight, bias], [output], new Dictionary<string, object>
            {
                ["kernel_shape"] = new[] { conv.kernel_size[0], conv.kernel_size[1] },
                ["strides"] = new[] { conv.stride[0], conv.stride[1] },
                ["pads"] = new[] { padHeight, padWidth, padHeight, padWidth },
                ["dilations"] = new[] { conv.dilation[0], conv.dilation[1] },
                ["group"] = conv.groups,
            });
            return output;
        }
    }

    private static string WriteBatchNorm(string path, BatchNorm2d norm, IOnnxGraphBuilder graph, string input)
    {
        if (norm.running_mean is null || norm.running_var is null)
            throw new NotSupportedException($"Module '{path}' keeps no running statistics, so its eval-mode output depends on the batch; it is not exported.");
        long features = norm.num_features;
        float[] scale = norm.weight is { } weight ? Values(weight) : Enumerable.Repeat(1f, (int)features).ToArray();
        float[] shift = norm.bias is { } bias ? Values(bias) : new float[features];
        var inputs = new[]
        {
            input,
            graph.AddInitializer(path + ".weight", scale, [features]),
            graph.AddInitializer(path + ".bias", shift, [features]),
            graph.AddInitializer(path + ".running_mean", Values(norm.running_mean), [features]),
            graph.AddInitializer(path + ".running_var", Values(norm.running_var), [features]),
        };
        string output = graph.NewVariable(path);
        graph.AddNode("BatchNormalization", inputs, [output], new Dictionary<string, object> { ["epsilon"] = (float)norm.eps });
        return output;
    }

    private static string Node(IOnnxGraphBuilder graph, string opType, string path, string[] inputs, IReadOnlyDictionary<string, object>? attributes = null)
    {
        string output = graph.NewVariable(path);
        graph.AddNode(opType, inputs, [output], attributes);
        return output;
    }

    /// <summary>A tensor's values as float32, on the CPU.</summary>
    internal static float[] Values(Tensor tensor)
    {
        using var scope = NewDisposeScope();
        return tensor.detach().to(ScalarType.Float32).cpu().contiguous().data<float>().ToArray();
    }
}
