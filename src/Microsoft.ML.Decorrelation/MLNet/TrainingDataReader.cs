using System.Security.Cryptography;
using System.Text;
using Microsoft.ML.Data;
using Microsoft.ML.Decorrelation.Torch.Data;

namespace Microsoft.ML.Decorrelation;

/// <summary>
/// Decodes labelled images from an <see cref="IDataView"/> once, into an <see cref="ImageCache"/> on disk that training
/// then streams: memory stays at a few images while reading and a few batches while training, whatever the data's size.
/// The cache is temporary, or kept in a folder the user names and reused by a later Fit on the same data.
/// </summary>
internal static class TrainingDataReader
{
    /// <summary>Whether a label key means "no label": 0, or above the key type's count.</summary>
    private static bool IsMissing(uint key, int classCount) => key == 0 || key > classCount;

    /// <summary>Rows whose pixels are decoded again and compared when a kept cache is about to be reused.</summary>
    internal const int VerifiedRows = 16;

    /// <summary>
    /// The images of <paramref name="data"/>: pixels through <paramref name="input"/>, labels from the key column
    /// <paramref name="labelColumn"/> (key k becomes class k − 1); rows with a missing label (key 0) are skipped and counted.
    /// Without <paramref name="cacheFolder"/>, a temporary cache, deleted when disposed (and at once when reading fails).
    /// With it, the cache kept there is reused when its fingerprint matches the data's and <see cref="VerifiedRows"/> rows
    /// decode to the cached pixels; otherwise (none, another data set, damaged) it is rebuilt there.
    /// </summary>
    /// <param name="data">The rows to read.</param>
    /// <param name="input">How to read the feature column.</param>
    /// <param name="labelColumn">The key-typed label column.</param>
    /// <param name="classCount">The key type's count; keys above it are treated as missing.</param>
    /// <param name="checkAlive">Called every few hundred rows; throws to cancel.</param>
    /// <param name="cacheFolder">The folder to keep the cache in, or null for a temporary one.</param>
    /// <param name="log">Receives what happened to a kept cache: reused, or rebuilt and why.</param>
    /// <param name="warn">Receives that a kept cache was damaged and is rebuilt.</param>
    /// <param name="progress">Receives the decoding pass's progress every 64 images, or null.</param>
    /// <returns>The images (pixels as read, not standardised; the cache holds their statistics) and the number of rows skipped.</returns>
    /// <exception cref="InvalidDataException">A pixel is not finite; the message names the column and the row.</exception>
    /// <exception cref="IOException">The cache cannot be written (full disk, unwritable folder); the message names the folder.</exception>
    public static (ImageCache Data, long SkippedRows) Read(IDataView data, ImageInput input, string labelColumn, int classCount, Action checkAlive,
        string? cacheFolder = null, Action<string>? log = null, Action<string>? warn = null,
        Action<DecorrelatedImageClassificationDecodingProgress>? progress = null)
    {
        if (cacheFolder is null)
        {
            string temporary = Path.Combine(Path.GetTempPath(), "dbp-image-cache-" + Guid.NewGuid().ToString("N"));
            return Decode(data, input, labelColumn, classCount, checkAlive, temporary, fingerprint: null, deleteOnDispose: true, progress);
        }
        var (fingerprint, skipped) = Fingerprint(data, input, labelColumn, classCount, checkAlive);
        // Processes sharing the folder (workers of one study) take turns: the first builds the cache, the others reuse it.
        using var turn = WaitForCacheLock(cacheFolder, checkAlive, log);
        if (Directory.Exists(cacheFolder))
        {
            string? reason;
            bool damaged = false;
            try
            {
                var kept = ImageCache.Open(cacheFolder);
                reason = kept.Info.Fingerprint != fingerprint ? "it was made from other data or settings"
                    : !SameDecodedPixels(kept, data, input, labelColumn, classCount) ? $"{VerifiedRows} re-decoded images differ from it"
                    : null;
                if (reason is null)
                {
                    log?.Invoke($"Reusing the image cache in '{cacheFolder}' ({kept.Count} images).");
                    return (kept, skipped);
                }
                kept.Dispose();
            }
            catch (InvalidDataException e)
            {
                reason = $"it is damaged ({e.Message})";
                damaged = true;
            }
            (damaged ? warn : log)?.Invoke($"Rebuilding the image cache in '{cacheFolder}': {reason}.");
        }
        // Built beside the old one and swapped in when complete: a failure leaves the old cache as it was.
        string building = cacheFolder.TrimEnd(Path.DirectorySeparatorChar) + ".building-" + Environment.ProcessId;
        var (built, _) = Decode(data, input, labelColumn, classCount, checkAlive, building, fingerprint, deleteOnDispose: false, progress);
        built.Dispose();
        if (Directory.Exists(cacheFolder))
            Directory.Delete(cacheFolder, recursive: true);
        Directory.Move(building, cacheFolder);
        return (ImageCache.Open(cacheFolder), skipped);
    }

    /// <summary>Holds an exclusive lock on <c>cacheFolder.lock</c> (an advisory file lock, released when the process dies), waiting for it.</summary>
    private static FileStream WaitForCacheLock(string cacheFolder, Action checkAlive, Action<string>? log)
    {
        string path = cacheFolder.TrimEnd(Path.DirectorySeparatorChar) + ".lock";
        bool announced = false;
        while (true)
        {
            try
            {
                Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(path))!);
                return new FileStream(path, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException && !(e is IOException && File.Exists(path)))
            {
                throw new IOException($"The image cache in '{cacheFolder}' cannot be written: {e.Message}", e);
            }
            catch (IOException)
            {
                if (!announced)
                    log?.Invoke($"Waiting for another process to finish the image cache in '{cacheFolder}'.");
                announced = true;
                checkAlive();
                Thread.Sleep(250);
            }
        }
    }

    private static (ImageCache Data, long SkippedRows) Decode(IDataView data, ImageInput input, string labelColumn, int classCount, Action checkAlive,
        string folder, string? fingerprint, bool deleteOnDispose, Action<DecorrelatedImageClassificationDecodingProgress>? progress)
    {
        var clock = System.Diagnostics.Stopwatch.StartNew();
        long? total = data.GetRowCount();
        var label = data.Schema[labelColumn];
        var feature = input.FindColumn(data.Schema);
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
                if (IsMissing(key, classCount))
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
                if (writer.Count % 64 == 0)
                    progress?.Invoke(new(writer.Count, total, clock.Elapsed.TotalSeconds));
            }
        }
        progress?.Invoke(new(writer.Count, total, clock.Elapsed.TotalSeconds));
        return (writer.Complete(fingerprint, deleteOnDispose), skipped);
    }

    /// <summary>
    /// A SHA-256 over what identifies the decoded data without decoding it: the feature column's name, type and image
    /// shape, the class count, the row count, and every row's scalar columns (labels, paths, numbers, booleans); and the
    /// number of rows with a missing label.
    /// </summary>
    private static (string Fingerprint, long SkippedRows) Fingerprint(IDataView data, ImageInput input, string labelColumn, int classCount, Action checkAlive)
    {
        var feature = input.FindColumn(data.Schema);
        var scalars = data.Schema.Where(c => c.Index != feature.Index && !c.IsHidden && c.Type is PrimitiveDataViewType or KeyDataViewType).ToArray();
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        void Add(string text) => hash.AppendData(Encoding.UTF8.GetBytes(text + "\n"));
        Add($"{feature.Name}|{feature.Type}|{input.Kind}|{input.Shape}|{classCount}|{string.Join(",", scalars.Select(c => c.Name + ":" + c.Type))}");
        long rows = 0, skipped = 0;
        using (var cursor = data.GetRowCursor(scalars))
        {
            var getters = scalars.Select(c => ValueText(cursor, c)).ToArray();
            var getLabel = cursor.GetGetter<uint>(data.Schema[labelColumn]);
            uint key = 0;
            while (cursor.MoveNext())
            {
                if (cursor.Position % 1024 == 0)
                    checkAlive();
                getLabel(ref key);
                if (IsMissing(key, classCount))
                    skipped++;
                Add(string.Join("\t", getters.Select(get => get())));
                rows++;
            }
        }
        Add($"rows {rows}");
        return (Convert.ToHexString(hash.GetHashAndReset()), skipped);
    }

    private static Func<string> ValueText(DataViewRowCursor cursor, DataViewSchema.Column column)
    {
        var method = typeof(TrainingDataReader).GetMethod(nameof(TypedValueText), System.Reflection.BindingFlags.NonPublic | System.Reflection.BindingFlags.Static)!
            .MakeGenericMethod(column.Type.RawType);
        return (Func<string>)method.Invoke(null, [cursor, column])!;
    }

    private static Func<string> TypedValueText<T>(DataViewRowCursor cursor, DataViewSchema.Column column)
    {
        var getter = cursor.GetGetter<T>(column);
        T value = default!;
        return () =>
        {
            getter(ref value);
            return value is IFormattable formattable ? formattable.ToString(null, System.Globalization.CultureInfo.InvariantCulture) : value?.ToString() ?? "";
        };
    }

    /// <summary>Whether <see cref="VerifiedRows"/> rows spread over the data decode to exactly the cached pixels.</summary>
    private static bool SameDecodedPixels(ImageCache cache, IDataView data, ImageInput input, string labelColumn, int classCount)
    {
        if (cache.Count == 0)
            return true;
        var wanted = Enumerable.Range(0, VerifiedRows).Select(i => i * (cache.Count - 1) / Math.Max(1, VerifiedRows - 1)).ToHashSet();
        var label = data.Schema[labelColumn];
        var feature = input.FindColumn(data.Schema);
        var pixels = new float[input.Shape.Size];
        using var cursor = data.GetRowCursor([label, feature]);
        var getLabel = cursor.GetGetter<uint>(label);
        var readPixels = input.CreateReader(cursor);
        uint key = 0;
        long cached = 0;
        while (cursor.MoveNext() && wanted.Count > 0)
        {
            getLabel(ref key);
            if (IsMissing(key, classCount))
                continue;
            if (wanted.Remove(cached))
            {
                readPixels(pixels);
                var (images, labels) = cache.Read([cached]);
                using (images)
                using (labels)
                {
                    if (labels.item<long>() != key - 1 || !images.data<float>().ToArray().AsSpan().SequenceEqual(pixels))
                        return false;
                }
            }
            cached++;
        }
        return wanted.Count == 0;
    }
}
