using System.Globalization;
using System.Runtime.ExceptionServices;
using System.Runtime.InteropServices;

namespace Microsoft.ML.Decorrelation.Torch;

/// <summary>
/// Runs CPU training with denormal floats flushed to zero, as PyTorch's <c>torch.set_flush_denormal(True)</c>
/// does. Weights that weight decay drives towards zero become denormal (below 1.2e-38) after a few epochs,
/// and every multiplication with them then takes the CPU's slow microcode path: plain backprop on the small
/// CNN at weight decay 5e-4 took 47 s per half epoch by epoch 5 instead of 12–15 s (README "Performance").
/// Flushing them to zero changes no value above 1.2e-38.
/// </summary>
/// <remarks>
/// The flush mode is a per-thread CPU setting (MXCSR on x86, FPCR on ARM) that threads inherit from the
/// thread that creates them. Setting it on the caller's thread would leak into the caller's own float
/// arithmetic after training, and would not reach the OpenMP workers Torch created for that thread
/// earlier. So <see cref="Run{T}"/> runs the work on a new thread that sets the mode first: Torch then
/// creates that thread's OpenMP workers with the mode set, and the caller's thread is left as it was.
/// Before starting that thread, the caller's idle OpenMP workers are released (<c>omp_pause_resource_all</c>;
/// OpenMP recreates them when the caller next runs Torch): while they exist, OpenMP counts more threads
/// than cores and makes every worker sleep between parallel regions instead of spinning, which made the
/// training thread's steps about 40 % slower. The mode is set through libtorch's exported
/// <c>at::Context::setFlushDenormal</c>; where that export is missing (another libtorch build or ABI),
/// <see cref="IsSupported"/> is false and the work runs on the caller's thread, unflushed.
/// </remarks>
public static class DenormalFlushing
{
    private static readonly Lazy<Exports?> LibTorch = new(FindExports);

    [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
    [return: MarshalAs(UnmanagedType.U1)]
    private delegate bool SetFlushDenormal(IntPtr context, [MarshalAs(UnmanagedType.U1)] bool on);

    [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
    private delegate IntPtr GlobalContext();

    [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
    private delegate int PauseResourceAll(int kind);

    private const int OmpPauseSoft = 1;

    /// <summary>Whether this process's libtorch lets the flush mode be set.</summary>
    public static bool IsSupported => LibTorch.Value is not null;

    /// <summary>
    /// Runs <paramref name="work"/> to completion on a new thread whose denormal floats are flushed to zero,
    /// and returns its result. Exceptions are rethrown on the caller's thread with their original stack.
    /// Callbacks that <paramref name="work"/> invokes run on that thread. Without <see cref="IsSupported"/>,
    /// the work simply runs on the caller's thread.
    /// </summary>
    /// <typeparam name="T">The result type.</typeparam>
    /// <param name="work">The work; it must not depend on the caller's thread (thread-static state, Torch dispose scopes).</param>
    public static T Run<T>(Func<T> work)
    {
        ArgumentNullException.ThrowIfNull(work);
        if (LibTorch.Value is not { } libTorch)
            return work();
        T result = default!;
        ExceptionDispatchInfo? failure = null;
        var (culture, uiCulture) = (CultureInfo.CurrentCulture, CultureInfo.CurrentUICulture);
        var thread = new Thread(() =>
        {
            try
            {
                (CultureInfo.CurrentCulture, CultureInfo.CurrentUICulture) = (culture, uiCulture);   // messages read as the caller's would
                EnableOnCurrentThread();
                result = work();
            }
            catch (Exception e)
            {
                failure = ExceptionDispatchInfo.Capture(e);
            }
        })
        {
            Name = "Decorrelation training (denormals flushed)",
            IsBackground = true,
        };
        libTorch.PauseOpenMp?.Invoke(OmpPauseSoft);
        thread.Start();
        thread.Join();
        failure?.Throw();
        return result;
    }

    /// <summary>
    /// Flushes denormal floats to zero on the calling thread and on the threads it creates from now on.
    /// Prefer <see cref="Run{T}"/>, which leaves the caller's thread untouched.
    /// </summary>
    /// <returns>Whether the mode is now set (false where libtorch or the CPU does not support it).</returns>
    public static bool EnableOnCurrentThread()
    {
        var libTorch = LibTorch.Value;
        return libTorch is not null && libTorch.SetFlushDenormal(libTorch.GlobalContext(), true);
    }

    private sealed record Exports(GlobalContext GlobalContext, SetFlushDenormal SetFlushDenormal, PauseResourceAll? PauseOpenMp);

    private static Exports? FindExports()
    {
        var context = LibTorchNative.TorchCpuFunction<GlobalContext>(LibTorchNative.GlobalContext);
        var setter = LibTorchNative.TorchCpuFunction<SetFlushDenormal>("_ZN2at7Context16setFlushDenormalEb", "?setFlushDenormal@Context@at@@QEAA_N_N@Z");
        if (context is null || setter is null)
            return null;
        // Found in libtorch's OpenMP runtime through its dependencies; absent with other thread pools.
        return new Exports(context, setter, LibTorchNative.TorchCpuFunction<PauseResourceAll>("omp_pause_resource_all"));
    }
}
