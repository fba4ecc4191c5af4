using System.Collections.Concurrent;
using static TorchSharp.torch;

namespace Microsoft.ML.Decorrelation.Torch.Data;

/// <summary>
/// Reads the batches of one epoch from an <see cref="IImageSource"/> on a background thread, a bounded number ahead of
/// the training thread, so that reading (from a memory-mapped cache: page-ins, conversion, standardisation) overlaps the
/// steps. Batches come in the order of the given permutation; with CUDA they are in pinned memory for asynchronous copies.
/// </summary>
internal sealed class BatchPrefetcher : IDisposable
{
    private readonly BlockingCollection<(Tensor Images, Tensor Labels)> _queue;
    private readonly CancellationTokenSource _stop = new();
    private readonly Thread _producer;
    private Exception? _failure;

    /// <param name="source">The images.</param>
    /// <param name="order">The rows in epoch order.</param>
    /// <param name="batchSize">Rows per batch; the last batch may be smaller.</param>
    /// <param name="pinMemory">Pin the batches' memory (for non-blocking copies to a GPU).</param>
    /// <param name="depth">Batches read ahead.</param>
    public BatchPrefetcher(IImageSource source, long[] order, int batchSize, bool pinMemory, int depth = 2)
    {
        _queue = new BlockingCollection<(Tensor, Tensor)>(depth);
        _producer = new Thread(() => Produce(source, order, batchSize, pinMemory)) { IsBackground = true, Name = "DBP batch prefetcher" };
        _producer.Start();
    }

    private void Produce(IImageSource source, long[] order, int batchSize, bool pinMemory)
    {
        try
        {
            for (int start = 0; start < order.Length && !_stop.IsCancellationRequested; start += batchSize)
            {
                var (images, labels) = source.Read(order.AsSpan(start, Math.Min(batchSize, order.Length - start)));
                if (pinMemory)
                {
                    var pinned = (images.pin_memory(), labels.pin_memory());
                    images.Dispose();
                    labels.Dispose();
                    (images, labels) = pinned;
                }
                try
                {
                    _queue.Add((images, labels), _stop.Token);
                }
                catch (OperationCanceledException)
                {
                    images.Dispose();
                    labels.Dispose();
                }
            }
        }
        catch (Exception e)
        {
            _failure = e;
        }
        finally
        {
            _queue.CompleteAdding();
        }
    }

    /// <summary>The next batch (the caller owns and disposes it); waits for the reader when it is behind.</summary>
    /// <exception cref="InvalidOperationException">The epoch has no more batches.</exception>
    /// <exception cref="IOException">Reading failed; the reader's exception is the inner one.</exception>
    public (Tensor Images, Tensor Labels) Next()
    {
        if (_queue.TryTake(out var batch, Timeout.Infinite))
            return batch;
        if (_failure is not null)
            throw new IOException($"Reading a training batch failed: {_failure.Message}", _failure);
        throw new InvalidOperationException("The epoch has no more batches.");
    }

    /// <summary>Stops the reader and releases the batches it read ahead.</summary>
    public void Dispose()
    {
        _stop.Cancel();
        while (_queue.TryTake(out var batch))
        {
            batch.Images.Dispose();
            batch.Labels.Dispose();
        }
        _producer.Join();
        while (_queue.TryTake(out var batch))
        {
            batch.Images.Dispose();
            batch.Labels.Dispose();
        }
        _queue.Dispose();
        _stop.Dispose();
    }
}
