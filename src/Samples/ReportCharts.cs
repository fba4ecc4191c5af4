namespace Microsoft.ML.Decorrelation.Samples;

/// <summary>A named line of points.</summary>
internal sealed record ChartSeries(string Name, double[] X, double[] Y);

/// <summary>The report's PNG charts, drawn with <see cref="PngCanvas"/>.</summary>
internal static class ReportCharts
{
    private static readonly uint[] Palette = [0x1F77B4FF, 0xFF7F0EFF, 0x2CA02CFF, 0xD62728FF, 0x9467BDFF, 0x8C564BFF, 0xE377C2FF, 0x7F7F7FFF];

    /// <summary>Test accuracy after each epoch against cumulative training seconds, one line per arm.</summary>
    public static void AccuracyAgainstTime(IReadOnlyList<ArmResult> arms, string path)
        => LineChart(path, "Fashion-MNIST test accuracy against training time", "cumulative training seconds", "test accuracy (%)", legendAtBottom: true,
            arms.Select(a => new ChartSeries(a.Name, a.Epochs.Select(m => m.Seconds).ToArray(),
                a.Epochs.Select(m => 100 * (m.ValidationAccuracy ?? double.NaN)).ToArray())).ToArray());

    /// <summary>Each decorrelated layer's mean decorrelation loss per epoch, on a log10 scale.</summary>
    public static void DecorrelationLoss(IReadOnlyList<DecorrelatedImageClassificationMetrics> epochs, string path)
        => LineChart(path, "DBP: decorrelation loss of each layer", "epoch", "log10 mean decorrelation loss", legendAtBottom: false,
            epochs.SelectMany(m => m.LayerDecorrelationLoss.Keys).Distinct().Select(layer => new ChartSeries(layer,
                epochs.Select(m => (double)m.Epoch).ToArray(),
                epochs.Select(m => Math.Log10(m.LayerDecorrelationLoss.GetValueOrDefault(layer, double.NaN))).ToArray())).ToArray());

    /// <summary>A line chart with grid, axis ticks, markers and a legend in the lower or upper right corner.</summary>
    public static void LineChart(string path, string title, string xLabel, string yLabel, bool legendAtBottom, IReadOnlyList<ChartSeries> series)
    {
        const int width = 960, height = 620, left = 110, right = 30, top = 95, bottom = 80;
        const uint black = 0x000000FF, grid = 0xDDDDDDFF;
        var canvas = new PngCanvas(width, height);
        var finite = series.SelectMany(s => s.X.Zip(s.Y)).Where(p => double.IsFinite(p.First) && double.IsFinite(p.Second)).ToArray();
        var (xTicks, xMin, xMax) = Ticks(finite.Select(p => p.First).DefaultIfEmpty(0).Min(), finite.Select(p => p.First).DefaultIfEmpty(1).Max());
        var (yTicks, yMin, yMax) = Ticks(finite.Select(p => p.Second).DefaultIfEmpty(0).Min(), finite.Select(p => p.Second).DefaultIfEmpty(1).Max());
        int plotWidth = width - left - right, plotHeight = height - top - bottom;
        double X(double x) => left + (x - xMin) / (xMax - xMin) * plotWidth;
        double Y(double y) => top + plotHeight - (y - yMin) / (yMax - yMin) * plotHeight;

        canvas.DrawText((width - PngCanvas.TextWidth(title, 3)) / 2, 15, title, black, 3);
        foreach (var tick in xTicks)
        {
            canvas.DrawLine(X(tick), top, X(tick), top + plotHeight, grid);
            string label = Format(tick);
            canvas.DrawText((int)X(tick) - PngCanvas.TextWidth(label) / 2, top + plotHeight + 10, label, black);
        }
        foreach (var tick in yTicks)
        {
            canvas.DrawLine(left, Y(tick), left + plotWidth, Y(tick), grid);
            string label = Format(tick);
            canvas.DrawText(left - 10 - PngCanvas.TextWidth(label), (int)Y(tick) - 7, label, black);
        }
        canvas.DrawLine(left, top, left, top + plotHeight, black, 2);
        canvas.DrawLine(left, top + plotHeight, left + plotWidth, top + plotHeight, black, 2);
        canvas.DrawText(left + (plotWidth - PngCanvas.TextWidth(xLabel)) / 2, height - 35, xLabel, black);
        canvas.DrawText(10, top - 32, yLabel, black);

        for (int s = 0; s < series.Count; s++)
        {
            uint color = Palette[s % Palette.Length];
            var points = series[s].X.Zip(series[s].Y).Where(p => double.IsFinite(p.First) && double.IsFinite(p.Second)).ToArray();
            for (int i = 1; i < points.Length; i++)
                canvas.DrawLine(X(points[i - 1].First), Y(points[i - 1].Second), X(points[i].First), Y(points[i].Second), color, 3);
            foreach (var (x, y) in points)
                canvas.FillRectangle((int)X(x) - 4, (int)Y(y) - 4, 9, 9, color);
            int legendY = legendAtBottom ? top + plotHeight - 10 - 22 * (series.Count - s) : top + 10 + 22 * s;
            int legendX = left + plotWidth - 230;
            canvas.FillRectangle(legendX, legendY + 4, 24, 6, color);
            canvas.DrawText(legendX + 32, legendY, series[s].Name, black);
        }
        canvas.Save(path);
    }

    /// <summary>About six "nice" tick values (steps of 1, 2 or 5 × 10^k) covering [min, max].</summary>
    private static (double[] Ticks, double Min, double Max) Ticks(double min, double max)
    {
        if (max - min < 1e-12)
        {
            min -= 0.5;
            max += 0.5;
        }
        double raw = (max - min) / 6, magnitude = Math.Pow(10, Math.Floor(Math.Log10(raw)));
        double step = new[] { 1, 2, 5, 10 }.Select(f => f * magnitude).First(s => s >= raw);
        double first = Math.Floor(min / step) * step, last = Math.Ceiling(max / step) * step;
        var ticks = new List<double>();
        for (double t = first; t <= last + step / 2; t += step)
            ticks.Add(Math.Round(t / step) * step);
        return (ticks.ToArray(), first, last);
    }

    private static string Format(double value) => Math.Abs(value) >= 1000 || value == Math.Round(value)
        ? value.ToString("0", System.Globalization.CultureInfo.InvariantCulture)
        : value.ToString("0.###", System.Globalization.CultureInfo.InvariantCulture);
}
