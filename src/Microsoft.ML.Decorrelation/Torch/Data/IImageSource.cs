using static TorchSharp.torch;

namespace Microsoft.ML.Decorrelation.Torch.Data;

/// <summary>
/// Labelled images that training and evaluation read a batch at a time: held in memory (<see cref="ImageDataset"/>)
/// or streamed from a memory-mapped cache on disk (<see cref="ImageCache"/>).
/// </summary>
public interface IImageSource
{
    /// <summary>N, the number of images.</summary>
    long Count { get; }

    /// <summary>The number of classes.</summary>
    int ClassCount { get; }

    /// <summary>(C, H, W) of one image.</summary>
    (long Channels, long Height, long Width) ImageShape { get; }

    /// <summary>
    /// The images (B, C, H, W) float32, as the network takes them, and their labels (B) int64, of the given rows, on the
    /// CPU; new tensors the caller owns. Safe to call from another thread than the one training (a prefetcher).
    /// </summary>
    /// <param name="rows">Row numbers in [0, <see cref="Count"/>).</param>
    (Tensor Images, Tensor Labels) Read(ReadOnlySpan<long> rows);
}
