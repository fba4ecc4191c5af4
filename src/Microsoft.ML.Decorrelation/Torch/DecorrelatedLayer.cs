using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.Decorrelation.Torch;

/// <summary>
/// A layer that computes <c>y = W·(R·x) + b</c>, where R is a learned decorrelation matrix in front of an
/// ordinary linear map. Base of <see cref="DecorrelatedLinear"/> and <see cref="DecorrelatedConv2d"/>.
/// </summary>
/// <remarks>
/// <para>R (D×D, D = the length of one input vector or unfolded patch) starts as the identity and is a
/// persistent buffer named <c>decorrelation_matrix</c>: it is saved with the weights but never seen by the
/// optimizer or autograd. When D exceeds <see cref="DecorrelationOptions.MaxBlockSize"/>, R is
/// block-diagonal: G blocks of d×d (d = D/G) over consecutive groups of input channels, stored as a
/// G×d×d tensor, which cuts the W·R product and the update by a factor G.</para>
/// <para>The forward pass builds the effective weight <c>M = W·R</c> once and runs one ordinary
/// linear or convolution call, so autograd gives <c>∂L/∂W = (∂L/∂M)·Rᵀ</c>, the gradient with respect to
/// the decorrelated input. In training mode, when <see cref="CollectStatistics"/> is set, the forward
/// pass also keeps the decorrelated inputs of a random fraction of the batch; <see cref="UpdateDecorrelation()"/>
/// then moves R by the rule of <see cref="DecorrelationRule"/>.</para>
/// </remarks>
public abstract class DecorrelatedLayer : nn.Module<Tensor, Tensor>
{
    // Field names are the state_dict keys: weight and bias as in the plain layer, then R.
    private readonly Parameter weight;
    private readonly Parameter? bias;
    private readonly Tensor decorrelation_matrix;
    private Tensor? _pendingSamples;

    /// <summary>Creates the layer with copies of the given weights and R = I of size <paramref name="inputSize"/>, of the weights' type.</summary>
    /// <param name="name">The module's name.</param>
    /// <param name="template">A plain layer (Linear or Conv2d) whose initial weight and bias are copied.</param>
    /// <param name="inputSize">D, the length of one (unfolded) input vector.</param>
    /// <param name="options">Decorrelation hyper-parameters; null for the defaults.</param>
    /// <param name="sampleFraction">The fraction of each batch that feeds the statistics.</param>
    /// <param name="groups">The units R may be split between: input channels for a convolution, features for a linear layer.</param>
    private protected DecorrelatedLayer(string name, nn.Module template, long inputSize, DecorrelationOptions? options, double sampleFraction, long groups)
        : base(name)
    {
        options ??= new DecorrelationOptions();
        options.Validate();
        InputSize = inputSize;
        BlockCount = ChooseBlockCount(groups, inputSize / groups, options.MaxBlockSize);
        if (options.MaxBlockSize is int max && inputSize > max && (BlockCount == 1 || inputSize / BlockCount > max))
            BlockLayoutNote = BlockCount == 1
                ? $"no split of its {groups} input {(groups == inputSize ? "features" : "channels")} into equal groups fits MaxBlockSize {max}, and single-value blocks would decorrelate nothing: R is kept full ({inputSize}×{inputSize})"
                : $"no split of its {groups} input channels into equal groups fits MaxBlockSize {max}: R has one {inputSize / BlockCount}×{inputSize / BlockCount} block per channel";
        BlockSize = inputSize / BlockCount;
        LearningRate = options.LearningRate;
        Kappa = options.Kappa;
        SampleFraction = sampleFraction;
        using (no_grad())
        using (var scope = NewDisposeScope())
        {
            // Parameters and R outlive the scope; the views and temporaries that built them do not.
            var initialWeight = template.get_parameter("weight")!;
            weight = new Parameter(initialWeight.detach().clone());
            weight.DetachFromDisposeScope();
            register_parameter(nameof(weight), weight);
            if (template.get_parameter("bias") is { } initialBias)
            {
                bias = new Parameter(initialBias.detach().clone());
                bias.DetachFromDisposeScope();
                register_parameter(nameof(bias), bias);
            }
            decorrelation_matrix = (BlockCount == 1
                ? eye(inputSize, dtype: initialWeight.dtype, device: initialWeight.device)
                : eye(BlockSize, dtype: initialWeight.dtype, device: initialWeight.device).repeat(BlockCount, 1, 1)).DetachFromDisposeScope();
        }
        register_buffer(nameof(decorrelation_matrix), decorrelation_matrix, persistent: true);
    }

    /// <summary>D, the length of one input vector (linear) or unfolded patch C·kh·kw (convolution).</summary>
    public long InputSize { get; }

    /// <summary>
    /// The decorrelation matrix R as stored: D×D, or its G diagonal blocks as G×d×d when <see cref="BlockCount"/>
    /// is above 1. Modify only under <c>torch.no_grad()</c>.
    /// </summary>
    public Tensor DecorrelationMatrix => decorrelation_matrix;

    /// <summary>G, the number of diagonal blocks of R (1 for a full matrix).</summary>
    public long BlockCount { get; }

    /// <summary>
    /// Why R's blocks do not fit <see cref="DecorrelationOptions.MaxBlockSize"/> (no equal split of the input fits it),
    /// or null when they do or R is not split. <see cref="Training.NetworkTrainer.Train"/> reports it.
    /// </summary>
    public string? BlockLayoutNote { get; }

    /// <summary>d = D / G, the side of each diagonal block of R.</summary>
    public long BlockSize { get; }

    /// <summary>R as a full D×D matrix (a new tensor; zeros outside the diagonal blocks).</summary>
    public Tensor DenseDecorrelationMatrix()
    {
        if (BlockCount == 1)
            return decorrelation_matrix.clone();
        using var scope = NewDisposeScope();
        return block_diag(decorrelation_matrix.unbind(0)).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// The fewest blocks G, a divisor of <paramref name="groups"/>, whose size (groups / G)·unit fits
    /// <paramref name="maxBlockSize"/>. When none fits: one block per group if a group holds more than one value
    /// (a convolution's kh·kw), else one full block, since 1×1 blocks would decorrelate nothing.
    /// </summary>
    private static long ChooseBlockCount(long groups, long unit, int? maxBlockSize)
    {
        if (maxBlockSize is not int max || groups * unit <= max)
            return 1;
        for (long count = 2; count < groups; count++)
        {
            if (groups % count == 0 && groups / count * unit <= max)
                return count;
        }
        return unit > 1 ? groups : 1;
    }

    /// <summary>
    /// Rows of decorrelated samples (N×D) seen block by block: N×D itself for a full R, otherwise G×N×d,
    /// the layout of the stored blocks.
    /// </summary>
    private protected Tensor PerBlock(Tensor rows)
        => BlockCount == 1 ? rows : rows.view(rows.shape[0], BlockCount, BlockSize).transpose(0, 1);

    /// <summary>
    /// <paramref name="weight"/> (O×D) times R: one product with the full matrix, or one per block.
    /// </summary>
    private protected Tensor TimesR(Tensor weight)
    {
        if (BlockCount == 1)
            return weight.mm(decorrelation_matrix);
        long outputs = weight.shape[0];
        return weight.view(outputs, BlockCount, BlockSize).transpose(0, 1).bmm(decorrelation_matrix).transpose(0, 1).reshape(outputs, InputSize);
    }

    /// <summary>Learning rate η of R: positive and finite.</summary>
    /// <exception cref="ArgumentOutOfRangeException">The value is not positive and finite.</exception>
    public double LearningRate
    {
        get => _learningRate;
        set => _learningRate = value > 0 && double.IsFinite(value) ? value
            : throw new ArgumentOutOfRangeException(nameof(LearningRate), value, $"Layer '{DisplayName}': the decorrelation learning rate must be positive and finite.");
    }

    /// <summary>κ ∈ [0, 1], the weight of variance normalisation against decorrelation.</summary>
    /// <exception cref="ArgumentOutOfRangeException">The value lies outside [0, 1].</exception>
    public double Kappa
    {
        get => _kappa;
        set => _kappa = value >= 0 && value <= 1 ? value
            : throw new ArgumentOutOfRangeException(nameof(Kappa), value, $"Layer '{DisplayName}': kappa must lie in [0, 1].");
    }

    /// <summary>Fraction of each batch's samples (images for a convolution, rows for a linear layer), in (0, 1], whose inputs feed the statistics.</summary>
    /// <exception cref="ArgumentOutOfRangeException">The value lies outside (0, 1].</exception>
    public double SampleFraction
    {
        get => _sampleFraction;
        set => _sampleFraction = value > 0 && value <= 1 ? value
            : throw new ArgumentOutOfRangeException(nameof(SampleFraction), value, $"Layer '{DisplayName}': a sample fraction must lie in (0, 1].");
    }

    private double _learningRate, _kappa, _sampleFraction;

    /// <summary>
    /// Whether the next training-mode forward pass keeps decorrelated samples for
    /// <see cref="UpdateDecorrelation()"/>. Default true; <see cref="DecorrelationController"/> clears it
    /// on steps that skip the update.
    /// </summary>
    public bool CollectStatistics { get; set; } = true;

    /// <summary>
    /// The CPU generator that picks which samples of a batch feed the statistics, or null for Torch's global
    /// generator. <see cref="DecorrelationController"/> gives every layer of a network the same one, owned by
    /// the training run, so concurrent runs do not draw from each other's random stream.
    /// </summary>
    public Generator? SamplingGenerator { get; set; }

    /// <summary>
    /// Where the layer sits in its network (e.g. <c>features.3</c>); used in messages. Set by
    /// <see cref="DecorrelationController"/>, otherwise the module's name.
    /// </summary>
    public string LayerName { get; set; } = "";

    /// <summary>
    /// The step size of the last update (the smallest over the blocks of a block-diagonal R):
    /// <see cref="LearningRate"/>, or less when the stability cap of <see cref="DecorrelationRule.StableStepSizes"/>
    /// applied. NaN before the first update.
    /// </summary>
    public double LastStepSize { get; private set; } = double.NaN;

    /// <summary>How many blocks of R (of <see cref="BlockCount"/>) the stability cap slowed in the last update.</summary>
    public int LastCappedBlocks { get; private set; }

    /// <summary>The decorrelation loss measured by the last <see cref="UpdateDecorrelation()"/>, or NaN.</summary>
    public double LastDecorrelationLoss { get; private set; } = double.NaN;

    /// <summary>The decorrelated rows kept by the last training forward pass (N×D), or null; for tests.</summary>
    internal Tensor? PendingSamples => _pendingSamples;

    /// <summary>Whether a forward pass has kept samples that <see cref="UpdateDecorrelation()"/> has not used yet.</summary>
    public bool HasPendingStatistics => _pendingSamples is not null;

    /// <summary>Builds the effective weight <c>M = W·R</c>, shaped like the wrapped layer's weight.</summary>
    public abstract Tensor EffectiveWeight();

    /// <summary>The bias b, or null.</summary>
    public Parameter? Bias => bias;

    /// <summary>The weight W, shaped as in the plain layer.</summary>
    public Parameter Weight => weight;

    /// <inheritdoc />
    public override Tensor forward(Tensor input)
    {
        if (training && CollectStatistics)
            KeepSamples(input);
        return ApplyEffectiveWeight(input, EffectiveWeight());
    }

    /// <summary>Runs the plain linear map with weight <paramref name="effectiveWeight"/> and the bias.</summary>
    private protected abstract Tensor ApplyEffectiveWeight(Tensor input, Tensor effectiveWeight);

    /// <summary>The decorrelated inputs Z = (R·x)ᵀ, one row per vector or patch, of the given samples.</summary>
    private protected abstract Tensor Decorrelate(Tensor samples);

    /// <summary>How many samples of a batch of <paramref name="batchSize"/> feed the statistics.</summary>
    public long SampleCount(long batchSize) => Math.Max(1, Math.Min(batchSize, (long)Math.Round(SampleFraction * batchSize)));

    /// <summary>Wall-clock time spent collecting statistics in forward passes since the last <see cref="TakeStatisticsTime"/>.</summary>
    public TimeSpan TakeStatisticsTime()
    {
        var elapsed = _statisticsTime;
        _statisticsTime = TimeSpan.Zero;
        return elapsed;
    }

    private TimeSpan _statisticsTime;

    private void KeepSamples(Tensor input)
    {
        long start = System.Diagnostics.Stopwatch.GetTimestamp();
        try
        {
            KeepSamplesCore(input);
        }
        finally
        {
            _statisticsTime += System.Diagnostics.Stopwatch.GetElapsedTime(start);
        }
    }

    private void KeepSamplesCore(Tensor input)
    {
        using var noGrad = no_grad();
        using var scope = NewDisposeScope();
        long batch = input.shape[0];
        long count = SampleCount(batch);
        var samples = count == batch ? input.detach() : input.detach().index_select(0, randperm(batch, generator: SamplingGenerator).narrow(0, 0, count).to(input.device));
        _pendingSamples?.Dispose();
        _pendingSamples = Decorrelate(samples).DetachFromDisposeScope();
    }

    /// <summary>
    /// The decorrelation loss of the samples kept by the last training forward pass, measured without
    /// updating R or forgetting the samples; NaN when there are none.
    /// </summary>
    public double PendingDecorrelationLoss()
    {
        if (_pendingSamples is null)
            return double.NaN;
        using var noGrad = no_grad();
        using var scope = NewDisposeScope();
        return DecorrelationRule.Compute(PerBlock(_pendingSamples), decorrelation_matrix, Kappa).Loss.to(ScalarType.Float64).item<double>();
    }

    /// <summary>
    /// Applies one step of the update rule with the samples kept by the last training forward pass, then
    /// forgets them. Does nothing when there are none. The step size is <see cref="LearningRate"/>, capped at
    /// 1/‖X‖_F ≥ 1/λmax of the samples' second moment (<see cref="DecorrelationRule.StableStepSizes"/>); each block of a
    /// block-diagonal R is capped by its own.
    /// </summary>
    /// <returns>The decorrelation loss before the step, or NaN when nothing was updated.</returns>
    /// <exception cref="TrainingDivergedException">The loss or the new R is not finite; R keeps its last value.</exception>
    public double UpdateDecorrelation() => UpdateDecorrelation(null);

    /// <summary>
    /// <see cref="UpdateDecorrelation()"/> in data-parallel training: the samples' second moment is pooled over every rank of
    /// <paramref name="communicator"/> (sums of ZᵀZ and of the sample counts all-reduced), so every rank applies the same
    /// update, the one over the union of their samples. Every rank must call it on the same steps.
    /// </summary>
    /// <param name="communicator">The ranks training together; null or a single rank updates from the local samples.</param>
    public double UpdateDecorrelation(Distributed.ICollectiveCommunicator? communicator)
    {
        if (_pendingSamples is null)
            return double.NaN;
        using var noGrad = no_grad();
        using var scope = NewDisposeScope();
        using var samples = _pendingSamples;
        _pendingSamples = null;
        var blocks = PerBlock(samples);
        var (next, loss, stepSizes) = communicator is { Size: > 1 }
            ? DecorrelationRule.StepFromSecondMoment(PooledSecondMoment(blocks, communicator), decorrelation_matrix, Kappa, LearningRate)
            : DecorrelationRule.Step(blocks, decorrelation_matrix, Kappa, LearningRate);
        // One device-to-host copy per update: the loss, the smallest step, how many blocks were capped, and the sum of the
        // new R, which is finite exactly when every entry is (short of a sum that overflows float64, which no usable R reaches).
        var summary = stack([loss.to(ScalarType.Float64), stepSizes.min(), stepSizes.lt(LearningRate).sum().to(ScalarType.Float64),
            next.sum(ScalarType.Float64)]).cpu().data<double>().ToArray();
        double lossValue = summary[0];
        if (!double.IsFinite(lossValue) || !double.IsFinite(summary[3]))
            throw new TrainingDivergedException(
                $"The decorrelation matrix of layer '{DisplayName}' diverged (decorrelation loss {lossValue}); it keeps its last finite value. " +
                "Lower the decorrelation learning rate or the learning rate.", DisplayName);
        LastStepSize = summary[1];
        LastCappedBlocks = (int)summary[2];
        decorrelation_matrix.copy_(next);
        LastDecorrelationLoss = lossValue;
        return lossValue;
    }

    /// <summary>
    /// X = ΣZᵀZ / ΣN over every rank (per block), in the samples' type as in one process, so that the ranks' update differs from
    /// the single-process one only by the order of the sums.
    /// </summary>
    private static Tensor PooledSecondMoment(Tensor blocks, Distributed.ICollectiveCommunicator communicator)
    {
        var sums = blocks.transpose(-2, -1).matmul(blocks);
        var count = tensor(new double[] { blocks.shape[^2] }, device: blocks.device);
        communicator.AllReduceSum(sums);
        communicator.AllReduceSum(count);
        return sums.div_(count.item<double>());
    }

    /// <summary>The name used in messages: <see cref="LayerName"/> when set, else the module's name.</summary>
    public string DisplayName => string.IsNullOrEmpty(LayerName) ? GetName() : LayerName;

    /// <inheritdoc />
    protected override void Dispose(bool disposing)
    {
        if (disposing)
        {
            _pendingSamples?.Dispose();
            _pendingSamples = null;
        }
        base.Dispose(disposing);
    }
}
