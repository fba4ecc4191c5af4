using Microsoft.ML.Data;
using System.Globalization;

namespace Microsoft.ML.Decorrelation.Tests;

/// <summary>
/// The test assembly's entry point. Tests run under <c>dotnet test</c>; the save/load test starts this
/// assembly as a separate process that has never seen the trainer and only loads a saved model.
/// </summary>
internal static class Program
{
    public const string ScoreSavedModelCommand = "score-saved-model";

    public static int Main(string[] args)
    {
        if (args.Length == 4 && args[0] == ScoreSavedModelCommand)
            return ScoreSavedModel(modelPath: args[1], dataPath: args[2], outputPath: args[3]);
        Console.Error.WriteLine($"This assembly holds tests (run them with dotnet test), or: {ScoreSavedModelCommand} MODEL.zip DATA.idv OUTPUT.txt");
        return 2;
    }

    /// <summary>Loads the model in a fresh MLContext, scores the binary data file and writes one line of scores per row.</summary>
    private static int ScoreSavedModel(string modelPath, string dataPath, string outputPath)
    {
        var ml = new MLContext();
        var model = ml.Model.Load(modelPath, out _);
        var scored = model.Transform(ml.Data.LoadFromBinary(dataPath));
        var lines = scored.GetColumn<float[]>("Score")
            .Select(row => string.Join(' ', row.Select(v => v.ToString("R", CultureInfo.InvariantCulture))));
        File.WriteAllLines(outputPath, lines);
        return 0;
    }
}
