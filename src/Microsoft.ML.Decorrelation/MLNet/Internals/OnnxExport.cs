using Microsoft.ML.Data;
using Microsoft.ML.Decorrelation.Torch.Onnx;
using Microsoft.ML.Model.OnnxConverter;
using Microsoft.ML.Runtime;

namespace Microsoft.ML.Decorrelation;

/// <summary>
/// ONNX export through ML.NET's own path: <c>mlContext.Model.ConvertToOnnx</c> walks the transformed data view back through
/// its <c>ITransformCanSaveOnnx</c> steps (an internal ML.NET interface; this file is the only place that touches it) and
/// lets each write its nodes into ML.NET's <see cref="OnnxContext"/>. See docs/onnx.md.
/// </summary>
internal sealed partial class ScoringDataView : ITransformCanSaveOnnx
{
    IDataView IDataTransform.Source => _input;

    /// <summary>Throws, with what to do instead, for an input ONNX cannot start from (an image or encoded bytes).</summary>
    bool ICanSaveOnnx.CanSaveOnnx(OnnxContext ctx)
    {
        _transformer.CheckOnnxInput();
        return true;
    }

    void ISaveAsOnnx.SaveAsOnnx(OnnxContext ctx) => _transformer.SaveAsOnnx(ctx, Schema);

    void ICanSaveModel.Save(ModelSaveContext ctx) => ((ICanSaveModel)_transformer).Save(ctx);
}

public sealed partial class DecorrelatedImageClassificationTransformer
{
    /// <summary>The opset of the exported graph: what ML.NET's converter writes by default, and ONNX Runtime and ML.NET's OnnxTransformer read.</summary>
    internal const int OnnxOpSet = 12;

    /// <summary>ONNX's TensorProto.DataType code of uint32, the raw type of ML.NET's keys.</summary>
    private const long OnnxUInt32 = 12;

    /// <summary>
    /// Writes the network alone as an ONNX model: input the pixel vector (the feature column's name, float32, N×C×H×W or N×C·H·W
    /// as <c>ExtractPixels</c> writes it), outputs <c>Score</c> (N×K probabilities, with the class names as ML.NET's slot-name
    /// output) and <c>PredictedLabel</c> (N×1 uint32 keys, 1-based) — each name with ML.NET's <c>.output</c> suffix. Works whatever
    /// column the model was trained on (pixels, images or encoded bytes): the graph starts at the pixels.
    /// </summary>
    /// <param name="path">The .onnx file to write.</param>
    public void ExportOnnx(string path)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(path);
        using var file = File.Create(path);
        ExportOnnx(file);
    }

    /// <inheritdoc cref="ExportOnnx(string)"/>
    /// <param name="stream">Where to write the model.</param>
    public void ExportOnnx(Stream stream)
    {
        ArgumentNullException.ThrowIfNull(stream);
        ObjectDisposedException.ThrowIf(_disposed, this);
        var pixels = Input.Kind == ImageInputKind.PixelVector
            ? this
            : new DecorrelatedImageClassificationTransformer(_host, Network, ImageInput.Restore(FeatureColumnName, ImageInputKind.PixelVector, Input.Shape),
                LabelColumnName, ScoreColumnName, PredictedLabelColumnName, LabelKeyValues);
        var ml = new MLContext();
        var definition = SchemaDefinition.Create(typeof(PixelRow));
        definition[0].ColumnName = FeatureColumnName;
        definition[0].ColumnType = new VectorDataViewType(NumberDataViewType.Single, Input.Shape.Channels, Input.Shape.Height, Input.Shape.Width);
        var data = ml.Data.LoadFromEnumerable(Array.Empty<PixelRow>(), definition);
        ml.Model.ConvertToOnnx(pixels, data, stream, ScoreColumnName, PredictedLabelColumnName);
    }

    private sealed class PixelRow
    {
        public float[] Pixels { get; set; } = [];
    }

    /// <summary>An image or encoded-bytes input cannot start an ONNX graph: say so, and where to export from.</summary>
    internal void CheckOnnxInput()
    {
        if (Input.Kind != ImageInputKind.PixelVector)
            throw new InvalidOperationException(
                $"This model reads the {(Input.Kind == ImageInputKind.Image ? "image" : "encoded image bytes")} column '{FeatureColumnName}', and ML.NET's image " +
                "loading and decoding cannot be expressed in ONNX. Export from the pixel-vector stage instead: " +
                "transformer.ExportOnnx(path) writes the network with a pixel-vector input, or train on the output of ExtractPixels " +
                "and call mlContext.Model.ConvertToOnnx on the classifier with data that holds the pixel vectors (docs/onnx.md).");
    }

    /// <summary>
    /// Writes reshape, standardisation, the folded network, Softmax (Score) and ArgMax + 1 as uint32 (PredictedLabel) into
    /// <paramref name="ctx"/>, reading the pixel column's ONNX variable.
    /// </summary>
    internal void SaveAsOnnx(OnnxContext ctx, DataViewSchema outputSchema)
    {
        CheckOnnxInput();
        ctx.CheckOpSetVersion(OnnxOpSet, nameof(DecorrelatedImageClassificationTransformer));
        if (!ctx.ContainsColumn(FeatureColumnName))
            throw new InvalidOperationException(
                $"The pixel column '{FeatureColumnName}' is made by a step that cannot be expressed in ONNX (ML.NET's LoadImages, ResizeImages and " +
                "ExtractPixels cannot). Convert only the classifier, with data that already holds the pixel vectors: e.g. " +
                "mlContext.Model.ConvertToOnnx(classifier, pixelData, stream), or transformer.ExportOnnx(path) (docs/onnx.md).");
        var graph = new OnnxContextGraph(ctx);
        var shape = Input.Shape;
        string pixels = ctx.GetVariableName(FeatureColumnName);
        string image = graph.NewVariable("image");
        graph.AddNode("Reshape", [pixels, graph.AddInitializer("image_shape", new long[] { -1, shape.Channels, shape.Height, shape.Width }, [4])], [image]);
        string centred = graph.NewVariable("centred");
        graph.AddNode("Sub", [image, graph.AddInitializer("pixel_mean", Network.Mean, [1, shape.Channels, 1, 1])], [centred]);
        string standardized = graph.NewVariable("standardized");
        graph.AddNode("Div", [centred, graph.AddInitializer("pixel_standard_deviation", Network.StandardDeviation, [1, shape.Channels, 1, 1])], [standardized]);
        string logits = OnnxNetworkWriter.Write(Network.Network, graph, standardized);

        string score = ctx.AddIntermediateVariable(outputSchema[ScoreColumnName].Type, ScoreColumnName);
        graph.AddNode("Softmax", [logits], [score], new Dictionary<string, object> { ["axis"] = 1L });
        string index = graph.NewVariable("class_index");
        graph.AddNode("ArgMax", [score], [index], new Dictionary<string, object> { ["axis"] = 1L, ["keepdims"] = 1L });
        string key = graph.NewVariable("class_key");
        graph.AddNode("Add", [index, graph.AddInitializer("one", new long[] { 1 }, [1])], [key]);
        string label = ctx.AddIntermediateVariable(outputSchema[PredictedLabelColumnName].Type, PredictedLabelColumnName);
        graph.AddNode("Cast", [key], [label], new Dictionary<string, object> { ["to"] = OnnxUInt32 });
    }

    /// <summary><see cref="IOnnxGraphBuilder"/> over ML.NET's <see cref="OnnxContext"/>.</summary>
    private sealed class OnnxContextGraph(OnnxContext ctx) : IOnnxGraphBuilder
    {
        public string AddInitializer(string name, float[] values, long[] dimensions) => ctx.AddInitializer(values, dimensions, name, makeUniqueName: true);

        public string AddInitializer(string name, long[] values, long[] dimensions) => ctx.AddInitializer(values, dimensions, name, makeUniqueName: true);

        public string NewVariable(string name) => ctx.AddIntermediateVariable(null!, name, skip: true);

        public void AddNode(string opType, string[] inputs, string[] outputs, IReadOnlyDictionary<string, object>? attributes = null)
        {
            var node = ctx.CreateNode(opType, inputs, outputs, ctx.GetNodeName(opType), "");
            foreach (var (name, value) in attributes ?? new Dictionary<string, object>())
            {
                switch (value)
                {
                    case long number: node.AddAttribute(name, number); break;
                    case long[] numbers: node.AddAttribute(name, (IEnumerable<long>)numbers); break;
                    case float real: node.AddAttribute(name, (double)real); break;
                    default: throw new ArgumentException($"Attribute '{name}' of {opType} has an unsupported type {value.GetType().Name}.", nameof(attributes));
                }
            }
        }
    }
}
