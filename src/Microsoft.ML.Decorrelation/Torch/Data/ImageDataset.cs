using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Decorrelation.Torch.Data;

/// <summary>
/// Labelled images held in memory as tensors: images (N, C, H, W) float32 and labels (N) int64 class
/// indices. The dataset owns both tensors.
/// </summary>
public sealed class ImageDataset : IImageSource, IDisposable
{
    /// <summary>Takes ownership of <paramref name="images"/> and <paramref name="labels"/>.</summary>
    /// <param name="images">Float32 images, (N, C, H, W).</param>
    /// <param name="labels">Int64 class indices in [0, <paramref name="classCount"/>), (N).</param>
    /// <param name="classCount">The number of classes, which may exceed the classes present.</param>
    /// <exception cref="ArgumentException">The shapes, types or labels do not fit.</exception>
    public ImageDataset(Tensor images, Tensor labels, int classCount)
    {
        if (images.dim() != 4)
            throw new ArgumentException($"Images must be (N, C, H, W); got shape [{string.Join(", ", images.shape)}].", nameof(images));
        if (images.dtype != ScalarType.Float32)
            throw new ArgumentException($"Images must be float32, not {images.dtype}.", nameof(images));
        if (labels.dim() != 1 || labels.shape[0] != images.shape[0] || labels.dtype != ScalarType.Int64)
            throw new ArgumentException($"Labels must be an int64 vector with one entry per image ({images.shape[0]}).", nameof(labels));
        if (classCount < 1)
            throw new ArgumentOutOfRangeException(nameof(classCount), classCount, "There must be at least one class.");
        if (labels.numel() > 0)
        {
            long min = labels.min().item<long>(), max = labels.max().item<long>();
            if (min < 0 || max >= classCount)
                throw new ArgumentException($"Labels must lie in [0, {classCount}); found values from {min} to {max}.", nameof(labels));
        }
        Images = images;
        Labels = labels;
        ClassCount = classCount;
    }

    /// <summary>Images, (N, C, H, W) float32.</summary>
    public Tensor Images { get; }

    /// <summary>Class indices, (N) int64.</summary>
    public Tensor Labels { get; }

    /// <summary>The number of classes.</summary>
    public int ClassCount { get; }

    /// <summary>N, the number of images.</summary>
    public long Count => Images.shape[0];

    /// <summary>(C, H, W) of one image.</summary>
    public (long Channels, long Height, long Width) ImageShape => (Images.shape[1], Images.shape[2], Images.shape[3]);

    /// <inheritdoc />
    public (Tensor Images, Tensor Labels) Read(ReadOnlySpan<long> rows)
    {
        using var indices = tensor(rows.ToArray());
        return (Images.index_select(0, indices), Labels.index_select(0, indices));
    }

    /// <summary>The mean and standard deviation of each channel over all images and pixels.</summary>
    public (float[] Mean, float[] StandardDeviation) ChannelStatistics()
    {
        using var scope = NewDisposeScope();
        var perChannel = Images.transpose(0, 1).reshape(Images.shape[1], -1).to(ScalarType.Float64);
        return (perChannel.mean([1]).to(ScalarType.Float32).data<float>().ToArray(),
                perChannel.std(1).to(ScalarType.Float32).data<float>().ToArray());
    }

    /// <summary>Standardises the images in place: each channel c becomes (x − mean[c]) / standardDeviation[c].</summary>
    /// <exception cref="ArgumentException">The arrays do not have one positive entry per channel.</exception>
    public void Normalize(float[] mean, float[] standardDeviation)
    {
        long channels = Images.shape[1];
        CheckStandardization(mean, standardDeviation, channels);
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        Images.sub_(tensor(mean).view(1, channels, 1, 1)).div_(tensor(standardDeviation).view(1, channels, 1, 1));
    }

    /// <summary>Checks that there is one mean and one positive, finite standard deviation per channel.</summary>
    /// <exception cref="ArgumentException">They do not fit.</exception>
    internal static void CheckStandardization(float[] mean, float[] standardDeviation, long channels)
    {
        if (mean.Length != channels || standardDeviation.Length != channels)
            throw new ArgumentException($"Standardisation needs one mean and one standard deviation per channel ({channels}).");
        if (standardDeviation.Any(s => !(s > 0) || !float.IsFinite(s)))
            throw new ArgumentException("Every standard deviation must be positive and finite.", nameof(standardDeviation));
    }

    /// <summary>A new dataset holding the images at <paramref name="start"/>, …, start + count − 1.</summary>
    public ImageDataset Slice(long start, long count)
        => new(Images.narrow(0, start, count).clone(), Labels.narrow(0, start, count).clone(), ClassCount);

    /// <summary>
    /// Loads an MNIST-format pair of IDX files (images N×H×W bytes, labels N bytes) as one-channel images
    /// scaled to [0, 1].
    /// </summary>
    /// <param name="imagesPath">The images file, plain or gzipped.</param>
    /// <param name="labelsPath">The labels file, plain or gzipped.</param>
    /// <param name="classCount">The number of classes (10 for MNIST and Fashion-MNIST).</param>
    /// <param name="limit">Load at most this many images (the first ones); null for all.</param>
    /// <exception cref="InvalidDataException">The files are not IDX or do not fit together.</exception>
    public static ImageDataset FromIdx(string imagesPath, string labelsPath, int classCount = 10, int? limit = null)
    {
        var images = IdxReader.Read(imagesPath);
        var labels = IdxReader.Read(labelsPath);
        if (images.Dimensions.Length != 3)
            throw new InvalidDataException($"'{imagesPath}' must hold an N×H×W array, not {images.Dimensions.Length} dimensions.");
        if (labels.Dimensions.Length != 1 || labels.Dimensions[0] != images.Dimensions[0])
            throw new InvalidDataException($"'{labelsPath}' must hold one label per image of '{imagesPath}' ({images.Dimensions[0]}).");
        int n = Math.Min(images.Dimensions[0], limit ?? int.MaxValue);
        int height = images.Dimensions[1], width = images.Dimensions[2];
        using var scope = NewDisposeScope();
        using var numbers = new KeptScalars();
        var pixels = tensor(images.Data.AsSpan(0, n * height * width).ToArray(), [n, 1, height, width])
            .to(ScalarType.Float32).div_(numbers[255]);
        var classes = tensor(labels.Data.AsSpan(0, n).ToArray(), [n]).to(ScalarType.Int64);
        long max = n == 0 ? 0 : classes.max().item<long>();
        if (max >= classCount)
            throw new InvalidDataException($"'{labelsPath}' holds label {max}, outside the {classCount} classes.");
        return new ImageDataset(pixels.DetachFromDisposeScope(), classes.DetachFromDisposeScope(), classCount);
    }

    /// <inheritdoc />
    public void Dispose()
    {
        Images.Dispose();
        Labels.Dispose();
    }
}
