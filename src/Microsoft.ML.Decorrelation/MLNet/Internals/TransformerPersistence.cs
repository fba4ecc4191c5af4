using Microsoft.ML;
using Microsoft.ML.Decorrelation;
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

    /// <summary>The model format this version writes and reads: 0x00010001, the first.</summary>
    internal const uint FormatVersion = 0x00010001;

    /// <summary>The format written by Save; tests raise it to check that a newer model is refused.</summary>
    internal static uint SavedFormatVersion { get; set; } = FormatVersion;

    // ML.NET refuses, with its own message, a model whose readable version is above the version we write.
    private static VersionInfo GetVersionInfo(uint written = FormatVersion) => new(
        modelSignature: "DBPIMGCL",
        verWrittenCur: written,
        verReadableCur: written,
        verWeCanReadBack: FormatVersion,
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
        // int: input kind; int: architecture; int ×3: channels, height, width; int: classes
        // float[channels] ×2: mean and standard deviation of the pixels
        // int: number of class names (−1 for none), then each name
        // stream Network.bin: the plain network's state dict (TorchSharp format)
        ctx.SaveNonEmptyString(LabelColumnName);
        ctx.SaveNonEmptyString(FeatureColumnName);
        ctx.SaveNonEmptyString(ScoreColumnName);
        ctx.SaveNonEmptyString(PredictedLabelColumnName);
        var writer = ctx.Writer;
        writer.Write((int)Input.Kind);
        writer.Write((int)Network.Architecture);
        writer.Write(Input.Shape.Channels);
        writer.Write(Input.Shape.Height);
        writer.Write(Input.Shape.Width);
        writer.Write(Network.ClassCount);
        foreach (var value in Network.Mean.Concat(Network.StandardDeviation))
            writer.Write(value);
        writer.Write(ClassNameValues?.Length ?? -1);
        foreach (var name in ClassNameValues ?? [])
            ctx.SaveString(name);
        ctx.SaveBinaryStream(NetworkStreamName, stream => Network.Network.save(stream));
    }

    // Called by ML.NET's component catalog (registered by the LoadableClass attribute above).
    private static DecorrelatedImageClassificationTransformer Create(IHostEnvironment env, ModelLoadContext ctx)
    {
        Contracts.CheckValue(env, nameof(env));
        env.CheckValue(ctx, nameof(ctx));
        ctx.CheckAtModel(GetVersionInfo());

        string label = ctx.LoadNonEmptyString();
        string feature = ctx.LoadNonEmptyString();
        string score = ctx.LoadNonEmptyString();
        string predictedLabel = ctx.LoadNonEmptyString();
        var reader = ctx.Reader;
        var kind = (ImageInputKind)reader.ReadInt32();
        var architecture = (CnnArchitecture)reader.ReadInt32();
        var shape = new ImageShape(reader.ReadInt32(), reader.ReadInt32(), reader.ReadInt32());
        int classes = reader.ReadInt32();
        if (!Enum.IsDefined(kind) || !Enum.IsDefined(architecture) || shape.Channels < 1 || shape.Height < 1 || shape.Width < 1 || classes < 2 || shape.Channels > 4096)
            throw env.ExceptDecode($"The model holds invalid settings (input {kind}, architecture {architecture}, images {shape}, {classes} classes).");
        var mean = Enumerable.Range(0, shape.Channels).Select(_ => reader.ReadSingle()).ToArray();
        var deviation = Enumerable.Range(0, shape.Channels).Select(_ => reader.ReadSingle()).ToArray();
        int nameCount = reader.ReadInt32();
        if (nameCount != -1 && nameCount != classes)
            throw env.ExceptDecode($"The model holds {nameCount} class names for {classes} classes.");
        var names = nameCount < 0 ? null : Enumerable.Range(0, nameCount).Select(_ => ctx.LoadString().AsMemory()).ToArray();

        var (gpu, fallback) = MLNet.Internals.MLNetInternals.GetDeviceRequest(env);
        var device = Torch.TorchDevices.Select(gpu, fallback);
        var network = ImageClassifierNetwork.Build(architecture, shape, classes, device);
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
        var model = new ImageClassifierNetwork(network, architecture, shape, classes, mean, deviation, device);
        return new DecorrelatedImageClassificationTransformer(env, model, ImageInput.Restore(feature, kind, shape), label, score, predictedLabel, names);
    }
}
