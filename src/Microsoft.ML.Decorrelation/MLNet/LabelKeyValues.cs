using Microsoft.ML.Data;

namespace Microsoft.ML.Decorrelation;

/// <summary>
/// The key values of a label column (what <c>MapValueToKey</c> mapped: class names, numbers, booleans) in their own
/// type, so that <c>PredictedLabel</c> maps back to values of the label's type, as ML.NET's own scorers do.
/// </summary>
internal abstract class LabelKeyValues
{
    /// <summary>The raw types kept as they are; key values of any other type are kept as text.</summary>
    private static readonly Type[] KeptTypes =
    [
        typeof(ReadOnlyMemory<char>), typeof(bool), typeof(float), typeof(double), typeof(sbyte), typeof(byte),
        typeof(short), typeof(ushort), typeof(int), typeof(uint), typeof(long), typeof(ulong),
    ];

    /// <summary>The type in which key values of <paramref name="itemType"/> are kept: their own, or text.</summary>
    public static DataViewType StoredType(DataViewType itemType) => KeptTypes.Contains(itemType.RawType) ? itemType : TextDataViewType.Instance;

    /// <summary>The type of one key value.</summary>
    public abstract PrimitiveDataViewType ItemType { get; }

    /// <summary>How many classes have a value.</summary>
    public abstract int Count { get; }

    /// <summary>The values as text (for messages and the transformer's <c>ClassNames</c>).</summary>
    public abstract IReadOnlyList<string> AsText();

    /// <summary>Adds the values to <paramref name="builder"/> as the annotation <paramref name="kind"/>, in their type or as text.</summary>
    public abstract void AddTo(DataViewSchema.Annotations.Builder builder, string kind, bool asText);

    /// <summary>The values, boxed, in key order.</summary>
    public abstract IEnumerable<object> Values { get; }

    /// <summary>Whether <paramref name="other"/> holds the same values of the same type in the same order.</summary>
    public bool SameAs(LabelKeyValues other)
        => ItemType.Equals(other.ItemType) && Count == other.Count && Values.Select(ValueText).SequenceEqual(other.Values.Select(ValueText));

    private static string ValueText(object value) => value.ToString() ?? "";

    /// <summary>Reads the first <paramref name="classCount"/> key values of <paramref name="label"/>; null when it has none.</summary>
    public static LabelKeyValues? Read(DataViewSchema.Column label, int classCount)
    {
        if (label.Annotations.Schema.GetColumnOrNull(MLNet.Internals.MLNetInternals.AnnotationKinds.KeyValues)?.Type is not VectorDataViewType { ItemType: PrimitiveDataViewType itemType })
            return null;
        var read = typeof(LabelKeyValues).GetMethod(nameof(ReadTyped), System.Reflection.BindingFlags.NonPublic | System.Reflection.BindingFlags.Static)!
            .MakeGenericMethod(itemType.RawType);
        return (LabelKeyValues)read.Invoke(null, [label, itemType, classCount])!;
    }

    private static LabelKeyValues ReadTyped<T>(DataViewSchema.Column label, PrimitiveDataViewType itemType, int classCount)
    {
        VBuffer<T> buffer = default;
        label.Annotations.GetValue(MLNet.Internals.MLNetInternals.AnnotationKinds.KeyValues, ref buffer);
        var values = buffer.DenseValues().Take(classCount).ToArray();
        if (KeptTypes.Contains(typeof(T)))
            return new Typed<T>(itemType, values);
        return new Typed<ReadOnlyMemory<char>>(TextDataViewType.Instance, values.Select(v => (v?.ToString() ?? "").AsMemory()).ToArray());
    }

    /// <summary>Creates the values of a saved model.</summary>
    public static LabelKeyValues Create<T>(PrimitiveDataViewType itemType, T[] values) => new Typed<T>(itemType, values);

    private sealed class Typed<T>(PrimitiveDataViewType itemType, T[] values) : LabelKeyValues
    {
        public override PrimitiveDataViewType ItemType => itemType;

        public override int Count => values.Length;

        public override IEnumerable<object> Values => values.Select(v => (object)(v is ReadOnlyMemory<char> text ? text.ToString() : v!));

        public override IReadOnlyList<string> AsText() => Values.Select(ValueText).ToArray();

        public override void AddTo(DataViewSchema.Annotations.Builder builder, string kind, bool asText)
        {
            if (asText && typeof(T) != typeof(ReadOnlyMemory<char>))
            {
                var text = AsText().Select(v => v.AsMemory()).ToArray();
                builder.Add(kind, new VectorDataViewType(TextDataViewType.Instance, text.Length),
                    (ref VBuffer<ReadOnlyMemory<char>> value) => value = new VBuffer<ReadOnlyMemory<char>>(text.Length, text));
                return;
            }
            builder.Add(kind, new VectorDataViewType(itemType, values.Length), (ref VBuffer<T> value) => value = new VBuffer<T>(values.Length, values));
        }
    }
}
