using Microsoft.ML.Data;
using Microsoft.ML.Runtime;

namespace Microsoft.ML.Decorrelation.MLNet.Internals;

/// <summary>
/// The ML.NET internals this library needs outside model persistence, in one place (docs/design.md, "ML.NET internals").
/// Compiled against publicized copies of Microsoft.ML.Core and Microsoft.ML.Data; see
/// build/MLNetInternals.targets. Microsoft.ML is pinned exactly because of this file.
/// </summary>
internal static class MLNetInternals
{
    /// <summary>The annotation kinds ML.NET's scorers write and its evaluators read.</summary>
    public static class AnnotationKinds
    {
        public const string KeyValues = AnnotationUtils.Kinds.KeyValues;
        public const string SlotNames = AnnotationUtils.Kinds.SlotNames;
        public const string ScoreColumnKind = AnnotationUtils.Kinds.ScoreColumnKind;
        public const string ScoreValueKind = AnnotationUtils.Kinds.ScoreValueKind;
        public const string ScoreColumnSetId = AnnotationUtils.Kinds.ScoreColumnSetId;
        public const string MulticlassClassification = AnnotationUtils.Const.ScoreColumnKind.MulticlassClassification;
        public const string Score = AnnotationUtils.Const.ScoreValueKind.Score;
    }

    /// <summary>The environment behind a trainers catalog (internal in ML.NET).</summary>
    public static IHostEnvironment GetEnvironment(MulticlassClassificationCatalog.MulticlassClassificationTrainers catalog)
        => CatalogUtils.GetEnvironment(catalog);

    /// <summary>The GPU requested through <c>MLContext.GpuDeviceId</c> and whether CPU fallback is allowed.</summary>
    public static (int? GpuDeviceId, bool FallbackToCpu) GetDeviceRequest(IHostEnvironment environment)
        => environment is IHostEnvironmentInternal settings ? (settings.GpuDeviceId, settings.FallbackToCpu) : (null, true);

    /// <summary>The seed of <c>MLContext(seed)</c>, or null when it was created without one.</summary>
    public static int? GetSeed(IHostEnvironment environment) => (environment as IHostEnvironmentInternal)?.Seed;

    /// <summary>Throws <see cref="OperationCanceledException"/> once <c>MLContext.CancelExecution()</c> was called.</summary>
    public static void CheckAlive(IHostEnvironment environment) => environment.CheckAlive();

    /// <summary>The type of the ScoreColumnSetId annotation.</summary>
    public static KeyDataViewType ScoreColumnSetIdType => AnnotationUtils.ScoreColumnSetIdType;

    /// <summary>The next free score column set id in <paramref name="schema"/>, as ML.NET's scorers number them.</summary>
    public static uint NextScoreColumnSetId(DataViewSchema schema)
        => checked(schema.GetMaxAnnotationKind(out _, AnnotationUtils.Kinds.ScoreColumnSetId) + 1);

    /// <summary>A column of a <see cref="SchemaShape"/> (its constructor is internal).</summary>
    public static SchemaShape.Column ShapeColumn(string name, SchemaShape.Column.VectorKind kind, DataViewType itemType, bool isKey, SchemaShape? annotations = null)
        => new(name, kind, itemType, isKey, annotations);
}
