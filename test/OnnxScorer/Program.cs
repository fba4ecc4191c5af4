using System.Buffers.Binary;
using Microsoft.ML;
using Microsoft.ML.Data;
using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;

// OnnxScorer MODEL.onnx PIXELS.bin COUNT OUTPUT-PREFIX
// PIXELS.bin: COUNT images of float32 (little-endian) pixels in the model input's order. Writes OUTPUT-PREFIX.{raw,mlnet}.scores
// (float32, COUNT × K) and .labels (uint32, COUNT): ONNX Runtime's InferenceSession, then ML.NET's ApplyOnnxModel.
if (args.Length != 4)
{
    Console.Error.WriteLine("usage: OnnxScorer MODEL.onnx PIXELS.bin COUNT OUTPUT-PREFIX");
    return 2;
}
string modelPath = args[0], pixelsPath = args[1], prefix = args[3];
int count = int.Parse(args[2], System.Globalization.CultureInfo.InvariantCulture);
var bytes = File.ReadAllBytes(pixelsPath);
var pixels = new float[bytes.Length / 4];
for (int i = 0; i < pixels.Length; i++)
    pixels[i] = BinaryPrimitives.ReadSingleLittleEndian(bytes.AsSpan(4 * i));
int size = pixels.Length / count;

using (var session = new InferenceSession(modelPath))
{
    var (inputName, input) = session.InputMetadata.Single();
    var dimensions = input.Dimensions.Select((d, i) => i == 0 ? count : d).ToArray();
    var tensor = new DenseTensor<float>(pixels, dimensions);
    using var results = session.Run([NamedOnnxValue.CreateFromTensor(inputName, tensor)]);
    var scores = results.Single(r => r.Name.StartsWith("Score", StringComparison.Ordinal)).AsTensor<float>().ToArray();
    var labels = results.Single(r => r.Name.StartsWith("PredictedLabel", StringComparison.Ordinal)).AsTensor<uint>().ToArray();
    Write($"{prefix}.raw", scores, labels);
    Console.WriteLine($"ONNX Runtime {OrtEnv.Instance().GetVersionString()}: input '{inputName}' [{string.Join(", ", input.Dimensions)}], outputs {string.Join(", ", session.OutputMetadata.Keys)}");

    var ml = new MLContext();
    var definition = SchemaDefinition.Create(typeof(PixelRow));
    definition[0].ColumnName = inputName;
    definition[0].ColumnType = new VectorDataViewType(NumberDataViewType.Single, input.Dimensions.Skip(1).ToArray());
    var rows = Enumerable.Range(0, count).Select(i => new PixelRow { Pixels = pixels.AsSpan(i * size, size).ToArray() });
    var data = ml.Data.LoadFromEnumerable(rows, definition);
    var scoreColumn = session.OutputMetadata.Keys.Single(k => k.StartsWith("Score", StringComparison.Ordinal));
    var labelColumn = session.OutputMetadata.Keys.Single(k => k.StartsWith("PredictedLabel", StringComparison.Ordinal));
    var scored = ml.Transforms.ApplyOnnxModel([scoreColumn, labelColumn], [inputName], modelPath).Fit(data).Transform(data);
    // ML.NET's OnnxTransformer drops the ".output" suffix of models ML.NET wrote.
    string Column(string onnxName) => scored.Schema.GetColumnOrNull(onnxName)?.Name ?? onnxName.Replace(".output", "", StringComparison.Ordinal);
    Write($"{prefix}.mlnet", scored.GetColumn<float[]>(Column(scoreColumn)).SelectMany(s => s).ToArray(),
        scored.GetColumn<uint[]>(Column(labelColumn)).SelectMany(l => l).ToArray());
}
return 0;

static void Write(string prefix, float[] scores, uint[] labels)
{
    File.WriteAllBytes(prefix + ".scores", scores.SelectMany(BitConverter.GetBytes).ToArray());
    File.WriteAllBytes(prefix + ".labels", labels.SelectMany(BitConverter.GetBytes).ToArray());
}

internal sealed class PixelRow
{
    public float[] Pixels { get; set; } = [];
}
