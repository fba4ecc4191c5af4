using Microsoft.ML.Data;
using Microsoft.VisualStudio.TestTools.UnitTesting;

namespace Microsoft.ML.Decorrelation.Tests;

/// <summary>Scores are never paired with other rows than the ones they were computed for.</summary>
[TestClass]
public class ScoringCursorTests
{
    /// <summary>An input whose every cursor visits the rows in a new order, as a shuffling or nondeterministic reader does.</summary>
    private sealed class NewOrderEveryCursor(IDataView inner) : IDataView
    {
        private int _cursors;

        public bool CanShuffle => false;

        public DataViewSchema Schema => inner.Schema;

        public long? GetRowCount() => inner.GetRowCount();

        public DataViewRowCursor GetRowCursor(IEnumerable<DataViewSchema.Column> columnsNeeded, Random? rand = null)
            => inner.GetRowCursor(columnsNeeded, new Random(++_cursors));

        public DataViewRowCursor[] GetRowCursorSet(IEnumerable<DataViewSchema.Column> columnsNeeded, int n, Random? rand = null)
            => [GetRowCursor(columnsNeeded, rand)];
    }

    [TestMethod]
    public void InputWhoseCursorsDisagreeIsRejectedAndACachedCopyIsScored()
    {
        var ml = new MLContext(seed: 1);
        var train = ml.Data.LoadFromEnumerable(MLNetData.PixelRows(train: true, count: 200));
        var keys = ml.Transforms.Conversion.MapValueToKey("Label").Fit(train);
        using var model = ml.MulticlassClassification.Trainers.DecorrelatedImageClassification(new DecorrelatedImageClassificationTrainer.Options { MaxEpoch = 1 })
            .Fit(keys.Transform(train));
        var rows = MLNetData.PixelRows(train: false, count: 300).ToArray();
        var test = ml.Data.Cache(ml.Data.LoadFromEnumerable(rows));   // a cache can visit its rows in any order
        Assert.IsTrue(test.CanShuffle, "the inner view can visit rows in another order, or this test could not fail");

        var shuffling = keys.Transform(new NewOrderEveryCursor(test));
        var error = Assert.ThrowsExactly<InvalidOperationException>(() => model.Transform(shuffling).GetColumn<float[]>("Score").ToArray());
        StringAssert.Contains(error.Message, "cursors see rows in different orders");

        // Cached, the shuffled rows are read once; scores must belong to the features beside them.
        var cached = ml.Data.Cache(shuffling);
        var scored = model.Transform(cached);
        var features = scored.GetColumn<float[]>("Features").ToArray();
        var scores = scored.GetColumn<float[]>("Score").ToArray();
        var engine = ml.Model.CreatePredictionEngine<MLNetData.PixelRow, Prediction>(keys.Append(model));
        for (int i = 0; i < features.Length; i += 37)
            CollectionAssert.AreEqual(engine.Predict(new MLNetData.PixelRow { Label = "Bag", Features = features[i] }).Score, scores[i], new Tolerance(1e-5f), $"row {i}");
    }

    private sealed class Prediction
    {
        public float[] Score { get; set; } = [];
    }

    private sealed class Tolerance(float limit) : System.Collections.IComparer
    {
        public int Compare(object? x, object? y) => Math.Abs((float)x! - (float)y!) <= limit ? 0 : 1;
    }
}
