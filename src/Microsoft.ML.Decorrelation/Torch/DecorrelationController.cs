using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Decorrelation.Torch;

/// <summary>
/// Drives the decorrelated layers of one network through training: decides on which steps they collect
/// statistics and applies their updates after the optimizer step.
/// </summary>
/// <example>
/// <code>
/// var controller = new DecorrelationController(network, updateInterval: 1);
/// foreach (var (x, y) in batches)
/// {
///     controller.BeginStep();
///     var loss = cross_entropy(network.forward(x), y);
///     optimizer.zero_grad(); loss.backward(); optimizer.step();
///     controller.Update();
/// }
/// </code>
/// </example>
public sealed class DecorrelationController
{
    private readonly double[] _lossSums;
    private readonly int[] _lossCounts;
    private long _blockUpdates, _cappedBlockUpdates;

    /// <summary>Finds every <see cref="DecorrelatedLayer"/> of <paramref name="network"/> and names it by its path.</summary>
    /// <param name="network">The network; may contain no decorrelated layer (plain backprop).</param>
    /// <param name="updateInterval">
    /// Collect statistics and update R on every this many steps. Default <see cref="DecorrelationOptions.UpdateInterval"/>'s
    /// default, the interval the layers' default learning rate per update is meant for.
    /// </param>
    public DecorrelationController(nn.Module network, int updateInterval = DecorrelationOptions.DefaultUpdateInterval)
    {
        ArgumentNullException.ThrowIfNull(network);
        ArgumentOutOfRangeException.ThrowIfLessThan(updateInterval, 1);
        UpdateInterval = updateInterval;
        var layers = new List<DecorrelatedLayer>();
        foreach (var (name, module) in network.named_modules())
        {
            if (module is DecorrelatedLayer layer)
            {
                layer.LayerName = name;
                layers.Add(layer);
            }
        }
        Layers = layers;
        _lossSums = new double[layers.Count];
        _lossCounts = new int[layers.Count];
    }

    /// <summary>The decorrelated layers, in module order.</summary>
    public IReadOnlyList<DecorrelatedLayer> Layers { get; }

    /// <summary>
    /// The generator every layer draws its statistics samples from (<see cref="DecorrelatedLayer.SamplingGenerator"/>),
    /// or null for Torch's global generator. The caller owns it.
    /// </summary>
    public Generator? SamplingGenerator
    {
        get => _samplingGenerator;
        set
        {
            _samplingGenerator = value;
            foreach (var layer in Layers)
                layer.SamplingGenerator = value;
        }
    }

    private Generator? _samplingGenerator;

    /// <summary>
    /// The ranks of a data-parallel run, whose samples every update pools (<see cref="DecorrelatedLayer.UpdateDecorrelation(Distributed.ICollectiveCommunicator?)"/>);
    /// null for a single process.
    /// </summary>
    public Distributed.ICollectiveCommunicator? Communicator { get; set; }

    /// <summary>Steps between two updates of R.</summary>
    public int UpdateInterval { get; }

    /// <summary>The number of the next step: one past the last step begun.</summary>
    public long Step { get; private set; }

    /// <summary>Whether the current step collects statistics and updates R.</summary>
    public bool UpdatesThisStep { get; private set; }

    /// <summary>Starts the next training step (number <see cref="Step"/>): tells each layer whether to keep samples in the coming forward pass.</summary>
    public void BeginStep() => BeginStep(Step);

    /// <summary>
    /// Starts training step <paramref name="step"/> (0-based, counted over the whole run): R is updated on the steps
    /// that are multiples of <see cref="UpdateInterval"/>, so a run resumed or rolled back at any step keeps the
    /// update phase of an uninterrupted run.
    /// </summary>
    public void BeginStep(long step)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(step);
        UpdatesThisStep = step % UpdateInterval == 0;
        Step = step + 1;
        foreach (var layer in Layers)
            layer.CollectStatistics = UpdatesThisStep;
    }

    /// <summary>Applies each layer's pending update (call after the optimizer step).</summary>
    /// <exception cref="TrainingDivergedException">A layer's matrix or loss turned non-finite.</exception>
    public void Update()
    {
        for (int i = 0; i < Layers.Count; i++)
        {
            double loss = Layers[i].UpdateDecorrelation(Communicator);
            if (!double.IsNaN(loss))
            {
                _lossSums[i] += loss;
                _lossCounts[i]++;
                _blockUpdates += Layers[i].BlockCount;
                _cappedBlockUpdates += Layers[i].LastCappedBlocks;
            }
        }
    }

    /// <summary>
    /// The fraction of block updates since the last call whose step size the stability cap lowered
    /// (<see cref="DecorrelationRule.StableStepSizes"/>), then starts a new count; NaN when nothing was updated.
    /// </summary>
    public double TakeCappedFraction()
    {
        double fraction = _blockUpdates == 0 ? double.NaN : (double)_cappedBlockUpdates / _blockUpdates;
        _blockUpdates = 0;
        _cappedBlockUpdates = 0;
        return fraction;
    }

    /// <summary>
    /// Mean decorrelation loss of each layer (by <see cref="DecorrelatedLayer.LayerName"/>) over the updates
    /// since the last call, then starts a new average. NaN for a layer that was not updated.
    /// </summary>
    public IReadOnlyDictionary<string, double> TakeMeanLosses()
    {
        var means = new Dictionary<string, double>(Layers.Count);
        for (int i = 0; i < Layers.Count; i++)
        {
            means[Layers[i].LayerName] = _lossCounts[i] == 0 ? double.NaN : _lossSums[i] / _lossCounts[i];
            _lossSums[i] = 0;
            _lossCounts[i] = 0;
        }
        return means;
    }
}
