using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using Microsoft.ML.Decorrelation.Selection;
using Microsoft.VisualStudio.TestTools.UnitTesting;

namespace Microsoft.ML.Decorrelation.Tests;

/// <summary>
/// The PostgreSQL server of the model-selection tests: the one named by <c>DECORRELATION_TEST_POSTGRES</c>, else a
/// throwaway server that build/postgres.sh starts on a free loopback port the first time a test asks (and
/// <see cref="AssemblySetup"/> stops at the end of the run). A test for which neither exists is inconclusive, saying why.
/// </summary>
internal static class PostgresServer
{
    public const string Variable = "DECORRELATION_TEST_POSTGRES";
    private static readonly Lazy<(string? Url, string? Folder, string? Failure)> Server = new(Start);

    /// <summary>A new, empty study on the server.</summary>
    public static StudyStorage NewStudy() => StudyStorage.Parse(Url(), "t" + Guid.NewGuid().ToString("N")[..12]);

    /// <summary>The server's storage string; marks the test inconclusive when no server can be had.</summary>
    public static string Url()
    {
        var (url, _, failure) = Server.Value;
        if (url is null)
            Assert.Inconclusive($"No PostgreSQL server for this test: {failure}");
        return url!;
    }

    private static (string?, string?, string?) Start()
    {
        if (Environment.GetEnvironmentVariable(Variable) is { Length: > 0 } given)
            return (given, null, null);
        if (!Directory.Exists("/usr/lib/postgresql"))
            return (null, null, $"PostgreSQL is not installed (apt-get install postgresql; .ci/run does), and {Variable} names no server.");
        string folder = Path.Combine(Path.GetTempPath(), "dbp-postgres-" + Guid.NewGuid().ToString("N")[..8]);
        var start = new ProcessStartInfo("bash") { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var argument in new[] { Path.Combine(BuildTests.RepositoryRoot(), "build", "postgres.sh"), "start", folder, FreePort().ToString(System.Globalization.CultureInfo.InvariantCulture) })
            start.ArgumentList.Add(argument);
        using var process = Process.Start(start)!;
        var error = process.StandardError.ReadToEndAsync();
        string output = process.StandardOutput.ReadToEnd().Trim();
        process.WaitForExit();
        return process.ExitCode == 0 ? (output, folder, null) : (null, null, $"build/postgres.sh could not start a server (exit code {process.ExitCode}): {error.Result}");
    }

    private static int FreePort()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }

    /// <summary>Stops the server this run started, if any.</summary>
    public static void Stop()
    {
        if (!Server.IsValueCreated || Server.Value.Folder is not { } folder)
            return;
        using var process = Process.Start("bash", [Path.Combine(BuildTests.RepositoryRoot(), "build", "postgres.sh"), "stop", folder]);
        process.WaitForExit();
    }
}
