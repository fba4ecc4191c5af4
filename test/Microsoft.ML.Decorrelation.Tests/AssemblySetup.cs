using Microsoft.ML.Decorrelation.Torch;
using Microsoft.VisualStudio.TestTools.UnitTesting;

// Torch tests share global state (seeds, thread count) and the machine has 2 cores: run them one at a time.
[assembly: DoNotParallelize]

namespace Microsoft.ML.Decorrelation.Tests;

/// <summary>Process-wide set-up of the test run.</summary>
[TestClass]
public static class AssemblySetup
{
    private static NativeKernelScope? _kernels;

    /// <summary>
    /// Tests that call network modules directly (outside a training session or the trainer) get the same native
    /// kernel guard as the product: on a CPU where oneDNN would crash, it is off for the whole in-process run.
    /// Kernels that are known to crash such CPUs run in child processes besides (<see cref="ChildProcess"/>).
    /// </summary>
    [AssemblyInitialize]
    public static void GuardNativeKernels(TestContext _) => _kernels = NativeKernelGuard.Enter(OneDnnMode.Auto);

    /// <summary>Ends the guard of <see cref="GuardNativeKernels"/> and stops the PostgreSQL server the run started, if any.</summary>
    [AssemblyCleanup]
    public static void EndRun()
    {
        _kernels?.Dispose();
        PostgresServer.Stop();
    }
}
