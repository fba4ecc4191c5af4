using Microsoft.ML.Decorrelation.MLNet.Internals;

namespace Microsoft.ML.Decorrelation;

/// <summary>Adds <see cref="DecorrelatedImageClassificationTrainer"/> to <c>mlContext.MulticlassClassification.Trainers</c>.</summary>
public static class DecorrelatedCatalog
{
    /// <summary>
    /// A multiclass image classifier: a CNN trained with decorrelated backpropagation.
    /// </summary>
    /// <param name="catalog">The multiclass classification trainers catalog.</param>
    /// <param name="labelColumnName">The label column: a key type.</param>
    /// <param name="featureColumnName">Pixels (ExtractPixels), an image (LoadImages) or encoded image bytes (LoadRawImageBytes).</param>
    /// <param name="scoreColumnName">The output column of class probabilities.</param>
    /// <param name="predictedLabelColumnName">The output column of predicted label keys.</param>
    /// <param name="maxEpoch">Passes over the training data; null for the default of <see cref="DecorrelatedImageClassificationTrainer.Options.MaxEpoch"/>.</param>
    /// <param name="batchSize">Images per training step; null for the default of <see cref="DecorrelatedImageClassificationTrainer.Options.BatchSize"/>.</param>
    /// <param name="validationSet">Data to report accuracy on after each epoch, or null.</param>
    /// <example>
    /// <code>
    /// var pipeline = ml.Transforms.Conversion.MapValueToKey("Label")
    ///     .Append(ml.Transforms.LoadImages("Image", imageFolder, "ImagePath"))
    ///     .Append(ml.Transforms.ResizeImages("Image", 28, 28))
    ///     .Append(ml.Transforms.ExtractPixels("Features", "Image"))
    ///     .Append(ml.MulticlassClassification.Trainers.DecorrelatedImageClassification())
    ///     .Append(ml.Transforms.Conversion.MapKeyToValue("PredictedLabel"));
    /// </code>
    /// </example>
    public static DecorrelatedImageClassificationTrainer DecorrelatedImageClassification(
        this MulticlassClassificationCatalog.MulticlassClassificationTrainers catalog,
        string labelColumnName = "Label",
        string featureColumnName = "Features",
        string scoreColumnName = "Score",
        string predictedLabelColumnName = "PredictedLabel",
        int? maxEpoch = null,
        int? batchSize = null,
        IDataView? validationSet = null)
    {
        var options = new DecorrelatedImageClassificationTrainer.Options
        {
            LabelColumnName = labelColumnName,
            FeatureColumnName = featureColumnName,
            ScoreColumnName = scoreColumnName,
            PredictedLabelColumnName = predictedLabelColumnName,
            ValidationSet = validationSet,
        };
        options.MaxEpoch = maxEpoch ?? options.MaxEpoch;
        options.BatchSize = batchSize ?? options.BatchSize;
        return DecorrelatedImageClassification(catalog, options);
    }

    /// <summary>A multiclass image classifier trained with decorrelated backpropagation, with all options.</summary>
    /// <param name="catalog">The multiclass classification trainers catalog.</param>
    /// <param name="options">The trainer's options.</param>
    public static DecorrelatedImageClassificationTrainer DecorrelatedImageClassification(
        this MulticlassClassificationCatalog.MulticlassClassificationTrainers catalog,
        DecorrelatedImageClassificationTrainer.Options options)
    {
        ArgumentNullException.ThrowIfNull(catalog);
        ArgumentNullException.ThrowIfNull(options);
        return new DecorrelatedImageClassificationTrainer(MLNetInternals.GetEnvironment(catalog), options);
    }
}
