using Microsoft.ML.Decorrelation.Torch.Data;

namespace Microsoft.ML.Decorrelation.Samples;

/// <summary>Finds and loads the Fashion-MNIST IDX files.</summary>
internal static class FashionMnistFiles
{
    /// <summary>Where the Debian package dataset-fashion-mnist installs the files.</summary>
    public const string DebianFolder = "/usr/share/datasets/fashion-mnist";

    /// <summary>The folder to read: <paramref name="requested"/> when given, else the Debian one.</summary>
    /// <exception cref="DirectoryNotFoundException">No folder holds the four files; the message says how to get them.</exception>
    public static string Locate(string? requested)
    {
        foreach (var folder in requested is null ? new[] { DebianFolder } : new[] { requested })
        {
            if (File.Exists(Path.Combine(folder, "train-images-idx3-ubyte.gz")) || File.Exists(Path.Combine(folder, "train-images-idx3-ubyte")))
                return folder;
        }
        throw new DirectoryNotFoundException(requested is null
            ? $"Fashion-MNIST was not found in {DebianFolder}. Install it with 'sudo apt-get install dataset-fashion-mnist' or pass --data DIR."
            : $"'{requested}' does not hold the Fashion-MNIST IDX files (train-images-idx3-ubyte[.gz], ...).");
    }

    /// <summary>Loads the training or test split from <paramref name="folder"/>, standardisation not applied.</summary>
    public static ImageDataset Load(string folder, bool train, int? limit = null)
    {
        string prefix = train ? "train" : "t10k";
        string File(string kind)
        {
            var plain = Path.Combine(folder, $"{prefix}-{kind}");
            return System.IO.File.Exists(plain + ".gz") ? plain + ".gz" : plain;
        }
        return ImageDataset.FromIdx(File("images-idx3-ubyte"), File("labels-idx1-ubyte"), limit: limit);
    }
}
