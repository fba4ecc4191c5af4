using Microsoft.ML.Decorrelation.Torch;
using Microsoft.VisualStudio.TestTools.UnitTesting;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Decorrelation.Tests;

[TestClass]
public class DecorrelatedLayerTests
{
    [TestInitialize]
    public void Seed() => random.manual_seed(1234);

    /// <summary>Moves R (full or blocks) away from the identity by Gaussian noise of the given spread.</summary>
    internal static void Randomize(DecorrelatedLayer layer, double spread = 0.2)
    {
        using var noGrad = no_grad();
        layer.DecorrelationMatrix.add_(randn_like(layer.DecorrelationMatrix).mul_(spread));
    }

    [TestMethod]
    [DataRow(1, 0, 1)]
    [DataRow(2, 1, 1)]
    [DataRow(2, 2, 2)]
    [DataRow(1, 3, 2)]
    public void ConvolutionForwardEqualsUnfoldThenDecorrelateThenWeight(int stride, int padding, int dilation)
    {
        using var scope = NewDisposeScope();
        var layer = new DecorrelatedConv2d(3, 5, (3, 2), (stride, stride), (padding, padding), (dilation, dilation));
        Randomize(layer);
        var input = randn(2, 3, 9, 8);
        var output = layer.forward(input);

        // Explicit: unfold every patch in (c, i, j) order, z = R·patch, y = W·z + b, in double precision.
        var patches = nn.functional.unfold(input.to(ScalarType.Float64), (3, 2), (dilation, dilation), (padding, padding), (stride, stride));
        var z = layer.DecorrelationMatrix.to(ScalarType.Float64).matmul(patches);                       // (B, D, L)
        var expected = layer.Weight.to(ScalarType.Float64).view(5, -1).matmul(z) + layer.Bias!.to(ScalarType.Float64).view(1, 5, 1);
        Assert.AreEqual(expected.shape[2], output.shape[2] * output.shape[3], "number of output positions");
        Assert.IsLessThan(1e-5, Reference.MaxAbsDifference(output.flatten(2), expected));
    }

    [TestMethod]
    public void ConvolutionWeightGradientIsOutputGradientTimesDecorrelatedPatches()
    {
        using var scope = NewDisposeScope();
        var layer = new DecorrelatedConv2d(2, 4, (3, 3), (2, 2), (1, 1), (1, 1));
        Randomize(layer);
        var input = randn(3, 2, 7, 7);
        var upstream = randn(3, 4, 4, 4);
        (layer.forward(input) * upstream).sum().backward();

        var patches = nn.functional.unfold(input.to(ScalarType.Float64), 3, 1, 1, 2);                 // (B, D, L)
        var z = layer.DecorrelationMatrix.to(ScalarType.Float64).matmul(patches);                       // (B, D, L)
        var delta = upstream.to(ScalarType.Float64).flatten(2);                                       // (B, O, L)
        var expected = delta.matmul(z.transpose(1, 2)).sum(dim: 0);                                        // Σ δ·zᵀ, (O, D)
        Assert.IsLessThan(1e-4, Reference.MaxAbsDifference(layer.Weight.grad!.view(4, -1), expected));
        Assert.IsTrue(layer.DecorrelationMatrix.grad is null, "R must not receive a gradient");
    }

    [TestMethod]
    public void LinearForwardAndGradientMatchExplicitComputation()
    {
        using var scope = NewDisposeScope();
        var layer = new DecorrelatedLinear(6, 3);
        Randomize(layer);
        var input = randn(10, 6);
        var upstream = randn(10, 3);
        var output = layer.forward(input);
        (output * upstream).sum().backward();

        var z = input.to(ScalarType.Float64).matmul(layer.DecorrelationMatrix.to(ScalarType.Float64).t());   // rows z = R·x
        var expected = z.matmul(layer.Weight.to(ScalarType.Float64).t()) + layer.Bias!.to(ScalarType.Float64);
        Assert.IsLessThan(1e-5, Reference.MaxAbsDifference(output, expected));
        var expectedGradient = upstream.to(ScalarType.Float64).t().matmul(z);
        Assert.IsLessThan(1e-4, Reference.MaxAbsDifference(layer.Weight.grad!, expectedGradient));
    }

    [TestMethod]
    public void RStartsAsIdentityAndIsAPersistentBufferNotAParameter()
    {
        using var layer = new DecorrelatedConv2d(3, 8, (3, 3));
        Assert.AreEqual(27L, layer.InputSize);
        Assert.AreEqual(0.0, Reference.MaxAbsDifference(layer.DecorrelationMatrix, eye(27)));
        CollectionAssert.AreEquivalent(new[] { "weight", "bias" }, layer.named_parameters().Select(p => p.name).ToArray());
        CollectionAssert.Contains(layer.state_dict().Keys.ToArray(), "decorrelation_matrix");
    }

    [TestMethod]
    [DataRow(40, 0.3)]    // N ≥ D: X is formed
    [DataRow(5, 0.01)]    // N < D: Zᵀ(Z·R) path
    [DataRow(3, 0.0)]
    [DataRow(64, 1.0)]
    public void LinearUpdateStepEqualsDoublePrecisionReference(int batch, double kappa)
    {
        using var scope = NewDisposeScope();
        const double eta = 0.005;   // below 1/λmax of these samples: the stability cap does not apply
        var options = new DecorrelationOptions { LearningRate = eta, Kappa = kappa, LinearSampleFraction = 1 };
        var layer = new DecorrelatedLinear(12, 4, options: options);
        Randomize(layer, 0.3);
        var input = randn(batch, 12) * 1.5 + 0.3;
        var r = Reference.ToMatrix(layer.DecorrelationMatrix);
        var z = Reference.Multiply(Reference.ToMatrix(input), Reference.Transpose(r));
        var (expectedR, expectedLoss) = Reference.UpdateRule(z, r, kappa, eta);

        layer.train();
        layer.forward(input);
        double loss = layer.UpdateDecorrelation();

        Assert.AreEqual(eta, layer.LastStepSize, "the step size was not capped");
        Assert.IsLessThan(1e-5, Reference.MaxAbsDifference(Reference.ToMatrix(layer.DecorrelationMatrix), expectedR));
        Assert.AreEqual(expectedLoss, loss, 1e-5 * Math.Max(1, expectedLoss));
        Assert.IsFalse(layer.HasPendingStatistics);
    }

    /// <summary>Samples whose second moment's top direction is far from the all-ones vector a power iteration would start at.</summary>
    private static IEnumerable<(string Name, Tensor Samples)> HardSpectra()
    {
        const int n = 400, d = 64;
        var signs = arange(d, dtype: ScalarType.Float64).remainder(2).mul(2).sub(1);   // +1, −1, +1, …: orthogonal to ones
        yield return ("mean-dominated", rand(n, d, dtype: ScalarType.Float64) + 1);
        yield return ("zero-mean", randn(n, d, dtype: ScalarType.Float64) * linspace(0.1, 3, d, dtype: ScalarType.Float64));
        yield return ("anti-correlated", randn(n, 1, dtype: ScalarType.Float64) * 4 * signs + randn(n, d, dtype: ScalarType.Float64) * 0.1);
    }

    [TestMethod]
    public void StepSizeCapBoundsTheLargestEigenvalueWhateverTheData()
    {
        using var scope = NewDisposeScope();
        foreach (var (name, z) in HardSpectra())
        {
            var r = eye(z.shape[1], dtype: ScalarType.Float64);
            var (_, _, norm) = DecorrelationRule.Compute(z, r, 0.5);
            double lambdaMax = linalg.eigvalsh(z.t().mm(z) / z.shape[0]).max().item<double>();
            double bound = norm.item<double>();
            Assert.IsGreaterThanOrEqualTo(lambdaMax * (1 - 1e-12), bound, $"{name}: ‖X‖_F is an upper bound of λmax");
            Assert.IsLessThanOrEqualTo(Math.Sqrt(z.shape[1]) * lambdaMax, bound, $"{name}: and at most √D·λmax");
            double step = DecorrelationRule.StableStepSizes(10, norm).item<double>();
            Assert.IsLessThanOrEqualTo(1 / lambdaMax, step, $"{name}: the capped step never exceeds 1/λmax");
        }
        Assert.AreEqual(1e-3, DecorrelationRule.StableStepSizes(1e-3, tensor(new[] { 10.0 })).item<double>());
        CollectionAssert.AreEqual(new[] { 0.01, 0.5, 0.5 }, DecorrelationRule.StableStepSizes(0.5, tensor(new[] { 100.0, 0, double.NaN })).data<double>().ToArray());
    }

    [TestMethod]
    public void StepSizeCapKeepsWideLayersStableWhereTheUncappedRuleDiverges()
    {
        const double kappa = 0.01;   // the default
        foreach (var (name, samples) in HardSpectra())
        {
            using var scope = NewDisposeScope();
            var data = samples.to(ScalarType.Float32);
            double lambdaMax = linalg.eigvalsh(samples.t().mm(samples) / samples.shape[0]).max().item<double>();
            double eta = 3 / lambdaMax;   // η·λmax = 3 > 2: where the off-diagonal part carries λmax, the plain rule overshoots it

            // The plain rule R ← R − η·U on the same data, computed independently in float64.
            var r = Reference.ToMatrix(eye(64, dtype: ScalarType.Float64));
            var x = Reference.ToMatrix(samples);
            double uncappedLoss = double.NaN;
            for (int step = 0; step < 30 && !(uncappedLoss > 1e12); step++)
                (r, uncappedLoss) = Reference.UpdateRule(Reference.Multiply(x, Reference.Transpose(r)), r, kappa, eta);
            // Independent zero-mean features have almost no off-diagonal second moment: nothing for the plain rule to overshoot.
            if (name != "zero-mean")
                Assert.IsFalse(uncappedLoss < 1e6, $"{name}: without the cap the rule diverges (loss {uncappedLoss})");

            using var layer = new DecorrelatedLinear(64, 4, options: new DecorrelationOptions { LearningRate = eta, Kappa = kappa, LinearSampleFraction = 1 });
            layer.train();
            var losses = new List<double>();
            for (int step = 0; step < 30; step++)
            {
                using var stepScope = NewDisposeScope();
                layer.forward(data);
                losses.Add(layer.UpdateDecorrelation());
                Assert.IsTrue(double.IsFinite(losses[^1]), $"{name}: update {step}");
                if (step == 0)
                    Assert.AreEqual(1, layer.LastCappedBlocks, $"{name}: the cap bound at the first update");
            }
            Assert.IsLessThan(losses[0] / 4, losses[^1], $"{name}: the capped rule still decorrelates (loss {losses[0]} → {losses[^1]})");
        }
    }

    [TestMethod]
    public void ConvolutionUpdateUsesEveryPatchOfTheSampledImages()
    {
        using var scope = NewDisposeScope();
        const double eta = 0.02, kappa = 0.1;
        var options = new DecorrelationOptions { LearningRate = eta, Kappa = kappa, ConvolutionSampleFraction = 1 };
        var layer = new DecorrelatedConv2d(2, 3, (2, 2), (2, 1), (1, 0), (1, 2), options: options);
        Randomize(layer);
        var input = randn(4, 2, 6, 7);
        var r = Reference.ToMatrix(layer.DecorrelationMatrix);
        var patches = nn.functional.unfold(input, (2, 2), (1, 2), (1, 0), (2, 1)).transpose(1, 2).reshape(-1, 8);   // one patch per row
        var z = Reference.Multiply(Reference.ToMatrix(patches), Reference.Transpose(r));
        var (expectedR, expectedLoss) = Reference.UpdateRule(z, r, kappa, eta);

        layer.train();
        layer.forward(input);
        double loss = layer.UpdateDecorrelation();

        Assert.IsLessThan(1e-5, Reference.MaxAbsDifference(Reference.ToMatrix(layer.DecorrelationMatrix), expectedR));
        Assert.AreEqual(expectedLoss, loss, 1e-5 * Math.Max(1, expectedLoss));
    }

    [TestMethod]
    public void ProductPathForFewSamplesEqualsNaivePath()
    {
        using var scope = NewDisposeScope();
        var z = randn(7, 30, dtype: ScalarType.Float64);
        var r = eye(30, dtype: ScalarType.Float64) + randn(30, 30, dtype: ScalarType.Float64) * 0.1;
        var (update, loss, _) = DecorrelationRule.Compute(z, r, 0.2);

        var x = z.t().mm(z) / 7;
        var diagonal = x.diag();
        var c = x - diagonal.diag();
        var naive = (c * 0.8 + (diagonal - 1).diag() * 0.2).mm(r);
        var naiveLoss = (c.square().sum() * 0.8 + (diagonal - 1).square().sum() * 0.2) / 900;
        Assert.IsLessThan(1e-10, Reference.MaxAbsDifference(update, naive));
        Assert.AreEqual(naiveLoss.item<double>(), loss.item<double>(), 1e-12);
    }

    [TestMethod]
    [DataRow(1, 7, 30, 0.005, DisplayName = "full R, fewer samples than D")]
    [DataRow(1, 50, 12, 0.005, DisplayName = "full R, more samples than D")]
    [DataRow(3, 5, 8, 0.005, DisplayName = "3 blocks, fewer samples than d")]
    [DataRow(3, 40, 8, 0.005, DisplayName = "3 blocks, more samples than d")]
    [DataRow(3, 5, 8, 10.0, DisplayName = "3 blocks, every step capped")]
    public void FusedStepEqualsTheUpdateDirectionSubtracted(int blocks, int samples, int size, double eta)
    {
        using var scope = NewDisposeScope();
        const double kappa = 0.2;
        var z = blocks == 1 ? randn(samples, size, dtype: ScalarType.Float64) * 1.3 + 0.4 : randn(blocks, samples, size, dtype: ScalarType.Float64) * 1.3 + 0.4;
        var r = eye(size, dtype: ScalarType.Float64) + randn(blocks == 1 ? [size, size] : [blocks, size, size], dtype: ScalarType.Float64) * 0.1;
        var rBefore = r.clone();

        var (update, expectedLoss, norms) = DecorrelationRule.Compute(z, r, kappa);
        var expectedSteps = DecorrelationRule.StableStepSizes(eta, norms);
        var expected = r - update * (blocks == 1 ? expectedSteps.reshape([]) : expectedSteps.view(blocks, 1, 1));
        var (next, loss, steps) = DecorrelationRule.Step(z, r, kappa, eta);

        Assert.IsLessThan(1e-12, Reference.MaxAbsDifference(next, expected));
        Assert.AreEqual(expectedLoss.item<double>(), loss.item<double>(), 1e-12);
        CollectionAssert.AreEqual(expectedSteps.data<double>().ToArray(), steps.data<double>().ToArray());
        Assert.AreEqual(eta > 1, steps.lt(eta).all().item<bool>(), "the cap binds exactly where η exceeds 1/‖X‖_F");
        Assert.AreEqual(0.0, (r - rBefore).abs().max().item<double>(), "R itself is left as it was");

        // From the second moment (what data-parallel ranks pool) the step is the same, and X is left as it was.
        var secondMoment = z.transpose(-2, -1).matmul(z) / samples;
        var secondMomentBefore = secondMoment.clone();
        var (fromMoment, momentLoss, _) = DecorrelationRule.StepFromSecondMoment(secondMoment, r, kappa, eta);
        Assert.IsLessThan(1e-12, Reference.MaxAbsDifference(fromMoment, expected));
        Assert.AreEqual(expectedLoss.item<double>(), momentLoss.item<double>(), 1e-12);
        Assert.AreEqual(0.0, (secondMoment - secondMomentBefore).abs().max().item<double>());
    }

    [TestMethod]
    public void SamplesOnlyTheRequestedFractionOfTheBatch()
    {
        using var scope = NewDisposeScope();
        using var layer = new DecorrelatedLinear(4, 2, options: new DecorrelationOptions { LinearSampleFraction = 0.25 });
        Assert.AreEqual(8L, layer.SampleCount(32));
        Assert.AreEqual(1L, layer.SampleCount(1));
        Assert.AreEqual(1L, layer.SampleCount(2));
        layer.eval();
        layer.forward(randn(32, 4));
        Assert.IsFalse(layer.HasPendingStatistics, "eval mode keeps no statistics");
        layer.train();
        layer.CollectStatistics = false;
        layer.forward(randn(32, 4));
        Assert.IsFalse(layer.HasPendingStatistics, "a step without collection keeps no statistics");
        Assert.IsTrue(double.IsNaN(layer.UpdateDecorrelation()));

        // The kept rows are R·x of SampleCount(B) distinct rows of the batch.
        Randomize(layer);
        layer.CollectStatistics = true;
        var batch = randn(32, 4);
        layer.forward(batch);
        var all = batch.mm(layer.DecorrelationMatrix.t());
        var kept = layer.PendingSamples!;
        Assert.AreEqual(8L, kept.shape[0]);
        var sources = Enumerable.Range(0, 8).Select(k => MatchingRows(all, kept[k]).Single()).ToArray();
        Assert.AreEqual(8, sources.Distinct().Count(), "drawn without replacement");
    }

    /// <summary>The indices of the rows of <paramref name="rows"/> equal to <paramref name="row"/> (to float precision).</summary>
    private static IEnumerable<long> MatchingRows(Tensor rows, Tensor row)
        => Enumerable.Range(0, (int)rows.shape[0]).Where(i => (rows[i] - row).abs().max().item<float>() < 1e-5f).Select(i => (long)i);

    [TestMethod]
    public void ConvolutionKeepsEveryPatchOfExactlyTheSampledImages()
    {
        using var scope = NewDisposeScope();
        var layer = new DecorrelatedConv2d(2, 3, (2, 2), (1, 1), (1, 0), options: new DecorrelationOptions { ConvolutionSampleFraction = 0.5 });
        Randomize(layer);
        var input = randn(6, 2, 5, 5);
        layer.train();
        layer.forward(input);

        long patches = 6 * 4;   // (5 + 2 − 2 + 1) × (5 − 2 + 1) positions per image
        var perImage = nn.functional.unfold(input, (2, 2), padding: (1, 0)).transpose(1, 2).matmul(layer.DecorrelationMatrix.t());   // (images, patches, D)
        var kept = layer.PendingSamples!;
        Assert.AreEqual(3 * patches, kept.shape[0], "all patches of SampleCount(6) = 3 images");
        var images = new List<long>();
        for (int k = 0; k < 3; k++)
        {
            var block = kept.narrow(0, k * patches, patches);
            images.Add(Enumerable.Range(0, 6).Single(i => (perImage[i] - block).abs().max().item<float>() < 1e-5f));
        }
        Assert.AreEqual(3, images.Distinct().Count(), "three different images, each with every one of its patches");
    }

    [TestMethod]
    [DataRow(0.0)]
    [DataRow(0.2)]
    public void RepeatedUpdatesDecorrelateCorrelatedGaussianInputs(double kappa)
    {
        using var scope = NewDisposeScope();
        const int d = 8;
        // Correlated Gaussian inputs x = A·g: covariance A·Aᵀ with strong off-diagonal entries.
        var mixing = eye(d) + randn(d, d) * 0.4 + ones(d, d) * 0.3;
        var options = new DecorrelationOptions { LearningRate = 0.01, Kappa = kappa, LinearSampleFraction = 1 };
        using var layer = new DecorrelatedLinear(d, 2, options: options);
        var covariance = mixing.mm(mixing.t()).to(ScalarType.Float64);

        // The exact second moment of z = R·x over the input distribution: R·A·Aᵀ·Rᵀ.
        (double OffDiagonal, Tensor Variances) SecondMoment()
        {
            using var noGrad = no_grad();
            var r = layer.DecorrelationMatrix.to(ScalarType.Float64);
            var x = r.mm(covariance).mm(r.t());
            var offDiagonal = (x - x.diag().diag()).abs().sum().item<double>() / (d * d - d);
            return (offDiagonal, x.diag());
        }

        var before = SecondMoment().OffDiagonal;
        layer.train();
        for (int step = 0; step < 1500; step++)
        {
            using var stepScope = NewDisposeScope();
            layer.forward(randn(2048, d).mm(mixing.t()));
            layer.UpdateDecorrelation();
        }
        var (after, variances) = SecondMoment();

        Assert.IsGreaterThan(0.3, before, "the synthetic inputs must start correlated");
        Assert.IsLessThan(before / 100, after, $"mean |off-diagonal| went from {before} to {after}");
        if (kappa > 0)
            Assert.IsLessThan(0.05, (variances - 1).abs().max().item<double>(), $"variances: {variances.str()}");
    }

    [TestMethod]
    public void DivergingUpdateThrowsNamingTheLayerAndKeepsTheLastFiniteR()
    {
        using var scope = NewDisposeScope();
        var network = NetworkConversion.ToDecorrelated(nn.Sequential(("hidden", nn.Linear(4, 4)), ("head", nn.Linear(4, 2))),
            new DecorrelationOptions { LearningRate = 1e30, LinearSampleFraction = 1 });
        var controller = new DecorrelationController(network);
        network.train();
        controller.BeginStep();
        network.forward(randn(16, 4) * 1e10);
        var before = controller.Layers[0].DecorrelationMatrix.clone();

        var error = Assert.ThrowsExactly<TrainingDivergedException>(controller.Update);
        Assert.AreEqual("hidden", error.LayerName);
        StringAssert.Contains(error.Message, "'hidden'");
        Assert.AreEqual(0.0, Reference.MaxAbsDifference(controller.Layers[0].DecorrelationMatrix, before), "R keeps its last finite value");
    }

    [TestMethod]
    public void UpdateIntervalSkipsStatisticsBetweenUpdates()
    {
        using var scope = NewDisposeScope();
        var network = NetworkConversion.ToDecorrelated(nn.Sequential(nn.Linear(4, 3)), new DecorrelationOptions { LinearSampleFraction = 1 });
        var controller = new DecorrelationController(network, updateInterval: 3);
        network.train();
        var updated = new List<bool>();
        for (int step = 0; step < 7; step++)
        {
            controller.BeginStep();
            network.forward(randn(8, 4));
            updated.Add(controller.Layers[0].HasPendingStatistics);
            controller.Update();
        }
        CollectionAssert.AreEqual(new[] { true, false, false, true, false, false, true }, updated);
    }
}
