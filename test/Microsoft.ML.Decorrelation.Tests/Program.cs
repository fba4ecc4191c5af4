using Microsoft.ML.Data;
using System.Globalization;

namespace Microsoft.ML.Decorrelation.Tests;

/// <summary>
/// The test assembly's entry point. Tests run under <c>dotnet test</c>; some start this assembly as a child
/// process (<see cref="ChildProcess"/>): the save/load test, to score a saved model in a process that has never
/// seen the trainer, and the native crash tests, to run libtorch kernels that may kill their process.
/// </summary>
internal static class Program
{
    public const string ScoreSavedModelCommand = "score-saved-model";

    public static int Main(string[] args)
    {
        if (args.Length == 4 && args[0] == ScoreSavedModelCommand)
            return ScoreSavedModel(modelPath: args[1], dataPath: args[2], outputPath: args[3]);
        if (args.Length >= 4 && args[0] == NativeCases.Command)
            return NativeCases.Run(args[1..]);
        if (args.Length >= 5 && args[0] == DataParallelCases.Command)
            return DataParallelCases.Run(args[1..]);
        if (args.Length >= 3 && args[0] == SelectionCases.Command)
            return SelectionCases.Run(args[1..]);
        if (args.Length == 2 && args[0] == DataParallelCases.TrainerCommand)
            return DataParallelCases.RunTrainer(args[1]);
        Console.Error.WriteLine($"This assembly holds tests (run them with dotnet test), or: {ScoreSavedModelCommand} MODEL.zip DATA.idv OUTPUT.txt, or {NativeCases.Command} CASE ONEDNN OUTPUT.txt ARGS...");
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
