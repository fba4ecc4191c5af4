using Microsoft.VisualStudio.TestTools.UnitTesting;
using static TorchSharp.torch;
[assembly: DoNotParallelize]
namespace Microsoft.ML.Decorrelation.Tests;
[TestClass]
public class SmokeTests
{
    [TestMethod]
    public void TorchLoads() => Assert.AreEqual(6f, ones(2, 3).sum().item<float>());
}
