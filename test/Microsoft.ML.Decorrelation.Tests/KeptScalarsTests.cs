using Microsoft.ML.Decorrelation.Torch;
using Microsoft.VisualStudio.TestTools.UnitTesting;
using static TorchSharp.torch;

namespace Microsoft.ML.Decorrelation.Tests;

/// <summary>The Scalars the library hands to libtorch per step (docs/platform.md).</summary>
[TestClass]
public class KeptScalarsTests
{
    [TestMethod]
    public void AValueAskedForAgainSharesItsScalarAndSignedZerosStayApart()
    {
        using var scope = NewDisposeScope();
        using var numbers = new KeptScalars();
        var half = numbers[0.5];
        Assert.AreSame(half, numbers[0.5]);
        Assert.AreNotSame(numbers[0.0], numbers[-0.0]);

        var vector = ones(3, dtype: float64);
        CollectionAssert.AreEqual(new[] { 0.5, 0.5, 0.5 }, vector.mul(half).data<double>().ToArray());
        Assert.IsTrue(double.IsNegative(vector.mul(numbers[-0.0]).data<double>()[0]), "-0.0 must not become 0.0");
        Assert.IsFalse(double.IsNegative(vector.mul(numbers[0.0]).data<double>()[0]));
        Assert.AreEqual(-3e-4, vector.mul(numbers[-3e-4]).data<double>()[1]);
    }
}
