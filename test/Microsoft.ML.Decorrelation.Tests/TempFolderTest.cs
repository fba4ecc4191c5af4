using Microsoft.VisualStudio.TestTools.UnitTesting;

namespace Microsoft.ML.Decorrelation.Tests;

/// <summary>Base of test classes that write files: a fresh temporary folder per test, deleted afterwards.</summary>
public abstract class TempFolderTest
{
    /// <summary>The current test's folder.</summary>
    protected string TempFolder { get; private set; } = "";

    [TestInitialize]
    public void CreateTempFolder() => TempFolder = Directory.CreateTempSubdirectory($"dbp-{GetType().Name}").FullName;

    [TestCleanup]
    public void DeleteTempFolder() => Directory.Delete(TempFolder, recursive: true);
}
