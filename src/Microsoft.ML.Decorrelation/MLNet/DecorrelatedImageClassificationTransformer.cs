using Microsoft.ML.Data;
using Microsoft.ML.Decorrelation.MLNet.Internals;
using Microsoft.ML.Runtime;

namespace Microsoft.ML.Decorrelation;

/// <summary>
/// A fitted image classifier: adds the columns <c>Score</c> (class probabilities, a float vector of K
/// with the label names as slot names) and <c>PredictedLabel</c> (a key of K carrying the label's key
/// values) to its input. Produced by <see cref="DecorrelatedImageClassificationTrainer"/>; saved and
/// loaded with <c>mlContext.Model.Save</c> and <c>Load</c>.
/// </summary>
/// <remarks>
/// The network is stored with its decorrelation matrices folded into plain convolution and linear
/// weights, so scoring costs what the plain network costs. <see cref="Transform"/> scores rows in batches;
/// <see cref="GetRowToRowMapper"/> (used by <c>PredictionEngine</c>) scores one row at a time. Both may run
/// on several threads at once (one <c>PredictionEngine</c> per thread, as ML.NET requires).
/// </remarks>
public sealed partial class DecorrelatedImageClassificationTransformer : ITransformer, ICanSaveModel, IDisposable
{
    private readonly IHost _host;
    private bool _disposed;

    internal DecorrelatedImageClassificationTransformer(IHostEnvironment environment, ImageClassifierNetwork network, ImageInput input,
        string labelColumnName, string scoreColumnName, string predictedLabelColumnName, LabelKeyValues? labelKeyValues)
    {
        _host = environment.Register(nameof(DecorrelatedImageClassificationTransformer));
        Network = network;
        Input = input;
        LabelColumnName = labelColumnName;
        ScoreColumnName = scoreColumnName;
        PredictedLabelColumnName = predictedLabelColumnName;
        LabelKeyValues = labelKeyValues;
    }

    internal ImageClassifierNetwork Network { get; }

    internal ImageInput Input { get; }

    /// <summary>The label's key values in their own type, or null when the label had none.</summary>
    internal LabelKeyValues? LabelKeyValues { get; }

    /// <summary>The label column the model was trained on.</summary>
    public string LabelColumnName { get; }

    /// <summary>The feature column the model reads.</summary>
    public string FeatureColumnName => Input.ColumnName;

    /// <summary>The column of class probabilities this transformer adds.</summary>
    public string ScoreColumnName { get; }

    /// <summary>The column of predicted label keys this transformer adds.</summary>
    public string PredictedLabelColumnName { get; }

    /// <summary>K, the number of classes (the label key type's count at training).</summary>
    public int ClassCount => Network.ClassCount;

    /// <summary>
    /// The label names (the label's key values, as text), in key order; null when the label had none. <c>PredictedLabel</c>
    /// carries the key values in their own type (text, number or boolean), so <c>MapKeyToValue</c> gives back the label's type.
    /// </summary>
    public IReadOnlyList<string>? ClassNames => LabelKeyValues?.AsText();

    /// <summary>The architecture of the network.</summary>
    public CnnArchitecture Architecture => Network.Architecture;

    /// <summary>Channels, height and width of the images the network takes.</summary>
    public (int Channels, int Height, int Width) ImageSize => (Input.Shape.Channels, Input.Shape.Height, Input.Shape.Width);

    /// <summary>
    /// Loads a model saved with <c>mlContext.Model.Save</c> and returns the model and the
    /// <see cref="DecorrelatedImageClassificationTransformer"/> inside it.
    /// </summary>
    /// <param name="mlContext">The context to load into.</param>
    /// <param name="path">The model file.</param>
    /// <exception cref="FileNotFoundException">The file does not exist.</exception>
    /// <exception cref="InvalidDataException">The file is not a model, is damaged, is of a newer format, or holds no such transformer.</exception>
    public static (ITransformer Model, DecorrelatedImageClassificationTransformer Classifier) Load(MLContext mlContext, string path)
    {
        ArgumentNullException.ThrowIfNull(mlContext);
        if (!File.Exists(path))
            throw new FileNotFoundException($"The model file '{path}' does not exist.", path);
        ITransformer model;
        try
        {
            model = mlContext.Model.Load(path, out _);
        }
        catch (Exception e) when (e is InvalidDataException or FormatException or InvalidOperationException or IOException or EndOfStreamException)
        {
            // ML.NET wraps a loader's exception in "Error during class instantiation": report the cause.
            var cause = e;
            while (cause.InnerException is not null && (cause is System.Reflection.TargetInvocationException || cause.Message.StartsWith("Error during class instantiation", StringComparison.Ordinal)))
                cause = cause.InnerException;
            throw new InvalidDataException($"'{path}' could not be loaded as an ML.NET model: {cause.Message}", e);
        }
        var classifier = Flatten(model).OfType<DecorrelatedImageClassificationTransformer>().FirstOrDefault()
            ?? throw new InvalidDataException($"The model in '{path}' holds no {nameof(DecorrelatedImageClassificationTransformer)}; it holds {string.Join(", ", Flatten(model).Select(t => t.GetType().Name))}.");
        return (model, classifier);
    }

    private static IEnumerable<ITransformer> Flatten(ITransformer model)
        => model is IEnumerable<ITransformer> chain ? chain.SelectMany(Flatten) : [model];

    /// <summary>Always true: the transformer maps each row on its own.</summary>
    public bool IsRowToRowMapper => true;

    /// <summary>The input schema plus the score and predicted label columns.</summary>
    /// <exception cref="ArgumentOutOfRangeException">The feature column is missing or does not match the model.</exception>
    public DataViewSchema GetOutputSchema(DataViewSchema inputSchema)
    {
        _host.CheckValue(inputSchema, nameof(inputSchema));
        Input.FindColumn(inputSchema);
        var builder = new DataViewSchema.Builder();
        builder.AddColumns(inputSchema);
        uint scoreSet = MLNetInternals.NextScoreColumnSetId(inputSchema);
        builder.AddColumn(ScoreColumnName, new VectorDataViewType(NumberDataViewType.Single, ClassCount), ScoreAnnotations(scoreSet, MLNetInternals.AnnotationKinds.Score, slotNames: true));
        builder.AddColumn(PredictedLabelColumnName, new KeyDataViewType(typeof(uint), ClassCount), ScoreAnnotations(scoreSet, "PredictedLabel", slotNames: false));
        return builder.ToSchema();
    }

    /// <summary>Scores <paramref name="input"/> lazily, in batches, when a cursor asks for the new columns.</summary>
    public IDataView Transform(IDataView input)
    {
        _host.CheckValue(input, nameof(input));
        ObjectDisposedException.ThrowIf(_disposed, this);
        return new ScoringDataView(this, input);
    }

    /// <summary>A mapper that scores one row at a time, as <c>PredictionEngine</c> needs.</summary>
    public IRowToRowMapper GetRowToRowMapper(DataViewSchema inputSchema)
    {
        _host.CheckValue(inputSchema, nameof(inputSchema));
        ObjectDisposedException.ThrowIf(_disposed, this);
        return new RowScorer(this, inputSchema);
    }

    /// <summary>Rows per forward pass in <see cref="Transform"/>: up to 256, fewer for large images (about 16 MB of pixels).</summary>
    internal int ScoringBatchSize => Math.Clamp(4_000_000 / Input.Shape.Size, 1, 256);

    /// <summary>Releases the network's native memory.</summary>
    public void Dispose()
    {
        if (_disposed)
            return;
        _disposed = true;
        Network.Dispose();
    }

    private DataViewSchema.Annotations ScoreAnnotations(uint scoreSet, string valueKind, bool slotNames)
    {
        var annotations = new DataViewSchema.Annotations.Builder();
        // Slot names are text, as ML.NET's evaluators and explainers read them; key values keep the label's type.
        LabelKeyValues?.AddTo(annotations, slotNames ? MLNetInternals.AnnotationKinds.SlotNames : MLNetInternals.AnnotationKinds.KeyValues, asText: slotNames);
        annotations.Add(MLNetInternals.AnnotationKinds.ScoreColumnKind, TextDataViewType.Instance,
            (ref ReadOnlyMemory<char> value) => value = MLNetInternals.AnnotationKinds.MulticlassClassification.AsMemory());
        annotations.Add(MLNetInternals.AnnotationKinds.ScoreValueKind, TextDataViewType.Instance,
            (ref ReadOnlyMemory<char> value) => value = valueKind.AsMemory());
        annotations.Add(MLNetInternals.AnnotationKinds.ScoreColumnSetId, MLNetInternals.ScoreColumnSetIdType, (ref uint value) => value = scoreSet);
        return annotations.ToAnnotations();
    }
}
