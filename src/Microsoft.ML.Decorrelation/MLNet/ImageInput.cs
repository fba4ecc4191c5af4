using Microsoft.ML.Data;
using Microsoft.ML.Transforms.Image;

namespace Microsoft.ML.Decorrelation;

/// <summary>The kinds of feature column the trainer reads.</summary>
internal enum ImageInputKind
{
    /// <summary>A known-size float vector of pixels in (channel, row, column) order, as ExtractPixels writes by default.</summary>
    PixelVector = 0,

    /// <summary>An <see cref="MLImage"/> column, as LoadImages writes.</summary>
    Image = 1,

    /// <summary>A byte vector holding an encoded image (PNG, JPEG, ...), as LoadRawImageBytes writes.</summary>
    EncodedImage = 2,
}

/// <summary>(channels, height, width) of the images a network takes.</summary>
internal readonly record struct ImageShape(int Channels, int Height, int Width)
{
    public int Size => checked(Channels * Height * Width);

    public override string ToString() => $"{Channels}×{Height}×{Width}";
}

/// <summary>
/// Reads images from a feature column as float pixels in (channel, row, column) order. Pixel vectors are
/// taken as they are; images and encoded images become values in [0, 255], R, G, B planes for 3 channels,
/// luminance (0.299 R + 0.587 G + 0.114 B) for 1 channel.
/// </summary>
internal sealed class ImageInput
{
    private ImageInput(string columnName, ImageInputKind kind, ImageShape shape)
    {
        ColumnName = columnName;
        Kind = kind;
        Shape = shape;
    }

    public string ColumnName { get; }

    public ImageInputKind Kind { get; }

    public ImageShape Shape { get; }

    /// <summary>The kind of <paramref name="type"/>, or an exception naming the column and its type.</summary>
    public static ImageInputKind KindOf(string columnName, DataViewType type) => type switch
    {
        VectorDataViewType { ItemType: NumberDataViewType number } vector when number.RawType == typeof(float) && vector.IsKnownSize => ImageInputKind.PixelVector,
        VectorDataViewType { ItemType: NumberDataViewType number } when number.RawType == typeof(float)
            => throw new ArgumentOutOfRangeException(nameof(columnName), $"Feature column '{columnName}' is a float vector of unknown size; image pixels need a known size (ExtractPixels writes one)."),
        ImageDataViewType => ImageInputKind.Image,
        VectorDataViewType { ItemType: NumberDataViewType number } when number.RawType == typeof(byte) => ImageInputKind.EncodedImage,
        _ => throw new ArgumentOutOfRangeException(nameof(columnName),
            $"Feature column '{columnName}' has type {type}; expected a known-size float vector (ExtractPixels), an image (LoadImages) or encoded image bytes (LoadRawImageBytes)."),
    };

    /// <summary>The same check on a schema shape column, for <c>GetOutputSchema</c> of the estimator.</summary>
    public static void CheckShape(SchemaShape.Column column)
    {
        bool ok = column.ItemType switch
        {
            NumberDataViewType number when number.RawType == typeof(float) => column.Kind == SchemaShape.Column.VectorKind.Vector,
            NumberDataViewType number when number.RawType == typeof(byte) => column.Kind != SchemaShape.Column.VectorKind.Scalar,
            ImageDataViewType => column.Kind == SchemaShape.Column.VectorKind.Scalar,
            _ => false,
        };
        if (!ok)
            throw new ArgumentOutOfRangeException(nameof(column),
                $"Feature column '{column.Name}' has type {column.ItemType} ({column.Kind}); expected a known-size float vector (ExtractPixels), an image (LoadImages) or encoded image bytes (LoadRawImageBytes).");
    }

    /// <summary>
    /// Decides how to read <paramref name="column"/> of <paramref name="data"/> and the image shape: from the
    /// vector's dimensions, from the given sizes (0 = not given), or from the first image.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">The column cannot hold images or the sizes do not fit it.</exception>
    public static ImageInput Create(IDataView data, DataViewSchema.Column column, int channels, int height, int width)
    {
        var kind = KindOf(column.Name, column.Type);
        if (kind == ImageInputKind.PixelVector)
            return new ImageInput(column.Name, kind, ShapeOfVector(column, channels, height, width));
        if (channels is not (0 or 1 or 3))
            throw new ArgumentOutOfRangeException(nameof(channels), channels, $"Images of column '{column.Name}' can be read with 1 (grayscale) or 3 (RGB) channels.");
        if (height == 0 || width == 0)
        {
            var first = FirstImageSize(data, column, kind);
            height = height == 0 ? first.Height : height;
            width = width == 0 ? first.Width : width;
        }
        return new ImageInput(column.Name, kind, new ImageShape(channels == 0 ? 3 : channels, height, width));
    }

    /// <summary>Recreates a reader from saved settings.</summary>
    public static ImageInput Restore(string columnName, ImageInputKind kind, ImageShape shape) => new(columnName, kind, shape);

    /// <summary>Checks that <paramref name="schema"/> holds the column in the form this input reads.</summary>
    /// <exception cref="ArgumentOutOfRangeException">The column is missing or has another type or size.</exception>
    public DataViewSchema.Column FindColumn(DataViewSchema schema)
    {
        var column = schema.GetColumnOrNull(ColumnName)
            ?? throw new ArgumentOutOfRangeException(nameof(schema), $"Feature column '{ColumnName}' was not found in the input.");
        var kind = KindOf(ColumnName, column.Type);
        if (kind != Kind)
            throw new ArgumentOutOfRangeException(nameof(schema), $"Feature column '{ColumnName}' has type {column.Type}, but the model was trained on {Describe(Kind)}.");
        if (kind == ImageInputKind.PixelVector && column.Type.GetValueCount() != Shape.Size)
            throw new ArgumentOutOfRangeException(nameof(schema),
                $"Feature column '{ColumnName}' holds {column.Type.GetValueCount()} values per row; the model takes {Shape} = {Shape.Size} pixels.");
        return column;
    }

    /// <summary>
    /// Returns a function that writes the current row's pixels of <paramref name="row"/> into a span of
    /// <see cref="ImageShape.Size"/> floats.
    /// </summary>
    /// <remarks>
    /// A pixel that is NaN or infinite fails the read with an <see cref="InvalidDataException"/> naming the column
    /// and row: training on it would poison the network, and scoring it would return meaningless probabilities.
    /// </remarks>
    public Action<Span<float>> CreateReader(DataViewRow row)
    {
        var read = CreateRawReader(row);
        return destination =>
        {
            read(destination);
            int bad = IndexOfNonFinite(destination);
            if (bad >= 0)
                throw new InvalidDataException($"Feature column '{ColumnName}', row {row.Position}: pixel {bad} is {destination[bad]}; images must hold finite values.");
        };
    }

    private static int IndexOfNonFinite(ReadOnlySpan<float> values)
    {
        for (int i = 0; i < values.Length; i++)
        {
            if (!float.IsFinite(values[i]))
                return i;
        }
        return -1;
    }

    private Action<Span<float>> CreateRawReader(DataViewRow row)
    {
        var column = row.Schema[ColumnName];
        switch (Kind)
        {
            case ImageInputKind.PixelVector:
            {
                var getter = row.GetGetter<VBuffer<float>>(column);
                VBuffer<float> buffer = default;
                return destination =>
                {
                    getter(ref buffer);
                    buffer.CopyTo(destination);
                };
            }
            case ImageInputKind.Image:
            {
                var getter = row.GetGetter<MLImage>(column);
                MLImage image = null!;
                return destination =>
                {
                    getter(ref image);
                    if (image is null)
                        throw new InvalidOperationException($"Feature column '{ColumnName}' has no image in row {row.Position}.");
                    CopyPixels(image, destination, row.Position);
                };
            }
            default:
            {
                var getter = row.GetGetter<VBuffer<byte>>(column);
                VBuffer<byte> bytes = default;
                return destination =>
                {
                    getter(ref bytes);
                    using var image = Decode(ColumnName, bytes, row.Position);
                    CopyPixels(image, destination, row.Position);
                };
            }
        }
    }

    private static MLImage Decode(string columnName, VBuffer<byte> bytes, long position)
    {
        var dense = bytes.DenseValues().ToArray();
        try
        {
            return MLImage.CreateFromStream(new MemoryStream(dense, writable: false));
        }
        catch (Exception e) when (e is ArgumentException or InvalidOperationException or IOException or NotSupportedException)
        {
            throw new InvalidDataException($"Feature column '{columnName}', row {position}: the {dense.Length} bytes are not a decodable image.", e);
        }
    }

    private void CopyPixels(MLImage image, Span<float> destination, long position)
    {
        if (image.Height != Shape.Height || image.Width != Shape.Width)
            throw new InvalidOperationException(
                $"Feature column '{ColumnName}', row {position}: the image is {image.Width}×{image.Height} pixels, but {Shape.Width}×{Shape.Height} are expected. " +
                "Resize the images first (mlContext.Transforms.ResizeImages) or set ImageHeight and ImageWidth.");
        var pixels = image.Pixels;
        bool bgra = image.PixelFormat == MLPixelFormat.Bgra32;
        int red = bgra ? 2 : 0, blue = bgra ? 0 : 2, plane = Shape.Height * Shape.Width;
        for (int i = 0; i < plane; i++)
        {
            float r = pixels[4 * i + red], g = pixels[4 * i + 1], b = pixels[4 * i + blue];
            if (Shape.Channels == 1)
            {
                destination[i] = 0.299f * r + 0.587f * g + 0.114f * b;
            }
            else
            {
                destination[i] = r;
                destination[plane + i] = g;
                destination[2 * plane + i] = b;
            }
        }
    }

    private static ImageShape ShapeOfVector(DataViewSchema.Column column, int channels, int height, int width)
    {
        var vector = (VectorDataViewType)column.Type;
        int size = vector.Size;
        ImageShape shape;
        if (channels > 0 && height > 0 && width > 0)
            shape = new ImageShape(channels, height, width);
        else if (vector.Dimensions.Length == 3)
            shape = new ImageShape(vector.Dimensions[0], vector.Dimensions[1], vector.Dimensions[2]);
        else if (channels is 0 or 1 && IsSquare(size))
            shape = new ImageShape(1, (int)Math.Sqrt(size), (int)Math.Sqrt(size));
        else if (channels is 0 or 3 && size % 3 == 0 && IsSquare(size / 3))
            shape = new ImageShape(3, (int)Math.Sqrt(size / 3), (int)Math.Sqrt(size / 3));
        else
            throw new ArgumentOutOfRangeException(nameof(column),
                $"Feature column '{column.Name}' holds {size} values without image dimensions; set ImageChannels, ImageHeight and ImageWidth.");
        if (shape.Size != size)
            throw new ArgumentOutOfRangeException(nameof(column),
                $"Feature column '{column.Name}' holds {size} values per row, but ImageChannels × ImageHeight × ImageWidth = {shape} = {shape.Size}.");
        return shape;
    }

    private static bool IsSquare(int n)
    {
        int root = (int)Math.Round(Math.Sqrt(n));
        return n > 0 && root * root == n;
    }

    private static (int Height, int Width) FirstImageSize(IDataView data, DataViewSchema.Column column, ImageInputKind kind)
    {
        using var cursor = data.GetRowCursor([column]);
        if (!cursor.MoveNext())
            throw new ArgumentException($"The training data has no rows, so the size of the images in '{column.Name}' is unknown.", nameof(data));
        if (kind == ImageInputKind.Image)
        {
            MLImage image = null!;
            cursor.GetGetter<MLImage>(column)(ref image);
            return image is null
                ? throw new InvalidOperationException($"Feature column '{column.Name}' has no image in row 0.")
                : (image.Height, image.Width);
        }
        VBuffer<byte> bytes = default;
        cursor.GetGetter<VBuffer<byte>>(column)(ref bytes);
        using var decoded = Decode(column.Name, bytes, 0);
        return (decoded.Height, decoded.Width);
    }

    private static string Describe(ImageInputKind kind) => kind switch
    {
        ImageInputKind.PixelVector => "a float pixel vector",
        ImageInputKind.Image => "images",
        _ => "encoded image bytes",
    };
}
