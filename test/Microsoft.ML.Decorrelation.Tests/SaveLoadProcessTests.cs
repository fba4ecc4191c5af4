using Microsoft.ML.Data;
using System.Globalization;
using Microsoft.VisualStudio.TestTools.UnitTesting;

namespace Microsoft.ML.Decorrelation.Tests;

[TestClass]
public class SaveLoadProcessTests
{
    [TestMethod]
    public void ModelSavedHereScoresIdenticallyInAnotherProcess()
    {
        var folder = Directory.CreateTempSubdirectory("dbp-process").FullName;
        try
        {
            var ml = new MLContext(seed: 3);
            var train = ml.Data.LoadFromEnumerable(MLNetData.PixelRows(train: true, count: 400));
            var test = ml.Data.LoadFromEnumerable(MLNetData.PixelRows(train: false, count: 50));
            var options = new DecorrelatedImageClassificationTrainer.Options { MaxEpoch = 1 };
            var model = ml.Transforms.Conversion.MapValueToKey("Label")
                .Append(ml.MulticlassClassification.Trainers.DecorrelatedImageClassification(options)).Fit(train);
            string modelPath = Path.Combine(folder, "model.zip"), dataPath = Path.Combine(folder, "test.idv"), outputPath = Path.Combine(folder, "scores.txt");
            ml.Model.Save(model, train.Schema, modelPath);
            using (var file = File.Create(dataPath))
                ml.Data.SaveAsBinary(test, file);

            ChildProcess.Run([Program.ScoreSavedModelCommand, modelPath, dataPath, outputPath]).AssertSucceeded("Scoring the saved model");

            var expected = model.Transform(test).GetColumn<float[]>("Score").ToArray();
            var actual = File.ReadAllLines(outputPath)
                .Select(line => line.Split(' ').Select(v => float.Parse(v, CultureInfo.InvariantCulture)).ToArray()).ToArray();
            Assert.HasCount(expected.Length, actual);
            for (int i = 0; i < expected.Length; i++)
                CollectionAssert.AreEqual(expected[i], actual[i], $"row {i}");
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }
}
