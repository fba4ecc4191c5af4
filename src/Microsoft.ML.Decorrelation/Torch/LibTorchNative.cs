using System.Runtime.InteropServices;

namespace Microsoft.ML.Decorrelation.Torch;

/// <summary>
/// Finds exports of the native libtorch libraries that TorchSharp has loaded: process-wide switches of
/// libtorch (<c>at::globalContext()</c> and its setters, c10's log level) that TorchSharp does not bind.
/// Every lookup names the Itanium C++ ABI symbol first, then MSVC's; a missing export gives
/// <see cref="IntPtr.Zero"/> and callers fall back to doing nothing.
/// </summary>
internal static class LibTorchNative
{
    private static readonly Lazy<IntPtr> TorchCpu = new(() => Load(
        OperatingSystem.IsWindows() ? "torch_cpu.dll" : OperatingSystem.IsMacOS() ? "libtorch_cpu.dylib" : "libtorch_cpu.so"));

    private static readonly Lazy<IntPtr> C10 = new(() => Load(
        OperatingSystem.IsWindows() ? "c10.dll" : OperatingSystem.IsMacOS() ? "libc10.dylib" : "libc10.so"));

    /// <summary><c>at::globalContext()</c>, the receiver of every <c>at::Context</c> setter.</summary>
    public static readonly string[] GlobalContext = ["_ZN2at13globalContextEv", "?globalContext@at@@YAAEAVContext@1@XZ"];

    /// <summary>The address of the first of <paramref name="names"/> that libtorch_cpu exports, or zero.</summary>
    public static IntPtr FindInTorchCpu(params string[] names) => Find(TorchCpu.Value, names);

    /// <summary>The address of the first of <paramref name="names"/> that c10 exports, or zero.</summary>
    public static IntPtr FindInC10(params string[] names) => Find(C10.Value, names);

    /// <summary>The delegate for the first of <paramref name="names"/> that libtorch_cpu exports, or null.</summary>
    public static T? TorchCpuFunction<T>(params string[] names) where T : Delegate
    {
        var address = FindInTorchCpu(names);
        return address == IntPtr.Zero ? null : Marshal.GetDelegateForFunctionPointer<T>(address);
    }

    private static IntPtr Find(IntPtr library, string[] names)
    {
        if (library == IntPtr.Zero)
            return IntPtr.Zero;
        foreach (var name in names)
        {
            if (NativeLibrary.TryGetExport(library, name, out var address))
                return address;
        }
        return IntPtr.Zero;
    }

    // Already loaded by TorchSharp, so the loader finds it by name; else probe like a DllImport of TorchSharp would.
    private static IntPtr Load(string name)
    {
        _ = TorchSharp.torch.get_num_threads();   // makes TorchSharp load libtorch
        if (NativeLibrary.TryLoad(name, out var handle)
            || NativeLibrary.TryLoad(name, typeof(TorchSharp.torch).Assembly, null, out handle))
            return handle;
        return IntPtr.Zero;
    }
}
