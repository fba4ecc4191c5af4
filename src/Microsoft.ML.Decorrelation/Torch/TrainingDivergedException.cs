namespace Microsoft.ML.Decorrelation.Torch;

/// <summary>
/// Thrown when training produces a non-finite value: a decorrelation matrix, its loss, or the training
/// loss. A decorrelation matrix that would have become non-finite keeps its last finite value.
/// </summary>
public sealed class TrainingDivergedException : InvalidOperationException
{
    /// <summary>Creates the exception.</summary>
    /// <param name="message">What diverged and where.</param>
    /// <param name="layerName">The decorrelated layer at fault, or null when it is the training loss.</param>
    /// <param name="innerException">The exception that located the divergence, or null.</param>
    public TrainingDivergedException(string message, string? layerName = null, Exception? innerException = null)
        : base(message, innerException)
    {
        LayerName = layerName;
    }

    /// <summary>The decorrelated layer at fault, or null when the training loss itself diverged.</summary>
    public string? LayerName { get; }

    /// <summary>The epoch (1-based) in which training diverged, when known.</summary>
    public int? Epoch { get; init; }

    /// <summary>The step (1-based, counted over the whole run) at which training diverged, when known.</summary>
    public long? Step { get; init; }
}
