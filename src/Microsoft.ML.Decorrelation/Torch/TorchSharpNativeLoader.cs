using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Security.Cryptography;

namespace Microsoft.ML.Decorrelation.Torch;

/// <summary>
/// Makes TorchSharp's native library load where the operating system's loader would refuse it, before TorchSharp
/// first looks for it, for every application: one that references the NuGet package, or this project from any folder.
/// </summary>
/// <remarks>
/// <para><b>Linux (Debian 12, glibc 2.36).</b> TorchSharp 0.107.0's <c>libLibTorchSharp.so</c> was linked with GCC 13
/// and lists a version need on <c>GLIBCXX_3.4.32</c>, which Debian 12's libstdc++ (up to 3.4.30) lacks, so the loader
/// refuses it and TorchSharp reports a misleading "doesn't contain a reference to libtorch-cpu". The only symbol bound
/// to that version is <c>std::ios_base_library_init</c>, a dummy GCC 13 emits; no relocation calls it. When the library
/// does not load, this class writes a copy whose need on that version is weak (VER_FLG_WEAK) into a per-user cache,
/// loads libtorch and then the copy. TorchSharp's own probing then finds the already loaded library by its soname. The
/// copy is refused if any symbol other than the allowed one is bound to the weakened version (docs/design.md §5).</para>
/// <para><b>Windows.</b> TorchSharp 0.107.0's <c>LibTorchSharp.dll</c> imports symbols that libtorch-cpu-win-x64
/// 2.10.0 does not export (TorchSharp issue 1567), so it cannot load; <see cref="EnsureLoaded"/> says so instead of
/// TorchSharp's message about a missing package reference.</para>
/// <para>The library runs this when it is first used (a module initializer). An application that calls TorchSharp
/// before it uses this library calls <see cref="EnsureLoaded"/> first.</para>
/// </remarks>
public static class TorchSharpNativeLoader
{
    /// <summary>The GNU version need that Debian 12's libstdc++ lacks.</summary>
    internal const string MissingVersion = "GLIBCXX_3.4.32";

    /// <summary>The only symbol allowed to be bound to <see cref="MissingVersion"/>.</summary>
    internal const string AllowedSymbol = "_ZSt21ios_base_library_initv";

    private static readonly object Gate = new();
    private static string? _outcome;

    /// <summary>What the loader did: nothing needed, the path of the patched copy it loaded, or why it could not help.</summary>
    public static string Outcome
    {
        get
        {
            Prepare();
            return _outcome!;
        }
    }

    /// <summary>
    /// Loads TorchSharp's native library, patching it first where needed (see remarks), and throws a clear error when no
    /// native backend can be loaded.
    /// </summary>
    /// <exception cref="PlatformNotSupportedException">The native backend cannot load on this system; the message says why and what to do.</exception>
    public static void EnsureLoaded()
    {
        Prepare();
        try
        {
            _ = TorchSharp.torch.get_num_threads();
        }
        catch (Exception e) when (e is TypeInitializationException or DllNotFoundException or NotSupportedException or EntryPointNotFoundException)
        {
            throw new PlatformNotSupportedException(Diagnose(OperatingSystem.IsWindows(), _outcome!, Innermost(e).Message), e);
        }
    }

    /// <summary>The error for a native backend that did not load, naming the known cause where there is one.</summary>
    internal static string Diagnose(bool windows, string loaderOutcome, string torchSharpMessage)
    {
        if (windows)
            return "TorchSharp's native library could not be loaded. TorchSharp 0.107.0's LibTorchSharp.dll imports functions that " +
                   "libtorch-cpu-win-x64 2.10.0 does not export (TorchSharp issue 1567, open upstream), so training and scoring with " +
                   "TorchSharp on Windows fail until a fixed TorchSharp is released; score an exported ONNX model with ONNX Runtime " +
                   $"instead (README, Install). TorchSharp said: {torchSharpMessage}";
        return "TorchSharp's native library could not be loaded. Reference exactly one LibTorch backend package in the application: " +
               "libtorch-cpu-linux-x64, libtorch-cpu-win-x64 or libtorch-cpu-osx-arm64 for the CPU, TorchSharp-cuda-linux or " +
               $"TorchSharp-cuda-windows for CUDA (README, Install). Native loader: {loaderOutcome}. TorchSharp said: {torchSharpMessage}";
    }

    private static Exception Innermost(Exception e)
    {
        while (e.InnerException is not null)
            e = e.InnerException;
        return e;
    }

#pragma warning disable CA2255 // A library's module initializer: TorchSharp must find its native library before any call of this library reaches it.
    [ModuleInitializer]
#pragma warning restore CA2255
    internal static void Prepare()
    {
        lock (Gate)
        {
            if (_outcome is not null)
                return;
            try
            {
                _outcome = OperatingSystem.IsLinux() && RuntimeInformation.ProcessArchitecture == Architecture.X64 ? PrepareLinux() : "nothing to do on this system";
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException or InvalidDataException or BadImageFormatException)
            {
                // Never fail here: TorchSharp will report the load failure, and EnsureLoaded adds this reason.
                _outcome = $"could not prepare a loadable copy: {e.Message}";
            }
        }
    }

    private static string PrepareLinux()
    {
        var folders = SearchFolders().ToArray();
        string? original = folders.Select(f => Path.Combine(f, "libLibTorchSharp.so")).FirstOrDefault(File.Exists);
        if (original is null)
            return $"no libLibTorchSharp.so in {string.Join(", ", folders)}";
        var elf = File.ReadAllBytes(original);
        if (!ElfVersionNeeds.HasStrongNeed(elf, MissingVersion))
            return $"{original} loads as it is";
        // libtorch first, as TorchSharp loads it: the library's other needs are then found by their sonames.
        string? libtorch = folders.Select(f => Path.Combine(f, "libtorch.so")).FirstOrDefault(File.Exists);
        if (libtorch is null || !NativeLibrary.TryLoad(libtorch, out _))
            return $"no loadable libtorch.so beside {original} (no LibTorch backend package?)";
        if (NativeLibrary.TryLoad(original, out _))
            return $"{original} loads as it is (this system's libstdc++ has {MissingVersion})";

        string copy = PatchedCopyPath(elf);
        if (!File.Exists(copy))
        {
            var unresolved = ElfVersionNeeds.MarkWeak(elf, MissingVersion, [AllowedSymbol]);
            if (unresolved.Count > 0)
                return $"{original} binds {string.Join(", ", unresolved)} to {MissingVersion}: a weak copy could break them, so none was made. Install a libstdc++ with {MissingVersion}";
            Directory.CreateDirectory(Path.GetDirectoryName(copy)!);
            string temporary = copy + "." + Environment.ProcessId + ".tmp";
            File.WriteAllBytes(temporary, elf);
            File.Move(temporary, copy, overwrite: true);
        }
        return NativeLibrary.TryLoad(copy, out _)
            ? $"loaded {copy}, a copy of {original} whose need on {MissingVersion} is weak"
            : $"the patched copy {copy} of {original} does not load either";
    }

    /// <summary>Where TorchSharp's natives can be: the host's native search folders, then beside TorchSharp.dll.</summary>
    private static IEnumerable<string> SearchFolders()
    {
        if (AppContext.GetData("NATIVE_DLL_SEARCH_DIRECTORIES") is string folders)
        {
            foreach (var folder in folders.Split(Path.PathSeparator, StringSplitOptions.RemoveEmptyEntries))
                yield return folder;
        }
        string torchSharp = Path.GetDirectoryName(typeof(TorchSharp.torch).Assembly.Location) ?? AppContext.BaseDirectory;
        yield return torchSharp;
        yield return Path.Combine(torchSharp, "runtimes", "linux-x64", "native");
        // In the NuGet cache, libtorch lives in its own package beside TorchSharp's.
        var packages = Path.GetFullPath(Path.Combine(torchSharp, "..", "..", "..", ".."));
        if (Directory.Exists(packages))
        {
            foreach (var native in Directory.EnumerateDirectories(packages, "libtorch-*-linux-x64"))
            {
                foreach (var version in Directory.EnumerateDirectories(native))
                    yield return Path.Combine(version, "runtimes", "linux-x64", "native");
            }
        }
    }

    /// <summary>The per-user cache path of the patched copy, named by the original's content.</summary>
    private static string PatchedCopyPath(byte[] original)
    {
        string cache = Environment.GetEnvironmentVariable("XDG_CACHE_HOME") is { Length: > 0 } xdg ? xdg
            : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache");
        if (!Path.IsPathRooted(cache) || cache == ".cache")
            cache = Path.GetTempPath();
        string hash = Convert.ToHexString(SHA256.HashData(original))[..16].ToLowerInvariant();
        return Path.Combine(cache, "Microsoft.ML.Decorrelation", "libtorchsharp-" + hash, "libLibTorchSharp.so");
    }
}
