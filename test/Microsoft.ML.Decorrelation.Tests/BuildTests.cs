using System.Diagnostics;
using System.Text.Json;
using Microsoft.VisualStudio.TestTools.UnitTesting;

namespace Microsoft.ML.Decorrelation.Tests;

/// <summary>
/// The TorchBackend property selects the native packages. CUDA packages cannot be restored here, so the
/// selection is checked by evaluating the project's PackageReference items without restoring.
/// </summary>
[TestClass]
public class BuildTests
{
    private static string RepositoryRoot()
    {
        for (var folder = new DirectoryInfo(AppContext.BaseDirectory); folder is not null; folder = folder.Parent)
        {
            if (File.Exists(Path.Combine(folder.FullName, "MLNetExt.sln")))
                return folder.FullName;
        }
        throw new InvalidOperationException($"MLNetExt.sln was not found above {AppContext.BaseDirectory}.");
    }

    /// <summary>The project's TorchSharp and LibTorch package references under the given MSBuild properties.</summary>
    private static string[] PackageReferences(params string[] properties)
    {
        var project = Path.Combine(RepositoryRoot(), "src", "Microsoft.ML.Decorrelation", "Microsoft.ML.Decorrelation.csproj");
        var start = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var argument in new[] { "msbuild", project, "-getItem:PackageReference" }.Concat(properties.Select(p => "-p:" + p)))
            start.ArgumentList.Add(argument);
        using var process = Process.Start(start)!;
        string output = process.StandardOutput.ReadToEnd();
        string errors = process.StandardError.ReadToEnd();
        process.WaitForExit();
        Assert.AreEqual(0, process.ExitCode, output + errors);
        using var json = JsonDocument.Parse(output);
        return json.RootElement.GetProperty("Items").GetProperty("PackageReference").EnumerateArray()
            .Select(item => item.GetProperty("Identity").GetString()!)
            .Where(name => name.StartsWith("TorchSharp", StringComparison.OrdinalIgnoreCase) || name.StartsWith("libtorch", StringComparison.OrdinalIgnoreCase))
            .Order().ToArray();
    }

    [TestMethod]
    [DataRow("linux", new[] { "TorchSharp", "libtorch-cpu-linux-x64" })]
    [DataRow("windows", new[] { "TorchSharp", "libtorch-cpu-win-x64" })]
    [DataRow("osx", new[] { "TorchSharp", "libtorch-cpu-osx-arm64" })]
    public void CpuBackendReferencesTorchSharpAndOneNativePackage(string os, string[] expected)
        => CollectionAssert.AreEqual(expected.Order().ToArray(), PackageReferences("TorchBackend=cpu", "TorchNativeOS=" + os));

    [TestMethod]
    [DataRow("linux", "TorchSharp-cuda-linux")]
    [DataRow("windows", "TorchSharp-cuda-windows")]
    public void CudaBackendReferencesOnlyTheCudaBundle(string os, string expected)
        => CollectionAssert.AreEqual(new[] { expected }, PackageReferences("TorchBackend=cuda", "TorchNativeOS=" + os));

    [TestMethod]
    public void DefaultBackendIsTheCpuOfTheBuildingOs()
    {
        var references = PackageReferences();
        CollectionAssert.Contains(references, "TorchSharp");
        Assert.AreEqual(1, references.Count(r => r.StartsWith("libtorch-cpu-", StringComparison.Ordinal)));
        Assert.IsFalse(references.Any(r => r.Contains("cuda", StringComparison.OrdinalIgnoreCase)));
    }
}
