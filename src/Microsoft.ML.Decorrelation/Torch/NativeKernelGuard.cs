using System.Runtime.InteropServices;

namespace Microsoft.ML.Decorrelation.Torch;

/// <summary>Whether libtorch may use oneDNN (MKL-DNN) for convolutions on the CPU.</summary>
public enum OneDnnMode
{
    /// <summary>
    /// Use oneDNN unless the environment variable <see cref="NativeKernelGuard.OneDnnEnvironmentVariable"/> says
    /// otherwise or this CPU hides its cache sizes (<see cref="CpuCacheInfo.HiddenCacheReason"/>), where oneDNN's
    /// convolution kernels divide by zero and kill the process. The default.
    /// </summary>
    Auto,

    /// <summary>Leave libtorch's oneDNN setting as it is (normally on), whatever the CPU.</summary>
    Enabled,

    /// <summary>Switch oneDNN off for the duration of training and scoring: convolutions take ATen's own kernels.</summary>
    Disabled,
}

/// <summary>The oneDNN choice for a run and why it was made.</summary>
/// <param name="UseOneDnn">Whether oneDNN stays available to convolutions.</param>
/// <param name="Reason">Why, in words fit for a log.</param>
public sealed record OneDnnDecision(bool UseOneDnn, string Reason);

/// <summary>
/// Keeps native kernel problems of libtorch from reaching the user: oneDNN's convolution blocking divides by
/// the CPU's cache sizes, which some virtual CPUs report as zero, and then the process dies of SIGFPE with no
/// exception (docs/design.md, "Native crash guards"); and NNPACK's initialisation prints a warning to stderr on
/// CPUs it does not support, which a user can do nothing about.
/// </summary>
/// <remarks>
/// Training and scoring run inside <see cref="Enter"/>. When the decision is to avoid oneDNN, the scope switches
/// it off through libtorch's exported <c>at::Context::setUserEnabledMkldnn(false)</c> and the last scope to close
/// restores the value it found, so the caller's own libtorch setting is back once no run is active. The switch
/// is process-wide: other Torch code running at the same time also avoids oneDNN while a scope is open.
/// Where libtorch lacks the export, <see cref="OneDnnEnabledInLibTorch"/> is null and nothing is switched.
/// </remarks>
public static class NativeKernelGuard
{
    /// <summary>
    /// The environment variable consulted in <see cref="OneDnnMode.Auto"/>: <c>on</c> (or 1, true) keeps oneDNN,
    /// <c>off</c> (or 0, false) avoids it, <c>auto</c> or unset decides from the CPU.
    /// </summary>
    public const string OneDnnEnvironmentVariable = "DECORRELATION_ONEDNN";

    /// <summary>
    /// libtorch's own C++ log level variable: when the user sets it, NNPACK's start-up warning is left to it.
    /// </summary>
    public const string TorchLogLevelEnvironmentVariable = "TORCH_CPP_LOG_LEVEL";

    private const int LogLevelError = 2;
    private static readonly object Gate = new();
    private static readonly Lazy<Exports> LibTorch = new(FindExports);
    private static readonly Lazy<bool?> Nnpack = new(InitializeNnpackQuietly);
    private static int _openDisablingScopes;
    private static bool _valueBeforeScopes;

    [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
    private delegate IntPtr GlobalContext();

    [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
    private delegate void SetUserEnabledMkldnn(IntPtr context, [MarshalAs(UnmanagedType.U1)] bool enabled);

    [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
    [return: MarshalAs(UnmanagedType.U1)]
    private delegate bool UserEnabledMkldnn(IntPtr context);

    [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
    [return: MarshalAs(UnmanagedType.U1)]
    private delegate bool NnpackAvailable();

    [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
    private delegate void SetUserEnabledNnpack(IntPtr context, [MarshalAs(UnmanagedType.U1)] bool enabled);

    /// <summary>libtorch's current oneDNN setting (<c>torch.backends.mkldnn.enabled</c>), or null where it cannot be read.</summary>
    public static bool? OneDnnEnabledInLibTorch
    {
        get
        {
            var libTorch = LibTorch.Value;
            return libTorch.Get is null ? null : libTorch.Get(libTorch.Context!());
        }
    }

    /// <summary>
    /// Whether NNPACK works on this CPU (its start-up warning, if any, silenced), or null where libtorch does not
    /// export the check. Initialised once per process by the first <see cref="Enter"/>.
    /// </summary>
    public static bool? NnpackIsAvailable => Nnpack.Value;

    /// <summary>The decision for <paramref name="mode"/> on this machine, with this process's environment.</summary>
    /// <exception cref="ArgumentException">The environment variable holds a value other than on/off/auto.</exception>
    public static OneDnnDecision DecideOneDnn(OneDnnMode mode)
    {
        string? environment = Environment.GetEnvironmentVariable(OneDnnEnvironmentVariable);
        if (mode != OneDnnMode.Auto)
            return DecideOneDnn(mode, environment, CpuCacheInfo.ThisMachine);
        // Scoring asks on every call: reuse the decision while the environment variable keeps its value.
        if (_lastAutomatic is { } last && last.Environment == environment)
            return last.Decision;
        var decision = DecideOneDnn(mode, environment, CpuCacheInfo.ThisMachine);
        _lastAutomatic = new AutomaticDecision(environment, decision);   // one reference: threads see a whole pair
        return decision;
    }

    private sealed record AutomaticDecision(string? Environment, OneDnnDecision Decision);

    private static AutomaticDecision? _lastAutomatic;

    /// <summary>
    /// The decision for <paramref name="mode"/>: an explicit mode wins; in <see cref="OneDnnMode.Auto"/> the
    /// environment value, then the CPU's cache description.
    /// </summary>
    /// <param name="mode">The option's value.</param>
    /// <param name="environmentValue">The value of <see cref="OneDnnEnvironmentVariable"/>, or null when unset.</param>
    /// <param name="cpu">The CPU to decide for.</param>
    /// <exception cref="ArgumentException"><paramref name="environmentValue"/> is not on/off/auto (or 1/0, true/false).</exception>
    public static OneDnnDecision DecideOneDnn(OneDnnMode mode, string? environmentValue, CpuCacheInfo cpu)
    {
        ArgumentNullException.ThrowIfNull(cpu);
        switch (mode)
        {
            case OneDnnMode.Enabled:
                return new(true, "oneDNN kept by the option (OneDnn = Enabled)");
            case OneDnnMode.Disabled:
                return new(false, "oneDNN switched off by the option (OneDnn = Disabled)");
            case OneDnnMode.Auto:
                break;
            default:
                throw new ArgumentOutOfRangeException(nameof(mode), mode, "Unknown oneDNN mode.");
        }
        switch (environmentValue?.Trim().ToLowerInvariant())
        {
            case null or "" or "auto":
                break;
            case "on" or "1" or "true":
                return new(true, $"oneDNN kept by {OneDnnEnvironmentVariable}={environmentValue}");
            case "off" or "0" or "false":
                return new(false, $"oneDNN switched off by {OneDnnEnvironmentVariable}={environmentValue}");
            default:
                throw new ArgumentException(
                    $"The environment variable {OneDnnEnvironmentVariable} is '{environmentValue}'; use on, off or auto.", nameof(environmentValue));
        }
        return cpu.HiddenCacheReason() is { } reason
            ? new(false, $"oneDNN switched off for convolutions because {reason} ({cpu}); its kernels would divide by zero " +
                         $"on such a CPU. Set {OneDnnEnvironmentVariable}=on or the OneDnn option to keep it")
            : new(true, $"oneDNN in use ({cpu})");
    }

    /// <summary>
    /// Opens a region of training or scoring that follows <paramref name="mode"/>: initialises NNPACK quietly
    /// (once per process) and, when the decision is to avoid oneDNN, switches it off until the last such region
    /// closes. Dispose the result on the thread of your choice; regions may overlap across threads.
    /// </summary>
    /// <exception cref="ArgumentException">The environment variable holds a value other than on/off/auto.</exception>
    public static NativeKernelScope Enter(OneDnnMode mode)
    {
        var decision = DecideOneDnn(mode);
        _ = Nnpack.Value;
        if (decision.UseOneDnn)
            return new NativeKernelScope(decision, disables: false);
        if (LibTorch.Value.Set is null)
            return new NativeKernelScope(decision with { Reason = decision.Reason + "; but this libtorch does not export the switch, so oneDNN stays on" }, disables: false);
        lock (Gate)
        {
            var libTorch = LibTorch.Value;
            var context = libTorch.Context!();
            if (_openDisablingScopes++ == 0)
                _valueBeforeScopes = libTorch.Get!(context);
            libTorch.Set!(context, false);
        }
        return new NativeKernelScope(decision, disables: true);
    }

    internal static void Leave()
    {
        lock (Gate)
        {
            if (_openDisablingScopes == 0)
                throw new InvalidOperationException("A native kernel scope was closed more often than it was opened.");
            if (--_openDisablingScopes == 0)
            {
                var libTorch = LibTorch.Value;
                libTorch.Set!(libTorch.Context!(), _valueBeforeScopes);
            }
        }
    }

    private sealed record Exports(GlobalContext? Context, SetUserEnabledMkldnn? Set, UserEnabledMkldnn? Get);

    private static Exports FindExports()
    {
        var context = LibTorchNative.TorchCpuFunction<GlobalContext>(LibTorchNative.GlobalContext);
        var set = LibTorchNative.TorchCpuFunction<SetUserEnabledMkldnn>("_ZN2at7Context20setUserEnabledMkldnnEb", "?setUserEnabledMkldnn@Context@at@@QEAAX_N@Z");
        var get = LibTorchNative.TorchCpuFunction<UserEnabledMkldnn>("_ZNK2at7Context17userEnabledMkldnnEv", "?userEnabledMkldnn@Context@at@@QEBA_NXZ");
        return context is null || set is null || get is null ? new Exports(null, null, null) : new Exports(context, set, get);
    }

    // On CPUs NNPACK does not support, libtorch 2.10 retries NNPACK's initialisation, and logs "Could not initialize
    // NNPACK! Reason: Unsupported hardware." at warning level, on every convolution that asks whether NNPACK is
    // available: every convolution that oneDNN does not take, so every one where the guard switched oneDNN off. Asking
    // once here with c10's log level raised to errors, then restoring it, silences the first message; switching NNPACK
    // off in libtorch's context (torch.backends.nnpack.enabled = False) when it cannot run stops the convolutions
    // from asking again, which changes no result since an unavailable NNPACK never runs.
    private static bool? InitializeNnpackQuietly()
    {
        var available = LibTorchNative.TorchCpuFunction<NnpackAvailable>("_ZN2at6native17_nnpack_availableEv", "?_nnpack_available@native@at@@YA_NXZ");
        if (available is null)
            return null;
        bool isAvailable = AskQuietly(available);
        if (!isAvailable)
        {
            var context = LibTorchNative.TorchCpuFunction<GlobalContext>(LibTorchNative.GlobalContext);
            var disable = LibTorchNative.TorchCpuFunction<SetUserEnabledNnpack>("_ZN2at7Context20setUserEnabledNNPACKEb", "?setUserEnabledNNPACK@Context@at@@QEAAX_N@Z");
            if (context is not null && disable is not null)
                disable(context(), false);
        }
        return isAvailable;
    }

    private static bool AskQuietly(NnpackAvailable available)
    {
        var logLevel = Environment.GetEnvironmentVariable(TorchLogLevelEnvironmentVariable) is null
            ? LibTorchNative.FindInC10("FLAGS_caffe2_log_level", "?FLAGS_caffe2_log_level@@3HA")
            : IntPtr.Zero;
        if (logLevel == IntPtr.Zero)
            return available();
        int before = Marshal.ReadInt32(logLevel);
        Marshal.WriteInt32(logLevel, Math.Max(before, LogLevelError));
        try
        {
            return available();
        }
        finally
        {
            Marshal.WriteInt32(logLevel, before);
        }
    }
}

/// <summary>A region opened by <see cref="NativeKernelGuard.Enter"/>; disposing it closes the region.</summary>
public sealed class NativeKernelScope : IDisposable
{
    private readonly bool _disables;
    private int _disposed;

    internal NativeKernelScope(OneDnnDecision decision, bool disables)
    {
        Decision = decision;
        _disables = disables;
    }

    /// <summary>The oneDNN decision in force in this region.</summary>
    public OneDnnDecision Decision { get; }

    /// <summary>Closes the region: the last region that switched oneDNN off restores libtorch's earlier setting.</summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) == 0 && _disables)
            NativeKernelGuard.Leave();
    }
}
