using System.Diagnostics;
using System.Text.Json;
using Microsoft.VisualStudio.TestTools.UnitTesting;

namespace Microsoft.ML.Decorrelation.Tests;

/// <summary>
/// The package carries managed code only and applications choose the native backend: the TorchBackend property
/// selects it for this repository's applications. CUDA packages cannot be restored here, so the selection is checked
/// by evaluating PackageReference items without restoring; the package itself is packed and its nuspec read.
/// </summary>
[TestClass]
public class BuildTests
{
    internal static string RepositoryRoot()
    {
        for (var folder = new DirectoryInfo(AppContext.BaseDirectory); folder is not null; folder = folder.Parent)
        {
            if (File.Exists(Path.Combine(folder.FullName, "MLNetExt.sln")))
                return folder.FullName;
        }
        throw new InvalidOperationException($"MLNetExt.sln was not found above {AppContext.BaseDirectory}.");
    }

    private static string LibraryProject => Path.Combine(RepositoryRoot(), "src", "Microsoft.ML.Decorrelation", "Microsoft.ML.Decorrelation.csproj");

    /// <summary>An application's (the samples') TorchSharp and LibTorch package references under the given MSBuild properties.</summary>
    private static string[] PackageReferences(params string[] properties)
        => PackageReferencesOf(Path.Combine(RepositoryRoot(), "src", "Samples", "Samples.csproj"), properties);

    private static string[] PackageReferencesOf(string project, params string[] properties)
    {
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

    [TestMethod]
    [DataRow("TorchBackend=cpu")]
    [DataRow("TorchBackend=cuda")]
    public void LibraryReferencesManagedTorchSharpOnly(string backend)
        => CollectionAssert.AreEqual(new[] { "TorchSharp", "TorchSharp.PyBridge" }, PackageReferencesOf(LibraryProject, backend));   // both managed

    [TestMethod]
    public void PackageDependsOnManagedPackagesOnlyAndCarriesItsMetadata()
    {
        var folder = Directory.CreateTempSubdirectory("dbp-pack").FullName;
        try
        {
            var start = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
            foreach (var argument in new[] { "pack", LibraryProject, "-c", "Release", "--no-build", "-o", folder, "-p:VersionSuffix=buildtest" })
                start.ArgumentList.Add(argument);
            using (var process = Process.Start(start)!)
            {
                string output = process.StandardOutput.ReadToEnd() + process.StandardError.ReadToEnd();
                process.WaitForExit();
                Assert.AreEqual(0, process.ExitCode, output);
            }
            var package = Directory.GetFiles(folder, "Microsoft.ML.Decorrelation.*.nupkg").Single(p => !p.EndsWith(".snupkg"));
            Assert.IsTrue(File.Exists(Path.ChangeExtension(package, ".snupkg")), "a symbol package beside it");
            using var zip = System.IO.Compression.ZipFile.OpenRead(package);
            var entries = zip.Entries.Select(e => e.FullName).ToHashSet();
            foreach (var expected in new[] { "lib/net10.0/Microsoft.ML.Decorrelation.dll", "lib/net10.0/Microsoft.ML.Decorrelation.xml", "README.md", "buildTransitive/Microsoft.ML.Decorrelation.targets" })
                Assert.IsTrue(entries.Contains(expected), $"{expected} is packed; the package holds {string.Join(", ", entries)}");
            Assert.IsFalse(entries.Any(e => e.StartsWith("runtimes/", StringComparison.Ordinal)), "no natives in the package");

            var nuspecEntry = zip.Entries.Single(e => e.FullName.EndsWith(".nuspec"));
            using var reader = new StreamReader(nuspecEntry.Open());
            var nuspec = System.Xml.Linq.XDocument.Parse(reader.ReadToEnd());
            var ns = nuspec.Root!.Name.Namespace;
            var metadata = nuspec.Root.Element(ns + "metadata")!;
            Assert.AreEqual("1.0.0-buildtest", metadata.Element(ns + "version")!.Value);
            Assert.AreEqual("MIT", metadata.Element(ns + "license")!.Value);
            Assert.AreEqual("README.md", metadata.Element(ns + "readme")!.Value);
            StringAssert.Contains(metadata.Element(ns + "tags")!.Value, "ML.NET");
            var groups = metadata.Element(ns + "dependencies")!.Elements(ns + "group").ToList();
            Assert.AreEqual("net10.0", groups.Single().Attribute("targetFramework")!.Value);
            var dependencies = groups.Single().Elements(ns + "dependency").ToDictionary(d => d.Attribute("id")!.Value, d => d.Attribute("version")!.Value);
            CollectionAssert.AreEquivalent(new[] { "Microsoft.Data.Sqlite", "Microsoft.ML", "Microsoft.ML.ImageAnalytics", "Microsoft.ML.OnnxConverter", "Npgsql", "TorchSharp", "TorchSharp.PyBridge" }, dependencies.Keys.ToArray(),
                $"dependencies: {string.Join(", ", dependencies.Select(d => d.Key + " " + d.Value))}");
            Assert.AreEqual("[5.0.1]", dependencies["Microsoft.ML"]);
            Assert.AreEqual("[0.107.0]", dependencies["TorchSharp"]);
            Assert.AreEqual("[1.4.4]", dependencies["TorchSharp.PyBridge"]);
            Assert.IsFalse(dependencies.Keys.Any(d => d.StartsWith("libtorch", StringComparison.OrdinalIgnoreCase) || d.Contains("cuda", StringComparison.OrdinalIgnoreCase)),
                "the application chooses the LibTorch backend");
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    /// <summary>
    /// Runs the packed backend check (build/TorchBackendCheck.targets) on a project that resolved the given packages'
    /// natives, as a consumer on another OS or with CUDA would, without restoring them; returns the build output.
    /// </summary>
    private static string BackendCheckOutput(string outputType, params string[] nativePackages)
    {
        var folder = Directory.CreateTempSubdirectory("dbp-backend-check").FullName;
        try
        {
            var items = string.Join("\n", nativePackages.Select((package, i) =>
                $"<RuntimeTargetsCopyLocalItems Include=\"native{i}.so\" NuGetPackageId=\"{package}\" />"));
            var project = Path.Combine(folder, "consumer.proj");
            File.WriteAllText(project, $"""
                <Project>
                  <PropertyGroup><OutputType>{outputType}</OutputType></PropertyGroup>
                  <ItemGroup>{items}<NativeCopyLocalItems Include="libSkiaSharp.so" NuGetPackageId="SkiaSharp.NativeAssets.Linux" /></ItemGroup>
                  <Target Name="ResolvePackageAssets" />
                  <Import Project="{Path.Combine(RepositoryRoot(), "build", "TorchBackendCheck.targets")}" />
                </Project>
                """);
            var start = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
            foreach (var argument in new[] { "msbuild", project, "-t:ResolvePackageAssets", "-nologo" })
                start.ArgumentList.Add(argument);
            using var process = Process.Start(start)!;
            string output = process.StandardOutput.ReadToEnd() + process.StandardError.ReadToEnd();
            process.WaitForExit();
            Assert.AreEqual(0, process.ExitCode, output);
            return output;
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    [TestMethod]
    [DataRow("libtorch-cpu-linux-x64")]
    [DataRow("libtorch-cpu-win-x64")]
    [DataRow("libtorch-cpu-osx-arm64")]
    [DataRow("libtorch-cuda-12.8-linux-x64")]
    [DataRow("libtorch-cuda-12.8-win-x64")]
    public void ConsumerWithABackendOfAnyOsOrCudaGetsNoWarning(string backend)
        => Assert.DoesNotContain("DBP0001", BackendCheckOutput("Exe", backend));

    [TestMethod]
    public void ConsumerWithoutABackendIsWarnedNamingThePackages()
    {
        string output = BackendCheckOutput("Exe");
        StringAssert.Contains(output, "warning DBP0001");
        StringAssert.Contains(output, "libtorch-cpu-win-x64");
        StringAssert.Contains(output, "TorchSharp-cuda-linux");
        Assert.DoesNotContain("DBP0001", BackendCheckOutput("Library"), "a class library leaves the choice to its application");
    }
}
