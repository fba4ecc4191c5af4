using Microsoft.ML.Decorrelation.Torch.Data;
using Microsoft.ML.Decorrelation.Torch.Training;
using Microsoft.VisualStudio.TestTools.UnitTesting;
using static TorchSharp.torch;

namespace Microsoft.ML.Decorrelation.Tests;

[TestClass]
public class AugmentationTests
{
    /// <summary>Pixel (b, c, y, x) of the augmented batch, computed with plain loops from the draws.</summary>
    private static float Expected(float[] source, long channels, long height, long width, int padding,
        (int[] Top, int[] Left, bool[] Flip) draws, int b, int c, int y, int x)
    {
        int column = draws.Flip[b] ? (int)width - 1 - x : x;
        // The window starts at (top, left) of the padded image; replicated borders clamp to the edge pixel.
        int sourceY = Math.Clamp(y + draws.Top[b] - padding, 0, (int)height - 1);
        int sourceX = Math.Clamp(column + draws.Left[b] - padding, 0, (int)width - 1);
        return source[((b * channels + c) * height + sourceY) * width + sourceX];
    }

    [TestMethod]
    [DataRow(2, false)]
    [DataRow(3, true)]
    [DataRow(0, true)]
    public void EachImageIsShiftedAndFlippedByItsOwnDraw(int padding, bool flip)
    {
        using var scope = NewDisposeScope();
        const int count = 16, channels = 2, height = 7, width = 5;
        var images = rand(count, channels, height, width, generator: new TorchSharp.torch.Generator(3));
        var augmentation = new ImageAugmentation(padding, flip, seed: 11);

        var augmented = augmentation.Apply(images, epoch: 2, batch: 4);

        CollectionAssert.AreEqual(images.shape, augmented.shape);
        var draws = augmentation.Draw(count, epoch: 2, batch: 4);
        var source = images.data<float>().ToArray();
        var actual = augmented.data<float>().ToArray();
        for (int b = 0; b < count; b++)
            for (int c = 0; c < channels; c++)
                for (int y = 0; y < height; y++)
                    for (int x = 0; x < width; x++)
                        Assert.AreEqual(Expected(source, channels, height, width, padding, draws, b, c, y, x), actual[((b * channels + c) * height + y) * width + x], $"image {b}, pixel ({c}, {y}, {x})");
    }

    [TestMethod]
    public void DrawsCoverTheRangeAndDependOnlyOnSeedEpochAndBatch()
    {
        var augmentation = new ImageAugmentation(2, horizontalFlip: true, seed: 5);
        var draws = augmentation.Draw(4000, epoch: 1, batch: 0);

        CollectionAssert.AreEquivalent(new[] { 0, 1, 2, 3, 4 }, draws.Top.Distinct().ToArray());
        CollectionAssert.AreEquivalent(new[] { 0, 1, 2, 3, 4 }, draws.Left.Distinct().ToArray());
        double flipped = draws.Flip.Count(f => f) / 4000.0;
        Assert.IsTrue(flipped is > 0.45 and < 0.55, $"{flipped:P1} flipped");

        var again = new ImageAugmentation(2, horizontalFlip: true, seed: 5).Draw(4000, epoch: 1, batch: 0);
        CollectionAssert.AreEqual(draws.Top, again.Top);
        CollectionAssert.AreEqual(draws.Flip, again.Flip);
        CollectionAssert.AreNotEqual(draws.Top, augmentation.Draw(4000, epoch: 1, batch: 1).Top);
        CollectionAssert.AreNotEqual(draws.Top, augmentation.Draw(4000, epoch: 2, batch: 0).Top);
        CollectionAssert.AreNotEqual(draws.Top, new ImageAugmentation(2, true, seed: 6).Draw(4000, epoch: 1, batch: 0).Top);
        Assert.IsFalse(new ImageAugmentation(2, horizontalFlip: false, seed: 5).Draw(100, 1, 0).Flip.Any(f => f));
    }

    [TestMethod]
    public void NoAugmentationReturnsTheBatchItself()
    {
        using var images = ones(2, 1, 4, 4);
        var augmentation = new TrainingOptions().CreateAugmentation();

        Assert.IsTrue(augmentation.IsIdentity);
        Assert.AreSame(images, augmentation.Apply(images, 1, 0));
    }

    [TestMethod]
    public void BadArgumentsAreNamed()
    {
        var e = Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => new TrainingOptions { RandomCropPadding = -1 }.Validate());
        Assert.AreEqual("RandomCropPadding", e.ParamName);
        using var flat = ones(4, 4);
        StringAssert.Contains(Assert.ThrowsExactly<ArgumentException>(() => new ImageAugmentation(1, false, 0).Apply(flat, 1, 0)).Message, "(B, C, H, W)");
    }
}
