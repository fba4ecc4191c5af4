using Microsoft.ML.Data;
using Microsoft.ML.Decorrelation.Torch.Data;

namespace Microsoft.ML.Decorrelation.Tests;

/// <summary>Fashion-MNIST rows as ML.NET sees them.</summary>
internal static class MLNetData
{
    public static readonly string[] ClassNames =
        ["T-shirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Boot"];

    public sealed class PixelRow
    {
        public string Label { get; set; } = "";

        [VectorType(1, 28, 28)]
        public float[] Features { get; set; } = [];
    }

    public sealed class PathRow
    {
        public string Label { get; set; } = "";

        public string ImagePath { get; set; } = "";
    }

    /// <summary>Rows of raw bytes (0–255) and class indices from the Debian Fashion-MNIST.</summary>
    public static (byte[][] Pixels, int[] Labels) Load(bool train, int count, int skip = 0)
    {
        using var data = FashionMnist.Load(train, skip + count);
        var pixels = data.Images.mul(255).round().to(TorchSharp.torch.ScalarType.Byte).data<byte>().ToArray();
        var labels = data.Labels.data<long>().ToArray();
        return (Enumerable.Range(skip, count).Select(i => pixels.AsSpan(i * 784, 784).ToArray()).ToArray(),
                Enumerable.Range(skip, count).Select(i => (int)labels[i]).ToArray());
    }

    public static IEnumerable<PixelRow> PixelRows(bool train, int count, int skip = 0)
    {
        var (pixels, labels) = Load(train, count, skip);
        return pixels.Select((p, i) => new PixelRow { Label = ClassNames[labels[i]], Features = p.Select(b => (float)b).ToArray() }).ToArray();
    }

    /// <summary>Writes the images as PNG files (RGBA, gray) into <paramref name="folder"/>.</summary>
    public static PathRow[] WritePngs(string folder, bool train, int count, int skip = 0)
    {
        var (pixels, labels) = Load(train, count, skip);
        var rows = new PathRow[count];
        for (int i = 0; i < count; i++)
        {
            var rgba = new byte[28 * 28 * 4];
            for (int p = 0; p < 784; p++)
            {
                rgba[4 * p] = rgba[4 * p + 1] = rgba[4 * p + 2] = pixels[i][p];
                rgba[4 * p + 3] = 255;
            }
            string name = $"{(train ? "train" : "test")}-{skip + i}.png";
            using (var image = MLImage.CreateFromPixels(28, 28, MLPixelFormat.Rgba32, rgba))
                image.Save(Path.Combine(folder, name));
            rows[i] = new PathRow { Label = ClassNames[labels[i]], ImagePath = name };
        }
        return rows;
    }
}
