using System.Runtime.InteropServices;

namespace Microsoft.ML.Decorrelation.Torch;

/// <summary>
/// Tunes glibc's malloc for training on Linux. Where its mmap threshold is fixed, every large activation tensor is
/// mmap'ed, page-faulted, zeroed and unmapped again on every step; raising the mmap threshold to 32 MiB
/// and the trim threshold to 1 GiB keeps that memory in the heap. A first probe suggested 3× faster steps; the
/// project's own interleaved measurement found no change, because glibc's dynamic threshold already keeps these
/// activations in the heap after the first step (docs/platform.md), so it stays as a guard. Training runs on a thread of its own (<see cref="DenormalFlushing"/>), whose
/// allocations come from a per-thread arena made of 64 MiB heaps that glibc unmaps as soon as one is empty
/// and maps again on the next step; a top pad of 64 MiB keeps them (measured in an in-process comparison
/// that alternated steps between threads: 10–20% slower on a second thread without it, equal with it). The price: freed memory returns to the operating system later.
/// </summary>
/// <remarks>
/// Applied once per process, before the first training run, unless
/// <c>TrainingOptions.TuneNativeAllocator</c> is false or the environment variable
/// <c>DECORRELATION_MALLOC_TUNING=0</c> is set. Settings made through <c>GLIBC_TUNABLES</c> or
/// <c>MALLOC_*_</c> take precedence: the tuning is then skipped.
/// Nothing happens on Windows, macOS or non-glibc Linux.
/// </remarks>
public static class NativeAllocatorTuning
{
    /// <summary>The mmap threshold set: allocations below it come from the heap. 32 MiB.</summary>
    public const int MmapThresholdBytes = 32 << 20;

    /// <summary>The trim threshold set: free heap memory above it is returned to the system. 1 GiB.</summary>
    public const int TrimThresholdBytes = 1 << 30;

    /// <summary>The top pad set: free memory kept at the top of every arena, so per-thread heaps are not unmapped. 64 MiB.</summary>
    public const int TopPadBytes = 64 << 20;

    /// <summary>The environment variable that turns the tuning off when set to 0 or false.</summary>
    public const string EnvironmentVariable = "DECORRELATION_MALLOC_TUNING";

    private const int M_TRIM_THRESHOLD = -1;
    private const int M_TOP_PAD = -2;
    private const int M_MMAP_THRESHOLD = -3;
    private static readonly object Gate = new();
    private static bool? _applied;

    /// <summary>Whether the tuning is in effect in this process.</summary>
    public static bool IsApplied => _applied == true;

    /// <summary>Applies the tuning once per process, if the platform and the environment allow it.</summary>
    /// <returns>Whether the tuning is in effect.</returns>
    public static bool Apply()
    {
        lock (Gate)
        {
            _applied ??= TryApply();
            return _applied.Value;
        }
    }

    private static bool TryApply()
    {
        if (!OperatingSystem.IsLinux() || IsOptedOut() || HasUserMallocSettings())
            return false;
        try
        {
            return mallopt(M_MMAP_THRESHOLD, MmapThresholdBytes) == 1 & mallopt(M_TRIM_THRESHOLD, TrimThresholdBytes) == 1
                & mallopt(M_TOP_PAD, TopPadBytes) == 1;
        }
        catch (EntryPointNotFoundException)
        {
            return false;   // a C library without mallopt (musl): nothing to tune
        }
    }

    private static bool IsOptedOut()
    {
        var value = Environment.GetEnvironmentVariable(EnvironmentVariable);
        return value is not null && (value == "0" || value.Equals("false", StringComparison.OrdinalIgnoreCase));
    }

    private static bool HasUserMallocSettings()
        => Environment.GetEnvironmentVariable("GLIBC_TUNABLES")?.Contains("glibc.malloc.") == true
           || Environment.GetEnvironmentVariable("MALLOC_MMAP_THRESHOLD_") is not null
           || Environment.GetEnvironmentVariable("MALLOC_TRIM_THRESHOLD_") is not null
           || Environment.GetEnvironmentVariable("MALLOC_TOP_PAD_") is not null;

    [DllImport("libc", EntryPoint = "mallopt")]
    private static extern int mallopt(int parameter, int value);
}
