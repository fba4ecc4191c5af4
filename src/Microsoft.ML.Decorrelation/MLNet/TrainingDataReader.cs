using Microsoft.ML.Data;
using Microsoft.ML.Decorrelation.Torch.Data;
using static TorchSharp.torch;

namespace Microsoft.ML.Decorrelation;

/// <summary>Reads labelled images from an <see cref="IDataView"/> into an in-memory <see cref="ImageDataset"/>.</summary>
internal static class TrainingDataReader
{
    /// <summary>
    /// Reads every row of <paramref name="data"/>: pixels through <paramref name="input"/>, labels from the key
    /// column <paramref name="labelColumn"/> (key k becomes class k − 1). Rows with a missing label (key 0)
    /// are skipped and counted.
    /// </summary>
    /// <param name="data">The rows to read.</param>
    /// <param name="input">How to read the feature column.</param>
    /// <param name="labelColumn">The key-typed label column.</param>
    /// <param name="classCount">The key type's count; keys above it are treated as missing.</param>
    /// <param name="checkAlive">Called every few hundred rows; throws to cancel.</param>
    /// <returns>The images (pixels as read, not standardised) and the number of rows skipped.</returns>
    public static (ImageDataset Data, long SkippedRows) Read(IDataView data, ImageInput input, string labelColumn, int classCount, Action checkAlive)
    {
        var label = data.Schema[labelColumn];
        var feature = input.FindColumn(data.Schema);
        int size = input.Shape.Size;
        var pixels = new float[Math.Max(size, (int)Math.Min(data.GetRowCount() ?? 1024, int.MaxValue / size) * size)];
        var labels = new List<long>();
        long skipped = 0;
        using (var cursor = data.GetRowCursor([label, feature]))
        {
            var getLabel = cursor.GetGetter<uint>(label);
            var readPixels = input.CreateReader(cursor);
            uint key = 0;
            while (cursor.MoveNext())
            {
                if (cursor.Position % 256 == 0)
                    checkAlive();
                getLabel(ref key);
                if (key == 0 || key > classCount)
                {
                    skipped++;
                    continue;
                }
                long offset = (long)labels.Count * size;
                if (offset + size > pixels.Length)
                {
                    if ((long)pixels.Length * 2 > Array.MaxLength)
                        throw new InvalidOperationException($"The training data holds more pixels than one array can ({Array.MaxLength}); use fewer or smaller images.");
                    Array.Resize(ref pixels, pixels.Length * 2);
                }
                readPixels(pixels.AsSpan((int)offset, size));
                labels.Add(key - 1);
            }
        }
        int rows = labels.Count;
        var images = tensor(pixels.AsSpan(0, rows * size).ToArray(), [rows, input.Shape.Channels, input.Shape.Height, input.Shape.Width]);
        return (new ImageDataset(images, tensor(labels.ToArray()), classCount), skipped);
    }
}
