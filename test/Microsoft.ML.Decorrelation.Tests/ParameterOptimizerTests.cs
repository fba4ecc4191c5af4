using Microsoft.ML.Decorrelation.Torch.Training;
using Microsoft.VisualStudio.TestTools.UnitTesting;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Decorrelation.Tests;

/// <summary>Our optimizer step against TorchSharp's <c>optim.Adam</c> and <c>optim.SGD</c>, which follow torch.optim.</summary>
[TestClass]
public class ParameterOptimizerTests
{
    /// <summary>Two identical small networks: one is updated by TorchSharp's optimizer, the other by ours, on the same batches.</summary>
    private static (float[] Theirs, float[] Ours) TrainBoth(OptimizerKind kind, double backboneScale, int steps)
    {
        using var scope = NewDisposeScope();
        manual_seed(3);
        var theirs = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3));
        var ours = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3));
        ours.load_state_dict(theirs.state_dict());
        var theirFirst = theirs.parameters().Take(2).ToList();
        var theirLast = theirs.parameters().Skip(2).ToList();
        var ourFirst = ours.parameters().Take(2).ToList();
        var ourLast = ours.parameters().Skip(2).ToList();
        const double rate = 0.05, weightDecay = 1e-3, momentum = 0.9;
        optim.Optimizer reference = kind == OptimizerKind.Sgd
            ? optim.SGD([new TorchSharp.Modules.SGD.ParamGroup(theirFirst, rate * backboneScale, momentum, weight_decay: weightDecay),
                         new TorchSharp.Modules.SGD.ParamGroup(theirLast, rate, momentum, weight_decay: weightDecay)], rate)
            : optim.Adam([new TorchSharp.Modules.Adam.ParamGroup(theirFirst, rate * backboneScale, weight_decay: weightDecay),
                          new TorchSharp.Modules.Adam.ParamGroup(theirLast, rate, weight_decay: weightDecay)], rate);
        using var optimizer = new ParameterOptimizer(kind, [(ourFirst, backboneScale), (ourLast, 1.0)], weightDecay, momentum);
        var generator = new Generator(7);
        for (int step = 0; step < steps; step++)
        {
            var input = randn([8, 6], generator: generator);
            var target = randint(0, 3, [8], generator: generator);
            reference.zero_grad();
            nn.functional.cross_entropy(theirs.forward(input), target).backward();
            reference.step();
            optimizer.ZeroGrad();
            nn.functional.cross_entropy(ours.forward(input), target).backward();
            optimizer.Step(rate);
        }
        reference.Dispose();
        static float[] Weights(nn.Module<Tensor, Tensor> network) => network.parameters().SelectMany(p => p.detach().cpu().data<float>().ToArray()).ToArray();
        return (Weights(theirs), Weights(ours));
    }

    [TestMethod]
    [DataRow(OptimizerKind.Adam, 1.0)]
    [DataRow(OptimizerKind.Adam, 0.1)]
    [DataRow(OptimizerKind.Sgd, 1.0)]
    [DataRow(OptimizerKind.Sgd, 0.1)]
    public void StepsMatchTorchSharpsOptimizersBitForBit(OptimizerKind kind, double backboneScale)
    {
        var (theirs, ours) = TrainBoth(kind, backboneScale, steps: 12);
        CollectionAssert.AreEqual(theirs, ours);
        var (start, _) = TrainBoth(kind, backboneScale, steps: 0);
        Assert.IsGreaterThan(1e-2, theirs.Zip(start).Max(p => Math.Abs(p.First - p.Second)), "the weights moved");
    }

    [TestMethod]
    public void SavedStateResumesExactlyAndAnotherShapeIsRefused()
    {
        using var scope = NewDisposeScope();
        manual_seed(5);
        var network = nn.Linear(4, 2);
        var copy = nn.Linear(4, 2);
        copy.load_state_dict(network.state_dict());
        var input = randn([16, 4]);
        void Train(nn.Module<Tensor, Tensor> net, ParameterOptimizer optimizer, int steps)
        {
            for (int i = 0; i < steps; i++)
            {
                optimizer.ZeroGrad();
                net.forward(input).square().mean().backward();
                optimizer.Step(0.01);
            }
        }
        using var straight = new ParameterOptimizer(OptimizerKind.Adam, [(network.parameters().ToList(), 1.0)], 0, 0);
        Train(network, straight, 6);

        using var first = new ParameterOptimizer(OptimizerKind.Adam, [(copy.parameters().ToList(), 1.0)], 0, 0);
        Train(copy, first, 3);
        using var saved = new MemoryStream();
        first.Save(new BinaryWriter(saved));
        using var resumed = new ParameterOptimizer(OptimizerKind.Adam, [(copy.parameters().ToList(), 1.0)], 0, 0);
        saved.Position = 0;
        resumed.Load(new BinaryReader(saved));
        Train(copy, resumed, 3);
        CollectionAssert.AreEqual(network.weight!.data<float>().ToArray(), copy.weight!.data<float>().ToArray(), "3 + 3 steps through a save equal 6 steps");

        var other = nn.Linear(3, 2);
        using var wrong = new ParameterOptimizer(OptimizerKind.Adam, [(other.parameters().ToList(), 1.0)], 0, 0);
        saved.Position = 0;
        Assert.ThrowsExactly<InvalidDataException>(() => wrong.Load(new BinaryReader(saved)));
    }
}
