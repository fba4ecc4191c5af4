namespace Microsoft.ML.Decorrelation.Torch.Training;

/// <summary>What <see cref="NetworkTrainer"/> measured up to one evaluation point.</summary>
public sealed record TrainingMetrics
{
    /// <summary>Epochs done at this point: 1, 2, … at epoch ends; fractions (0.5, …) between.</summary>
    public required double Epoch { get; init; }

    /// <summary>Steps done at this point, over the whole run.</summary>
    public required long Step { get; init; }

    /// <summary>Whether this point closes an epoch.</summary>
    public bool IsEpochEnd => Math.Abs(Epoch - Math.Round(Epoch)) < 1e-9;

    /// <summary>Mean training loss of the steps since the previous point.</summary>
    public required double TrainLoss { get; init; }

    /// <summary>
    /// Accuracy on the training batches since the previous point, each measured by the network as it was at that
    /// batch (in training mode, on augmented images), as PyTorch Lightning's running training accuracy.
    /// </summary>
    public double TrainAccuracy { get; init; }

    /// <summary>Test accuracy at this point, or null when no test set was given.</summary>
    public double? TestAccuracy { get; init; }

    /// <summary>Macro-accuracy (the mean of the per-class accuracies) on the test set at this point, or null when no test set was given.</summary>
    public double? TestMacroAccuracy { get; init; }

    /// <summary>Mean cross-entropy on the test set at this point, or null when no test set was given.</summary>
    public double? TestLoss { get; init; }

    /// <summary>Training wall-clock seconds since the start of the run (evaluation time excluded).</summary>
    public required double TrainingSeconds { get; init; }

    /// <summary>The learning rate of the last step.</summary>
    public required double LearningRate { get; init; }

    /// <summary>
    /// The decorrelation learning rate η_R of the last step (of the first decorrelated layer, after the schedule and any
    /// divergence halving), or null for plain backpropagation.
    /// </summary>
    public double? DecorrelationLearningRate { get; init; }

    /// <summary>
    /// The fraction of R's block updates since the previous point whose step the stability cap lowered; NaN when R
    /// was not updated, null for plain backpropagation. Near 1 for long, the cap rather than η_R sets the pace.
    /// </summary>
    public double? CappedUpdateFraction { get; init; }

    /// <summary>
    /// Mean decorrelation loss of each decorrelated layer (by path) over the updates since the previous
    /// point; empty for plain backpropagation.
    /// </summary>
    public required IReadOnlyDictionary<string, double> DecorrelationLoss { get; init; }
}

/// <summary>What <see cref="NetworkTrainer.Measure"/> found on a labelled set.</summary>
/// <param name="Accuracy">The fraction of images classified correctly (micro-accuracy).</param>
/// <param name="MacroAccuracy">The mean over the classes present of the fraction of that class classified correctly.</param>
/// <param name="Loss">The mean cross-entropy (log-loss).</param>
public readonly record struct EvaluationMeasures(double Accuracy, double MacroAccuracy, double Loss);

/// <summary>Progress of one training step, for progress bars.</summary>
/// <param name="Epoch">The current epoch (1-based).</param>
/// <param name="Batch">Batches done in this epoch.</param>
/// <param name="BatchesPerEpoch">Batches in one epoch.</param>
/// <param name="Loss">The training loss of this step.</param>
/// <param name="TrainingSeconds">Training wall-clock seconds since the start of the run.</param>
public readonly record struct StepProgress(int Epoch, int Batch, int BatchesPerEpoch, double Loss, double TrainingSeconds);
