using System.Runtime.InteropServices;
using System.Text.Json;

namespace Microsoft.ML.Decorrelation.Torch.Data;

/// <summary>
/// Writes an <see cref="ImageCache"/> one image at a time. Values are stored as bytes while every value seen is an
/// integer in [0, 255]; the first value that is not converts what was written to float32 and continues in float32.
/// Disposing a writer that was not completed deletes its files: nothing partial is left behind.
/// </summary>
public sealed class ImageCacheWriter : IDisposable
{
    private const string ImagesPart = ImageCache.ImagesFile + ".part";

    private readonly int _channels, _height, _width, _classCount, _size;
    private readonly ChannelStatisticsAccumulator _statistics;
    private readonly List<int> _labels = [];
    private readonly byte[] _bytes;
    private FileStream _images;
    private bool _storesBytes = true;
    private bool _completed;

    /// <summary>Starts a cache in <paramref name="folder"/> (created if missing; a previous cache there is replaced).</summary>
    /// <exception cref="IOException">The folder cannot be written; the message names it.</exception>
    public ImageCacheWriter(string folder, int channels, int height, int width, int classCount)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(channels, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(height, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(width, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(classCount, 1);
        Folder = folder;
        (_channels, _height, _width, _classCount) = (channels, height, width, classCount);
        _size = checked(channels * height * width);
        _statistics = new ChannelStatisticsAccumulator(channels);
        _bytes = new byte[_size];
        try
        {
            Directory.CreateDirectory(folder);
            File.Delete(Path.Combine(folder, ImageCache.InfoFile));
            _images = new FileStream(Path.Combine(folder, ImagesPart), FileMode.Create, FileAccess.ReadWrite, FileShare.None, 1 << 20);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new IOException($"The image cache folder '{folder}' cannot be written: {e.Message}", e);
        }
    }

    /// <summary>The folder being written.</summary>
    public string Folder { get; }

    /// <summary>Images written so far.</summary>
    public long Count => _labels.Count;

    /// <summary>Appends one image (C·H·W values, row-major) and its class index.</summary>
    /// <exception cref="InvalidDataException">A value is not finite, or the label is out of range; the message gives the image's number.</exception>
    /// <exception cref="IOException">The disk is full or the folder became unwritable; the message names the folder and the size needed.</exception>
    public void Append(ReadOnlySpan<float> image, int label)
    {
        if (image.Length != _size)
            throw new ArgumentException($"An image must have {_size} values, not {image.Length}.", nameof(image));
        if ((uint)label >= (uint)_classCount)
            throw new InvalidDataException($"Image {Count}: label {label} lies outside [0, {_classCount}).");
        bool bytes = _storesBytes;
        for (int i = 0; i < image.Length; i++)
        {
            float value = image[i];
            if (!float.IsFinite(value))
                throw new InvalidDataException($"Image {Count}: pixel value {i} is {value}.");
            if (bytes && (value < 0 || value > 255 || value != MathF.Round(value)))
                bytes = false;
        }
        try
        {
            if (_storesBytes && !bytes)
                ConvertToFloats();
            if (_storesBytes)
            {
                for (int i = 0; i < image.Length; i++)
                    _bytes[i] = (byte)image[i];
                _images.Write(_bytes);
            }
            else
            {
                _images.Write(MemoryMarshal.AsBytes(image));
            }
        }
        catch (IOException e)
        {
            throw new IOException($"Writing the image cache in '{Folder}' failed after {Count} images ({(Count + 1) * (long)_size * (_storesBytes ? 1 : 4):N0} bytes needed so far): {e.Message}", e);
        }
        _statistics.Add(image);
        _labels.Add(label);
    }

    // The bytes written so far become float32 values in a new file.
    private void ConvertToFloats()
    {
        _images.Flush();
        string floats = Path.Combine(Folder, ImagesPart + ".float");
        using (var target = new FileStream(floats, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 20))
        {
            _images.Position = 0;
            var row = new float[_size];
            for (long i = 0; i < Count; i++)
            {
                _images.ReadExactly(_bytes);
                for (int p = 0; p < _size; p++)
                    row[p] = _bytes[p];
                target.Write(MemoryMarshal.AsBytes(row.AsSpan()));
            }
        }
        _images.Dispose();
        File.Move(floats, Path.Combine(Folder, ImagesPart), overwrite: true);
        _images = new FileStream(Path.Combine(Folder, ImagesPart), FileMode.Append, FileAccess.Write, FileShare.None, 1 << 20);
        _storesBytes = false;
    }

    /// <summary>Writes the labels and the description, and opens the finished cache.</summary>
    /// <param name="fingerprint">What identifies the source data (kept in <c>cache.json</c>), or null.</param>
    /// <param name="deleteOnDispose">Delete the folder when the returned cache is disposed.</param>
    public ImageCache Complete(string? fingerprint = null, bool deleteOnDispose = false)
    {
        ObjectDisposedException.ThrowIf(_completed, this);
        var (mean, deviation) = _statistics.Result();
        var info = new ImageCacheInfo
        {
            Count = Count, Channels = _channels, Height = _height, Width = _width, ClassCount = _classCount,
            BytesPerValue = _storesBytes ? 1 : 4, Mean = mean, StandardDeviation = deviation, Fingerprint = fingerprint,
        };
        try
        {
            _images.Dispose();
            File.Move(Path.Combine(Folder, ImagesPart), Path.Combine(Folder, ImageCache.ImagesFile), overwrite: true);
            File.WriteAllBytes(Path.Combine(Folder, ImageCache.LabelsFile), MemoryMarshal.AsBytes(CollectionsMarshal.AsSpan(_labels)).ToArray());
            File.WriteAllText(Path.Combine(Folder, ImageCache.InfoFile), JsonSerializer.Serialize(info));
        }
        catch (IOException e)
        {
            throw new IOException($"Finishing the image cache in '{Folder}' failed: {e.Message}", e);
        }
        _completed = true;
        return ImageCache.Open(Folder, deleteOnDispose);
    }

    /// <summary>Closes the files; deletes them when <see cref="Complete"/> was not reached.</summary>
    public void Dispose()
    {
        _images.Dispose();
        if (_completed)
            return;
        _completed = true;
        foreach (var name in new[] { ImagesPart, ImagesPart + ".float", ImageCache.ImagesFile, ImageCache.LabelsFile, ImageCache.InfoFile })
            File.Delete(Path.Combine(Folder, name));
        if (Directory.Exists(Folder) && !Directory.EnumerateFileSystemEntries(Folder).Any())
            Directory.Delete(Folder);
    }
}
