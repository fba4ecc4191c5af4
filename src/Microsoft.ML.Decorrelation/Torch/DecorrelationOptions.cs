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
    /// <summary>Learning rate η of the decorrelation matrices. Default 1e-3.</summary>
    public double LearningRate { get; set; } = 1e-3;

    /// <summary>
    /// Weight κ ∈ [0, 1] of variance normalisation against decorrelation: 0 decorrelates only,
    /// 1 only normalises variances. Default 0.01, just enough to keep R stable.
    /// </summary>
    public double Kappa { get; set; } = 0.01;

    /// <summary>
    /// Fraction of each batch's samples, in (0, 1], whose patches feed a convolution's statistics.
    /// Default 0.1.
    /// </summary>
    public double ConvolutionSampleFraction { get; set; } = 0.1;

    /// <summary>Fraction of each batch's rows, in (0, 1], that feed a linear layer's statistics. Default 1.</summary>
    public double LinearSampleFraction { get; set; } = 1.0;

    /// <summary>
    /// Update the matrices every this many steps (1 = every step). Steps in between skip the statistics
    /// entirely. Scale <see cref="LearningRate"/> with it to keep the same decorrelation speed. Default 1.
    /// </summary>
    public int UpdateInterval { get; set; } = 1;

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
        if (UpdateInterval < 1)
            throw new ArgumentOutOfRangeException(nameof(UpdateInterval), UpdateInterval, "The update interval must be at least 1.");
    }

    private static void ValidateFraction(double value, string name)
    {
        if (!(value > 0 && value <= 1))
            throw new ArgumentOutOfRangeException(name, value, "A sample fraction must lie in (0, 1].");
    }
}
