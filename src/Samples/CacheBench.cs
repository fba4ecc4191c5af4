using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using Microsoft.ML.Data;
using Microsoft.ML.Decorrelation.Torch.Architectures;
using Microsoft.ML.Decorrelation.Torch.Data;
using Microsoft.ML.Decorrelation.Torch.Training;
using Spectre.Console;
using static TorchSharp.torch;

namespace Microsoft.ML.Decorrelation.Samples;

/// <summary>
/// Measures the streaming image cache (docs/performance.md, "Data larger than memory"): <c>cache-bench memory</c> trains on synthetic
/// RGB sets of growing size, each in a child process, and reports the peak anonymous resident memory (RssAnon: not the
/// cache's file-backed pages) against the image count; <c>cache-bench speed</c> trains the small CNN on Fashion-MNIST
/// from memory and from the cache in alternating runs and reports the median ratio of steps per second.
/// </summary>
internal static class CacheBench
{
    public static System.CommandLine.Command Create()
    {
        var command = new System.CommandLine.Command("cache-bench", "Memory and speed of training from the decoded image cache.");
        var counts = new Option<string>("--counts") { Description = "Comma-separated image counts of the memory runs.", DefaultValueFactory = _ => "10000,30000,100000" };
        var size = new Option<int>("--size") { Description = "Height and width of the synthetic RGB images.", DefaultValueFactory = _ => 64 };
        var steps = new Option<int>("--steps") { Description = "Training steps per memory run.", DefaultValueFactory = _ => 60 };
        var architecture = new Option<CnnArchitecture>("--arch") { Description = "Network of the memory runs.", DefaultValueFactory = _ => CnnArchitecture.SmallCnn };
        var memory = new System.CommandLine.Command("memory", "Peak RssAnon against the number of images (one child process per size).") { counts, size, steps, architecture };
        memory.SetAction(result => Memory(result.GetValue(counts)!, result.GetValue(size), result.GetValue(steps), result.GetValue(architecture)));
        var count = new Option<int>("--count") { Required = true };
        var child = new System.CommandLine.Command("memory-run", "One memory run (the child process of 'memory').") { Hidden = true };
        child.Options.Add(count);
        child.Options.Add(size);
        child.Options.Add(steps);
        child.Options.Add(architecture);
        child.SetAction(result => MemoryRun(result.GetValue(count), result.GetValue(size), result.GetValue(steps), result.GetValue(architecture)));
        var rounds = new Option<int>("--rounds") { Description = "Alternating pairs of one-epoch runs.", DefaultValueFactory = _ => 3 };
        var speed = new System.CommandLine.Command("speed", "Steps per second from memory and from the cache, alternating, on Fashion-MNIST.") { rounds };
        speed.SetAction(result => Speed(result.GetValue(rounds)));
        var decodeCount = new Option<int>("--count") { Description = "Images written and decoded.", DefaultValueFactory = _ => 20000 };
        var decode = new System.CommandLine.Command("decode", "Decoding pass over PNG and JPEG folders (images/s), then a second Fit that reuses the kept cache.") { decodeCount };
        decode.SetAction(result => Decode(result.GetValue(decodeCount)));
        command.Subcommands.Add(decode);
        command.Subcommands.Add(memory);
        command.Subcommands.Add(child);
        command.Subcommands.Add(speed);
        return command;
    }

    private static int Memory(string counts, int size, int steps, CnnArchitecture architecture)
    {
        var table = new Table().AddColumns("images", "cache on disk (MB)", "decoding to first step (images/s)", "peak RssAnon (MB)");
        var points = new List<(double Count, double Megabytes)>();
        foreach (int count in counts.Split(',').Select(c => int.Parse(c, CultureInfo.InvariantCulture)))
        {
            AnsiConsole.MarkupLine($"[grey]{count} images of 3×{size}×{size}, {architecture}, {steps} steps…[/]");
            var outcome = ChildProcessRunner.Run(typeof(CacheBench).Assembly.Location,
                ["cache-bench", "memory-run", "--count", count.ToString(CultureInfo.InvariantCulture), "--size", size.ToString(CultureInfo.InvariantCulture),
                 "--steps", steps.ToString(CultureInfo.InvariantCulture), "--arch", architecture.ToString()],
                null, TimeSpan.FromHours(1));
            if (outcome.ResultValues() is not { } values)
            {
                AnsiConsole.WriteLine($"run of {count} failed ({outcome.Describe()}):\n{outcome.Output}");
                return 1;
            }
            points.Add((count, values[2]));
            table.AddRow(count.ToString("N0", CultureInfo.InvariantCulture), values[0].ToString("F0", CultureInfo.InvariantCulture),
                values[1].ToString("F0", CultureInfo.InvariantCulture), values[2].ToString("F0", CultureInfo.InvariantCulture));
        }
        AnsiConsole.Write(table);
        double slope = (points[^1].Megabytes - points[0].Megabytes) / (points[^1].Count - points[0].Count) * 1000;
        AnsiConsole.WriteLine($"RssAnon grows by {slope:F2} MB per 1,000 images (the images themselves take {3.0 * size * size / 1000:F1} MB per 1,000 as bytes); peak {points.Max(p => p.Megabytes):F0} MB.");
        return 0;
    }

    private sealed class Row
    {
        public uint Label { get; set; }

        public float[] Features { get; set; } = [];
    }

    /// <summary>Synthetic 8-bit RGB images produced while the cursor reads them: the data never sits in memory.</summary>
    private static IEnumerable<Row> SyntheticImages(int count, int size)
    {
        var random = new Random(7);
        var pixels = new byte[3 * size * size];
        for (int i = 0; i < count; i++)
        {
            random.NextBytes(pixels);
            yield return new Row { Label = (uint)(i % 10) + 1, Features = pixels.Select(p => (float)p).ToArray() };
        }
    }

    private static int MemoryRun(int count, int size, int steps, CnnArchitecture architecture = CnnArchitecture.SmallCnn)
    {
        long peak = 0;
        using var sampling = new CancellationTokenSource();
        var sampler = Task.Run(async () =>
        {
            while (!sampling.IsCancellationRequested)
            {
                peak = Math.Max(peak, RssAnonKilobytes());
                await Task.Delay(50);
            }
        });
        var ml = new MLContext(seed: 1);
        var schema = SchemaDefinition.Create(typeof(Row));
        schema["Label"].ColumnType = new KeyDataViewType(typeof(uint), 10);
        schema["Features"].ColumnType = new VectorDataViewType(NumberDataViewType.Single, 3, size, size);
        var data = ml.Data.LoadFromEnumerable(SyntheticImages(count, size), schema);
        string cache = Path.Combine(Path.GetTempPath(), "dbp-cache-bench-" + Environment.ProcessId);
        var clock = Stopwatch.StartNew();
        double cachingSeconds = 0;
        var options = new DecorrelatedImageClassificationTrainer.Options
        {
            MaxEpoch = 1, BatchSize = architecture == CnnArchitecture.SmallCnn ? 64 : 16, CacheDirectory = cache, Architecture = architecture,
            ProgressCallback = p =>
            {
                if (cachingSeconds == 0)
                    cachingSeconds = clock.Elapsed.TotalSeconds;
                if (p.Batch >= steps)
                    throw new OperationCanceledException("enough steps");
            },
        };
        try
        {
            ml.MulticlassClassification.Trainers.DecorrelatedImageClassification(options).Fit(data).Dispose();
        }
        catch (OperationCanceledException)
        {
            // The measured number of steps is done.
        }
        sampling.Cancel();
        sampler.Wait();
        long diskBytes = new DirectoryInfo(cache).EnumerateFiles("*", SearchOption.AllDirectories).Sum(f => f.Length);
        Directory.Delete(cache, recursive: true);
        ChildProcessRunner.WriteResult([diskBytes / 1e6, count / cachingSeconds, peak / 1024.0]);
        return 0;
    }

    private static long RssAnonKilobytes()
    {
        foreach (var line in File.ReadLines("/proc/self/status"))
        {
            if (line.StartsWith("RssAnon:", StringComparison.Ordinal))
                return long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], CultureInfo.InvariantCulture);
        }
        return 0;
    }

    private static int Speed(int rounds)
    {
        var source = new FashionMnistSource().Locate(null);
        AnsiConsole.WriteLine($"Data: {source.Description}; CPU: {MachineInfo.CpuModel()}");
        using var memory = FashionMnistSource.Load(source, train: true);
        var pixels = memory.Images.mul(255).round_().data<float>().ToArray();
        int size = 784;
        string folder = Path.Combine(Path.GetTempPath(), "dbp-cache-speed-" + Environment.ProcessId);
        ImageCache cache;
        using (var writer = new ImageCacheWriter(folder, 1, 28, 28, 10))
        {
            var labels = memory.Labels.data<long>().ToArray();
            for (int i = 0; i < labels.Length; i++)
                writer.Append(pixels.AsSpan(i * size, size), (int)labels[i]);
            cache = writer.Complete(deleteOnDispose: true);
        }
        using (cache)
        using (var bytes = new ImageDataset(tensor(pixels, [pixels.Length / size, 1, 28, 28]), memory.Labels.clone(), 10))
        {
            var (mean, deviation) = cache.ChannelStatistics();
            bytes.Normalize(mean, deviation);
            cache.Standardize(mean, deviation);
            var options = new TrainingOptions { Epochs = 1, BatchSize = 128, Threads = 2, Seed = 1, Decorrelation = new() };
            double StepsPerSecond(IImageSource data)
            {
                using var network = NetworkTrainer.CreateNetwork(d => NetworkBuilder.SmallCnn(1, 28, 28, 10, d), options, decorrelated: true);
                var history = new NetworkTrainer(options).Train(network, data);
                return history[^1].Step / history[^1].TrainingSeconds;
            }
            var ratios = new List<double>();
            for (int round = 0; round < rounds; round++)
            {
                // Alternate which goes first, so that drift of the machine hits both alike.
                double fromMemory, fromCache;
                if (round % 2 == 0)
                {
                    fromMemory = StepsPerSecond(bytes);
                    fromCache = StepsPerSecond(cache);
                }
                else
                {
                    fromCache = StepsPerSecond(cache);
                    fromMemory = StepsPerSecond(bytes);
                }
                ratios.Add(fromCache / fromMemory);
                AnsiConsole.WriteLine(string.Create(CultureInfo.InvariantCulture, $"round {round + 1}: in memory {fromMemory:F2} steps/s, from the cache {fromCache:F2} steps/s, ratio {fromCache / fromMemory:F3}"));
            }
            ratios.Sort();
            AnsiConsole.WriteLine(string.Create(CultureInfo.InvariantCulture, $"median ratio (cache / memory) over {rounds} rounds: {ratios[ratios.Count / 2]:F3} (goal ≥ 0.95)"));
        }
        return 0;
    }

    private sealed class PathRow
    {
        public string ImagePath { get; set; } = "";

        public string Label { get; set; } = "";
    }

    /// <summary>Writes Fashion-MNIST images as RGB PNG and JPEG files, then times the decoding pass and its reuse.</summary>
    private static int Decode(int count)
    {
        var source = new FashionMnistSource().Locate(null);
        using var data = FashionMnistSource.Load(source, train: true, limit: count);
        var pixels = data.Images.mul(255).round_().to(ScalarType.Byte).data<byte>().ToArray();
        var labels = data.Labels.data<long>().ToArray();
        AnsiConsole.WriteLine($"CPU: {MachineInfo.CpuModel()}; {labels.Length} images of {source.Description}, written as 3×28×28 files");
        var table = new Table().AddColumns("format", "first Fit: decoding (images/s)", "first Fit to first step (s)", "second Fit, reusing (s)");
        foreach (var format in new[] { "png", "jpg" })
        {
            string folder = Path.Combine(Path.GetTempPath(), $"dbp-decode-bench-{Environment.ProcessId}-{format}");
            Directory.CreateDirectory(folder);
            try
            {
                var rows = new PathRow[labels.Length];
                var rgba = new byte[28 * 28 * 4];
                for (int i = 0; i < rows.Length; i++)
                {
                    for (int p = 0; p < 784; p++)
                    {
                        rgba[4 * p] = rgba[4 * p + 1] = rgba[4 * p + 2] = pixels[i * 784 + p];
                        rgba[4 * p + 3] = 255;
                    }
                    rows[i] = new PathRow { ImagePath = $"{i}.{format}", Label = labels[i].ToString(CultureInfo.InvariantCulture) };
                    using var image = MLImage.CreateFromPixels(28, 28, MLPixelFormat.Rgba32, rgba);
                    image.Save(Path.Combine(folder, rows[i].ImagePath));
                }
                var ml = new MLContext(seed: 1);
                var input = ml.Data.LoadFromEnumerable(rows);
                var keyed = ml.Transforms.Conversion.MapValueToKey("Label").Fit(input).Transform(input);
                double decodingRate = 0;
                (double ToFirstStep, double Rate) FitOnce()
                {
                    var clock = Stopwatch.StartNew();
                    double firstStep = 0;
                    var options = new DecorrelatedImageClassificationTrainer.Options
                    {
                        MaxEpoch = 1, CacheDirectory = Path.Combine(folder, "cache"),
                        DecodingProgressCallback = p => decodingRate = p.Images / Math.Max(p.Seconds, 1e-3),
                        ProgressCallback = _ =>
                        {
                            firstStep = clock.Elapsed.TotalSeconds;
                            throw new OperationCanceledException("timed up to the first step");
                        },
                    };
                    var pipeline = ml.Transforms.LoadImages("Image", folder, "ImagePath")
                        .Append(ml.Transforms.ResizeImages("Image", 28, 28))
                        .Append(ml.Transforms.ExtractPixels("Features", "Image"))
                        .Append(ml.MulticlassClassification.Trainers.DecorrelatedImageClassification(options));
                    try
                    {
                        pipeline.Fit(keyed);
                    }
                    catch (OperationCanceledException)
                    {
                        // Timed up to the first step.
                    }
                    return (firstStep, decodingRate);
                }
                var first = FitOnce();
                decodingRate = 0;
                var second = FitOnce();
                table.AddRow(format, first.Rate.ToString("F0", CultureInfo.InvariantCulture), first.ToFirstStep.ToString("F1", CultureInfo.InvariantCulture),
                    second.ToFirstStep.ToString("F1", CultureInfo.InvariantCulture) + (second.Rate > 0 ? " (decoded again!)" : ""));
            }
            finally
            {
                Directory.Delete(folder, recursive: true);
            }
        }
        AnsiConsole.Write(table);
        return 0;
    }
}
