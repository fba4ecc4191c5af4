using System.Buffers.Binary;
using System.IO.Compression;

namespace Microsoft.ML.Decorrelation.Samples;

/// <summary>
/// A small raster canvas that draws lines, rectangles and text (a built-in 5×7 pixel font) and writes PNG
/// files. The report's charts use it instead of a charting package: the ones available bring SkiaSharp 3,
/// which breaks ML.NET's image transforms (built on SkiaSharp 2) in the same process, and need system fonts.
/// </summary>
internal sealed class PngCanvas
{
    private readonly byte[] _rgba;

    public PngCanvas(int width, int height, uint background = 0xFFFFFFFF)
    {
        Width = width;
        Height = height;
        _rgba = new byte[width * height * 4];
        FillRectangle(0, 0, width, height, background);
    }

    public int Width { get; }

    public int Height { get; }

    /// <summary>Sets one pixel; colors are 0xRRGGBBAA. Pixels outside the canvas are ignored.</summary>
    public void SetPixel(int x, int y, uint color)
    {
        if ((uint)x >= (uint)Width || (uint)y >= (uint)Height)
            return;
        int i = 4 * (y * Width + x);
        _rgba[i] = (byte)(color >> 24);
        _rgba[i + 1] = (byte)(color >> 16);
        _rgba[i + 2] = (byte)(color >> 8);
        _rgba[i + 3] = (byte)color;
    }

    public void FillRectangle(int x, int y, int width, int height, uint color)
    {
        for (int row = y; row < y + height; row++)
            for (int column = x; column < x + width; column++)
                SetPixel(column, row, color);
    }

    /// <summary>A line of the given thickness (a square brush stepped along the line).</summary>
    public void DrawLine(double x0, double y0, double x1, double y1, uint color, int thickness = 1)
    {
        int steps = (int)Math.Ceiling(Math.Max(Math.Abs(x1 - x0), Math.Abs(y1 - y0))) + 1;
        int half = thickness / 2;
        for (int s = 0; s <= steps; s++)
        {
            double t = (double)s / steps;
            int x = (int)Math.Round(x0 + t * (x1 - x0)), y = (int)Math.Round(y0 + t * (y1 - y0));
            FillRectangle(x - half, y - half, thickness, thickness, color);
        }
    }

    /// <summary>Text in the built-in font, <paramref name="scale"/> canvas pixels per font pixel; lower case is drawn as upper case.</summary>
    public void DrawText(int x, int y, string text, uint color, int scale = 2)
    {
        foreach (char c in text.ToUpperInvariant())
        {
            if (PixelFont.Glyphs.TryGetValue(c, out var rows))
            {
                for (int row = 0; row < rows.Length; row++)
                    for (int column = 0; column < 5; column++)
                        if (rows[row][column] == '#')
                            FillRectangle(x + column * scale, y + row * scale, scale, scale, color);
            }
            x += 6 * scale;
        }
    }

    /// <summary>Width in canvas pixels of <paramref name="text"/> at <paramref name="scale"/>.</summary>
    public static int TextWidth(string text, int scale = 2) => text.Length * 6 * scale - scale;

    /// <summary>Writes the canvas as an 8-bit RGBA PNG file.</summary>
    public void Save(string path)
    {
        using var file = File.Create(path);
        file.Write([0x89, (byte)'P', (byte)'N', (byte)'G', 0x0D, 0x0A, 0x1A, 0x0A]);
        var header = new byte[13];
        BinaryPrimitives.WriteInt32BigEndian(header, Width);
        BinaryPrimitives.WriteInt32BigEndian(header.AsSpan(4), Height);
        header[8] = 8;   // bits per channel
        header[9] = 6;   // RGBA
        WriteChunk(file, "IHDR", header);
        using var compressed = new MemoryStream();
        using (var zlib = new ZLibStream(compressed, CompressionLevel.Optimal, leaveOpen: true))
        {
            for (int y = 0; y < Height; y++)
            {
                zlib.WriteByte(0);   // no filter
                zlib.Write(_rgba, y * Width * 4, Width * 4);
            }
        }
        WriteChunk(file, "IDAT", compressed.ToArray());
        WriteChunk(file, "IEND", []);
    }

    private static void WriteChunk(Stream stream, string type, byte[] data)
    {
        Span<byte> word = stackalloc byte[4];
        BinaryPrimitives.WriteInt32BigEndian(word, data.Length);
        stream.Write(word);
        var typeAndData = new byte[4 + data.Length];
        for (int i = 0; i < 4; i++)
            typeAndData[i] = (byte)type[i];
        data.CopyTo(typeAndData, 4);
        stream.Write(typeAndData);
        BinaryPrimitives.WriteUInt32BigEndian(word, Crc32(typeAndData));
        stream.Write(word);
    }

    private static uint Crc32(byte[] data)
    {
        uint crc = 0xFFFFFFFF;
        foreach (byte b in data)
        {
            crc ^= b;
            for (int k = 0; k < 8; k++)
                crc = (crc & 1) != 0 ? 0xEDB88320 ^ (crc >> 1) : crc >> 1;
        }
        return ~crc;
    }
}
