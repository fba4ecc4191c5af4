using OxyPlot;
using OxyPlot.Annotations;
using OxyPlot.Axes;
using OxyPlot.Legends;
using OxyPlot.Series;

namespace Microsoft.ML.Decorrelation.Samples;

/// <summary>A named line of points.</summary>
internal sealed record ChartSeries(string Name, double[] X, double[] Y);

/// <summary>A point the chart marks and labels, e.g. when one arm first reached another's best.</summary>
internal sealed record ChartMark(double X, double Y, string Text);

/// <summary>
/// The samples' PNG charts (main job, model selection), drawn with OxyPlot on SkiaSharp 2.88 — the SkiaSharp line that
/// Microsoft.ML.ImageAnalytics uses, so charts and ML.NET's image transforms share one process.
/// </summary>
internal static class ReportCharts
{
    private const int Width = 960, Height = 620;
    private static readonly OxyColor GridColor = OxyColor.FromRgb(225, 225, 225);

    /// <summary>
    /// Test accuracy after each epoch against cumulative training seconds, one line per arm; marks where DBP first reached
    /// backprop's best accuracy, when it did.
    /// </summary>
    public static void AccuracyAgainstTime(IReadOnlyList<ArmResult> arms, string path)
        => AccuracyAgainstTime("Fashion-MNIST test accuracy against training time",
            arms.Select(a => new ChartSeries(a.Name, a.Epochs.Select(m => m.Seconds).ToArray(),
                a.Epochs.Select(m => 100 * (m.ValidationAccuracy ?? double.NaN)).ToArray())).ToArray(), path);

    /// <summary>
    /// Test accuracy (%) against training seconds, one line per arm (series named "Backprop" and "DBP"); marks where DBP
    /// first reached backprop's best accuracy, when it did.
    /// </summary>
    public static void AccuracyAgainstTime(string title, IReadOnlyList<ChartSeries> arms, string path)
    {
        var backprop = arms.FirstOrDefault(a => a.Name == "Backprop");
        var dbp = arms.FirstOrDefault(a => a.Name == "DBP");
        ChartMark? mark = null;
        if (backprop is not null && dbp is not null && backprop.Y.Any(double.IsFinite))
        {
            double best = backprop.Y.Where(double.IsFinite).Max();
            int reached = Array.FindIndex(dbp.Y, y => y >= best);
            if (reached >= 0)
                mark = new ChartMark(dbp.X[reached], dbp.Y[reached], $"DBP reaches backprop's best ({best:F2} %) at {dbp.X[reached]:F0} s");
        }
        LineChart(path, title, "Cumulative training time (s)", "Test accuracy (%)", legendAtBottom: true, arms, mark);
    }

    /// <summary>Each decorrelated layer's mean decorrelation loss per epoch, on a logarithmic axis.</summary>
    public static void DecorrelationLoss(IReadOnlyList<DecorrelatedImageClassificationMetrics> epochs, string path)
        => LineChart(path, "DBP: decorrelation loss of each layer", "Epoch", "Mean decorrelation loss", legendAtBottom: false,
            epochs.SelectMany(m => m.LayerDecorrelationLoss.Keys).Distinct().Select(layer => new ChartSeries(layer,
                epochs.Select(m => (double)m.Epoch).ToArray(),
                epochs.Select(m => m.LayerDecorrelationLoss.GetValueOrDefault(layer, double.NaN)).ToArray())).ToArray(), logarithmicY: true);

    /// <summary>
    /// A line chart with markers, grid lines, axis titles, a legend in the lower or upper right corner and an optional
    /// marked point, written as a PNG of 960×620 pixels. Points that are not finite are left out.
    /// </summary>
    public static void LineChart(string path, string title, string xLabel, string yLabel, bool legendAtBottom, IReadOnlyList<ChartSeries> series,
        ChartMark? mark = null, bool logarithmicY = false)
    {
        // DejaVu Sans where installed (Debian's fonts-dejavu-core); SkiaSharp falls back to its default font elsewhere.
        var model = new PlotModel { Title = title, Background = OxyColors.White, DefaultFont = "DejaVu Sans" };
        model.Axes.Add(new LinearAxis
        {
            Position = AxisPosition.Bottom, Title = xLabel, MajorGridlineStyle = LineStyle.Solid, MajorGridlineColor = GridColor,
            MinimumPadding = 0.03, MaximumPadding = 0.03,
        });
        model.Axes.Add(logarithmicY
            ? new LogarithmicAxis { Position = AxisPosition.Left, Title = yLabel, MajorGridlineStyle = LineStyle.Solid, MajorGridlineColor = GridColor, MinimumPadding = 0.05, MaximumPadding = 0.05 }
            : new LinearAxis { Position = AxisPosition.Left, Title = yLabel, MajorGridlineStyle = LineStyle.Solid, MajorGridlineColor = GridColor, MinimumPadding = 0.05, MaximumPadding = 0.05 });
        model.Legends.Add(new Legend
        {
            LegendPosition = legendAtBottom ? LegendPosition.BottomRight : LegendPosition.TopRight,
            LegendBackground = OxyColor.FromAColor(220, OxyColors.White), LegendBorder = OxyColors.Gray,
        });
        foreach (var line in series)
        {
            var plotted = new LineSeries { Title = line.Name, MarkerType = MarkerType.Circle, MarkerSize = 3.5, StrokeThickness = 2 };
            foreach (var (x, y) in line.X.Zip(line.Y))
            {
                if (double.IsFinite(x) && double.IsFinite(y) && (!logarithmicY || y > 0))
                    plotted.Points.Add(new DataPoint(x, y));
            }
            model.Series.Add(plotted);
        }
        if (mark is not null)
        {
            model.Annotations.Add(new PointAnnotation { X = mark.X, Y = mark.Y, Size = 7, Shape = MarkerType.Diamond, Fill = OxyColors.Black });
            // The label sits below and right of the point, on a white box, so that the lines under it do not hide it.
            model.Annotations.Add(new TextAnnotation
            {
                TextPosition = new DataPoint(mark.X, mark.Y), Text = mark.Text, Offset = new ScreenVector(12, 28),
                TextHorizontalAlignment = HorizontalAlignment.Left, TextVerticalAlignment = VerticalAlignment.Top,
                Background = OxyColor.FromAColor(230, OxyColors.White), Stroke = OxyColors.Gray, StrokeThickness = 1, Padding = new OxyThickness(4),
            });
        }
        using var file = File.Create(path);
        new OxyPlot.SkiaSharp.PngExporter { Width = Width, Height = Height }.Export(model, file);
    }
}
