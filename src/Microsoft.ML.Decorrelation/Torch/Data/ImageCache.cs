using System.IO.MemoryMappedFiles;
using System.Text.Json;
using static TorchSharp.torch;

namespace Microsoft.ML.Decorrelation.Torch.Data;

/// <summary>
/// Decoded images on disk, memory-mapped and read a batch at a time, so that training needs memory for a few batches
/// whatever the number of images. Written once by <see cref="ImageCacheWriter"/>: one byte per pixel value when every
/// value is an integer in [0, 255] (8-bit sources), four (float32) otherwise; labels beside them; the per-channel mean
/// and standard deviation of the whole set.
/// </summary>
/// <remarks>
/// Files in <see cref="Folder"/>: <c>images.bin</c> (N·C·H·W values, row-major), <c>labels.bin</c> (N int32 class
/// indices) and <c>cache.json</c> (<see cref="ImageCacheInfo"/>), written last: a folder without it is incomplete.
/// <see cref="Read"/> returns images standardised by <see cref="Standardize"/> (raw values until it is called).
/// </remarks>
public sealed class ImageCache : IImageSource, IDisposable
{
    internal const string ImagesFile = "images.bin", LabelsFile = "labels.bin", InfoFile = "cache.json";

    private readonly MemoryMappedFile _file;
    private readonly MemoryMappedViewAccessor _view;
    private readonly int[] _labels;
    private readonly bool _deleteOnDispose;
    private float[] _mean, _scale;
    private bool _disposed;

    private ImageCache(string folder, ImageCacheInfo info, int[] labels, bool deleteOnDispose)
    {
        Folder = folder;
        Info = info;
        _labels = labels;
        _deleteOnDispose = deleteOnDispose;
        _mean = new float[info.Channels];
        _scale = Enumerable.Repeat(1f, info.Channels).ToArray();
        long bytes = info.Count * info.ImageSize * info.BytesPerValue;
        if (bytes == 0)
        {
            _file = MemoryMappedFile.CreateNew(null, 1);
            _view = _file.CreateViewAccessor(0, 1, MemoryMappedFileAccess.Read);
            return;
        }
        _file = MemoryMappedFile.CreateFromFile(Path.Combine(folder, ImagesFile), FileMode.Open, null, 0, MemoryMappedFileAccess.Read);
        _view = _file.CreateViewAccessor(0, bytes, MemoryMappedFileAccess.Read);
    }

    /// <summary>Opens the complete cache in <paramref name="folder"/>.</summary>
    /// <param name="folder">A folder written by <see cref="ImageCacheWriter"/>.</param>
    /// <param name="deleteOnDispose">Delete the folder when the cache is disposed (a temporary cache).</param>
    /// <exception cref="InvalidDataException">The folder holds no complete cache, or its files do not fit its description.</exception>
    public static ImageCache Open(string folder, bool deleteOnDispose = false)
    {
        string infoPath = Path.Combine(folder, InfoFile);
        if (!File.Exists(infoPath))
            throw new InvalidDataException($"'{folder}' holds no complete image cache (no {InfoFile}).");
        ImageCacheInfo info;
        try
        {
            info = JsonSerializer.Deserialize<ImageCacheInfo>(File.ReadAllText(infoPath))
                ?? throw new InvalidDataException($"'{infoPath}' is empty.");
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"'{infoPath}' is damaged: {e.Message}", e);
        }
        if (info.Version != ImageCacheInfo.CurrentVersion || info.Count < 0 || info.Channels < 1 || info.Height < 1 || info.Width < 1
            || info.BytesPerValue is not (1 or 4) || info.Mean.Length != info.Channels || info.StandardDeviation.Length != info.Channels)
            throw new InvalidDataException($"'{infoPath}' describes no cache of this version.");
        long expected = info.Count * info.ImageSize * info.BytesPerValue;
        var images = new FileInfo(Path.Combine(folder, ImagesFile));
        var labelsFile = new FileInfo(Path.Combine(folder, LabelsFile));
        if (!images.Exists || images.Length != expected || !labelsFile.Exists || labelsFile.Length != info.Count * sizeof(int))
            throw new InvalidDataException($"The image cache in '{folder}' is damaged: {ImagesFile} or {LabelsFile} does not have the size {InfoFile} gives.");
        var labels = new int[info.Count];
        using (var stream = labelsFile.OpenRead())
            stream.ReadExactly(System.Runtime.InteropServices.MemoryMarshal.AsBytes(labels.AsSpan()));
        if (labels.Any(label => label < 0 || label >= info.ClassCount))
            throw new InvalidDataException($"The image cache in '{folder}' holds labels outside [0, {info.ClassCount}).");
        return new ImageCache(folder, info, labels, deleteOnDispose);
    }

    /// <summary>The folder of the cache files.</summary>
    public string Folder { get; }

    /// <summary>What <c>cache.json</c> says: counts, shape, storage type, statistics, fingerprint.</summary>
    public ImageCacheInfo Info { get; }

    /// <inheritdoc />
    public long Count => Info.Count;

    /// <inheritdoc />
    public int ClassCount => Info.ClassCount;

    /// <inheritdoc />
    public (long Channels, long Height, long Width) ImageShape => (Info.Channels, Info.Height, Info.Width);

    /// <summary>Whether pixel values are stored as bytes (every value an integer in [0, 255]) rather than float32.</summary>
    public bool StoresBytes => Info.BytesPerValue == 1;

    /// <summary>The class index of row <paramref name="row"/>.</summary>
    public int Label(long row) => _labels[row];

    /// <summary>
    /// From now on <see cref="Read"/> returns each channel c as (x − mean[c]) / standardDeviation[c], computed in float32
    /// as <see cref="ImageDataset.Normalize"/> does, so both give the same numbers.
    /// </summary>
    /// <exception cref="ArgumentException">The arrays do not have one positive, finite entry per channel.</exception>
    public void Standardize(float[] mean, float[] standardDeviation)
    {
        ImageDataset.CheckStandardization(mean, standardDeviation, Info.Channels);
        _mean = (float[])mean.Clone();
        _scale = (float[])standardDeviation.Clone();
    }

    /// <inheritdoc />
    public (Tensor Images, Tensor Labels) Read(ReadOnlySpan<long> rows)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        int size = Info.ImageSize, plane = Info.Height * Info.Width;
        var pixels = new float[rows.Length * size];
        var labels = new long[rows.Length];
        var bytes = StoresBytes ? new byte[size] : null;
        for (int i = 0; i < rows.Length; i++)
        {
            long row = rows[i];
            if ((ulong)row >= (ulong)Info.Count)
                throw new ArgumentOutOfRangeException(nameof(rows), row, $"The cache holds rows 0 to {Info.Count - 1}.");
            var image = pixels.AsSpan(i * size, size);
            if (bytes is not null)
            {
                _view.ReadArray(row * size, bytes, 0, size);
                for (int p = 0; p < size; p++)
                    image[p] = bytes[p];
            }
            else
            {
                _view.ReadArray(row * size * sizeof(float), pixels, i * size, size);
            }
            for (int c = 0; c < Info.Channels; c++)
            {
                float mean = _mean[c], scale = _scale[c];
                foreach (ref float value in image.Slice(c * plane, plane))
                    value = (value - mean) / scale;
            }
            labels[i] = _labels[row];
        }
        return (tensor(pixels, [rows.Length, Info.Channels, Info.Height, Info.Width]), tensor(labels, [rows.Length]));
    }

    /// <summary>
    /// The per-channel mean and standard deviation (unbiased, as torch.std) of the given rows, in one chunked pass with
    /// Chan's numerically stable merge; of every row without re-reading when <paramref name="rows"/> is null.
    /// </summary>
    public (float[] Mean, float[] StandardDeviation) ChannelStatistics(IReadOnlyList<long>? rows = null)
    {
        if (rows is null)
            return ((float[])Info.Mean.Clone(), (float[])Info.StandardDeviation.Clone());
        var statistics = new ChannelStatisticsAccumulator(Info.Channels);
        var (mean, scale) = (_mean, _scale);
        _mean = new float[Info.Channels];
        _scale = Enumerable.Repeat(1f, Info.Channels).ToArray();
        try
        {
            const int chunk = 256;
            var buffer = new long[chunk];
            for (int start = 0; start < rows.Count; start += chunk)
            {
                int count = Math.Min(chunk, rows.Count - start);
                for (int i = 0; i < count; i++)
                    buffer[i] = rows[start + i];
                var (images, labels) = Read(buffer.AsSpan(0, count));
                using (images)
                using (labels)
                {
                    var values = images.data<float>().ToArray();
                    for (int i = 0; i < count; i++)
                        statistics.Add(values.AsSpan(i * Info.ImageSize, Info.ImageSize));
                }
            }
        }
        finally
        {
            (_mean, _scale) = (mean, scale);
        }
        return statistics.Result();
    }

    /// <summary>The rows <paramref name="rows"/> of this cache as a source of their own (for a held-out split).</summary>
    public IImageSource Subset(long[] rows) => new CacheSubset(this, rows);

    /// <summary>Unmaps the files; deletes the folder when the cache is temporary.</summary>
    public void Dispose()
    {
        if (_disposed)
            return;
        _disposed = true;
        _view.Dispose();
        _file.Dispose();
        if (_deleteOnDispose && Directory.Exists(Folder))
            Directory.Delete(Folder, recursive: true);
    }

    private sealed class CacheSubset(ImageCache cache, long[] rows) : IImageSource
    {
        public long Count => rows.Length;

        public int ClassCount => cache.ClassCount;

        public (long Channels, long Height, long Width) ImageShape => cache.ImageShape;

        public (Tensor Images, Tensor Labels) Read(ReadOnlySpan<long> subsetRows)
        {
            var mapped = new long[subsetRows.Length];
            for (int i = 0; i < mapped.Length; i++)
                mapped[i] = rows[subsetRows[i]];
            return cache.Read(mapped);
        }
    }
}

/// <summary>The description of an <see cref="ImageCache"/>, stored as <c>cache.json</c>.</summary>
public sealed record ImageCacheInfo
{
    /// <summary>The format this version writes and reads.</summary>
    public const int CurrentVersion = 1;

    /// <summary>The cache format.</summary>
    public int Version { get; init; } = CurrentVersion;

    /// <summary>N, the number of images.</summary>
    public long Count { get; init; }

    /// <summary>Channels of one image.</summary>
    public int Channels { get; init; }

    /// <summary>Height of one image.</summary>
    public int Height { get; init; }

    /// <summary>Width of one image.</summary>
    public int Width { get; init; }

    /// <summary>The number of classes.</summary>
    public int ClassCount { get; init; }

    /// <summary>1 when pixel values are stored as bytes, 4 for float32.</summary>
    public int BytesPerValue { get; init; }

    /// <summary>The mean of each channel over every image.</summary>
    public float[] Mean { get; init; } = [];

    /// <summary>The standard deviation (unbiased) of each channel over every image.</summary>
    public float[] StandardDeviation { get; init; } = [];

    /// <summary>What the writer was told identifies the source data, or null.</summary>
    public string? Fingerprint { get; init; }

    /// <summary>C·H·W, the values of one image.</summary>
    [System.Text.Json.Serialization.JsonIgnore]
    public int ImageSize => checked(Channels * Height * Width);
}
