using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using Microsoft.ML.Decorrelation.Torch;
using Microsoft.ML.Decorrelation.Torch.Architectures;
using Microsoft.ML.Decorrelation.Torch.Data;
using Spectre.Console;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Decorrelation.Samples;

/// <summary>
/// <c>bench --case pieces</c>: what each piece of DBP's extra work costs in each decorrelated layer of the small CNN, timed
/// in isolation on that layer's real input (the activations of a batch of Fashion-MNIST images): the plain layer's
/// forward and backward against the decorrelated layer's (the extra in place), the W·R product alone, its gradient
/// dW = dM·Rᵀ, the statistics of an update step and R's update. Each piece is set against its arithmetic, so that what is
/// overhead and what is work shows (docs/performance.md, "Where DBP's time goes"). The variants alternate within every
/// repetition, in a rotating order; medians over the repetitions.
/// </summary>
internal static class PiecesBench
{
    /// <summary>One layer's measured pieces, in milliseconds (medians), with the product's arithmetic.</summary>
    public sealed record LayerPieces(string Layer, long InputSize, long Outputs, long BlockSize, double ProductGflop,
        double PlainForwardBackwardMs, double DecorrelatedForwardBackwardMs, double ProductMs, double ProductGradientMs,
        double StatisticsMs, double UpdateMs)
    {
        /// <summary>What the decorrelated layer's forward and backward cost beyond the plain layer's.</summary>
        public double ExtraInPlaceMs => DecorrelatedForwardBackwardMs - PlainForwardBackwardMs;
    }

    /// <summary>Times every decorrelated layer of the small CNN at <paramref name="batchSize"/>; prints a table; returns the figures.</summary>
    /// <param name="console">Where the table goes.</param>
    /// <param name="batchSize">Images of the batch whose activations feed the layers.</param>
    /// <param name="threads">Torch's CPU threads.</param>
    /// <param name="options">The decorrelation options (block size, sample fractions).</param>
    /// <param name="data">A folder with the Fashion-MNIST files, or null to look for them as the other cases do.</param>
    /// <param name="repetitions">Timed repetitions of every piece (after as many warm-up rounds as a fifth of them).</param>
    public static Dictionary<string, object?> Run(IAnsiConsole console, int batchSize, int threads, DecorrelationOptions options, string? data, int repetitions = 100)
    {
        var source = new FashionMnistSource().Locate(data);
        using var batch = FashionMnistSource.Load(source, train: true, batchSize);
        NativeAllocatorTuning.Apply();
        int threadsBefore = get_num_threads();
        set_num_threads(threads);
        try
        {
            using var kernels = NativeKernelGuard.Enter(OneDnnMode.Auto);
            console.MarkupLine(Markup.Escape($"Case pieces on {MachineInfo.CpuModel()}: small CNN, batch {batchSize} of {source.Description}, {threads} threads, " +
                $"oneDNN {(NativeKernelGuard.OneDnnEnabledInLibTorch == true ? "on" : "off")} ({kernels.Decision.Reason}); medians of {repetitions} repetitions."));
            var layers = DenormalFlushing.Run(() => MeasureLayers(batch.Images, batchSize, options, repetitions));
            // Short headers: the table must fit an 80-column console (a redirected one is 80 wide).
            var table = new Table().AddColumns("layer", "D/block", "O", "plain", "DBP", "extra", "W·R", "dW", "GFLOP/s", "stats", "update");
            foreach (var l in layers)
            {
                table.AddRow(l.Layer, l.BlockSize == l.InputSize ? Invariant(l.InputSize) : $"{Invariant(l.InputSize)}/{Invariant(l.BlockSize)}", Invariant(l.Outputs),
                    Ms(l.PlainForwardBackwardMs), Ms(l.DecorrelatedForwardBackwardMs), Ms(l.ExtraInPlaceMs), Ms(l.ProductMs), Ms(l.ProductGradientMs),
                    Rate(2 * l.ProductGflop, l.ProductMs + l.ProductGradientMs), Ms(l.StatisticsMs), Ms(l.UpdateMs));
            }
            console.Write(table);
            double extra = layers.Sum(l => l.ExtraInPlaceMs), products = layers.Sum(l => l.ProductMs + l.ProductGradientMs);
            double perUpdate = layers.Sum(l => l.StatisticsMs + l.UpdateMs);
            console.MarkupLine(Markup.Escape($"Every layer: extra forward+backward {extra:F2} ms per step, of which the products and their gradient {products:F2} ms; " +
                $"statistics + update {perUpdate:F2} ms per update ({perUpdate / options.UpdateInterval:F2} ms per step at an update every {options.UpdateInterval} steps). " +
                "Columns: forward+backward of the plain and the decorrelated layer and their difference, the W·R product, its gradient, " +
                "the rate of both, the statistics and R's update of one update step; times in ms."));
            return new Dictionary<string, object?>
            {
                ["case"] = "pieces", ["cpu"] = MachineInfo.CpuModel(), ["batchSize"] = batchSize, ["threads"] = threads,
                ["oneDnn"] = NativeKernelGuard.OneDnnEnabledInLibTorch, ["decorrelation"] = options, ["layers"] = layers,
                ["extraForwardBackwardMs"] = extra, ["productsMs"] = products, ["statisticsAndUpdatePerUpdateMs"] = perUpdate,
            };
        }
        finally
        {
            set_num_threads(threadsBefore);
        }
    }

    private static List<LayerPieces> MeasureLayers(Tensor images, int batchSize, DecorrelationOptions options, int repetitions)
    {
        using var scope = NewDisposeScope();
        manual_seed(0);
        var plain = NetworkBuilder.SmallCnn(1, 28, 28, 10);
        manual_seed(0);
        var decorrelated = NetworkConversion.ToDecorrelated(NetworkBuilder.SmallCnn(1, 28, 28, 10), options);
        plain.train();
        decorrelated.train();
        var plainLayers = plain.named_children().ToDictionary(c => c.name, c => (nn.Module<Tensor, Tensor>)c.module);

        // The input of every decorrelated layer: the small CNN is a sequence, so its children run one after the other.
        var inputs = new List<(string Name, DecorrelatedLayer Layer, Tensor Input)>();
        using (no_grad())
        {
            var activation = images.narrow(0, 0, batchSize);
            foreach (var (name, module) in decorrelated.named_children())
            {
                if (module is DecorrelatedLayer layer)
                {
                    layer.CollectStatistics = false;
                    inputs.Add((name, layer, activation.clone()));
                }
                activation = ((nn.Module<Tensor, Tensor>)module).forward(activation);
            }
        }

        var results = new List<LayerPieces>();
        for (int index = 0; index < inputs.Count; index++)
        {
            var (name, layer, input) = inputs[index];
            var plainLayer = plainLayers[name];
            bool inputNeedsGradient = index > 0;   // as in the network: the first layer's input is the images
            var x = input.requires_grad_(inputNeedsGradient);
            using var outputGradient = randn_like(layer.forward(x.detach()));
            using var productGradient = randn_like(layer.EffectiveWeight().detach());
            var savedMatrix = layer.DecorrelationMatrix.clone();

            // Each piece returns the times it measured; the update step measures two (statistics, then R's update),
            // since the samples the statistics keep are the ones the update uses.
            var pieces = new Func<(string Piece, double Ms)[]>[]
            {
                () => [("plain", ForwardBackward(plainLayer, x, outputGradient))],
                () => [("dbp", ForwardBackward(layer, x, outputGradient))],
                () => [("product", Elapsed(() => { using (no_grad()) layer.EffectiveWeight(); }))],
                () => [("gradient", ProductGradient(layer, productGradient))],
                () => UpdateStep(layer, x, savedMatrix),
            };
            var times = new Dictionary<string, List<double>>();
            for (int round = 0; round < repetitions + repetitions / 5; round++)
            {
                for (int k = 0; k < pieces.Length; k++)
                {
                    foreach (var (piece, ms) in pieces[(k + round) % pieces.Length]())
                    {
                        if (round >= repetitions / 5)
                            (times.TryGetValue(piece, out var list) ? list : times[piece] = []).Add(ms);
                    }
                }
            }
            layer.CollectStatistics = false;
            long outputs = layer.Weight.shape[0];
            results.Add(new LayerPieces(name, layer.InputSize, outputs, layer.BlockSize, 2.0 * outputs * layer.InputSize * layer.BlockSize / 1e9,
                Bench.Median(times["plain"]), Bench.Median(times["dbp"]), Bench.Median(times["product"]), Bench.Median(times["gradient"]),
                Bench.Median(times["statistics"]), Bench.Median(times["update"])));
        }
        return results;
    }

    private static double Elapsed(Action work)
    {
        long start = Stopwatch.GetTimestamp();
        work();
        return Stopwatch.GetElapsedTime(start).TotalMilliseconds;
    }

    private static double ForwardBackward(nn.Module<Tensor, Tensor> layer, Tensor input, Tensor outputGradient)
    {
        using var scope = NewDisposeScope();
        layer.zero_grad();
        input.grad?.zero_();
        return Elapsed(() => layer.forward(input).backward([outputGradient]));
    }

    /// <summary>The backward pass of M = W·R alone: autograd's dW = dM·Rᵀ (the forward product is built outside the clock).</summary>
    private static double ProductGradient(DecorrelatedLayer layer, Tensor productGradient)
    {
        using var scope = NewDisposeScope();
        layer.zero_grad();
        var product = layer.EffectiveWeight();
        return Elapsed(() => product.backward([productGradient]));
    }

    /// <summary>
    /// One update step: the statistics a training forward pass keeps (the forward itself not counted), then R's update
    /// from them. R is put back afterwards, so every repetition starts from the same R.
    /// </summary>
    private static (string Piece, double Ms)[] UpdateStep(DecorrelatedLayer layer, Tensor input, Tensor savedMatrix)
    {
        using var scope = NewDisposeScope();
        layer.CollectStatistics = true;
        layer.TakeStatisticsTime();
        using (no_grad())
            layer.forward(input);
        layer.CollectStatistics = false;
        double statisticsMs = layer.TakeStatisticsTime().TotalMilliseconds;
        double updateMs = Elapsed(() => layer.UpdateDecorrelation());
        using (no_grad())
            layer.DecorrelationMatrix.copy_(savedMatrix);
        return [("statistics", statisticsMs), ("update", updateMs)];
    }

    private static string Invariant(long value) => value.ToString(CultureInfo.InvariantCulture);

    private static string Ms(double value) => value.ToString(value < 10 ? "0.00" : "0.0", CultureInfo.InvariantCulture);

    private static string Rate(double gflop, double ms) => (gflop / ms * 1e3).ToString("0", CultureInfo.InvariantCulture);
}
