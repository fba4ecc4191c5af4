using System.Runtime.Intrinsics.X86;

namespace Microsoft.ML.Decorrelation.Torch;

/// <summary>One data (or unified) cache level as oneDNN's CPU detection sees it.</summary>
/// <param name="Level">1 for L1, 2 for L2, …</param>
/// <param name="SizeBytes">The cache's size in bytes.</param>
/// <param name="SharedBy">How many cores oneDNN divides the cache among; 0 would divide by zero.</param>
public readonly record struct CpuDataCache(int Level, long SizeBytes, int SharedBy);

/// <summary>
/// What this x86-64 CPU says about its data caches, read the way oneDNN reads it (CPUID: leaf 4 on Intel,
/// leaf 0x8000001D or the legacy leaves 0x80000005/6 on AMD) and, on Linux, whether the kernel found any
/// cache information (<c>/sys/devices/system/cpu/cpu0/cache</c>). oneDNN sizes its convolution blocking by
/// these numbers; virtual CPUs that hide them make it divide by zero (docs/design.md, "Native crash guards").
/// </summary>
/// <param name="IsX86">Whether the process runs on x86 or x86-64 (the only CPUs whose oneDNN kernels are affected).</param>
/// <param name="Vendor">The CPUID vendor string ("GenuineIntel", "AuthenticAMD", …); empty when not x86.</param>
/// <param name="DataCaches">The data cache levels CPUID enumerates, as oneDNN computes them.</param>
/// <param name="SysfsHasCacheSizes">On Linux, whether sysfs lists a cache with a size for CPU 0; null elsewhere.</param>
public sealed record CpuCacheInfo(bool IsX86, string Vendor, IReadOnlyList<CpuDataCache> DataCaches, bool? SysfsHasCacheSizes)
{
    /// <summary>Registers of one CPUID call.</summary>
    public readonly record struct CpuidResult(uint Eax, uint Ebx, uint Ecx, uint Edx);

    /// <summary>The smallest per-core L1 or L2 size that counts as real; hypervisors that zero the fields give a few bytes.</summary>
    public const long MinimumPlausibleCacheBytes = 4096;

    private static readonly Lazy<CpuCacheInfo> Current = new(() => Read(
        X86Base.IsSupported ? (leaf, subLeaf) =>
        {
            var (eax, ebx, ecx, edx) = X86Base.CpuId((int)leaf, (int)subLeaf);
            return new CpuidResult((uint)eax, (uint)ebx, (uint)ecx, (uint)edx);
        } : null,
        OperatingSystem.IsLinux() ? "/sys/devices/system/cpu" : null));

    /// <summary>This machine's CPU (read once per process).</summary>
    public static CpuCacheInfo ThisMachine => Current.Value;

    /// <summary>
    /// Reads the cache description from a CPUID function and a sysfs CPU folder; both can be fakes.
    /// </summary>
    /// <param name="cpuid">Executes CPUID for (leaf, sub-leaf), or null on a CPU that is not x86.</param>
    /// <param name="sysfsCpuRoot">The folder holding <c>cpu0/cache/index*/size</c> (on Linux <c>/sys/devices/system/cpu</c>), or null where there is none.</param>
    public static CpuCacheInfo Read(Func<uint, uint, CpuidResult>? cpuid, string? sysfsCpuRoot)
    {
        bool? sysfs = sysfsCpuRoot is null || !Directory.Exists(Path.Combine(sysfsCpuRoot, "cpu0")) ? null : SysfsHasSizes(sysfsCpuRoot);
        if (cpuid is null)
            return new CpuCacheInfo(false, "", [], sysfs);
        var vendor = VendorOf(cpuid(0, 0));
        var caches = vendor switch
        {
            "GenuineIntel" => IntelCaches(cpuid),
            "AuthenticAMD" => AmdCaches(cpuid),
            _ => [],
        };
        return new CpuCacheInfo(true, vendor, caches, sysfs);
    }

    /// <summary>
    /// Why oneDNN's convolution blocking could divide by zero on this CPU, or null when its cache description
    /// looks complete: on x86, an L1 or L2 data cache that oneDNN would see as shared by no core or as smaller
    /// than <see cref="MinimumPlausibleCacheBytes"/> per core, an L1 without an L2, or (Linux) a kernel that
    /// found no cache information at all. With no levels at all, oneDNN uses built-in guesses, which are safe.
    /// </summary>
    public string? HiddenCacheReason()
    {
        if (!IsX86)
            return null;
        if (SysfsHasCacheSizes == false)
            return "the CPU reports no cache sizes (/sys/devices/system/cpu/cpu0/cache lists none)";
        if (DataCaches.Count == 0)
            return null;
        foreach (var cache in DataCaches.Where(c => c.Level <= 2))
        {
            if (cache.SharedBy <= 0)
                return $"CPUID reports the L{cache.Level} data cache as shared by no core";
            if (cache.SizeBytes / cache.SharedBy < MinimumPlausibleCacheBytes)
                return $"CPUID reports {cache.SizeBytes / cache.SharedBy} bytes of L{cache.Level} data cache per core";
        }
        return DataCaches.Count < 2 ? "CPUID reports an L1 data cache but no L2" : null;
    }

    /// <summary>A one-line description for logs: vendor and cache sizes.</summary>
    public override string ToString()
    {
        if (!IsX86)
            return "not an x86 CPU";
        var levels = DataCaches.Count == 0 ? "no data caches via CPUID"
            : string.Join(", ", DataCaches.Select(c => $"L{c.Level} {c.SizeBytes / 1024} KiB shared by {c.SharedBy}"));
        var sysfs = SysfsHasCacheSizes switch { true => "; sysfs lists cache sizes", false => "; sysfs lists no cache sizes", _ => "" };
        return $"{Vendor}: {levels}{sysfs}";
    }

    private static bool SysfsHasSizes(string root)
    {
        var cache = Path.Combine(root, "cpu0", "cache");
        if (!Directory.Exists(cache))
            return false;
        foreach (var index in Directory.EnumerateDirectories(cache, "index*"))
        {
            var size = Path.Combine(index, "size");
            if (File.Exists(size) && File.ReadAllText(size).Trim() is { Length: > 0 } text && text != "0" && text != "0K")
                return true;
        }
        return false;
    }

    private static string VendorOf(CpuidResult leaf0)
    {
        Span<byte> text = stackalloc byte[12];
        BitConverter.TryWriteBytes(text[..4], leaf0.Ebx);
        BitConverter.TryWriteBytes(text[4..8], leaf0.Edx);
        BitConverter.TryWriteBytes(text[8..], leaf0.Ecx);
        return System.Text.Encoding.ASCII.GetString(text).TrimEnd('\0');
    }

    private static uint Bits(uint value, int low, int high) => (value >> low) & (uint)((1L << (high - low + 1)) - 1);

    // Intel's leaf 4 and AMD's leaf 0x8000001D share this layout: ways, partitions and line size, each minus one, in EBX.
    private static long WaysPartitionsLine(CpuidResult leaf)
        => (long)(Bits(leaf.Ebx, 22, 31) + 1) * (Bits(leaf.Ebx, 12, 21) + 1) * (Bits(leaf.Ebx, 0, 11) + 1);

    // Logical processors per core (SMT) and per package, from the extended topology leaf 0xB when the
    // hypervisor fills it; (0, 0) when it does not, as oneDNN's detection then has no topology either.
    private static (uint Smt, uint Logical) Topology(Func<uint, uint, CpuidResult> cpuid)
    {
        if (cpuid(0, 0).Eax < 0xB)
            return (0, 0);
        var first = cpuid(0xB, 0);
        if (first.Eax == 0 && first.Ebx == 0)
            return (0, 0);
        uint smt = 0, logical = 0;
        for (uint level = 0; level < 2; level++)
        {
            var leaf = cpuid(0xB, level);
            switch (Bits(leaf.Ecx, 8, 15))
            {
                case 1: smt = Bits(leaf.Ebx, 0, 15); break;
                case 2: logical = Bits(leaf.Ebx, 0, 15); break;
            }
        }
        smt = Math.Max(1, smt);
        return (smt, Math.Max(smt, logical));
    }

    // Leaf 4, "deterministic cache parameters": one sub-leaf per cache until type 0.
    private static List<CpuDataCache> IntelCaches(Func<uint, uint, CpuidResult> cpuid)
    {
        var caches = new List<CpuDataCache>();
        if (cpuid(0, 0).Eax < 4)
            return caches;
        var (smt, logical) = Topology(cpuid);
        for (uint subLeaf = 0; subLeaf < 16 && caches.Count < 4; subLeaf++)
        {
            var leaf = cpuid(4, subLeaf);
            uint type = Bits(leaf.Eax, 0, 4);
            if (type == 0)
                break;
            if (type != 1 && type != 3)
                continue;   // instruction cache
            uint sharing = Bits(leaf.Eax, 14, 25) + 1;
            if (logical != 0)
                sharing = Math.Min(sharing, logical);
            if (type == 1 && smt == 0)
                smt = sharing;
            long size = WaysPartitionsLine(leaf) * ((long)leaf.Ecx + 1);
            caches.Add(new CpuDataCache(caches.Count + 1, size, (int)Math.Max(sharing / Math.Max(smt, 1), 1)));
        }
        return caches;
    }

    private static List<CpuDataCache> AmdCaches(Func<uint, uint, CpuidResult> cpuid)
    {
        var caches = new List<CpuDataCache>();
        uint maxExtended = cpuid(0x8000_0000, 0).Eax;
        if (maxExtended >= 0x8000_001D)
        {
            // Cache topology leaf: one sub-leaf per cache until type 0. oneDNN divides the sharing count of
            // every level after the first sub-leaf by L1's, capped by the core count: that can reach 0.
            uint logical = Topology(cpuid).Logical;
            if (logical == 0)
            {
                // No topology leaf: the legacy count of logical processors (1 without hyper-threading).
                var leaf1 = cpuid(1, 0);
                logical = Bits(leaf1.Edx, 28, 28) == 0 ? 1 : Math.Max(1, Bits(leaf1.Ebx, 16, 23));
            }
            uint firstSharing = 0;
            for (uint subLeaf = 0; subLeaf < 16 && caches.Count < 4; subLeaf++)
            {
                var leaf = cpuid(0x8000_001D, subLeaf);
                uint type = Bits(leaf.Eax, 0, 4);
                if (type == 0)
                    break;
                if (type == 2)
                    continue;   // instruction cache
                uint sharing = Bits(leaf.Eax, 14, 25) + 1;
                long size = WaysPartitionsLine(leaf);
                if (Bits(leaf.Eax, 9, 9) == 0)
                    size *= (long)leaf.Ecx + 1;   // not fully associative: times the number of sets
                if (subLeaf > 0)
                    sharing = Math.Min(sharing, logical) / Math.Max(1, firstSharing);
                else
                    firstSharing = sharing;
                caches.Add(new CpuDataCache(caches.Count + 1, size, (int)sharing));
            }
            if (caches.Count > 0)
                caches[0] = caches[0] with { SharedBy = (int)Math.Min(1, firstSharing) };
        }
        else if (maxExtended >= 0x8000_0006)
        {
            caches.Add(new CpuDataCache(1, Bits(cpuid(0x8000_0005, 0).Ecx, 24, 31) * 1024L, 1));
            var leaf = cpuid(0x8000_0006, 0);
            if (Bits(leaf.Ecx, 12, 15) > 0)
                caches.Add(new CpuDataCache(2, Bits(leaf.Ecx, 16, 31) * 1024L, 1));
        }
        return caches;
    }
}
