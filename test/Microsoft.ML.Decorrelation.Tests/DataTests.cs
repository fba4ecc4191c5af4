using System.IO.Compression;
using Microsoft.ML.Decorrelation.Torch.Data;
using Microsoft.VisualStudio.TestTools.UnitTesting;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Decorrelation.Tests;

[TestClass]
public class DataTests : TempFolderTest
{
    private static byte[] Idx(byte type, int[] dimensions, byte[] data)
    {
        var bytes = new List<byte> { 0, 0, type, (byte)dimensions.Length };
        foreach (var d in dimensions)
            bytes.AddRange(new[] { (byte)(d >> 24), (byte)(d >> 16), (byte)(d >> 8), (byte)d });
        bytes.AddRange(data);
        return bytes.ToArray();
    }

    private string Write(string name, byte[] content, bool gzip)
    {
        var path = Path.Combine(TempFolder, name);
        if (gzip)
        {
            using var file = File.Create(path);
            using var zip = new GZipStream(file, CompressionLevel.Fastest);
            zip.Write(content);
        }
        else
        {
            File.WriteAllBytes(path, content);
        }
        return path;
    }

    [TestMethod]
    [DataRow(false)]
    [DataRow(true)]
    public void ReadsPlainAndGzippedIdx(bool gzip)
    {
        var data = Enumerable.Range(0, 2 * 3 * 4).Select(i => (byte)(i * 10)).ToArray();
        var array = IdxReader.Read(Write("images", Idx(0x08, [2, 3, 4], data), gzip));
        CollectionAssert.AreEqual(new[] { 2, 3, 4 }, array.Dimensions);
        CollectionAssert.AreEqual(data, array.Data);
    }

    [TestMethod]
    public void TruncatedFileIsRejectedWithItsPath()
    {
        var path = Write("short", Idx(0x08, [10, 5], new byte[20]), gzip: false);
        var error = Assert.ThrowsExactly<InvalidDataException>(() => IdxReader.Read(path));
        StringAssert.Contains(error.Message, path);
        StringAssert.Contains(error.Message, "ends inside its data");
    }

    [TestMethod]
    public void NonByteElementTypeIsRejected()
    {
        var path = Write("floats", Idx(0x0D, [1], new byte[4]), gzip: false);
        StringAssert.Contains(Assert.ThrowsExactly<InvalidDataException>(() => IdxReader.Read(path)).Message, "0x0d");
    }

    [TestMethod]
    public void LoadsImagesScaledToUnitRangeWithLabels()
    {
        var pixels = new byte[] { 0, 255, 51, 102, 0, 0, 0, 255 };
        var images = Write("img.gz", Idx(0x08, [2, 2, 2], pixels), gzip: true);
        var labels = Write("lbl", Idx(0x08, [2], [7, 3]), gzip: false);
        using var dataset = ImageDataset.FromIdx(images, labels);
        Assert.AreEqual(2L, dataset.Count);
        Assert.AreEqual((1L, 2L, 2L), dataset.ImageShape);
        CollectionAssert.AreEqual(new long[] { 7, 3 }, dataset.Labels.data<long>().ToArray());
        CollectionAssert.AreEqual(new[] { 0f, 1f, 0.2f, 0.4f, 0f, 0f, 0f, 1f }, dataset.Images.data<float>().ToArray());

        var (mean, deviation) = dataset.ChannelStatistics();
        Assert.AreEqual(pixels.Average(p => p / 255.0), mean[0], 1e-6);
        dataset.Normalize(mean, deviation);
        Assert.AreEqual(0.0, dataset.Images.mean().item<float>(), 1e-6);
        Assert.AreEqual(1.0, dataset.Images.std().item<float>(), 1e-5);
    }

    [TestMethod]
    public void LabelsOutsideTheClassesAreRejected()
    {
        var images = Write("img", Idx(0x08, [1, 2, 2], new byte[4]), gzip: false);
        var labels = Write("lbl", Idx(0x08, [1], [12]), gzip: false);
        StringAssert.Contains(Assert.ThrowsExactly<InvalidDataException>(() => ImageDataset.FromIdx(images, labels)).Message, "label 12");
    }

    [TestMethod]
    public void MismatchedLabelCountIsRejected()
    {
        var images = Write("img", Idx(0x08, [3, 2, 2], new byte[12]), gzip: false);
        var labels = Write("lbl", Idx(0x08, [2], [1, 2]), gzip: false);
        StringAssert.Contains(Assert.ThrowsExactly<InvalidDataException>(() => ImageDataset.FromIdx(images, labels)).Message, "one label per image");
    }
}
