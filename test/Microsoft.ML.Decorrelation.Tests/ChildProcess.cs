using System.Globalization;
using Microsoft.ML.Decorrelation.Samples;
using Microsoft.VisualStudio.TestTools.UnitTesting;

namespace Microsoft.ML.Decorrelation.Tests;

/// <summary>
/// Runs this test assembly as a child process (its <see cref="Program"/>), so that native work which may crash
/// (a libtorch kernel, a native library load) fails one test with the signal named instead of killing the run.
/// </summary>
internal static class ChildProcess
{
    /// <summary>Fails the test unless the child exited with 0, naming what it was doing and how it ended.</summary>
    public static void AssertSucceeded(this ChildProcessRunner.Outcome outcome, string what)
    {
        if (outcome.ExitCode != 0)
            Assert.Fail($"{what}: the child process was {outcome.Describe()}. Its output:\n{outcome.Output}");
    }

    /// <summary>
    /// Runs the test program with <paramref name="arguments"/> and the extra <paramref name="environment"/>; as an MPI job under
    /// mpirun when <paramref name="ranks"/> is above 1.
    /// </summary>
    public static ChildProcessRunner.Outcome Run(IEnumerable<string> arguments, IReadOnlyDictionary<string, string>? environment = null, int timeoutSeconds = 300,
        int ranks = 1)
    {
        try
        {
            return ChildProcessRunner.Run(typeof(Program).Assembly.Location, arguments, environment, TimeSpan.FromSeconds(timeoutSeconds), ranks);
        }
        catch (TimeoutException e)
        {
            Assert.Fail(e.Message);
            throw;
        }
    }

    /// <summary>Runs a <see cref="NativeCases"/> case and returns its outcome and the numbers it wrote (null when it failed).</summary>
    public static (ChildProcessRunner.Outcome Result, float[]? Values) RunNativeCase(string folder, string name, Torch.OneDnnMode oneDnn, params string[] arguments)
        => RunNativeCase(folder, name, oneDnn, null, arguments);

    /// <summary>Same, with extra environment variables for the child.</summary>
    public static (ChildProcessRunner.Outcome Result, float[]? Values) RunNativeCase(string folder, string name, Torch.OneDnnMode oneDnn,
        IReadOnlyDictionary<string, string>? environment, params string[] arguments)
    {
        string output = Path.Combine(folder, $"{name}-{oneDnn}-{string.Join('-', arguments)}-{Guid.NewGuid():N}.txt");
        var result = Run([NativeCases.Command, name, oneDnn.ToString(), output, .. arguments], environment);
        var values = result.ExitCode == 0
            ? File.ReadAllLines(output).Select(v => float.Parse(v, CultureInfo.InvariantCulture)).ToArray()
            : null;
        return (result, values);
    }
}
