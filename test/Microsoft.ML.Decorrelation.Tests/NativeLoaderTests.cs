using Microsoft.ML.Decorrelation.Torch;
using Microsoft.VisualStudio.TestTools.UnitTesting;

namespace Microsoft.ML.Decorrelation.Tests;

/// <summary>TorchSharp's native library loads on this system, through the patched copy where the original cannot.</summary>
[TestClass]
public class NativeLoaderTests
{
    private static readonly string Original = Path.Combine(AppContext.BaseDirectory, "libLibTorchSharp.so");

    [TestMethod]
    public void WeakeningTheVersionNeedChangesOnlyItsFlag()
    {
        if (!File.Exists(Original))
            Assert.Inconclusive($"No {Original}: not a Linux build.");
        var elf = File.ReadAllBytes(Original);
        Assert.IsTrue(ElfVersionNeeds.HasStrongNeed(elf, TorchSharpNativeLoader.MissingVersion), "the output folder holds TorchSharp's original, unpatched");
        var copy = (byte[])elf.Clone();

        var refused = ElfVersionNeeds.MarkWeak(copy, TorchSharpNativeLoader.MissingVersion, allowedSymbols: []);
        CollectionAssert.AreEqual(new[] { TorchSharpNativeLoader.AllowedSymbol }, refused.ToArray(), "the one symbol bound to the version is named");
        CollectionAssert.AreEqual(elf, copy, "a refused edit changes nothing");

        Assert.IsEmpty(ElfVersionNeeds.MarkWeak(copy, TorchSharpNativeLoader.MissingVersion, [TorchSharpNativeLoader.AllowedSymbol]));
        Assert.IsFalse(ElfVersionNeeds.HasStrongNeed(copy, TorchSharpNativeLoader.MissingVersion));
        Assert.IsTrue(ElfVersionNeeds.HasStrongNeed(copy, "GLIBCXX_3.4.18"), "other needs stay strong");
        var changed = Enumerable.Range(0, elf.Length).Where(i => elf[i] != copy[i]).ToArray();
        Assert.HasCount(1, changed, "one byte: the flags of the need");
        Assert.AreEqual(0x2, copy[changed[0]] ^ elf[changed[0]], "VER_FLG_WEAK");
        Assert.ThrowsExactly<InvalidDataException>(() => ElfVersionNeeds.HasStrongNeed(new byte[64], "x"));
    }

    [TestMethod]
    public void TorchSharpLoadsAndTheOutcomeSaysHow()
    {
        TorchSharpNativeLoader.EnsureLoaded();
        Assert.AreEqual(4, TorchSharp.torch.ones(2, 2).sum().item<float>());
        string outcome = TorchSharpNativeLoader.Outcome;
        if (File.Exists(Original))
            Assert.IsTrue(outcome.Contains("a copy of") || outcome.Contains("loads as it is"), outcome);
        Console.WriteLine(outcome);
    }

    [TestMethod]
    public void LoadFailuresNameTheCauseAndTheRemedy()
    {
        string windows = TorchSharpNativeLoader.Diagnose(windows: true, "nothing to do on this system", "doesn't contain a reference to libtorch-cpu-win-x64");
        StringAssert.Contains(windows, "TorchSharp issue 1567");
        StringAssert.Contains(windows, "ONNX");
        string linux = TorchSharpNativeLoader.Diagnose(windows: false, "no loadable libtorch.so beside x", "doesn't contain a reference");
        StringAssert.Contains(linux, "libtorch-cpu-linux-x64");
        StringAssert.Contains(linux, "TorchSharp-cuda-linux");
        StringAssert.Contains(linux, "no loadable libtorch.so");
    }
}
