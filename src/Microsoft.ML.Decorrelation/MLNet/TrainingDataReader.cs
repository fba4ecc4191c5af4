using Microsoft.ML.Data;
using Microsoft.ML.Decorrelation.Torch.Data;

namespace Microsoft.ML.Decorrelation;

/// <summary>
/// Decodes labelled images from an <see cref="IDataView"/> once, into an <see cref="ImageCache"/> on disk that training
/// then streams: memory stays at a few images while reading and a few batches while training, whatever the data's size.
/// </summary>
internal static class TrainingDataReader
{
    /// <summary>
    /// Reads every row of <paramref name="data"/>: pixels through <paramref name="input"/>, labels from the key
    /// column <paramref name="labelColumn"/> (key k becomes class k − 1), into a temporary cache in a new folder under
    /// <paramref name="parentFolder"/>, deleted when the cache is disposed (and at once when reading fails). Rows with a
    /// missing label (key 0) are skipped and counted.
    /// </summary>
    /// <param name="data">The rows to read.</param>
    /// <param name="input">How to read the feature column.</param>
    /// <param name="labelColumn">The key-typed label column.</param>
    /// <param name="classCount">The key type's count; keys above it are treated as missing.</param>
    /// <param name="checkAlive">Called every few hundred rows; throws to cancel.</param>
    /// <param name="parentFolder">Where the cache folder is created; the system's temporary folder when null.</param>
    /// <returns>The images (pixels as read, not standardised; the cache holds their statistics) and the number of rows skipped.</returns>
    /// <exception cref="InvalidDataException">A pixel is not finite; the message names the column and the row.</exception>
    /// <exception cref="IOException">The cache cannot be written (full disk, unwritable folder); the message names the folder.</exception>
    public static (ImageCache Data, long SkippedRows) Read(IDataView data, ImageInput input, string labelColumn, int classCount, Action checkAlive,
        string? parentFolder = null)
    {
        var label = data.Schema[labelColumn];
        var feature = input.FindColumn(data.Schema);
        string folder = Path.Combine(parentFolder ?? Path.GetTempPath(), "dbp-image-cache-" + Guid.NewGuid().ToString("N"));
        var shape = input.Shape;
        long skipped = 0;
        using var writer = new ImageCacheWriter(folder, shape.Channels, shape.Height, shape.Width, classCount);
        using (var cursor = data.GetRowCursor([label, feature]))
        {
            var getLabel = cursor.GetGetter<uint>(label);
            var readPixels = input.CreateReader(cursor);
            var pixels = new float[shape.Size];
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
                readPixels(pixels);
                try
                {
                    writer.Append(pixels, (int)key - 1);
                }
                catch (InvalidDataException e)
                {
                    throw new InvalidDataException($"Column '{input.ColumnName}', row {cursor.Position}: {e.Message}", e);
                }
            }
        }
        return (writer.Complete(deleteOnDispose: true), skipped);
    }
}
