using System.Runtime.InteropServices;
using Microsoft.ML.Decorrelation.Torch;
using Microsoft.ML.Decorrelation.Torch.Architectures;
using Microsoft.VisualStudio.TestTools.UnitTesting;
using static Microsoft.ML.Decorrelation.Torch.CpuCacheInfo;

namespace Microsoft.ML.Decorrelation.Tests;

[TestClass]
public class NativeKernelGuardTests : TempFolderTest
{
    private const string AmdVendorEbx = "Auth", AmdVendorEdx = "enti", AmdVendorEcx = "cAMD";
    private const string IntelVendorEbx = "Genu", IntelVendorEdx = "ineI", IntelVendorEcx = "ntel";
    private static readonly Dictionary<string, string> VerboseOneDnn = new() { ["ONEDNN_VERBOSE"] = "1" };

    private static uint Ascii(string four) => BitConverter.ToUInt32(System.Text.Encoding.ASCII.GetBytes(four));

    /// <summary>A fake CPUID: the given leaves, zeros for every other (as a hypervisor that hides them answers).</summary>
    private static Func<uint, uint, CpuidResult> FakeCpuid(Dictionary<(uint, uint), CpuidResult> leaves)
        => (leaf, subLeaf) => leaves.TryGetValue((leaf, subLeaf), out var result) ? result : default;

    // Cache descriptor registers: type, level, sharing − 1 in EAX; ways − 1, partitions − 1, line − 1 in EBX; sets − 1 in ECX.
    private static CpuidResult CacheLeaf(uint type, uint level, uint sharing, uint ways, uint line, uint sets)
        => new(type | level << 5 | (sharing - 1) << 14, (ways - 1) << 22 | line - 1, sets - 1, 0);

    private static Dictionary<(uint, uint), CpuidResult> AmdZen(uint logicalPerPackage, uint l1Sharing, uint l2Sharing) => new()
    {
        [(0, 0)] = new(0x10, Ascii(AmdVendorEbx), Ascii(AmdVendorEcx), Ascii(AmdVendorEdx)),
        [(0xB, 0)] = new(1, 2, 1 << 8, 0),                    // SMT level: 2 threads per core
        [(0xB, 1)] = new(4, logicalPerPackage, 2 << 8, 0),    // core level: logical processors per package
        [(0x8000_0000, 0)] = new(0x8000_0021, 0, 0, 0),
        [(0x8000_001D, 0)] = CacheLeaf(1, 1, l1Sharing, 12, 64, 64),     // L1d 48 KiB
        [(0x8000_001D, 1)] = CacheLeaf(2, 1, l1Sharing, 8, 64, 64),      // L1i
        [(0x8000_001D, 2)] = CacheLeaf(3, 2, l2Sharing, 16, 64, 1024),   // L2 1 MiB
        [(0x8000_001D, 3)] = CacheLeaf(3, 3, 16, 16, 64, 32768),         // L3 32 MiB
    };

    private string FakeSysfs(params (string Index, string? Size)[] caches)
    {
        var root = Path.Combine(TempFolder, $"sys-cpu-{Guid.NewGuid():N}");
        Directory.CreateDirectory(Path.Combine(root, "cpu0"));
        foreach (var (index, size) in caches)
        {
            var folder = Directory.CreateDirectory(Path.Combine(root, "cpu0", "cache", index)).FullName;
            if (size is not null)
                File.WriteAllText(Path.Combine(folder, "size"), size + "\n");
        }
        return root;
    }

    [TestMethod]
    public void SysfsWithoutCacheSizesMarksTheCpuAsHidingThem()
    {
        var healthy = Read(null, FakeSysfs(("index0", "48K"), ("index2", "2048K")));
        Assert.IsTrue(healthy.SysfsHasCacheSizes);

        var hidden = Read(null, FakeSysfs());
        Assert.IsFalse(hidden.SysfsHasCacheSizes);
        Assert.IsNull(hidden.HiddenCacheReason(), "not x86 (no CPUID): oneDNN's x64 kernels do not run");
        var hiddenOnX86 = hidden with { IsX86 = true, Vendor = "AuthenticAMD" };
        StringAssert.Contains(hiddenOnX86.HiddenCacheReason(), "/sys/devices/system/cpu/cpu0/cache");

        Assert.IsFalse(Read(null, FakeSysfs(("index0", null), ("index1", "0K"))).SysfsHasCacheSizes, "entries without a size");
        Assert.IsNull(Read(null, Path.Combine(TempFolder, "absent")).SysfsHasCacheSizes, "no sysfs at all (not Linux)");
    }

    [TestMethod]
    public void AmdCacheTopologyIsReadAsOneDnnReadsIt()
    {
        var zen = Read(FakeCpuid(AmdZen(logicalPerPackage: 16, l1Sharing: 2, l2Sharing: 2)), null);
        Assert.AreEqual("AuthenticAMD", zen.Vendor);
        CollectionAssert.AreEqual(new[] { new CpuDataCache(1, 48 * 1024, 1), new CpuDataCache(2, 1 << 20, 1), new CpuDataCache(3, 32 << 20, 8) },
            zen.DataCaches.ToArray());
        Assert.IsNull(zen.HiddenCacheReason());

        // A hypervisor that zeroes the cache topology leaf: no levels, and oneDNN falls back to its guesses.
        var zeroed = AmdZen(16, 2, 2);
        foreach (var subLeaf in new uint[] { 0, 1, 2, 3 })
            zeroed.Remove((0x8000_001D, subLeaf));
        Assert.IsEmpty(Read(FakeCpuid(zeroed), null).DataCaches);
        Assert.IsNull(Read(FakeCpuid(zeroed), null).HiddenCacheReason());

        // One that reports an L1 shared by the core's two threads but an L2 shared by one: oneDNN's sharing
        // count for L2 becomes min(1, 16) / 2 = 0, and it divides by that.
        var unshared = Read(FakeCpuid(AmdZen(logicalPerPackage: 16, l1Sharing: 2, l2Sharing: 1)), null);
        Assert.AreEqual(0, unshared.DataCaches[1].SharedBy);
        StringAssert.Contains(unshared.HiddenCacheReason(), "L2 data cache as shared by no core");

        // One that keeps the cache types but zeroes the geometry: a few bytes of cache.
        var tiny = AmdZen(16, 1, 1);
        tiny[(0x8000_001D, 0)] = new(1 | 1 << 5, 0, 0, 0);
        StringAssert.Contains(Read(FakeCpuid(tiny), null).HiddenCacheReason(), "1 bytes of L1 data cache per core");
    }

    [TestMethod]
    public void IntelDeterministicCacheParametersAreRead()
    {
        var leaves = new Dictionary<(uint, uint), CpuidResult>
        {
            [(0, 0)] = new(0x1F, Ascii(IntelVendorEbx), Ascii(IntelVendorEcx), Ascii(IntelVendorEdx)),
            [(4, 0)] = CacheLeaf(1, 1, 2, 12, 64, 64),      // L1d 48 KiB, 2 threads
            [(4, 1)] = CacheLeaf(2, 1, 2, 8, 64, 64),       // L1i
            [(4, 2)] = CacheLeaf(3, 2, 2, 16, 64, 2048),    // L2 2 MiB
        };
        var intel = Read(FakeCpuid(leaves), null);
        CollectionAssert.AreEqual(new[] { new CpuDataCache(1, 48 * 1024, 1), new CpuDataCache(2, 2 << 20, 1) }, intel.DataCaches.ToArray());
        Assert.IsNull(intel.HiddenCacheReason());

        leaves.Remove((4, 2));
        StringAssert.Contains(Read(FakeCpuid(leaves), null).HiddenCacheReason(), "no L2");
    }

    [TestMethod]
    public void ThisMachinesCpuidCachesMatchWhatTheKernelFound()
    {
        var cpu = ThisMachine;
        if (!cpu.IsX86)
        {
            Assert.IsNull(cpu.HiddenCacheReason());
            return;
        }
        if (cpu.SysfsHasCacheSizes != true)
        {
            Assert.IsNotNull(cpu.HiddenCacheReason(), $"no sysfs cache sizes, yet the CPU was not flagged: {cpu}");
            return;
        }
        // The kernel builds sysfs from the same CPUID leaves: the sizes must agree (an independent reading).
        foreach (var index in Directory.EnumerateDirectories("/sys/devices/system/cpu/cpu0/cache", "index*"))
        {
            var type = File.ReadAllText(Path.Combine(index, "type")).Trim();
            if (type == "Instruction")
                continue;
            int level = int.Parse(File.ReadAllText(Path.Combine(index, "level")).Trim());
            long size = long.Parse(File.ReadAllText(Path.Combine(index, "size")).Trim().TrimEnd('K')) * 1024;
            Assert.AreEqual(size, cpu.DataCaches.Single(c => c.Level == level).SizeBytes, $"L{level} size ({cpu})");
        }
        Assert.IsNull(cpu.HiddenCacheReason(), cpu.ToString());
    }

    [TestMethod]
    public void ExplicitModeWinsThenTheEnvironmentThenTheCpu()
    {
        var healthy = Read(FakeCpuid(AmdZen(16, 2, 2)), null);
        var hiding = healthy with { SysfsHasCacheSizes = false };
        Assert.IsTrue(NativeKernelGuard.DecideOneDnn(OneDnnMode.Enabled, "off", hiding).UseOneDnn);
        Assert.IsFalse(NativeKernelGuard.DecideOneDnn(OneDnnMode.Disabled, "on", healthy).UseOneDnn);
        Assert.IsFalse(NativeKernelGuard.DecideOneDnn(OneDnnMode.Auto, "OFF", healthy).UseOneDnn);
        Assert.IsTrue(NativeKernelGuard.DecideOneDnn(OneDnnMode.Auto, "1", hiding).UseOneDnn);
        Assert.IsTrue(NativeKernelGuard.DecideOneDnn(OneDnnMode.Auto, "auto", healthy).UseOneDnn);
        var automatic = NativeKernelGuard.DecideOneDnn(OneDnnMode.Auto, null, hiding);
        Assert.IsFalse(automatic.UseOneDnn);
        StringAssert.Contains(automatic.Reason, "reports no cache sizes");
        StringAssert.Contains(automatic.Reason, NativeKernelGuard.OneDnnEnvironmentVariable + "=on");

        var bad = Assert.ThrowsExactly<ArgumentException>(() => NativeKernelGuard.DecideOneDnn(OneDnnMode.Auto, "maybe", healthy));
        StringAssert.Contains(bad.Message, "DECORRELATION_ONEDNN is 'maybe'");
        Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => new Torch.Training.TrainingOptions { OneDnn = (OneDnnMode)7 }.Validate());
    }

    [TestMethod]
    public void DisablingScopesRestoreLibTorchsSettingWhenTheLastCloses()
    {
        bool? before = NativeKernelGuard.OneDnnEnabledInLibTorch;
        Assert.IsNotNull(before, "libtorch exports at::Context::userEnabledMkldnn");
        var outer = NativeKernelGuard.Enter(OneDnnMode.Disabled);
        Assert.IsFalse(NativeKernelGuard.OneDnnEnabledInLibTorch);
        var inner = NativeKernelGuard.Enter(OneDnnMode.Disabled);
        using (NativeKernelGuard.Enter(OneDnnMode.Enabled))
            Assert.IsFalse(NativeKernelGuard.OneDnnEnabledInLibTorch, "Enabled leaves the setting as it is");
        outer.Dispose();
        outer.Dispose();   // idempotent
        Assert.IsFalse(NativeKernelGuard.OneDnnEnabledInLibTorch, "still off while a scope is open");
        inner.Dispose();
        Assert.AreEqual(before, NativeKernelGuard.OneDnnEnabledInLibTorch);
    }

    [TestMethod]
    public void NnpackIsInitialisedWithTheLogLevelRestored()
    {
        var logLevel = LibTorchNative.FindInC10("FLAGS_caffe2_log_level");
        Assert.AreNotEqual(IntPtr.Zero, logLevel, "c10 exports its log level");
        int before = Marshal.ReadInt32(logLevel);
        Assert.IsNotNull(NativeKernelGuard.NnpackIsAvailable);
        using (NativeKernelGuard.Enter(OneDnnMode.Auto))
            Assert.AreEqual(before, Marshal.ReadInt32(logLevel));
    }

    /// <summary>
    /// Convolutions that oneDNN does not take ask whether NNPACK is available; on a CPU NNPACK does not support, libtorch
    /// then logs its warning on every such call unless the guard switched NNPACK off.
    /// </summary>
    private static void AssertNoNnpackWarning(string output)
        => Assert.AreEqual(0, output.Split('\n').Count(line => line.Contains("Could not initialize NNPACK")),
            $"NNPACK's warning reached stderr (NNPACK available here: {NativeKernelGuard.NnpackIsAvailable}):\n{output[..Math.Min(output.Length, 2000)]}");

    /// <summary>oneDNN's verbose log, in the child's output, lists every convolution it executes.</summary>
    private static int OneDnnConvolutions(string output)
        => output.Split('\n').Count(line => line.StartsWith("onednn_verbose") && line.Contains(",exec,") && line.Contains("convolution"));

    /// <summary>
    /// Runs a case with oneDNN forced off and on, each in a child process: off must succeed and run no oneDNN
    /// convolution; on must agree within float tolerance, or, if it crashes, only on a CPU the guard flags.
    /// </summary>
    private void AssertOffMatchesOn(string name, float tolerance, params string[] arguments)
    {
        var (off, offValues) = ChildProcess.RunNativeCase(TempFolder, name, OneDnnMode.Disabled, VerboseOneDnn, arguments);
        off.AssertSucceeded($"{name} with oneDNN off");
        StringAssert.Contains(off.Output, "oneDNN in libtorch: False");
        Assert.AreEqual(0, OneDnnConvolutions(off.Output), "oneDNN ran a convolution although it was switched off");
        AssertNoNnpackWarning(off.Output);

        var (on, onValues) = ChildProcess.RunNativeCase(TempFolder, name, OneDnnMode.Enabled, VerboseOneDnn, arguments);
        if (on.Signal is not null)
        {
            Assert.IsNotNull(ThisMachine.HiddenCacheReason(),
                $"{name} with oneDNN on was {on.Describe()}, but the guard does not flag this CPU ({ThisMachine}): Auto would crash here.");
            return;
        }
        on.AssertSucceeded($"{name} with oneDNN on");
        Assert.IsGreaterThan(0, OneDnnConvolutions(on.Output), "with oneDNN on, its verbose log shows convolutions");
        Assert.HasCount(onValues!.Length, offValues!);
        float scale = onValues.Max(Math.Abs);
        for (int i = 0; i < onValues.Length; i++)
            Assert.AreEqual(onValues[i], offValues![i], tolerance * Math.Max(1, scale), $"{name}: value {i} of {onValues.Length}");
    }

    [TestMethod]
    public void Conv1x1OfTheReportedCrashGivesTheSameResultsWithOneDnnOff()
        => AssertOffMatchesOn("conv1x1", 1e-4f);

    [TestMethod]
    public void ResNet50ForwardAndBackwardAt224GiveTheSameResultsWithOneDnnOff()
        => AssertOffMatchesOn("resnet", 2e-3f, "50", "3", "224", nameof(ResNetStem.ImageNet));

    [TestMethod]
    public void ResNet50TrainsAndScoresThroughTheTrainerAndTheOverrideIsLoggedOnce()
    {
        var (automatic, scores) = ChildProcess.RunNativeCase(TempFolder, "trainer", OneDnnMode.Auto, "ResNet50", "3", "32", "8");
        automatic.AssertSucceeded("ResNet-50 training step through the trainer (oneDNN Auto)");
        Assert.HasCount(8 * 2, scores!);
        Assert.IsTrue(scores!.All(float.IsFinite));
        Assert.AreEqual(ThisMachine.HiddenCacheReason() is not null, automatic.Output.Contains("oneDNN switched off"), automatic.Output);
        AssertNoNnpackWarning(automatic.Output);

        var environment = new Dictionary<string, string> { [NativeKernelGuard.OneDnnEnvironmentVariable] = "off" };
        var (forced, _) = ChildProcess.RunNativeCase(TempFolder, "trainer", OneDnnMode.Auto, environment, "ResNet50", "3", "32", "8");
        forced.AssertSucceeded("ResNet-50 training step through the trainer (DECORRELATION_ONEDNN=off)");
        Assert.AreEqual(1, forced.Output.Split('\n').Count(l => l.Contains("Kind=Warning] oneDNN switched off by DECORRELATION_ONEDNN=off")), forced.Output);
    }
}
