using System.Reflection;
using System.Text.RegularExpressions;
using Microsoft.ML.Decorrelation.Samples;
using Microsoft.VisualStudio.TestTools.UnitTesting;

namespace Microsoft.ML.Decorrelation.Tests;

/// <summary>
/// Marks a test that runs (a smoke version of) a command the README shows in a code block. The README check requires
/// every such command to be claimed by one test or excluded with a reason.
/// </summary>
[AttributeUsage(AttributeTargets.Method, AllowMultiple = true)]
public sealed class ReadmeCommandAttribute(string command) : Attribute
{
    /// <summary>The command exactly as the README shows it (without its trailing comment).</summary>
    public string Command { get; } = command;
}

/// <summary>The README cannot rot: its commands are run by tests or excluded with a reason, and its code is the sample that runs.</summary>
[TestClass]
public class ReadmeTests
{
    /// <summary>README commands no test runs, and why.</summary>
    private static readonly Dictionary<string, string> Excluded = new()
    {
        ["dotnet test MLNetExt.sln -c Release"] = "it is the test run itself (.ci/run runs it)",
        ["dotnet add package Microsoft.ML.Decorrelation"] = "the package is not on nuget.org yet; build/consumer-check.sh (run by .ci/run) adds it from a local feed",
        ["dotnet add package libtorch-cpu-linux-x64 --version 2.10.0"] = "build/consumer-check.sh (run by .ci/run) adds exactly this backend to its consumer apps",
        ["dotnet add package TorchSharp-cuda-linux --version 0.107.0"] = "the CUDA packages cannot be restored on this project's machines; BuildTests check their selection",
        ["dotnet pack src/Microsoft.ML.Decorrelation -c Release -o ~/dbp-feed -p:VersionSuffix=local.$(date +%Y%m%d%H%M)"] = "build/consumer-check.sh (run by .ci/run) packs the same project into a temporary feed, with a unique prerelease version",
        ["dotnet add package Microsoft.ML.Decorrelation --prerelease --source ~/dbp-feed"] = "build/consumer-check.sh (run by .ci/run) adds the packed package from its local feed",
    };

    private const string SamplesPrefix = "dotnet run --project src/Samples -c Release";

    private static string Readme => File.ReadAllText(Path.Combine(BuildTests.RepositoryRoot(), "README.md"));

    /// <summary>The README's fenced code blocks: (language, lines).</summary>
    internal static IReadOnlyList<(string Language, string[] Lines)> CodeBlocks(string markdown)
        => Regex.Matches(markdown, @"^```(\w*)\n(.*?)^```", RegexOptions.Multiline | RegexOptions.Singleline)
            .Select(m => (m.Groups[1].Value, m.Groups[2].Value.TrimEnd('\n').Split('\n'))).ToList();

    /// <summary>Every command of the README's bash blocks, without comments and with single spaces.</summary>
    internal static IReadOnlyList<string> Commands(string markdown)
        => CodeBlocks(markdown).Where(b => b.Language == "bash").SelectMany(b => b.Lines)
            .Select(line => Regex.Replace(line.Split(" #")[0], @"\s+", " ").Trim())
            .Where(line => line.Length > 0 && !line.StartsWith('#')).ToList();

    private static Dictionary<string, List<string>> ClaimedByTests()
        => typeof(ReadmeTests).Assembly.GetTypes().SelectMany(t => t.GetMethods())
            .SelectMany(m => m.GetCustomAttributes<ReadmeCommandAttribute>().Select(a => (a.Command, Test: $"{m.DeclaringType!.Name}.{m.Name}")))
            .GroupBy(c => c.Command).ToDictionary(g => g.Key, g => g.Select(c => c.Test).ToList());

    [TestMethod]
    public void EveryReadmeCommandIsRunByATestOrExcludedWithAReason()
    {
        var commands = Commands(Readme);
        Assert.IsGreaterThanOrEqualTo(8, commands.Count, "the README shows its commands in ```bash blocks");
        var claimed = ClaimedByTests();
        var uncovered = commands.Where(c => !claimed.ContainsKey(c) && !Excluded.ContainsKey(c)).ToList();
        Assert.IsEmpty(uncovered, "README commands that no test runs and no exclusion explains:\n" + string.Join('\n', uncovered));
        var both = commands.Where(c => claimed.ContainsKey(c) && Excluded.ContainsKey(c)).ToList();
        Assert.IsEmpty(both, "commands both run and excluded:\n" + string.Join('\n', both));
        var stale = claimed.Keys.Concat(Excluded.Keys).Where(c => !commands.Contains(c)).ToList();
        Assert.IsEmpty(stale, "claims and exclusions of commands the README no longer shows:\n" + string.Join('\n', stale));
    }

    [TestMethod]
    public void EverySampleCommandOfTheReadmeParses()
    {
        var sampleCommands = Commands(Readme).Where(c => c.StartsWith(SamplesPrefix, StringComparison.Ordinal)).ToList();
        Assert.IsGreaterThanOrEqualTo(4, sampleCommands.Count);
        foreach (var command in sampleCommands)
        {
            string arguments = command[SamplesPrefix.Length..].Trim();
            if (arguments.StartsWith("--", StringComparison.Ordinal))
                arguments = arguments[2..].Trim();
            var result = SamplesCli.Create().Parse(arguments);
            Assert.IsEmpty(result.Errors, $"'{command}': {string.Join("; ", result.Errors.Select(e => e.Message))}");
        }
    }

    [TestMethod]
    public void TheCheckFindsACommandNoTestRuns()
    {
        // The check itself: a command in a bash block is found, comments are dropped, other languages are not commands.
        const string markdown = "text\n```bash\ndotnet run --project src/Samples -c Release -- nonsense   # a comment\n# only a comment\n```\n```csharp\nvar x = 1;\n```\n";
        CollectionAssert.AreEqual(new[] { "dotnet run --project src/Samples -c Release -- nonsense" }, Commands(markdown).ToArray());
        Assert.IsFalse(ClaimedByTests().ContainsKey("dotnet run --project src/Samples -c Release -- nonsense"));
        var errors = SamplesCli.Create().Parse("nonsense --no-such-option").Errors;
        Assert.IsNotEmpty(errors, "an unknown sample command does not parse");
    }

    [TestMethod]
    [ReadmeCommand("dotnet run --project src/Samples -c Release -- pipeline-example")]
    public void ReadmeCodeIsTheSampleThatRunsAndItTrainsAndPredicts()
    {
        var block = CodeBlocks(Readme).Single(b => b.Language == "csharp" && b.Lines.Any(l => l.Contains("EnumerateFiles(\"photos\"")));
        static string[] Statements(IEnumerable<string> lines) => lines.Select(l => l.Trim())
            .Where(l => l.Length > 0 && !l.StartsWith("using ", StringComparison.Ordinal) && !l.StartsWith("class ", StringComparison.Ordinal)).ToArray();
        var source = File.ReadAllLines(Path.Combine(BuildTests.RepositoryRoot(), "src", "Samples", "PipelineExample.cs"));
        int start = Array.FindIndex(source, l => l.Contains("--- The README example starts here. ---"));
        int end = Array.FindIndex(source, l => l.Contains("--- The README example ends here. ---"));
        Assert.IsTrue(start >= 0 && end > start, "PipelineExample.cs marks the README's code");
        CollectionAssert.AreEqual(Statements(block.Lines), Statements(source[(start + 1)..end]), "the README's code is PipelineExample's, line for line");

        var standardOutput = Console.Out;
        var printed = new StringWriter();
        Console.SetOut(printed);
        try
        {
            Assert.AreEqual(0, PipelineExample.Run(imageCount: 600));
        }
        finally
        {
            Console.SetOut(standardOutput);
        }
        string text = printed.ToString();
        StringAssert.Contains(text, "Wrote 600 PNG files");
        Assert.AreEqual(6, Regex.Matches(text, @"^Epoch \d: train loss", RegexOptions.Multiline).Count, text);
        var accuracy = Regex.Match(text, @"Test accuracy (\d+\.\d+) ?%");
        Assert.IsTrue(accuracy.Success, text);
        Assert.IsGreaterThan(30.0, double.Parse(accuracy.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture), "6 epochs on 480 images learn well above chance (10 %)");
        StringAssert.Matches(text, new Regex(@"photos/[A-Za-z -]+/train-\d{5}\.png: [A-Za-z/ -]+ \(\d+\.\d ?%\)"));
    }
}
