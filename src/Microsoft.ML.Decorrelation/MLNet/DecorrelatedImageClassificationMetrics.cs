namespace Microsoft.ML.Decorrelation;

/// <summary>What <see cref="DecorrelatedImageClassificationTrainer"/> measured in one epoch.</summary>
public sealed class DecorrelatedImageClassificationMetrics
{
    /// <summary>Epochs done: 1, 2, … at the end of each epoch.</summary>
    public double Epoch { get; init; }

    /// <summary>Mean cross-entropy of the epoch's training batches.</summary>
    public double TrainLoss { get; init; }

    /// <summary>
    /// Accuracy on the epoch's training batches, each measured as the network was when it trained on that batch
    /// (augmented images, training mode), like PyTorch Lightning's running training accuracy.
    /// </summary>
    public double TrainAccuracy { get; init; }

    /// <summary>Accuracy on the validation set after the epoch, or null without one.</summary>
    public double? ValidationAccuracy { get; init; }

    /// <summary>
    /// Macro-accuracy on the validation set after the epoch (the mean over the classes present of each class's accuracy,
    /// as ML.NET's <c>MulticlassClassificationMetrics.MacroAccuracy</c>), or null without one.
    /// </summary>
    public double? ValidationMacroAccuracy { get; init; }

    /// <summary>Mean cross-entropy (log-loss) on the validation set after the epoch, or null without one.</summary>
    public double? ValidationLoss { get; init; }

    /// <summary>The learning rate of the weights at the epoch's last step.</summary>
    public double LearningRate { get; init; }

    /// <summary>The decorrelation learning rate η_R at the epoch's last step; null for plain backprop.</summary>
    public double? DecorrelationLearningRate { get; init; }

    /// <summary>
    /// The fraction of the epoch's updates of R whose step the stability cap lowered below η_R; null for plain
    /// backprop; NaN when no update ran in the epoch. Near 1 for many epochs means the cap, not <see cref="DecorrelationLearningRate"/>, sets the pace.
    /// </summary>
    public double? CappedUpdateFraction { get; init; }

    /// <summary>Training wall-clock seconds since the start of training (validation excluded).</summary>
    public double Seconds { get; init; }

    /// <summary>
    /// Mean decorrelation loss over all decorrelated layers in this epoch; null for plain backprop; NaN when no update of R
    /// ran in the epoch (an epoch of fewer steps than <c>DecorrelationUpdateInterval</c>).
    /// </summary>
    public double? DecorrelationLoss { get; init; }

    /// <summary>Mean decorrelation loss of each decorrelated layer (by its path in the network); empty for plain backprop.</summary>
    public IReadOnlyDictionary<string, double> LayerDecorrelationLoss { get; init; } = new Dictionary<string, double>();

    /// <inheritdoc />
    public override string ToString()
        => $"Epoch {Epoch:0.##}: train loss {TrainLoss:F4}, train accuracy {TrainAccuracy:P2}" +
           (ValidationAccuracy is double accuracy ? $", validation accuracy {accuracy:P2}, validation loss {ValidationLoss:F4}" : "") +
           $", learning rate {LearningRate:G3}, {Seconds:F1} s" +
           (DecorrelationLoss switch
           {
               null => "",
               // An epoch shorter than the update interval may hold no update of R (NaN), which is not a failure.
               double.NaN => $", no update of R this epoch, η_R {DecorrelationLearningRate:G3}",
               double loss => $", decorrelation loss {loss:E2}, η_R {DecorrelationLearningRate:G3}, capped {CappedUpdateFraction:P0}",
           });
}

/// <summary>Progress of one training step of <see cref="DecorrelatedImageClassificationTrainer"/>.</summary>
/// <param name="Epoch">The current epoch, from 1.</param>
/// <param name="Batch">Batches done in this epoch.</param>
/// <param name="BatchesPerEpoch">Batches in one epoch.</param>
/// <param name="Loss">This batch's training loss.</param>
/// <param name="Seconds">Training wall-clock seconds since the start of training.</param>
public readonly record struct DecorrelatedImageClassificationProgress(int Epoch, int Batch, int BatchesPerEpoch, double Loss, double Seconds);

/// <summary>Progress of the pass that decodes the training (or validation) images into the image cache.</summary>
/// <param name="Images">Images decoded so far.</param>
/// <param name="TotalRows">The input's row count when it knows it, else null.</param>
/// <param name="Seconds">Seconds since the pass began.</param>
public readonly record struct DecorrelatedImageClassificationDecodingProgress(long Images, long? TotalRows, double Seconds);
