using Microsoft.ML;
using Microsoft.ML.Decorrelation;
using Microsoft.ML.Data;
using Microsoft.ML.Runtime;
using static TorchSharp.torch;

[assembly: LoadableClass(typeof(DecorrelatedImageClassificationTransformer), null, typeof(SignatureLoadModel),
    "Decorrelated Image Classification Transformer", DecorrelatedImageClassificationTransformer.LoaderSignature)]

namespace Microsoft.ML.Decorrelation;

/// <summary>
/// Saving and loading through <c>mlContext.Model.Save/Load</c>. ML.NET's model contexts, VersionInfo and
/// LoadableClass are internal; this file and MLNetInternals.cs are the only places that touch them.
/// </summary>
public sealed partial class DecorrelatedImageClassificationTransformer
{
    internal const string LoaderSignature = "DecorrImageClassifier";
    private const string NetworkStreamName = "Network.bin";

    /// <summary>
    /// The model format this version writes: 0x00010003, which stores a ResNet's stem (pretrained weights choose it,
    /// whatever the image size). It also reads 0x00010002 (no stem: chosen by image size) and 0x00010001 (key values
    /// as text, no stem).
    /// </summary>
    internal const uint FormatVersion = 0x00010003;

    private const uint TextKeyValuesVersion = 0x00010001;
    private const uint StemVersion = 0x00010003;

    /// <summary>The format written by Save; tests raise it to check that a newer model is refused.</summary>
    internal static uint SavedFormatVersion { get; set; } = FormatVersion;

    // ML.NET refuses, with its own message, a model whose readable version is above the version we write.
    private static VersionInfo GetVersionInfo(uint written = FormatVersion) => new(
        modelSignature: "DBPIMGCL",
        verWrittenCur: written,
        verReadableCur: written,
        verWeCanReadBack: TextKeyValuesVersion,
        loaderSignature: LoaderSignature,
        loaderAssemblyName: typeof(DecorrelatedImageClassificationTransformer).Assembly.FullName);

    /// <summary>Writes the model: settings in the main stream, the network's state dict in its own stream.</summary>
    void ICanSaveModel.Save(ModelSaveContext ctx)
    {
        _host.CheckValue(ctx, nameof(ctx));
        ObjectDisposedException.ThrowIf(_disposed, this);
        ctx.CheckAtModel();
        ctx.SetVersionInfo(GetVersionInfo(SavedFormatVersion));

        // *** Binary format ***
        // string: label, feature, score and predicted label column names
        // int: input kind; int: architecture; int: stem (−1 for none; from 0x00010003); int ×3: channels, height, width; int: classes
        // float[channels] ×2: mean and standard deviation of the pixels
        // int: number of key values (−1 for none); int: their DataKind; then each value (text in the string table)
        // stream Network.bin: the plain network's state dict (TorchSharp format)
        ctx.SaveNonEmptyString(LabelColumnName);
        ctx.SaveNonEmptyString(FeatureColumnName);
        ctx.SaveNonEmptyString(ScoreColumnName);
        ctx.SaveNonEmptyString(PredictedLabelColumnName);
        var writer = ctx.Writer;
        writer.Write((int)Input.Kind);
        writer.Write((int)Network.Architecture);
        if (SavedFormatVersion >= StemVersion)
            writer.Write(Network.Stem is { } stem ? (int)stem : -1);
        writer.Write(Input.Shape.Channels);
        writer.Write(Input.Shape.Height);
        writer.Write(Input.Shape.Width);
        writer.Write(Network.ClassCount);
        foreach (var value in Network.Mean.Concat(Network.StandardDeviation))
            writer.Write(value);
        SaveKeyValues(ctx, LabelKeyValues);
        ctx.SaveBinaryStream(NetworkStreamName, stream => Network.Network.save(stream));
    }

    // Called by ML.NET's component catalog (registered by the LoadableClass attribute above).
    private static DecorrelatedImageClassificationTransformer Create(IHostEnvironment env, ModelLoadContext ctx)
    {
        Contracts.CheckValue(env, nameof(env));
        env.CheckValue(ctx, nameof(ctx));
        ctx.CheckAtModel(GetVersionInfo());
        Torch.TorchSharpNativeLoader.EnsureLoaded();

        string label = ctx.LoadNonEmptyString();
        string feature = ctx.LoadNonEmptyString();
        string score = ctx.LoadNonEmptyString();
        string predictedLabel = ctx.LoadNonEmptyString();
        var reader = ctx.Reader;
        var kind = (ImageInputKind)reader.ReadInt32();
        var architecture = (CnnArchitecture)reader.ReadInt32();
        int storedStem = ctx.Header.ModelVerWritten >= StemVersion ? reader.ReadInt32() : -2;
        var shape = new ImageShape(reader.ReadInt32(), reader.ReadInt32(), reader.ReadInt32());
        int classes = reader.ReadInt32();
        if (!Enum.IsDefined(kind) || !Enum.IsDefined(architecture) || shape.Channels < 1 || shape.Height < 1 || shape.Width < 1 || classes < 2 || shape.Channels > 4096
            || !ValidStem(storedStem, architecture))
            throw env.ExceptDecode($"The model holds invalid settings (input {kind}, architecture {architecture}, stem {storedStem}, images {shape}, {classes} classes).");
        var stem = storedStem >= 0 ? (Torch.Architectures.ResNetStem)storedStem : ImageClassifierNetwork.DefaultStem(architecture, shape);
        var mean = Enumerable.Range(0, shape.Channels).Select(_ => reader.ReadSingle()).ToArray();
        var deviation = Enumerable.Range(0, shape.Channels).Select(_ => reader.ReadSingle()).ToArray();
        int nameCount = reader.ReadInt32();
        if (nameCount != -1 && nameCount != classes)
            throw env.ExceptDecode($"The model holds {nameCount} class names for {classes} classes.");
        var names = nameCount < 0 ? null : LoadKeyValues(ctx, nameCount, env);

        var (gpu, fallback) = MLNet.Internals.MLNetInternals.GetDeviceRequest(env);
        var device = Torch.TorchDevices.Select(gpu, fallback);
        var network = ImageClassifierNetwork.Build(architecture, stem, shape, classes, device);
        try
        {
            if (!ctx.TryLoadBinaryStream(NetworkStreamName, stream => network.load(stream, strict: true)))
                throw env.ExceptDecode($"The model has no '{NetworkStreamName}' stream.");
        }
        catch (Exception e) when (e is not FormatException)
        {
            network.Dispose();
            throw env.ExceptDecode(e, $"The network weights of the model could not be read: {e.Message}");
        }
        var model = new ImageClassifierNetwork(network, architecture, stem, shape, classes, mean, deviation, device);
        return new DecorrelatedImageClassificationTransformer(env, model, ImageInput.Restore(feature, kind, shape), label, score, predictedLabel, names);
    }

    /// <summary>A stored stem fits the architecture: −1 for the small CNN, a <see cref="Torch.Architectures.ResNetStem"/> for a ResNet; −2 = not stored (older formats).</summary>
    private static bool ValidStem(int stem, CnnArchitecture architecture)
        => stem == -2 || (architecture == CnnArchitecture.SmallCnn ? stem == -1 : stem >= 0 && Enum.IsDefined((Torch.Architectures.ResNetStem)stem));

    private static readonly (DataKind Kind, PrimitiveDataViewType Type)[] KeyValueKinds =
    [
        (DataKind.String, TextDataViewType.Instance), (DataKind.Boolean, BooleanDataViewType.Instance),
        (DataKind.Single, NumberDataViewType.Single), (DataKind.Double, NumberDataViewType.Double),
        (DataKind.SByte, NumberDataViewType.SByte), (DataKind.Byte, NumberDataViewType.Byte),
        (DataKind.Int16, NumberDataViewType.Int16), (DataKind.UInt16, NumberDataViewType.UInt16),
        (DataKind.Int32, NumberDataViewType.Int32), (DataKind.UInt32, NumberDataViewType.UInt32),
        (DataKind.Int64, NumberDataViewType.Int64), (DataKind.UInt64, NumberDataViewType.UInt64),
    ];

    private static void SaveKeyValues(ModelSaveContext ctx, LabelKeyValues? keyValues)
    {
        var writer = ctx.Writer;
        writer.Write(keyValues?.Count ?? -1);
        if (keyValues is null)
            return;
        writer.Write((int)KeyValueKinds.First(k => k.Type.Equals(keyValues.ItemType)).Kind);
        foreach (var value in keyValues.Values)
        {
            switch (value)
            {
                case string text: ctx.SaveString(text); break;
                case bool b: writer.Write(b); break;
                case float f: writer.Write(f); break;
                case double d: writer.Write(d); break;
                case sbyte v: writer.Write(v); break;
                case byte v: writer.Write(v); break;
                case short v: writer.Write(v); break;
                case ushort v: writer.Write(v); break;
                case int v: writer.Write(v); break;
                case uint v: writer.Write(v); break;
                case long v: writer.Write(v); break;
                case ulong v: writer.Write(v); break;
                default: throw new InvalidOperationException($"Key values of type {value.GetType()} cannot be saved.");
            }
        }
    }

    private static LabelKeyValues LoadKeyValues(ModelLoadContext ctx, int count, IHostEnvironment env)
    {
        if (ctx.Header.ModelVerWritten == TextKeyValuesVersion)
            return LabelKeyValues.Create(TextDataViewType.Instance, Enumerable.Range(0, count).Select(_ => ctx.LoadString().AsMemory()).ToArray());
        var reader = ctx.Reader;
        var kind = (DataKind)reader.ReadInt32();
        T[] Read<T>(Func<T> one) => Enumerable.Range(0, count).Select(_ => one()).ToArray();
        return kind switch
        {
            DataKind.String => LabelKeyValues.Create(TextDataViewType.Instance, Read(() => ctx.LoadString().AsMemory())),
            DataKind.Boolean => LabelKeyValues.Create(BooleanDataViewType.Instance, Read(reader.ReadBoolean)),
            DataKind.Single => LabelKeyValues.Create(NumberDataViewType.Single, Read(reader.ReadSingle)),
            DataKind.Double => LabelKeyValues.Create(NumberDataViewType.Double, Read(reader.ReadDouble)),
            DataKind.SByte => LabelKeyValues.Create(NumberDataViewType.SByte, Read(reader.ReadSByte)),
            DataKind.Byte => LabelKeyValues.Create(NumberDataViewType.Byte, Read(reader.ReadByte)),
            DataKind.Int16 => LabelKeyValues.Create(NumberDataViewType.Int16, Read(reader.ReadInt16)),
            DataKind.UInt16 => LabelKeyValues.Create(NumberDataViewType.UInt16, Read(reader.ReadUInt16)),
            DataKind.Int32 => LabelKeyValues.Create(NumberDataViewType.Int32, Read(reader.ReadInt32)),
            DataKind.UInt32 => LabelKeyValues.Create(NumberDataViewType.UInt32, Read(reader.ReadUInt32)),
            DataKind.Int64 => LabelKeyValues.Create(NumberDataViewType.Int64, Read(reader.ReadInt64)),
            DataKind.UInt64 => LabelKeyValues.Create(NumberDataViewType.UInt64, Read(reader.ReadUInt64)),
            _ => throw env.ExceptDecode($"The model's key values have an unknown kind ({(int)kind})."),
        };
    }
}
