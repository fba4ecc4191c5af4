using System.Globalization;
using System.Diagnostics;
using Microsoft.ML.Decorrelation.Torch;

namespace Microsoft.ML.Decorrelation.Samples;

/// <summary>
/// Runs a .NET assembly as a child process, so that native work which may crash (a libtorch kernel) ends that
/// child with a signal instead of the caller. Used by <c>native-scan</c> and by the tests.
/// </summary>
internal static class ChildProcessRunner
{
    private const string ResultPrefix = "RESULT ";

    /// <summary>Writes the line of numbers a parent reads back with <see cref="Outcome.ResultValues"/> (round-trip precision).</summary>
    public static void WriteResult(IEnumerable<double> values)
        => Console.WriteLine(ResultPrefix + string.Join(' ', values.Select(v => v.ToString("R", CultureInfo.InvariantCulture))));

    /// <summary>What a child process did: its exit code and everything it wrote (standard output, then standard error).</summary>
    internal sealed record Outcome(int ExitCode, string Output)
    {
        /// <summary>The signal that killed the child (.NET reports 128 + signal on Unix), or null.</summary>
        public int? Signal => !OperatingSystem.IsWindows() && ExitCode > 128 && ExitCode < 160 ? ExitCode - 128 : null;

        /// <summary>
        /// The numbers of the last line the child wrote with <see cref="WriteResult"/>, or null when it exited with an error or
        /// wrote none.
        /// </summary>
        public double[]? ResultValues()
        {
            var line = Output.Split('\n').LastOrDefault(l => l.StartsWith(ResultPrefix, StringComparison.Ordinal));
            return ExitCode != 0 || line is null
                ? null
                : line[ResultPrefix.Length..].Split(' ', StringSplitOptions.RemoveEmptyEntries).Select(v => double.Parse(v, CultureInfo.InvariantCulture)).ToArray();
        }

        /// <summary>The exit code in words, naming the common fatal signals.</summary>
        public string Describe() => Signal switch
        {
            null => $"exit code {ExitCode}",
            int s => $"killed by signal {s} ({SignalName(s)}), exit code {ExitCode}",
        };
    }

    /// <summary>
    /// Runs <c>dotnet <paramref name="assemblyPath"/> <paramref name="arguments"/></c> with the extra
    /// <paramref name="environment"/>; the caller's <see cref="NativeKernelGuard.OneDnnEnvironmentVariable"/> is not
    /// passed on, so that the child decides for itself. With <paramref name="ranks"/> above 1 the child is an MPI job of that
    /// many ranks under Open MPI's <c>mpirun</c> (see <see cref="StartInfo"/>).
    /// </summary>
    /// <exception cref="TimeoutException">The child did not finish in <paramref name="timeout"/>; it was killed.</exception>
    /// <exception cref="InvalidOperationException">An MPI job was asked for and mpirun is not installed.</exception>
    public static Outcome Run(string assemblyPath, IEnumerable<string> arguments, IReadOnlyDictionary<string, string>? environment, TimeSpan timeout, int ranks = 1)
    {
        var start = StartInfo(assemblyPath, arguments, environment, ranks);
        using var child = Start(start);
        var error = child.StandardError.ReadToEndAsync();
        string output = child.StandardOutput.ReadToEnd();
        if (!child.WaitForExit(timeout))
        {
            child.Kill(entireProcessTree: true);
            throw new TimeoutException($"The child process ({start.FileName} {string.Join(' ', start.ArgumentList)}) did not finish within {timeout.TotalSeconds:F0} s.");
        }
        return new Outcome(child.ExitCode, output + error.Result);
    }

    /// <summary>
    /// How <see cref="Run"/> starts the child, output redirected: <c>dotnet ASSEMBLY ARGS</c>, or for <paramref name="ranks"/> above 1
    /// <c>mpirun --allow-run-as-root --oversubscribe --bind-to none -np RANKS dotnet ASSEMBLY ARGS</c> (on one machine; mpirun
    /// passes the environment on to every rank). For a caller that must act on the running child (kill one rank).
    /// </summary>
    public static ProcessStartInfo StartInfo(string assemblyPath, IEnumerable<string> arguments, IReadOnlyDictionary<string, string>? environment, int ranks = 1)
    {
        var start = new ProcessStartInfo(ranks > 1 ? "mpirun" : "dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
        if (ranks > 1)
        {
            foreach (var argument in new[] { "--allow-run-as-root", "--oversubscribe", "--bind-to", "none", "-np", ranks.ToString(System.Globalization.CultureInfo.InvariantCulture), "dotnet" })
                start.ArgumentList.Add(argument);
        }
        start.ArgumentList.Add(assemblyPath);
        foreach (var argument in arguments)
            start.ArgumentList.Add(argument);
        start.Environment.Remove(NativeKernelGuard.OneDnnEnvironmentVariable);
        foreach (var (name, value) in environment ?? new Dictionary<string, string>())
            start.Environment[name] = value;
        return start;
    }

    /// <summary>Starts <paramref name="start"/>; a missing mpirun is an error saying what to install.</summary>
    /// <exception cref="InvalidOperationException">mpirun is not installed.</exception>
    public static Process Start(ProcessStartInfo start)
    {
        try
        {
            return Process.Start(start)!;
        }
        catch (System.ComponentModel.Win32Exception e) when (start.FileName == "mpirun")
        {
            throw new InvalidOperationException("mpirun was not found: install Open MPI (apt-get install openmpi-bin); .ci/run does.", e);
        }
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
