namespace Microsoft.ML.Decorrelation.Selection;

/// <summary>
/// The configurations a model-selection experiment samples: each setting is a list to choose from, or a range sampled
/// log-uniformly. Narrow a setting to one value to fix it.
/// </summary>
public sealed class ImageClassificationSearchSpace
{
    /// <summary>Networks to try.</summary>
    public IReadOnlyList<CnnArchitecture> Architectures { get; set; } = [CnnArchitecture.SmallCnn];

    /// <summary>Decorrelated backpropagation, plain backpropagation, or both.</summary>
    public IReadOnlyList<bool> UseDecorrelation { get; set; } = [true, false];

    /// <summary>Adam learning rate, sampled log-uniformly.</summary>
    public (double Min, double Max) LearningRate { get; set; } = (5e-4, 5e-3);

    /// <summary>Images per step.</summary>
    public IReadOnlyList<int> BatchSize { get; set; } = [64, 128];

    /// <summary>L2 weight decay, sampled log-uniformly.</summary>
    public (double Min, double Max) WeightDecay { get; set; } = (1e-5, 1e-3);

    /// <summary>η_R per update (decorrelated trials only), sampled log-uniformly.</summary>
    public (double Min, double Max) DecorrelationLearningRate { get; set; } = (4e-3, 1.6e-2);

    /// <summary>κ ∈ [0, 1]: the weight of variance normalisation against decorrelation (decorrelated trials only).</summary>
    public IReadOnlyList<double> Kappa { get; set; } = [new Torch.DecorrelationOptions().Kappa];

    /// <summary>Whether to flip training images left-right at random (augmentation).</summary>
    public IReadOnlyList<bool> RandomHorizontalFlip { get; set; } = [false];

    /// <summary>Padding of the random crop applied to training images (augmentation); 0 for none.</summary>
    public IReadOnlyList<int> RandomCropPadding { get; set; } = [0];

    /// <summary>
    /// Epochs of a trial's full run (the trainer's <c>MaxEpoch</c>; the step schedule decays after a third and two thirds of it).
    /// The longest is the search's top rung; a trial with a shorter one finishes on the first rung that reaches it. Default 6,
    /// the trainer's.
    /// </summary>
    public IReadOnlyList<int> MaxEpoch { get; set; } = [new DecorrelatedImageClassificationTrainer.Options().MaxEpoch];

    /// <summary>Checks that every setting offers at least one value.</summary>
    /// <exception cref="ArgumentException">A list is empty or a range is not positive and ordered; the message names the setting.</exception>
    public void Validate()
    {
        static void Range(string name, (double Min, double Max) range)
        {
            if (!(range.Min > 0) || !(range.Max >= range.Min) || !double.IsFinite(range.Max))
                throw new ArgumentException($"Search space {name} = [{range.Min}, {range.Max}]: a range must be positive, finite and ordered.", name);
        }
        static void List<T>(string name, IReadOnlyList<T> values)
        {
            if (values is null || values.Count == 0)
                throw new ArgumentException($"Search space {name} is empty: give at least one value.", name);
        }
        List(nameof(Architectures), Architectures);
        List(nameof(UseDecorrelation), UseDecorrelation);
        List(nameof(BatchSize), BatchSize);
        List(nameof(Kappa), Kappa);
        List(nameof(RandomHorizontalFlip), RandomHorizontalFlip);
        List(nameof(RandomCropPadding), RandomCropPadding);
        List(nameof(MaxEpoch), MaxEpoch);
        if (MaxEpoch.Any(e => e < 1))
            throw new ArgumentException($"Search space {nameof(MaxEpoch)} holds {MaxEpoch.Min()}: a full run needs at least one epoch.", nameof(MaxEpoch));
        if (Kappa.Any(k => !(k >= 0 && k <= 1)))
            throw new ArgumentException($"Search space {nameof(Kappa)} holds {Kappa.First(k => !(k >= 0 && k <= 1))}: κ must lie in [0, 1].", nameof(Kappa));
        if (RandomCropPadding.Any(p => p < 0))
            throw new ArgumentException($"Search space {nameof(RandomCropPadding)} holds {RandomCropPadding.Min()}: padding cannot be negative.", nameof(RandomCropPadding));
        if (BatchSize.Any(b => b < 1))
            throw new ArgumentException($"Search space {nameof(BatchSize)} holds {BatchSize.Min()}: batch sizes must be at least 1.", nameof(BatchSize));
        Range(nameof(LearningRate), LearningRate);
        Range(nameof(WeightDecay), WeightDecay);
        Range(nameof(DecorrelationLearningRate), DecorrelationLearningRate);
    }

    /// <summary>The configuration of trial <paramref name="trial"/>: drawn from its own seeded generator, so any trial can be redrawn alone.</summary>
    internal TrialConfiguration Sample(int seed, int trial)
    {
        var random = new Random(unchecked(seed * 1_000_003 + trial));
        static double LogUniform(Random random, (double Min, double Max) range)
            => Math.Exp(Math.Log(range.Min) + random.NextDouble() * (Math.Log(range.Max) - Math.Log(range.Min)));
        return new TrialConfiguration(
            Architectures[random.Next(Architectures.Count)],
            UseDecorrelation[random.Next(UseDecorrelation.Count)],
            LogUniform(random, LearningRate),
            BatchSize[random.Next(BatchSize.Count)],
            LogUniform(random, WeightDecay),
            LogUniform(random, DecorrelationLearningRate),
            // Drawn last so that spaces without these settings draw the earlier ones as before.
            Kappa[random.Next(Kappa.Count)],
            RandomHorizontalFlip[random.Next(RandomHorizontalFlip.Count)],
            RandomCropPadding[random.Next(RandomCropPadding.Count)],
            MaxEpoch[random.Next(MaxEpoch.Count)]);
    }

    /// <summary>The space as text, for a journal to recognise its study.</summary>
    internal string Describe()
        => $"architectures {string.Join(",", Architectures)}; decorrelation {string.Join(",", UseDecorrelation)}; lr {LearningRate}; batch {string.Join(",", BatchSize)}; " +
           $"weight decay {WeightDecay}; η_R {DecorrelationLearningRate}; " +
           $"κ {string.Join(",", Kappa)}; flip {string.Join(",", RandomHorizontalFlip)}; crop padding {string.Join(",", RandomCropPadding)}; " +
           $"max epoch {string.Join(",", MaxEpoch)}";
}

/// <summary>The settings a search chose for one trial.</summary>
/// <param name="Architecture">The network.</param>
/// <param name="UseDecorrelation">DBP (true) or backprop.</param>
/// <param name="LearningRate">Adam learning rate.</param>
/// <param name="BatchSize">Images per step.</param>
/// <param name="WeightDecay">L2 weight decay.</param>
/// <param name="DecorrelationLearningRate">η_R per update (used by DBP only).</param>
/// <param name="Kappa">κ of the decorrelation loss (used by DBP only).</param>
/// <param name="RandomHorizontalFlip">Whether training images are flipped at random.</param>
/// <param name="RandomCropPadding">Padding of the random crop of training images; 0 for none.</param>
/// <param name="MaxEpoch">Epochs of the trial's full run.</param>
public sealed record TrialConfiguration(CnnArchitecture Architecture, bool UseDecorrelation, double LearningRate, int BatchSize, double WeightDecay,
    double DecorrelationLearningRate, double Kappa = 0.01, bool RandomHorizontalFlip = false, int RandomCropPadding = 0, int MaxEpoch = 6)
{
    /// <summary>The trainer's options: <paramref name="template"/>'s, with this configuration's settings.</summary>
    public DecorrelatedImageClassificationTrainer.Options Apply(DecorrelatedImageClassificationTrainer.Options template)
    {
        var options = template.Clone();
        options.Architecture = Architecture;
        options.UseDecorrelation = UseDecorrelation;
        options.LearningRate = LearningRate;
        options.BatchSize = BatchSize;
        options.WeightDecay = WeightDecay;
        options.DecorrelationLearningRate = DecorrelationLearningRate;
        options.Kappa = Kappa;
        options.RandomHorizontalFlip = RandomHorizontalFlip;
        options.RandomCropPadding = RandomCropPadding;
        options.MaxEpoch = MaxEpoch;
        return options;
    }
}
