using System.Collections;
using System.Text;
using TorchSharp;
using TorchSharp.PyBridge;
using static TorchSharp.torch;

namespace Microsoft.ML.Decorrelation.Torch.Pretrained;

/// <summary>The file formats a state dict (tensor name → tensor) can be read from.</summary>
public enum StateDictFormat
{
    /// <summary>PyTorch's <c>torch.save(model.state_dict(), path)</c>: a zip archive holding a pickle (<c>.pt</c>, <c>.pth</c>).</summary>
    PyTorch,

    /// <summary>Hugging Face safetensors (<c>.safetensors</c>).</summary>
    Safetensors,

    /// <summary>TorchSharp's own format (<c>module.save(path)</c>, or PyTorch's state dict exported with TorchSharp's <c>exportsd.py</c>).</summary>
    TorchSharp,
}

/// <summary>
/// Reads and writes state dicts: PyTorch and safetensors files through TorchSharp.PyBridge, TorchSharp's format
/// through TorchSharp. The format is recognised from the file's first bytes, whatever its extension.
/// </summary>
public static class StateDictFile
{
    /// <summary>The format of <paramref name="path"/>, from its first bytes.</summary>
    /// <exception cref="FileNotFoundException">The file does not exist.</exception>
    /// <exception cref="InvalidDataException">The file is empty or in PyTorch's legacy (pre-1.6, not zip) format.</exception>
    public static StateDictFormat DetectFormat(string path)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(path);
        if (!File.Exists(path))
            throw new FileNotFoundException($"The state dict file '{path}' does not exist.", path);
        using var file = File.OpenRead(path);
        var head = new byte[9];
        int read = file.ReadAtLeast(head, head.Length, throwOnEndOfStream: false);
        if (read == 0)
            throw new InvalidDataException($"The state dict file '{path}' is empty.");
        if (read >= 4 && head[0] == (byte)'P' && head[1] == (byte)'K' && head[2] == 3 && head[3] == 4)
            return StateDictFormat.PyTorch;
        if (read >= 2 && head[0] == 0x80 && head[1] <= 5)
            throw new InvalidDataException($"The state dict file '{path}' is a bare pickle: PyTorch's legacy format (before 1.6, or " +
                "_use_new_zipfile_serialization=False), which cannot be read. Re-save it with torch.save(model.state_dict(), path) " +
                "on PyTorch 1.6 or later, or as safetensors.");
        // safetensors: an 8-byte little-endian header length, then the JSON header.
        if (read == 9 && head[8] == (byte)'{' && BitConverter.ToUInt64(head, 0) is var headerLength && headerLength >= 2 && headerLength < (ulong)file.Length)
            return StateDictFormat.Safetensors;
        return StateDictFormat.TorchSharp;
    }

    /// <summary>
    /// Reads every tensor of the state dict in <paramref name="path"/> onto the CPU, in the file's types. The caller
    /// owns (and disposes) the tensors.
    /// </summary>
    /// <exception cref="FileNotFoundException">The file does not exist.</exception>
    /// <exception cref="InvalidDataException">The file is not a readable state dict (truncated, another kind of pickle, a whole module); the message names the file and the cause.</exception>
    public static Dictionary<string, Tensor> Read(string path)
    {
        var format = DetectFormat(path);
        try
        {
            return format switch
            {
                StateDictFormat.PyTorch => ReadPyTorch(path),
                StateDictFormat.Safetensors => Safetensors.LoadStateDict(path),
                _ => ReadTorchSharp(path),
            };
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            throw new InvalidDataException($"The state dict file '{path}' could not be read as {Describe(format)}: {Cause(e)}", e);
        }
    }

    /// <summary>
    /// Writes <paramref name="stateDict"/> in PyTorch's format, which <c>torch.load</c> reads (through TorchSharp.PyBridge).
    /// </summary>
    public static void WritePyTorch(string path, IReadOnlyDictionary<string, Tensor> stateDict)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(path);
        ArgumentNullException.ThrowIfNull(stateDict);
        var ordered = new Dictionary<string, Tensor>();
        foreach (var (key, value) in stateDict)
            ordered[key] = value;
        PyTorchPickler.PickleStateDict(path, ordered);
    }

    private static Dictionary<string, Tensor> ReadPyTorch(string path)
    {
        using var file = File.OpenRead(path);
        var table = PyTorchUnpickler.UnpickleStateDict(file, leaveOpen: true);
        var result = new Dictionary<string, Tensor>(table.Count);
        foreach (DictionaryEntry entry in table)
        {
            if (entry.Key is not string key || entry.Value is not Tensor value)
            {
                foreach (var tensor in result.Values)
                    tensor.Dispose();
                throw new FormatException($"it holds an entry that is not a named tensor ({entry.Key}: {entry.Value?.GetType().Name ?? "null"})");
            }
            result[key] = value;
        }
        return result;
    }

    /// <summary>
    /// TorchSharp's format: an entry count, then per entry its name and a tensor (type, shape, bytes), the counts in LEB128.
    /// Each tensor's size is checked against the bytes left before TorchSharp allocates and reads it, so a damaged file
    /// fails with a message instead of an allocation of its garbage size. TorchSharp's own LEB128 reader is internal.
    /// </summary>
    private static Dictionary<string, Tensor> ReadTorchSharp(string path)
    {
        using var file = File.OpenRead(path);
        using var reader = new BinaryReader(file, Encoding.UTF8);
        long count = ReadLeb128(reader);
        if (count < 0 || count > 1_000_000)
            throw new FormatException($"it starts with an entry count of {count}, not that of a state dict");
        var result = new Dictionary<string, Tensor>((int)count);
        try
        {
            for (long i = 0; i < count; i++)
            {
                string key = reader.ReadString();
                long start = file.Position;
                var type = (ScalarType)ReadLeb128(reader);
                long dimensions = ReadLeb128(reader);
                if (dimensions < 0 || dimensions > 16)
                    throw new FormatException($"entry '{key}' has {dimensions} dimensions");
                long elements = 1;
                for (long d = 0; d < dimensions; d++)
                {
                    long size = ReadLeb128(reader);
                    if (size < 0 || (size > 0 && elements > long.MaxValue / size))
                        throw new FormatException($"entry '{key}' has a dimension of {size}");
                    elements *= size;
                }
                long bytes = elements * ElementSize(type, key);
                if (bytes > file.Length - file.Position)
                    throw new FormatException($"entry '{key}' needs {bytes} bytes but the file has {file.Length - file.Position} left (truncated?)");
                file.Position = start;
                result[key] = TensorExtensionMethods.Load(reader);
            }
            if (file.Position != file.Length)
                throw new FormatException($"{file.Length - file.Position} bytes follow the last of its {count} entries");
            return result;
        }
        catch
        {
            foreach (var tensor in result.Values)
                tensor.Dispose();
            throw;
        }
    }

    private static long ElementSize(ScalarType type, string key) => type switch
    {
        ScalarType.Byte or ScalarType.Int8 or ScalarType.Bool => 1,
        ScalarType.Int16 or ScalarType.Float16 or ScalarType.BFloat16 => 2,
        ScalarType.Int32 or ScalarType.Float32 => 4,
        ScalarType.Int64 or ScalarType.Float64 or ScalarType.ComplexFloat32 => 8,
        ScalarType.ComplexFloat64 => 16,
        _ => throw new FormatException($"entry '{key}' has an unknown element type ({(int)type})"),
    };

    private static long ReadLeb128(BinaryReader reader)
    {
        long value = 0;
        for (int shift = 0; shift < 64; shift += 7)
        {
            byte b = reader.ReadByte();
            value |= (long)(b & 0x7f) << shift;
            if ((b & 0x80) == 0)
                return value;
        }
        throw new FormatException("a length field is longer than 64 bits");
    }

    private static string Describe(StateDictFormat format) => format switch
    {
        StateDictFormat.PyTorch => "a PyTorch state dict (zip)",
        StateDictFormat.Safetensors => "safetensors",
        _ => "a TorchSharp state dict (neither a PyTorch zip nor safetensors)",
    };

    // PyBridge reports a pickled whole module or an unknown pickle as NotImplementedException or InvalidCastException.
    private static string Cause(Exception e) => e switch
    {
        InvalidCastException => "the pickle is not a dictionary of tensors; save the state dict: torch.save(model.state_dict(), path).",
        EndOfStreamException => "the file ends early (truncated?).",
        _ => e.Message.TrimEnd('.') + ".",
    };
}
