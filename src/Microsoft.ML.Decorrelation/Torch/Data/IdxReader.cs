using System.Buffers.Binary;
using System.IO.Compression;

namespace Microsoft.ML.Decorrelation.Torch.Data;

/// <summary>An IDX array (the MNIST file format): its dimensions and its bytes, row-major.</summary>
/// <param name="Dimensions">The size of each dimension, outermost first.</param>
/// <param name="Data">Every element, row-major.</param>
public sealed record IdxArray(int[] Dimensions, byte[] Data);

/// <summary>
/// Reads IDX files of unsigned bytes (MNIST, Fashion-MNIST), plain or gzip-compressed (detected from the
/// content, not the file name).
/// </summary>
public static class IdxReader
{
    private const byte UnsignedByteType = 0x08;

    /// <summary>Reads the IDX file at <paramref name="path"/>.</summary>
    /// <exception cref="InvalidDataException">The file is not an unsigned-byte IDX file or is truncated.</exception>
    public static IdxArray Read(string path)
    {
        using var file = File.OpenRead(path);
        try
        {
            return Read(file);
        }
        catch (InvalidDataException e)
        {
            throw new InvalidDataException($"'{path}' is not a valid IDX file: {e.Message}", e);
        }
    }

    /// <summary>Reads an IDX array from <paramref name="stream"/>, gzip-compressed or not.</summary>
    /// <exception cref="InvalidDataException">The content is not an unsigned-byte IDX array or is truncated.</exception>
    public static IdxArray Read(Stream stream)
    {
        var buffered = new BufferedStream(stream);
        Span<byte> magic = stackalloc byte[2];
        int peeked = buffered.Read(magic);
        // Re-read from the start: wrap the peeked bytes in front of the rest.
        Stream content = new ConcatenatedStream(magic[..peeked].ToArray(), buffered);
        if (peeked == 2 && magic[0] == 0x1f && magic[1] == 0x8b)
            content = new GZipStream(content, CompressionMode.Decompress);

        Span<byte> header = stackalloc byte[4];
        ReadExactly(content, header, "header");
        if (header[0] != 0 || header[1] != 0)
            throw new InvalidDataException("the magic number does not start with two zero bytes.");
        if (header[2] != UnsignedByteType)
            throw new InvalidDataException($"element type 0x{header[2]:x2} is not supported; only unsigned bytes (0x08) are.");
        int rank = header[3];
        if (rank == 0)
            throw new InvalidDataException("the array has no dimensions.");
        var dimensions = new int[rank];
        Span<byte> size = stackalloc byte[4];
        long total = 1;
        for (int i = 0; i < rank; i++)
        {
            ReadExactly(content, size, "dimensions");
            dimensions[i] = BinaryPrimitives.ReadInt32BigEndian(size);
            if (dimensions[i] < 0)
                throw new InvalidDataException($"dimension {i} is negative ({dimensions[i]}).");
            total *= dimensions[i];
        }
        if (total > Array.MaxLength)
            throw new InvalidDataException($"the array has {total} elements, more than one buffer can hold.");
        var data = new byte[total];
        ReadExactly(content, data, "data");
        return new IdxArray(dimensions, data);
    }

    private static void ReadExactly(Stream stream, Span<byte> buffer, string part)
    {
        try
        {
            stream.ReadExactly(buffer);
        }
        catch (EndOfStreamException e)
        {
            throw new InvalidDataException($"the file ends inside its {part}.", e);
        }
    }

    /// <summary>A read-only stream of a few bytes followed by another stream.</summary>
    private sealed class ConcatenatedStream(byte[] head, Stream tail) : Stream
    {
        private int _position;

        public override bool CanRead => true;
        public override bool CanSeek => false;
        public override bool CanWrite => false;
        public override long Length => throw new NotSupportedException();
        public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }
        public override void Flush() { }
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
        public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();

        public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));

        public override int Read(Span<byte> buffer)
        {
            if (_position < head.Length)
            {
                int n = Math.Min(buffer.Length, head.Length - _position);
                head.AsSpan(_position, n).CopyTo(buffer);
                _position += n;
                return n;
            }
            return tail.Read(buffer);
        }
    }
}
