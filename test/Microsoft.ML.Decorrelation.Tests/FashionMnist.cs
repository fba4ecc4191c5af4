using Microsoft.ML.Decorrelation.Torch.Data;
using Microsoft.VisualStudio.TestTools.UnitTesting;

namespace Microsoft.ML.Decorrelation.Tests;

/// <summary>The Fashion-MNIST files of the Debian package dataset-fashion-mnist (installed by .ci/run).</summary>
internal static class FashionMnist
{
    public const string Folder = "/usr/share/datasets/fashion-mnist";

    public static ImageDataset Load(bool train, int limit)
    {
        string prefix = train ? "train" : "t10k";
        string images = Path.Combine(Folder, $"{prefix}-images-idx3-ubyte.gz");
        if (!File.Exists(images))
            Assert.Fail($"{images} is missing: install the Debian package dataset-fashion-mnist (.ci/run does).");
        return ImageDataset.FromIdx(images, Path.Combine(Folder, $"{prefix}-labels-idx1-ubyte.gz"), limit: limit);
    }
}
