namespace Microsoft.ML.Decorrelation.Torch.Data;

/// <summary>
/// Per-channel mean and variance of images added one at a time, in double precision with Chan et al.'s pairwise merge
/// of (count, mean, sum of squared deviations): stable for millions of pixels, unlike a running sum of squares.
/// </summary>
internal sealed class ChannelStatisticsAccumulator(int channels)
{
    private readonly long[] _count = new long[channels];
    private readonly double[] _mean = new double[channels];
    private readonly double[] _squares = new double[channels];

    /// <summary>Adds one image, C planes of equal size, row-major.</summary>
    public void Add(ReadOnlySpan<float> image)
    {
        int plane = image.Length / channels;
        for (int c = 0; c < channels; c++)
        {
            var values = image.Slice(c * plane, plane);
            double sum = 0;
            foreach (float value in values)
                sum += value;
            double mean = sum / plane, squares = 0;
            foreach (float value in values)
                squares += (value - mean) * (value - mean);
            long total = _count[c] + plane;
            double delta = mean - _mean[c];
            _mean[c] += delta * plane / total;
            _squares[c] += squares + delta * delta * _count[c] * plane / total;
            _count[c] = total;
        }
    }

    /// <summary>The means and the unbiased standard deviations (as torch.std), in float32.</summary>
    public (float[] Mean, float[] StandardDeviation) Result()
        => (_mean.Select(m => (float)m).ToArray(),
            _squares.Select((s, c) => _count[c] > 1 ? (float)Math.Sqrt(s / (_count[c] - 1)) : 0f).ToArray());
}
