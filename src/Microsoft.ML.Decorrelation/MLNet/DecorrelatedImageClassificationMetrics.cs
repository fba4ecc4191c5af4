namespace Microsoft.ML.Decorrelation;

/// <summary>What <see cref="DecorrelatedImageClassificationTrainer"/> measured in one epoch.</summary>
public sealed class DecorrelatedImageClassificationMetrics
{
    /// <summary>The epoch, from 1.</summary>
    public int Epoch { get; init; }

    /// <summary>Mean cross-entropy of the epoch's training batches.</summary>
    public double TrainLoss { get; init; }

    /// <summary>Accuracy on the validation set after the epoch, or null without one.</summary>
    public double? ValidationAccuracy { get; init; }

    /// <summary>Training wall-clock seconds since the start of training (validation excluded).</summary>
    public double Seconds { get; init; }

    /// <summary>Mean decorrelation loss over all decorrelated layers in this epoch; null for plain backprop.</summary>
    public double? DecorrelationLoss { get; init; }

    /// <summary>Mean decorrelation loss of each decorrelated layer (by its path in the network); empty for plain backprop.</summary>
    public IReadOnlyDictionary<string, double> LayerDecorrelationLoss { get; init; } = new Dictionary<string, double>();

    /// <inheritdoc />
    public override string ToString()
        => $"Epoch {Epoch}: train loss {TrainLoss:F4}" +
           (ValidationAccuracy is double accuracy ? $", validation accuracy {accuracy:P2}" : "") +
           $", {Seconds:F1} s" + (DecorrelationLoss is double loss ? $", decorrelation loss {loss:E2}" : "");
}

/// <summary>Progress of one training step of <see cref="DecorrelatedImageClassificationTrainer"/>.</summary>
/// <param name="Epoch">The current epoch, from 1.</param>
/// <param name="Batch">Batches done in this epoch.</param>
/// <param name="BatchesPerEpoch">Batches in one epoch.</param>
/// <param name="Loss">This batch's training loss.</param>
/// <param name="Seconds">Training wall-clock seconds since the start of training.</param>
public readonly record struct DecorrelatedImageClassificationProgress(int Epoch, int Batch, int BatchesPerEpoch, double Loss, double Seconds);
