using Microsoft.ML.Decorrelation.Torch;
using Microsoft.VisualStudio.TestTools.UnitTesting;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Decorrelation.Tests;

/// <summary>Block-diagonal decorrelation matrices (<see cref="DecorrelationOptions.MaxBlockSize"/>).</summary>
[TestClass]
public class BlockDiagonalTests
{
    [TestInitialize]
    public void Seed() => random.manual_seed(77);

    [TestMethod]
    [DataRow(512, 3, null, 1L)]
    [DataRow(512, 3, 4608, 1L)]
    [DataRow(512, 3, 1152, 4L)]     // 128 channels × 9 per block
    [DataRow(512, 3, 300, 16L)]     // 32 × 9 = 288
    [DataRow(256, 3, 1000, 4L)]     // 2 blocks of 1152 do not fit; 4 of 576 do
    [DataRow(6, 3, 4, 6L)]          // not even one channel's 9 fit: one block per channel
    [DataRow(64, 1, 48, 2L)]        // a 1×1 convolution: 32 channels per block
    public void ConvolutionSplitsItsChannelsIntoTheFewestBlocksThatFit(int channels, int kernel, int? maxBlockSize, long expectedBlocks)
    {
        using var layer = new DecorrelatedConv2d(channels, 8, (kernel, kernel), options: new DecorrelationOptions { MaxBlockSize = maxBlockSize });
        long blockSize = channels * kernel * kernel / expectedBlocks;
        Assert.AreEqual(expectedBlocks, layer.BlockCount);
        Assert.AreEqual(blockSize, layer.BlockSize);
        CollectionAssert.AreEqual(expectedBlocks == 1 ? new[] { blockSize, blockSize } : new[] { expectedBlocks, blockSize, blockSize }, layer.DecorrelationMatrix.shape);
        Assert.AreEqual(0.0, Reference.MaxAbsDifference(layer.DenseDecorrelationMatrix(), eye(channels * kernel * kernel)), "R starts as the identity");
    }

    [TestMethod]
    public void LinearBlocksSplitTheFeatures()
    {
        using var layer = new DecorrelatedLinear(12, 3, options: new DecorrelationOptions { MaxBlockSize = 5 });
        Assert.AreEqual(3L, layer.BlockCount);
        Assert.AreEqual(4L, layer.BlockSize);
        Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => new DecorrelationOptions { MaxBlockSize = 0 }.Validate());
    }

    [TestMethod]
    public void BlockConvolutionForwardAndGradientEqualTheDenseBlockDiagonalMatrix()
    {
        using var scope = NewDisposeScope();
        var layer = new DecorrelatedConv2d(4, 5, (3, 3), (2, 2), (1, 1), options: new DecorrelationOptions { MaxBlockSize = 18 });
        Assert.AreEqual(2L, layer.BlockCount);
        DecorrelatedLayerTests.Randomize(layer);
        var input = randn(2, 4, 7, 7);
        var upstream = randn(2, 5, 4, 4);
        var output = layer.forward(input);
        (output * upstream).sum().backward();

        var dense = layer.DenseDecorrelationMatrix().to(ScalarType.Float64);
        Assert.AreEqual(0.0, dense.narrow(0, 0, 18).narrow(1, 18, 18).abs().max().item<double>(), "zero outside the diagonal blocks");
        var patches = nn.functional.unfold(input.to(ScalarType.Float64), 3, 1, 1, 2);                  // (B, D, L)
        var z = dense.matmul(patches);
        var expected = layer.Weight.to(ScalarType.Float64).view(5, -1).matmul(z) + layer.Bias!.to(ScalarType.Float64).view(1, 5, 1);
        Assert.IsLessThan(1e-5, Reference.MaxAbsDifference(output.flatten(2), expected));
        var expectedGradient = upstream.to(ScalarType.Float64).flatten(2).matmul(z.transpose(1, 2)).sum(dim: 0);
        Assert.IsLessThan(1e-4, Reference.MaxAbsDifference(layer.Weight.grad!.view(5, -1), expectedGradient));
    }

    [TestMethod]
    [DataRow(true, 0.02, 0.1)]
    [DataRow(false, 0.005, 0.3)]
    public void EachBlockTakesTheUpdateStepOfItsOwnInputs(bool convolution, double eta, double kappa)
    {
        using var scope = NewDisposeScope();
        var options = new DecorrelationOptions { LearningRate = eta, Kappa = kappa, ConvolutionSampleFraction = 1, LinearSampleFraction = 1 };
        DecorrelatedLayer layer;
        Tensor input, rows;
        if (convolution)
        {
            options.MaxBlockSize = 8;
            layer = new DecorrelatedConv2d(4, 3, (2, 2), (2, 1), (1, 0), options: options);     // D = 16, 2 blocks of 2 channels
            input = randn(4, 4, 6, 7);
            rows = nn.functional.unfold(input, (2, 2), (1, 1), (1, 0), (2, 1)).transpose(1, 2).reshape(-1, 16);
        }
        else
        {
            options.MaxBlockSize = 6;
            layer = new DecorrelatedLinear(18, 4, options: options);                             // 3 blocks of 6
            input = randn(40, 18) * 1.5 + 0.3;
            rows = input;
        }
        DecorrelatedLayerTests.Randomize(layer, 0.3);
        long blocks = layer.BlockCount, size = layer.BlockSize;
        var expectedBlocks = new List<double[,]>();
        double expectedLoss = 0;
        for (long g = 0; g < blocks; g++)
        {
            var r = Reference.ToMatrix(layer.DecorrelationMatrix[g]);
            var z = Reference.Multiply(Reference.ToMatrix(rows.narrow(1, g * size, size)), Reference.Transpose(r));
            var (newR, loss) = Reference.UpdateRule(z, r, kappa, eta);
            expectedBlocks.Add(newR);
            expectedLoss += loss / blocks;
        }

        layer.train();
        layer.forward(input);
        double actualLoss = layer.UpdateDecorrelation();

        Assert.AreEqual(eta, layer.LastStepSize, "the step size was not capped");
        for (int g = 0; g < blocks; g++)
            Assert.IsLessThan(1e-5, Reference.MaxAbsDifference(Reference.ToMatrix(layer.DecorrelationMatrix[g]), expectedBlocks[g]), $"block {g}");
        Assert.AreEqual(expectedLoss, actualLoss, 1e-5 * Math.Max(1, expectedLoss));
    }

    [TestMethod]
    public void EachBlockIsCappedByItsOwnSecondMoment()
    {
        using var scope = NewDisposeScope();
        var z = stack([rand(400, 16, dtype: ScalarType.Float64) + 1, randn(400, 16, dtype: ScalarType.Float64) * 0.1]);   // (2, N, d)
        var r = eye(16, dtype: ScalarType.Float64).repeat(2, 1, 1);
        var (_, _, norms) = DecorrelationRule.Compute(z, r, 0.5);
        for (int g = 0; g < 2; g++)
        {
            var x = z[g].t().mm(z[g]) / 400;
            Assert.AreEqual(linalg.matrix_norm(x).item<double>(), norms[g].item<double>(), 1e-9, $"block {g}: ‖X‖_F");
        }
        var steps = DecorrelationRule.StableStepSizes(0.1, norms).data<double>().ToArray();
        Assert.IsLessThan(0.1, steps[0], "the mean-dominated block is capped");
        Assert.AreEqual(0.1, steps[1], "the small block keeps η");
    }
}
