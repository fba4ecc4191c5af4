using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Decorrelation.Torch.Data;

/// <summary>
/// Random training-time augmentation of a batch: a random crop of the image padded by
/// <see cref="CropPadding"/> pixels on every side (a shift of up to that many pixels, the border
/// replicated) and a random horizontal flip. Each image of a batch gets its own draw.
/// </summary>
/// <remarks>
/// The draws depend only on (seed, epoch, batch), so a resumed run and every arm of a benchmark see the
/// same augmented images, on any device.
/// </remarks>
public sealed class ImageAugmentation
{
    /// <summary>Creates an augmentation.</summary>
    /// <param name="cropPadding">Pixels of padding before the random crop; 0 turns the crop off.</param>
    /// <param name="horizontalFlip">Whether to mirror each image left-right with probability ½.</param>
    /// <param name="seed">Seed of the draws.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="cropPadding"/> is negative.</exception>
    public ImageAugmentation(int cropPadding, bool horizontalFlip, int seed)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(cropPadding);
        CropPadding = cropPadding;
        HorizontalFlip = horizontalFlip;
        Seed = seed;
    }

    /// <summary>Pixels of padding before the random crop; 0 when the crop is off.</summary>
    public int CropPadding { get; }

    /// <summary>Whether images are mirrored left-right with probability ½.</summary>
    public bool HorizontalFlip { get; }

    /// <summary>Seed of the draws.</summary>
    public int Seed { get; }

    /// <summary>Whether <see cref="Apply"/> changes anything.</summary>
    public bool IsIdentity => CropPadding == 0 && !HorizontalFlip;

    /// <summary>
    /// The draws for a batch: each image's crop offsets in [0, 2·<see cref="CropPadding"/>] and whether it is
    /// flipped. An offset of <see cref="CropPadding"/> on both axes keeps the image where it was.
    /// </summary>
    public (int[] Top, int[] Left, bool[] Flip) Draw(int batchSize, int epoch, int batch)
    {
        var random = new Random(HashCode.Combine(Seed, epoch, batch, 0x5EED));
        var top = new int[batchSize];
        var left = new int[batchSize];
        var flip = new bool[batchSize];
        for (int i = 0; i < batchSize; i++)
        {
            top[i] = random.Next(2 * CropPadding + 1);
            left[i] = random.Next(2 * CropPadding + 1);
            flip[i] = HorizontalFlip && random.Next(2) == 1;
        }
        return (top, left, flip);
    }

    /// <summary>
    /// The augmented batch, as a new tensor on the images' device (or <paramref name="images"/> itself when
    /// <see cref="IsIdentity"/>); the draws are <see cref="Draw"/>(B, epoch, batch).
    /// </summary>
    /// <param name="images">(B, C, H, W) images.</param>
    /// <param name="epoch">The epoch (1-based), for the draws.</param>
    /// <param name="batch">The batch within the epoch (0-based), for the draws.</param>
    public Tensor Apply(Tensor images, int epoch, int batch)
    {
        ArgumentNullException.ThrowIfNull(images);
        if (images.dim() != 4)
            throw new ArgumentException($"Images must be (B, C, H, W); got shape [{string.Join(", ", images.shape)}].", nameof(images));
        if (IsIdentity)
            return images;
        long count = images.shape[0], channels = images.shape[1], height = images.shape[2], width = images.shape[3];
        var (top, left, flip) = Draw((int)count, epoch, batch);
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var device = images.device;
        int p = CropPadding;
        var padded = p == 0 ? images : nn.functional.pad(images, [p, p, p, p], PaddingModes.Replicate);
        // One gather picks each image's rows, a second its columns; a flip is a reversed column order.
        var rows = tensor(top, device: device).view(count, 1, 1, 1).to(ScalarType.Int64) + arange(height, device: device).view(1, 1, height, 1);
        var columnOrder = arange(width, device: device).view(1, width);
        var reversed = (width - 1) - columnOrder;
        var columns = where(tensor(flip, device: device).view(count, 1), reversed, columnOrder)
            + tensor(left, device: device).view(count, 1).to(ScalarType.Int64);
        var cropped = padded
            .gather(2, rows.expand(count, channels, height, padded.shape[3]))
            .gather(3, columns.view(count, 1, 1, width).expand(count, channels, height, width));
        return cropped.MoveToOuterDisposeScope();
    }
}
