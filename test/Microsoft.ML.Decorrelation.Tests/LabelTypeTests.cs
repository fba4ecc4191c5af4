using Microsoft.ML.Data;
using Microsoft.VisualStudio.TestTools.UnitTesting;

namespace Microsoft.ML.Decorrelation.Tests;

/// <summary>PredictedLabel keeps the label's value type through MapKeyToValue, save/load and PredictionEngine, as ML.NET's own scorers do.</summary>
[TestClass]
public class LabelTypeTests
{
    private sealed class Row<T>
    {
        public T Label { get; set; } = default!;

        [VectorType(1, 28, 28)]
        public float[] Features { get; set; } = [];
    }

    private sealed class Prediction<T>
    {
        public T PredictedLabel { get; set; } = default!;
    }

    private static Row<T>[] Rows<T>(Func<string, T> label, int count, bool train)
        => MLNetData.PixelRows(train, count).Select(r => new Row<T> { Label = label(r.Label), Features = r.Features }).ToArray();

    /// <summary>Trains on labels of type <typeparamref name="T"/> and checks predictions in that type, before and after a save/load.</summary>
    private static void PredictsLabelsOfItsOwnType<T>(Func<string, T> label, DataViewType expectedType)
    {
        var ml = new MLContext(seed: 3);
        var train = ml.Data.LoadFromEnumerable(Rows(label, 300, train: true));
        var test = ml.Data.LoadFromEnumerable(Rows(label, 30, train: false));
        var pipeline = ml.Transforms.Conversion.MapValueToKey("Label")
            .Append(ml.MulticlassClassification.Trainers.DecorrelatedImageClassification(new DecorrelatedImageClassificationTrainer.Options { MaxEpoch = 1, BatchSize = 50 }))
            .Append(ml.Transforms.Conversion.MapKeyToValue("PredictedLabel"));
        var shape = pipeline.GetOutputSchema(TrainerTests.ShapeOf(train.Schema)).First(c => c.Name == "PredictedLabel");
        Assert.AreEqual(expectedType, shape.ItemType, "GetOutputSchema");
        var model = pipeline.Fit(train);

        var scored = model.Transform(test);
        Assert.AreEqual(expectedType, scored.Schema["PredictedLabel"].Type, "Transform");
        var predicted = scored.GetColumn<T>("PredictedLabel").ToArray();
        var known = Rows(label, 300, train: true).Select(r => r.Label).Distinct().ToHashSet();
        Assert.IsTrue(predicted.All(known.Contains), "every prediction is one of the training labels");

        var path = Path.Combine(Path.GetTempPath(), $"dbp-label-{typeof(T).Name}-{Guid.NewGuid():N}.zip");
        try
        {
            ml.Model.Save(model, train.Schema, path);
            var loaded = ml.Model.Load(path, out _);
            CollectionAssert.AreEqual(predicted, loaded.Transform(test).GetColumn<T>("PredictedLabel").ToArray(), "after save/load");
            var engine = ml.Model.CreatePredictionEngine<Row<T>, Prediction<T>>(loaded);
            Assert.AreEqual(predicted[0], engine.Predict(Rows(label, 1, train: false)[0]).PredictedLabel, "PredictionEngine");
        }
        finally
        {
            File.Delete(path);
        }
    }

    [TestMethod]
    public void TextLabelsPredictText() => PredictsLabelsOfItsOwnType(name => name, TextDataViewType.Instance);

    [TestMethod]
    public void NumericLabelsPredictNumbers()
        => PredictsLabelsOfItsOwnType(name => (float)Array.IndexOf(MLNetData.ClassNames, name) * 10, NumberDataViewType.Single);

    [TestMethod]
    public void BooleanLabelsPredictBooleans()
        => PredictsLabelsOfItsOwnType(name => name is "Sandal" or "Sneaker" or "Boot", BooleanDataViewType.Instance);

    [TestMethod]
    public void ValidationSetWithAnotherKeyOrderIsRejected()
    {
        var ml = new MLContext(seed: 1);
        var train = ml.Data.LoadFromEnumerable(MLNetData.PixelRows(train: true, count: 100));
        var validation = ml.Data.LoadFromEnumerable(MLNetData.PixelRows(train: false, count: 100));
        var trainKeys = ml.Transforms.Conversion.MapValueToKey("Label").Fit(train);
        // Fitted on its own data, the validation mapping numbers the same ten classes in another order.
        var validationKeys = ml.Transforms.Conversion.MapValueToKey("Label", keyOrdinality: Transforms.ValueToKeyMappingEstimator.KeyOrdinality.ByValue).Fit(validation);
        var trainer = ml.MulticlassClassification.Trainers.DecorrelatedImageClassification(new DecorrelatedImageClassificationTrainer.Options
        {
            MaxEpoch = 1,
            ValidationSet = validationKeys.Transform(validation),
        });
        var error = Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => trainer.Fit(trainKeys.Transform(train)));
        StringAssert.Contains(error.Message, "maps keys to other values than the training data's");
        StringAssert.Contains(error.Message, "Transform both with the same fitted MapValueToKey");

        // The same fitted mapping on both passes.
        var sameKeys = ml.MulticlassClassification.Trainers.DecorrelatedImageClassification(new DecorrelatedImageClassificationTrainer.Options
        {
            MaxEpoch = 1,
            ValidationSet = trainKeys.Transform(validation),
        });
        using var model = sameKeys.Fit(trainKeys.Transform(train));
        Assert.AreEqual(10, model.ClassCount);
    }
}
