using Microsoft.ML.Data;
using Microsoft.VisualStudio.TestTools.UnitTesting;

namespace Microsoft.ML.Decorrelation.Tests;

/// <summary>Bad data and options are rejected before training, with messages that name what is at fault.</summary>
[TestClass]
public class InputValidationTests
{
    private sealed class TextRow
    {
        public string Label { get; set; } = "";

        public string Features { get; set; } = "";
    }

    private sealed class TenRow
    {
        public string Label { get; set; } = "";

        [VectorType(10)]
        public float[] Features { get; set; } = [];
    }

    private sealed class FlatRow
    {
        public string Label { get; set; } = "";

        [VectorType(12)]
        public float[] Features { get; set; } = [];
    }

    private static IDataView Keyed(MLContext ml, IDataView data) => ml.Transforms.Conversion.MapValueToKey("Label").Fit(data).Transform(data);

    private static IDataView Pixels(MLContext ml, int count = 20) => ml.Data.LoadFromEnumerable(MLNetData.PixelRows(train: true, count));

    public static IEnumerable<object[]> BadData()
    {
        yield return ["missing label column", (Func<MLContext, IDataView>)(ml => Keyed(ml, Pixels(ml))), new DecorrelatedImageClassificationTrainer.Options { LabelColumnName = "Class" }, "Label column 'Class' was not found"];
        yield return ["label not a key", (Func<MLContext, IDataView>)(ml => Pixels(ml)), new DecorrelatedImageClassificationTrainer.Options(), "Label column 'Label' must be a key"];
        yield return ["missing feature column", (Func<MLContext, IDataView>)(ml => Keyed(ml, Pixels(ml))), new DecorrelatedImageClassificationTrainer.Options { FeatureColumnName = "Pixels" }, "Feature column 'Pixels' was not found"];
        yield return ["features of text", (Func<MLContext, IDataView>)(ml => Keyed(ml, ml.Data.LoadFromEnumerable(new[] { new TextRow { Label = "a", Features = "x" }, new TextRow { Label = "b", Features = "y" } }))),
            new DecorrelatedImageClassificationTrainer.Options(), "Feature column 'Features' has type String"];
        yield return ["flat vector without dimensions", (Func<MLContext, IDataView>)(ml => Keyed(ml, ml.Data.LoadFromEnumerable(new[] { new TenRow { Label = "a", Features = new float[10] }, new TenRow { Label = "b", Features = new float[10] } }))),
            new DecorrelatedImageClassificationTrainer.Options(), "holds 10 values without image dimensions"];
        yield return ["sizes not matching the vector", (Func<MLContext, IDataView>)(ml => Keyed(ml, ml.Data.LoadFromEnumerable(new[] { new FlatRow { Label = "a", Features = new float[12] }, new FlatRow { Label = "b", Features = new float[12] } }))),
            new DecorrelatedImageClassificationTrainer.Options { ImageChannels = 1, ImageHeight = 3, ImageWidth = 5 }, "ImageChannels × ImageHeight × ImageWidth = 1×3×5 = 15"];
        yield return ["image too small for the small CNN", (Func<MLContext, IDataView>)(ml => Keyed(ml, ml.Data.LoadFromEnumerable(new[] { new FlatRow { Label = "a", Features = new float[12] }, new FlatRow { Label = "b", Features = new float[12] } }))),
            new DecorrelatedImageClassificationTrainer.Options { ImageChannels = 3, ImageHeight = 2, ImageWidth = 2 }, "SmallCnn needs images of at least 8×8"];
        yield return ["a single class", (Func<MLContext, IDataView>)(ml => Keyed(ml, ml.Data.LoadFromEnumerable(MLNetData.PixelRows(train: true, 30).Where(r => r.Label == "Trouser")))),
            new DecorrelatedImageClassificationTrainer.Options(), "has 1 classes; a classifier needs at least 2"];
        yield return ["empty training data", (Func<MLContext, IDataView>)(ml => ml.Data.SkipRows(Keyed(ml, Pixels(ml)), 1000)),
            new DecorrelatedImageClassificationTrainer.Options(), "has no row with a label in 'Label'"];
    }

    public static string BadDataName(System.Reflection.MethodInfo _, object[] row) => (string)row[0];

    [TestMethod]
    [DynamicData(nameof(BadData), DynamicDataDisplayName = nameof(BadDataName))]
    public void BadDataIsRejectedNamingTheColumn(string _, Func<MLContext, IDataView> makeData, DecorrelatedImageClassificationTrainer.Options options, string expected)
    {
        var ml = new MLContext(1);
        var data = makeData(ml);
        var trainer = ml.MulticlassClassification.Trainers.DecorrelatedImageClassification(options);
        var error = Assert.Throws<ArgumentException>(() => trainer.Fit(data));
        StringAssert.Contains(error.Message, expected);
    }

    private sealed class WideKeyRow
    {
        public ulong Label { get; set; }

        [VectorType(1, 28, 28)]
        public float[] Features { get; set; } = [];
    }

    [TestMethod]
    public void SchemaCheckAndFitRejectTheSameKeyTypes()
    {
        var ml = new MLContext(1);
        var schema = SchemaDefinition.Create(typeof(WideKeyRow));
        schema[nameof(WideKeyRow.Label)].ColumnType = new KeyDataViewType(typeof(ulong), 2);
        var data = ml.Data.LoadFromEnumerable(Enumerable.Range(0, 4).Select(i => new WideKeyRow { Label = (ulong)(i % 2 + 1), Features = new float[784] }), schema);
        var trainer = ml.MulticlassClassification.Trainers.DecorrelatedImageClassification();
        var fromSchema = Assert.Throws<ArgumentException>(() => trainer.GetOutputSchema(TrainerTests.ShapeOf(data.Schema)));
        var fromFit = Assert.Throws<ArgumentException>(() => trainer.Fit(data));
        StringAssert.Contains(fromSchema.Message, "Label column 'Label' must be a key");
        StringAssert.Contains(fromFit.Message, "Label column 'Label' must be a key");
    }

    public static IEnumerable<object[]> BadOptions()
    {
        yield return [nameof(DecorrelatedImageClassificationTrainer.Options.BatchSize), new DecorrelatedImageClassificationTrainer.Options { BatchSize = 0 }];
        yield return [nameof(DecorrelatedImageClassificationTrainer.Options.MaxEpoch), new DecorrelatedImageClassificationTrainer.Options { MaxEpoch = -1 }];
        yield return [nameof(DecorrelatedImageClassificationTrainer.Options.LearningRate), new DecorrelatedImageClassificationTrainer.Options { LearningRate = double.NaN }];
        yield return [nameof(DecorrelatedImageClassificationTrainer.Options.LearningRate), new DecorrelatedImageClassificationTrainer.Options { LearningRate = -1e-3 }];
        yield return [nameof(DecorrelatedImageClassificationTrainer.Options.DecorrelationLearningRate), new DecorrelatedImageClassificationTrainer.Options { DecorrelationLearningRate = double.PositiveInfinity }];
        yield return [nameof(DecorrelatedImageClassificationTrainer.Options.Kappa), new DecorrelatedImageClassificationTrainer.Options { Kappa = 1.5 }];
        yield return [nameof(DecorrelatedImageClassificationTrainer.Options.RandomCropPadding), new DecorrelatedImageClassificationTrainer.Options { RandomCropPadding = -2 }];
        yield return [nameof(DecorrelatedImageClassificationTrainer.Options.DecorrelationMaxBlockSize), new DecorrelatedImageClassificationTrainer.Options { DecorrelationMaxBlockSize = -1 }];
        yield return [nameof(DecorrelatedImageClassificationTrainer.Options.DecorrelationSampleFraction), new DecorrelatedImageClassificationTrainer.Options { DecorrelationSampleFraction = 0 }];
        yield return [nameof(DecorrelatedImageClassificationTrainer.Options.Architecture), new DecorrelatedImageClassificationTrainer.Options { Architecture = (CnnArchitecture)42 }];
        yield return [nameof(DecorrelatedImageClassificationTrainer.Options.ValidationFraction), new DecorrelatedImageClassificationTrainer.Options { ValidationFraction = 1 }];
        yield return [nameof(DecorrelatedImageClassificationTrainer.Options.LabelColumnName), new DecorrelatedImageClassificationTrainer.Options { LabelColumnName = "" }];
    }

    [TestMethod]
    [DynamicData(nameof(BadOptions))]
    public void BadOptionsAreRejectedNamingTheOption(string option, DecorrelatedImageClassificationTrainer.Options options)
    {
        var error = Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => new MLContext().MulticlassClassification.Trainers.DecorrelatedImageClassification(options));
        Assert.AreEqual(option, error.ParamName);
        StringAssert.Contains(error.Message, option);
    }

    [TestMethod]
    public void ScoringDataOfAnotherImageSizeIsRejected()
    {
        var ml = new MLContext(1);
        var train = Keyed(ml, Pixels(ml, 64));
        var model = ml.MulticlassClassification.Trainers.DecorrelatedImageClassification(new DecorrelatedImageClassificationTrainer.Options { MaxEpoch = 1 }).Fit(train);
        var other = ml.Data.LoadFromEnumerable(new[] { new FlatRow { Label = "a", Features = new float[12] } });
        var error = Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => model.Transform(other));
        StringAssert.Contains(error.Message, "'Features' holds 12 values per row; the model takes 1×28×28 = 784 pixels");
    }
}
