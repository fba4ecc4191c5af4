using System.CommandLine;
using System.Diagnostics;
using Microsoft.ML.Data;
using Microsoft.ML.Decorrelation.Torch;
using Spectre.Console;

namespace Microsoft.ML.Decorrelation.Samples;

/// <summary>
/// <c>native-scan</c>: trains every architecture, stem, channel count and batch size for two steps and scores a
/// batch through the ML.NET trainer, each case in a child process of its own, and prints which cases the CPU at
/// hand survives (a libtorch kernel that crashes shows up as the signal that killed its child).
/// </summary>
internal static class NativeScan
{
    private const string CaseCommand = "native-scan-case";

    private sealed class RandomImage
    {
        public uint Label { get; set; }

        public float[] Features { get; set; } = [];
    }

    public static IEnumerable<System.CommandLine.Command> Create()
    {
        var oneDnn = new Option<OneDnnMode[]>("--onednn") { Description = "oneDNN modes to scan.", DefaultValueFactory = _ => [OneDnnMode.Auto, OneDnnMode.Enabled], AllowMultipleArgumentsPerToken = true };
        var scan = new System.CommandLine.Command("native-scan", "Train and score every architecture × stem × channels × batch size in child processes; report crashes.") { oneDnn };
        scan.SetAction(result => Run(AnsiConsole.Console, result.GetValue(oneDnn)!));

        var arguments = new Argument<string[]>("case") { Description = "ARCH CHANNELS SIZE BATCH ONEDNN", Arity = new ArgumentArity(5, 5) };
        var single = new System.CommandLine.Command(CaseCommand, "One case of native-scan (run by it in a child process).") { arguments };
        single.Hidden = true;
        single.SetAction(result =>
        {
            var a = result.GetValue(arguments)!;
            var clock = Stopwatch.StartNew();
            var scores = TrainAndScore(Enum.Parse<CnnArchitecture>(a[0]), int.Parse(a[1]), int.Parse(a[2]), int.Parse(a[3]), steps: 2,
                Enum.Parse<OneDnnMode>(a[4]), Console.WriteLine);
            Console.WriteLine($"ok {scores.Length} scores, {clock.Elapsed.TotalSeconds:F1} s");
            return 0;
        });
        return [scan, single];
    }

    /// <summary>
    /// Fits the trainer (oneDNN as <paramref name="oneDnn"/> says, everything else at its defaults) on
    /// <paramref name="steps"/> batches of random images for one epoch, and scores those images: their scores.
    /// </summary>
    internal static float[] TrainAndScore(CnnArchitecture architecture, int channels, int size, int batchSize, int steps, OneDnnMode oneDnn, Action<string> log)
    {
        var generator = new Random(7);
        var rows = Enumerable.Range(0, steps * batchSize).Select(i => new RandomImage
        {
            Label = (uint)(i % 2) + 1,
            Features = Enumerable.Range(0, channels * size * size).Select(_ => (float)generator.Next(256)).ToArray(),
        }).ToArray();
        var ml = new MLContext(seed: 1);
        var schema = SchemaDefinition.Create(typeof(RandomImage));
        schema[nameof(RandomImage.Label)].ColumnType = new KeyDataViewType(typeof(uint), 2);
        schema[nameof(RandomImage.Features)].ColumnType = new VectorDataViewType(NumberDataViewType.Single, channels, size, size);
        var data = ml.Data.LoadFromEnumerable(rows, schema);
        ml.Log += (_, e) => { if (e.Message.Contains("oneDNN")) log(e.Message); };
        var model = ml.MulticlassClassification.Trainers.DecorrelatedImageClassification(new DecorrelatedImageClassificationTrainer.Options
        {
            Architecture = architecture,
            MaxEpoch = 1,
            BatchSize = batchSize,
            OneDnn = oneDnn,
        }).Fit(data);
        return model.Transform(data).GetColumn<float[]>("Score").SelectMany(s => s).ToArray();
    }

    private static int Run(IAnsiConsole console, OneDnnMode[] modes)
    {
        console.MarkupLineInterpolated($"CPU: {CpuCacheInfo.ThisMachine}; guard: {NativeKernelGuard.DecideOneDnn(OneDnnMode.Auto).Reason}");
        var table = new Table().AddColumns(new[] { "architecture", "stem (size)", "channels", "batch" }.Concat(modes.Select(m => $"oneDNN {m}")).ToArray());
        var cases = new List<(CnnArchitecture, string, int, int, int)>();
        foreach (var architecture in Enum.GetValues<CnnArchitecture>())
        {
            var stems = architecture == CnnArchitecture.SmallCnn ? new[] { ("none", 28) } : [("small-image", 32), ("ImageNet", 224)];
            foreach (var (stem, size) in stems)
                foreach (var channels in new[] { 1, 3 })
                    foreach (var batch in new[] { 1, 2 })
                        cases.Add((architecture, stem, size, channels, batch));
        }
        int failures = 0;
        foreach (var (architecture, stem, size, channels, batch) in cases)
        {
            var cells = new List<string> { architecture.ToString(), $"{stem} ({size})", channels.ToString(), batch.ToString() };
            foreach (var mode in modes)
            {
                var child = ChildProcessRunner.Run(typeof(NativeScan).Assembly.Location,
                    [CaseCommand, architecture.ToString(), channels.ToString(), size.ToString(), batch.ToString(), mode.ToString()], null, TimeSpan.FromMinutes(10));
                string cell = child.ExitCode == 0
                    ? child.Output.Split('\n').LastOrDefault(l => l.StartsWith("ok "))?[3..].Split(", ")[^1] ?? "ok"
                    : child.Signal is not null ? child.Describe()
                    : $"failed ({child.ExitCode}): {child.Output.Split('\n').FirstOrDefault(l => l.Contains("Exception"))?.Trim()}";
                if (child.ExitCode != 0)
                    failures++;
                cells.Add(Markup.Escape(cell));
                console.MarkupLineInterpolated($"{architecture} {stem} {channels}ch batch {batch} oneDNN {mode}: {cell}");
            }
            table.AddRow(cells.ToArray());
        }
        console.Write(table);
        console.MarkupLineInterpolated($"{failures} of {cases.Count * modes.Length} runs failed.");
        return failures == 0 ? 0 : 1;
    }
}
