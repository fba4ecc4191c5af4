using System.Diagnostics;
using System.Globalization;
using Microsoft.VisualStudio.TestTools.UnitTesting;

namespace Microsoft.ML.Decorrelation.Tests;

/// <summary>
/// Runs this test assembly as a child process (its <see cref="Program"/>), so that native work which may crash
/// (a libtorch kernel, a native library load) fails one test with the signal named instead of killing the run.
/// </summary>
internal static class ChildProcess
{
    /// <summary>What a child process did.</summary>
    public sealed record Result(int ExitCode, string Output)
    {
        /// <summary>The signal that killed the child (.NET reports 128 + signal on Unix), or null.</summary>
        public int? Signal => !OperatingSystem.IsWindows() && ExitCode > 128 && ExitCode < 160 ? ExitCode - 128 : null;

        /// <summary>The exit code in words, naming the common fatal signals.</summary>
        public string Describe() => Signal switch
        {
            null => $"exit code {ExitCode}",
            int s => $"killed by signal {s} ({SignalName(s)}), exit code {ExitCode}",
        };

        /// <summary>Fails the test unless the child exited with 0, naming what it was doing and how it died.</summary>
        public void AssertSucceeded(string what)
        {
            if (ExitCode != 0)
                Assert.Fail($"{what}: the child process was {Describe()}. Its output:\n{Output}");
        }
    }

    /// <summary>Runs the test program with <paramref name="arguments"/> and the extra <paramref name="environment"/>.</summary>
    public static Result Run(IEnumerable<string> arguments, IReadOnlyDictionary<string, string>? environment = null, int timeoutSeconds = 300)
    {
        var start = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
        start.ArgumentList.Add(typeof(Program).Assembly.Location);
        foreach (var argument in arguments)
            start.ArgumentList.Add(argument);
        // The child decides for itself; the parent's own settings must not leak in.
        start.Environment.Remove(Torch.NativeKernelGuard.OneDnnEnvironmentVariable);
        foreach (var (name, value) in environment ?? new Dictionary<string, string>())
            start.Environment[name] = value;
        using var child = Process.Start(start)!;
        var error = child.StandardError.ReadToEndAsync();
        string output = child.StandardOutput.ReadToEnd();
        if (!child.WaitForExit(timeoutSeconds * 1000))
        {
            child.Kill(entireProcessTree: true);
            Assert.Fail($"The child process ({string.Join(' ', arguments)}) did not finish within {timeoutSeconds} s.");
        }
        return new Result(child.ExitCode, output + error.Result);
    }

    /// <summary>Runs a <see cref="NativeCases"/> case and returns its result and the numbers it wrote (null when it failed).</summary>
    public static (Result Result, float[]? Values) RunNativeCase(string folder, string name, Torch.OneDnnMode oneDnn, params string[] arguments)
        => RunNativeCase(folder, name, oneDnn, null, arguments);

    /// <summary>Same, with extra environment variables for the child.</summary>
    public static (Result Result, float[]? Values) RunNativeCase(string folder, string name, Torch.OneDnnMode oneDnn,
        IReadOnlyDictionary<string, string>? environment, params string[] arguments)
    {
        string output = Path.Combine(folder, $"{name}-{oneDnn}-{string.Join('-', arguments)}-{Guid.NewGuid():N}.txt");
        var result = Run([NativeCases.Command, name, oneDnn.ToString(), output, .. arguments], environment);
        var values = result.ExitCode == 0
            ? File.ReadAllLines(output).Select(v => float.Parse(v, CultureInfo.InvariantCulture)).ToArray()
            : null;
        return (result, values);
    }

    private static string SignalName(int signal) => signal switch
    {
        4 => "SIGILL",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        _ => "signal",
    };
}
