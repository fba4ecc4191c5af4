using Microsoft.ML.Decorrelation.Torch.Data;

namespace Microsoft.ML.Decorrelation.Tests;

/// <summary>
/// The Fashion-MNIST subset shipped in the repository (10,000 training and 2,000 test images), copied
/// next to the test assembly: the tests need no download and no installed package.
/// </summary>
internal static class FashionMnist
{
    public static readonly string Folder = Path.Combine(AppContext.BaseDirectory, "Data", "fashion-mnist-subset");

    public static ImageDataset Load(bool train, int limit)
    {
        string prefix = train ? "train" : "t10k";
        return ImageDataset.FromIdx(Path.Combine(Folder, $"{prefix}-images-idx3-ubyte.gz"), Path.Combine(Folder, $"{prefix}-labels-idx1-ubyte.gz"), limit: limit);
    }
}
