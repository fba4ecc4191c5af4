namespace Microsoft.ML.Decorrelation.Torch;

/// <summary>
/// Hyper-parameters of the decorrelation matrices that decorrelated backpropagation learns in front of
/// every convolution and linear layer.
/// </summary>
/// <remarks>
/// Each step, every decorrelated layer moves its matrix R by
/// <c>R ← R − η·[(1−κ)·C + κ·diag(v)]·R</c>, where C is the off-diagonal part of the second moment of
/// its decorrelated input and v the deviation of each variance from 1.
/// </remarks>
public sealed class DecorrelationOptions
{
    /// <summary>The default of <see cref="UpdateInterval"/>: 4. The default <see cref="LearningRate"/> is per update at this interval.</summary>
    public const int DefaultUpdateInterval = 4;

    /// <summary>
    /// Learning rate η of the decorrelation matrices, per update. Default 8e-3 (2e-3 per step on average at the default
    /// <see cref="UpdateInterval"/> of 4): with η following the step schedule, 4e-3 left the first layer only 8× less
    /// correlated after 6 epochs on 8,000 images, 8e-3 21× (docs/design.md, "Where this implementation differs").
    /// </summary>
    public double LearningRate { get; set; } = 8e-3;

    /// <summary>
    /// Weight κ ∈ [0, 1] of variance normalisation against decorrelation: 0 decorrelates only,
    /// 1 only normalises variances. Default 0.01, just enough to keep R stable.
    /// </summary>
    public double Kappa { get; set; } = 0.01;

    /// <summary>
    /// Fraction of each batch's samples, in (0, 1], whose patches feed a convolution's statistics.
    /// Default 0.03 (4 images of a batch of 128: thousands of patches).
    /// </summary>
    public double ConvolutionSampleFraction { get; set; } = 0.03;

    /// <summary>Fraction of each batch's rows, in (0, 1], that feed a linear layer's statistics. Default 0.25.</summary>
    public double LinearSampleFraction { get; set; } = 0.25;

    /// <summary>
    /// Update the matrices every this many steps (1 = every step). Steps in between skip the statistics
    /// entirely. Scale <see cref="LearningRate"/> with it to keep the same decorrelation speed. Default 4:
    /// on the small CNN it cut the mean step overhead from 1.44× to 1.16× with the same accuracy curve
    /// (docs/performance.md).
    /// </summary>
    public int UpdateInterval { get; set; } = DefaultUpdateInterval;

    /// <summary>
    /// Leave plain every layer whose input size D (C_in·kh·kw for a convolution) exceeds this; null (the
    /// default) decorrelates every layer. The W·R product costs O·D² per step, which dominates the step of
    /// wide layers on small feature maps (D = 4608 in ResNet-18's last stage).
    /// </summary>
    public int? MaxInputSize { get; set; }

    /// <summary>The default of <see cref="MaxBlockSize"/>: 576 (64 channels of a 3×3 convolution).</summary>
    public const int DefaultMaxBlockSize = 576;

    /// <summary>
    /// Make R block-diagonal in every layer whose input size D exceeds this: the input channels (features of a
    /// linear layer) are split into the fewest equal groups whose blocks of d = D/G fit, and only
    /// correlations within a group are removed. The W·R product then costs O·D·d instead of O·D², and the
    /// update G times less. Null keeps every R full. Default 576: on the small CNN (whose classifier's R becomes two
    /// blocks) it reached backprop's best accuracy sooner than a full R at a lower step cost (docs/performance.md).
    /// </summary>
    public int? MaxBlockSize { get; set; } = DefaultMaxBlockSize;

    /// <summary>
    /// Multiply <see cref="LearningRate"/> by the learning-rate schedule's current factor (the scheduled rate over the
    /// initial one), so that R slows down when the weights do. Default true: with a constant η, R kept whitening at
    /// full speed after each decay of the weights' rate and DBP's test accuracy fell back by 0.3–0.8 points on the
    /// small CNN (docs/performance.md); false keeps η constant.
    /// </summary>
    public bool FollowLearningRateSchedule { get; set; } = true;

    /// <summary>Returns a copy of these options.</summary>
    public DecorrelationOptions Clone() => (DecorrelationOptions)MemberwiseClone();

    /// <summary>Throws an <see cref="ArgumentOutOfRangeException"/> naming the first option out of range.</summary>
    public void Validate()
    {
        if (!(LearningRate > 0) || double.IsInfinity(LearningRate))
            throw new ArgumentOutOfRangeException(nameof(LearningRate), LearningRate, "The decorrelation learning rate must be positive and finite.");
        if (!(Kappa >= 0 && Kappa <= 1))
            throw new ArgumentOutOfRangeException(nameof(Kappa), Kappa, "Kappa must lie in [0, 1].");
        ValidateFraction(ConvolutionSampleFraction, nameof(ConvolutionSampleFraction));
        ValidateFraction(LinearSampleFraction, nameof(LinearSampleFraction));
        if (MaxInputSize is < 1)
            throw new ArgumentOutOfRangeException(nameof(MaxInputSize), MaxInputSize, "The largest decorrelated input size must be at least 1.");
        if (MaxBlockSize is < 1)
            throw new ArgumentOutOfRangeException(nameof(MaxBlockSize), MaxBlockSize, "The largest block of R must be at least 1.");
        if (UpdateInterval < 1)
            throw new ArgumentOutOfRangeException(nameof(UpdateInterval), UpdateInterval, "The update interval must be at least 1.");
    }

    private static void ValidateFraction(double value, string name)
    {
        if (!(value > 0 && value <= 1))
            throw new ArgumentOutOfRangeException(name, value, "A sample fraction must lie in (0, 1].");
    }
}
