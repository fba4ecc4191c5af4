using System.Globalization;
using System.Net;
using System.Text.Json;
using Microsoft.ML.Data;
using Microsoft.ML.Decorrelation.Samples;
using Microsoft.ML.Decorrelation.Torch;
using Microsoft.VisualStudio.TestTools.UnitTesting;
using Spectre.Console;

namespace Microsoft.ML.Decorrelation.Tests;

/// <summary>The samples' data-source chain, main job, train and predict commands.</summary>
[TestClass]
public class SamplesTests : TempFolderTest
{
    private string Folder(string name) => Directory.CreateDirectory(Path.Combine(TempFolder, name)).FullName;

    private string CopyOfSubset(string name)
    {
        var folder = Folder(name);
        foreach (var file in FashionMnistSource.FileNames)
            File.Copy(Path.Combine(FashionMnist.Folder, file), Path.Combine(folder, file));
        return folder;
    }

    /// <summary>A source whose every location is under the test's folder, with no download.</summary>
    private FashionMnistSource Source(Uri? download = null) => new()
    {
        Debian = Path.Combine(TempFolder, "debian"),
        Cache = Path.Combine(TempFolder, "cache"),
        Download = download,
        DownloadTimeout = TimeSpan.FromSeconds(20),
        Subset = FashionMnist.Folder,
    };

    private static (IAnsiConsole Console, StringWriter Output) CapturedConsole()
    {
        var output = new StringWriter();
        var console = AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(output), Ansi = AnsiSupport.No, Interactive = InteractionSupport.No });
        return (console, output);
    }

    [TestMethod]
    public void GivenFolderWinsAndAMissingOneIsAnError()
    {
        var given = CopyOfSubset("given");
        var source = Source();
        Assert.AreEqual(given, source.Locate(given).Folder);
        var error = Assert.ThrowsExactly<DirectoryNotFoundException>(() => Source().Locate(Folder("empty")));
        StringAssert.Contains(error.Message, "train-images-idx3-ubyte.gz");
    }

    [TestMethod]
    public void DebianFolderComesBeforeCacheAndDownload()
    {
        var debian = CopyOfSubset("debian");
        var found = Source(new Uri("http://127.0.0.1:1/")).Locate(null);
        Assert.AreEqual(debian, found.Folder);
        StringAssert.Contains(found.Description, "Debian");
    }

    [TestMethod]
    public void FailedDownloadFallsBackToTheShippedSubset()
    {
        var source = Source(new Uri("http://127.0.0.1:1/"));   // nothing listens on port 1
        var found = source.Locate(null);
        Assert.IsTrue(found.IsSubset);
        Assert.AreEqual(FashionMnist.Folder, found.Folder);
        Assert.HasCount(2, source.Notes);
        StringAssert.Contains(source.Notes[1], "Download from http://127.0.0.1:1/ failed");
        Assert.IsFalse(Directory.Exists(Path.Combine(TempFolder, "cache")) && Directory.EnumerateFiles(Path.Combine(TempFolder, "cache"), "*.gz").Any(),
            "nothing half-downloaded is left to be mistaken for data");
    }

    [TestMethod]
    [DataRow(false)]
    [DataRow(true)]
    public void DownloadFillsTheCacheOrFallsBackWhenTruncated(bool truncate)
    {
        using var listener = new HttpListener();
        int port = Random.Shared.Next(20000, 60000);
        listener.Prefixes.Add($"http://127.0.0.1:{port}/");
        listener.Start();
        var serving = Task.Run(() =>
        {
            for (int served = 0; served < FashionMnistSource.FileNames.Length; served++)
            {
                var context = listener.GetContext();
                var bytes = File.ReadAllBytes(Path.Combine(FashionMnist.Folder, context.Request.Url!.Segments[^1]));
                if (truncate)
                    bytes = bytes[..(bytes.Length / 2)];
                context.Response.OutputStream.Write(bytes);
                context.Response.Close();
                if (truncate)
                    break;
            }
        });
        var source = Source(new Uri($"http://127.0.0.1:{port}/"));
        var found = source.Locate(null);
        serving.Wait(TimeSpan.FromSeconds(30));
        if (truncate)
        {
            Assert.IsTrue(found.IsSubset, "a truncated download is not used");
            StringAssert.Contains(source.Notes[^1], "failed");
            Assert.IsFalse(File.Exists(Path.Combine(TempFolder, "cache", FashionMnistSource.FileNames[0])));
        }
        else
        {
            Assert.AreEqual(Path.Combine(TempFolder, "cache"), found.Folder);
            StringAssert.Contains(found.Description, "downloaded");
            Assert.IsTrue(Source().Locate(null).Description.Contains("downloaded earlier"), "the next run finds the cache");
        }
    }

    [TestMethod]
    public void BenchComparesEveryDbpArmWithBackpropAndTakesMediansOverSeeds()
    {
        var (console, output) = CapturedConsole();
        var settings = new BenchSettings
        {
            Seeds = 2, FirstSeed = 3, Epochs = 1, LearningRates = [2e-3], BatchSize = 64, Threads = 2, TrainLimit = 1024, TestLimit = 300,
            CropPadding = 1, MaxInputSizes = [null, 300], Data = FashionMnist.Folder, EvaluationsPerEpoch = 3,
        };

        var figures = new Bench(console).Run(settings);

        var perSeed = (List<Dictionary<string, object?>>)figures["perSeed"]!;
        CollectionAssert.AreEqual(new[] { 3, 4 }, perSeed.Select(s => (int)s["seed"]!).ToArray());
        foreach (var seed in perSeed)
        {
            var variants = (List<Dictionary<string, object?>>)seed["variants"]!;
            CollectionAssert.AreEqual(new[] { "DBP (all layers)", "DBP (D ≤ 300)" }, variants.Select(v => (string)v["dbpArm"]!).ToArray());
            Assert.AreEqual(seed["stepRatio"], variants[0]["stepRatio"], "the first DBP arm gives the headline");
            Assert.AreEqual((double)seed["dbpMedianStepMs"]! / (double)seed["bpMedianStepMs"]!, (double)seed["stepRatio"]!, 1e-12);
            Assert.IsGreaterThan(0.3, (double)seed["bpBestAccuracy"]!);
            Assert.IsGreaterThan(0.3, (double)variants[1]["dbpFinalAccuracy"]!);
        }
        // Two seeds: every median is the mean of the two seeds' figures.
        foreach (var key in new[] { "stepRatio", "bpBestAccuracy", "dbpFinalAccuracy" })
            Assert.AreEqual(((double)perSeed[0][key]! + (double)perSeed[1][key]!) / 2, (double)figures[key]!, 1e-12, key);
        var medianVariants = (List<Dictionary<string, object?>>)figures["variants"]!;
        Assert.AreEqual("DBP (D ≤ 300)", medianVariants[1]["dbpArm"]);
        StringAssert.Contains(output.ToString(), "Medians over seeds");
        StringAssert.Contains(output.ToString(), "crop padding 1");
        StringAssert.Contains(output.ToString(), "Targets of the performance issue");
        using var json = JsonDocument.Parse(JsonSerializer.Serialize(figures));
        var targets = json.RootElement.GetProperty("targets").EnumerateArray().ToArray();
        CollectionAssert.AreEqual(new[] { "stepRatio", "timeToAccuracyRatio", "minTimeToAccuracyRatio", "dbpFinalAccuracy" }, targets.Select(t => t.GetProperty("figure").GetString()).ToArray());
        Assert.AreEqual((double)figures["stepRatio"]! <= 1.10, targets[0].GetProperty("met").GetBoolean());
        var seedRatios = perSeed.Select(s => s["timeToAccuracyRatio"] as double?).ToList();
        Assert.AreEqual(seedRatios.Any(r => r is null) ? null : seedRatios.Min(), figures["minTimeToAccuracyRatio"] as double?, "the worst seed's ratio");
        Assert.AreEqual((double)figures["bpFinalAccuracy"]!, targets[3].GetProperty("threshold").GetDouble(), "DBP's final accuracy is held against backprop's");
        Assert.AreEqual((double)figures["dbpFinalAccuracy"]! >= (double)figures["bpFinalAccuracy"]!, targets[3].GetProperty("met").GetBoolean());
        string chart = Path.Combine(TempFolder, "bench.png");
        Bench.DrawChart(json, chart);
        using (var image = MLImage.CreateFromFile(chart))
            Assert.AreEqual(960, image.Width, "bench --chart draws the first seed's arms");
        foreach (var arm in json.RootElement.GetProperty("perSeed")[1].GetProperty("arms").EnumerateArray())
        {
            var epochs = arm.GetProperty("evaluations").EnumerateArray().Select(e => e.GetProperty("epoch").GetDouble()).ToArray();
            CollectionAssert.AreEqual(new[] { 5 / 16.0, 10 / 16.0, 1.0 }, epochs, arm.GetProperty("name").GetString());
        }
    }

    [TestMethod]
    public void PiecesBenchTimesEveryDecorrelatedLayerAgainstItsArithmetic()
    {
        var (console, output) = CapturedConsole();
        var options = new DecorrelationOptions { MaxBlockSize = 288 };

        var figures = PiecesBench.Run(console, batchSize: 32, threads: 2, options, FashionMnist.Folder, repetitions: 5);

        var layers = (List<PiecesBench.LayerPieces>)figures["layers"]!;
        CollectionAssert.AreEqual(new[] { "conv1", "conv2", "conv3", "classifier" }, layers.Select(l => l.Layer).ToArray());
        // D = C_in·3·3 for the convolutions, 128·3·3 features for the classifier; blocks of at most 288.
        CollectionAssert.AreEqual(new long[] { 9, 288, 576, 1152 }, layers.Select(l => l.InputSize).ToArray());
        CollectionAssert.AreEqual(new long[] { 32, 64, 128, 10 }, layers.Select(l => l.Outputs).ToArray());
        CollectionAssert.AreEqual(new long[] { 9, 288, 288, 288 }, layers.Select(l => l.BlockSize).ToArray());
        Assert.AreEqual(2.0 * 128 * 576 * 288 / 1e9, layers[2].ProductGflop, 1e-15, "W·R with 2 blocks: O·D·d multiply-adds");
        foreach (var layer in layers)
        {
            foreach (var ms in new[] { layer.PlainForwardBackwardMs, layer.DecorrelatedForwardBackwardMs, layer.ProductMs, layer.ProductGradientMs, layer.StatisticsMs, layer.UpdateMs })
                Assert.IsTrue(ms > 0 && double.IsFinite(ms), $"{layer.Layer}: {layer}");
        }
        Assert.AreEqual(layers.Sum(l => l.ExtraInPlaceMs), (double)figures["extraForwardBackwardMs"]!, 1e-9);
        string printed = System.Text.RegularExpressions.Regex.Replace(output.ToString(), @"\s+", " ");
        StringAssert.Contains(printed, "conv3");
        StringAssert.Contains(printed, $"statistics + update {(double)figures["statisticsAndUpdatePerUpdateMs"]!:F2} ms per update");
    }

    [TestMethod]
    public void BenchMedianRanksNotReachedBelowEveryRatio()
    {
        Assert.AreEqual(1.2, Bench.Median(new double?[] { null, 1.3, 1.2 }));
        Assert.IsNull(Bench.Median(new double?[] { 1.3, null, null }), "two of three seeds did not reach");
        Assert.AreEqual(1.5, Bench.Median(new double?[] { 2.0, 1.0 }));
        Assert.IsNull(Bench.Median(new double?[] { null, 1.2 }), "one of the two middle values is missing");
        Assert.AreEqual(1.25, Bench.Median(new double?[] { null, 1.2, 1.3, 1.4 }));
        Assert.AreEqual(2.0, Bench.Median(new[] { 3.0, 1.0, 2.0 }), "step times: no value is ever missing");
        Assert.IsTrue(double.IsNaN(Bench.Median(Array.Empty<double>())));
    }

    [TestMethod]
    public void BenchTargetsFollowTheCaseAndCountAFigureNotReachedAsNotMet()
    {
        var medians = new Dictionary<string, object?>
        {
            ["stepRatio"] = 1.09, ["timeToAccuracyRatio"] = 2.1, ["minTimeToAccuracyRatio"] = null, ["bpFinalAccuracy"] = 0.91, ["dbpFinalAccuracy"] = 0.9138,
        };

        var accuracyRun = BenchTarget.For(new BenchSettings(), medians);
        CollectionAssert.AreEqual(new[] { true, true, false, true }, accuracyRun.Select(t => t.Met).ToArray(), "1.09 ≤ 1.10; 2.1 ≥ 2 by the median; a seed that did not reach it; 91.38 % ≥ 91 %");
        Assert.IsFalse(BenchTarget.For(new BenchSettings(), new Dictionary<string, object?> { ["stepRatio"] = 1.14 })[0].Met, "1.14 misses the small CNN's 1.10");
        Assert.IsFalse(new BenchTarget("stepRatio", AtLeast: false, 1.15, 1.16).Met);
        Assert.IsFalse(new BenchTarget("dbpFinalAccuracy", AtLeast: true, 0.91, 0.9099).Met);

        var timingRun = BenchTarget.For(new BenchSettings { Steps = 60 }, medians);
        Assert.AreEqual("stepRatio", timingRun.Single().Figure, "a timing-only run measures no accuracy");
        var resnet = BenchTarget.For(new BenchSettings { Case = "resnet18", Steps = 24 }, new Dictionary<string, object?> { ["stepRatio"] = 1.14 });
        Assert.AreEqual(1.15, resnet.Single().Threshold);
        Assert.IsTrue(resnet.Single().Met);
        Assert.IsEmpty(BenchTarget.For(new BenchSettings { MaxInputSizes = [] }, medians), "backprop-only runs compare nothing");
    }

    [TestMethod]
    public void SelectWritesTheLeaderboardChartAndALoadableBestModel()
    {
        var (console, output) = CapturedConsole();
        var report = Folder("select");
        Assert.AreEqual(0, SelectCommand.Run(console, new SelectSettings { Minutes = 5, Trials = 3, MinEpochs = 1, MaxEpochs = SelectCommand.ParseEpochs("2, 1"), Limit = 1500, DataFolder = FashionMnist.Folder, ReportFolder = report }));

        StringAssert.Contains(output.ToString(), "Best: trial");
        StringAssert.Contains(output.ToString(), "Verdict: ");
        using var leaderboard = System.Text.Json.JsonDocument.Parse(File.ReadAllText(Path.Combine(report, "leaderboard.json")));
        Assert.AreEqual(3, leaderboard.RootElement.GetArrayLength());
        Assert.IsTrue(leaderboard.RootElement.EnumerateArray().Any(t => t.GetProperty("State").GetString() == "Completed"));
        foreach (var trial in leaderboard.RootElement.EnumerateArray())
        {
            int fullRun = trial.GetProperty("MaxEpoch").GetInt32();
            Assert.IsTrue(fullRun is 1 or 2, $"full runs searched over: {trial}");
            if (trial.GetProperty("State").GetString() == "Completed")
                Assert.AreEqual(fullRun, trial.GetProperty("EpochsRun").GetInt32(), trial.ToString());
        }
        Assert.IsGreaterThan(1000L, new FileInfo(Path.Combine(report, "validation-vs-time.png")).Length);
        var model = new MLContext().Model.Load(Path.Combine(report, "best-model.zip"), out _);
        Assert.IsNotNull(model);
    }

    [TestMethod]
    public void SelectWithFoldsAndRandomSearchRanksTrialsByCrossValidationAndRejectsBadEpochsAndFolds()
    {
        var (console, output) = CapturedConsole();
        var report = Folder("select-folds");
        Assert.AreEqual(0, SelectCommand.Run(console, new SelectSettings { Minutes = 5, Trials = 2, MaxEpochs = [1], Folds = 2, Strategy = Selection.SearchStrategy.RandomSearch, Limit = 600, DataFolder = FashionMnist.Folder, ReportFolder = report }));
        StringAssert.Contains(output.ToString(), "random search (full runs of 1)");
        StringAssert.Contains(output.ToString(), "by 2-fold cross-validation");
        using var leaderboard = JsonDocument.Parse(File.ReadAllText(Path.Combine(report, "leaderboard.json")));
        Assert.AreEqual(2, leaderboard.RootElement.GetArrayLength());
        // The best model is one fold's (one epoch on half of the 600 images, so no accuracy to speak of): it loads and scores every row.
        var ml = new MLContext();
        var model = ml.Model.Load(Path.Combine(report, "best-model.zip"), out _);
        var (_, validation, _, _, _) = SelectCommand.LoadData(ml, new SelectSettings { Limit = 600, DataFolder = FashionMnist.Folder });
        var scores = model.Transform(validation).GetColumn<float[]>("Score").ToList();
        Assert.HasCount(60, scores);
        Assert.IsTrue(scores.All(s => s.Length == 10 && Math.Abs(s.Sum() - 1) < 1e-4), "ten class probabilities per row");

        CollectionAssert.AreEqual(new[] { 4, 6 }, SelectCommand.ParseEpochs("6,4"));
        StringAssert.Contains(Assert.ThrowsExactly<ArgumentException>(() => SelectCommand.ParseEpochs("4,0")).Message, "--max-epochs '4,0'");
        StringAssert.Contains(Assert.ThrowsExactly<ArgumentException>(() => SelectCommand.Run(console, new SelectSettings { Folds = 1, ReportFolder = report })).Message, "--folds 1");
    }

    [TestMethod]
    [ReadmeCommand("dotnet run --project src/Samples -c Release -- select --time 10m --workers 2")]
    public void SelectWithTwoWorkersSharesTheStudyWithAWorkerProcess()
    {
        var (console, output) = CapturedConsole();
        var report = Folder("select-workers");
        string[] commandLine = ["select", "--time", "5m", "--trials", "4", "--max-epochs", "2", "--limit", "1500", "--data", FashionMnist.Folder, "--report", report, "--workers", "2"];
        var settings = new SelectSettings { Minutes = 5, Trials = 4, MaxEpochs = [2], Limit = 1500, DataFolder = FashionMnist.Folder, ReportFolder = report, Workers = 2 };
        Assert.AreEqual(0, SelectCommand.Run(console, settings, commandLine));

        string workerLog = File.ReadAllText(Path.Combine(report, "workers", "worker-1.log"));
        var rungResult = new System.Text.RegularExpressions.Regex(@"trial (\d+): .*: (Stopped|Completed) after");
        var byWorker = rungResult.Matches(workerLog).Select(m => m.Groups[1].Value).ToHashSet();
        var byLeader = rungResult.Matches(output.ToString()).Select(m => m.Groups[1].Value).ToHashSet();
        Assert.IsNotEmpty(byWorker, $"the worker process reported rungs:\n{workerLog}");
        Assert.IsNotEmpty(byLeader, "and so did this process");
        Assert.IsTrue(File.Exists(Path.Combine(report, "study.sqlite")));
        using var leaderboard = JsonDocument.Parse(File.ReadAllText(Path.Combine(report, "leaderboard.json")));
        Assert.AreEqual(4, leaderboard.RootElement.GetArrayLength(), "every trial of the study, whichever process ran it");
        CollectionAssert.IsSubsetOf(byWorker.ToArray(), leaderboard.RootElement.EnumerateArray().Select(t => t.GetProperty("Trial").GetInt32().ToString(CultureInfo.InvariantCulture)).ToArray());
        StringAssert.Contains(output.ToString(), "Verdict: ");
    }

    [TestMethod]
    public void KubernetesJobOfWorkersIsAValidIndexedJobSharingTheStudy()
    {
        var (console, output) = CapturedConsole();
        string path = Path.Combine(Folder("kubernetes"), "job.yaml");
        Assert.AreEqual(0, SelectCommand.WriteKubernetesJob(console, path, "registry.example/dbp-samples:1", 4, "fashion_1",
            ["select", "--trials", "27", "--workers", "4", "--storage", "postgresql://u:secret@db/dbp", "--time", "1h"]));
        string yaml = File.ReadAllText(path);
        Assert.DoesNotContain("secret@", yaml, "the password stays in the Secret");

        // Strict: a field that Kubernetes' API schema (the models are generated from it) does not have is an error.
        var job = k8s.KubernetesYaml.Deserialize<k8s.Models.V1Job>(yaml, strict: true);
        Assert.AreEqual(("batch/v1", "Job", "dbp-select-fashion-1"), (job.ApiVersion, job.Kind, job.Metadata.Name));
        Assert.AreEqual(("Indexed", 4, 4), (job.Spec.CompletionMode, job.Spec.Completions, job.Spec.Parallelism));
        var container = job.Spec.Template.Spec.Containers.Single();
        CollectionAssert.AreEqual(new[] { "select", "--trials", "27", "--time", "1h", "--worker", "--storage", "$(DBP_STORAGE)", "--study", "fashion_1", "--work", "/shared/work", "--report", "/shared/report" },
            container.Args.ToArray());
        Assert.AreEqual("dbp-study-storage", container.Env.Single().ValueFrom.SecretKeyRef.Name);
        Assert.AreEqual("dbp-shared", job.Spec.Template.Spec.Volumes.Single().PersistentVolumeClaim.ClaimName);
        Assert.AreEqual("/shared", container.VolumeMounts.Single().MountPath);
        Assert.ThrowsExactly<YamlDotNet.Core.YamlException>(() => k8s.KubernetesYaml.Deserialize<k8s.Models.V1Job>(yaml.Replace("completionMode:", "completionMod:"), strict: true));

        StringAssert.Contains(Assert.ThrowsExactly<ArgumentException>(() => SelectCommand.WriteKubernetesJob(console, path, "", 2, "s", ["select"])).Message, "--image");
        StringAssert.Contains(Assert.ThrowsExactly<ArgumentException>(() => SelectCommand.WriteKubernetesJob(console, path, "i", 0, "s", ["select"])).Message, "--workers 0");
        StringAssert.Contains(output.ToString(), "kubectl apply");
    }

    [TestMethod]
    public void SlurmJobArrayScriptRunsWorkersOfTheStudyAndIsValidBash()
    {
        var (console, output) = CapturedConsole();
        string folder = Folder("slurm");
        string path = Path.Combine(folder, "workers.sh");
        Assert.AreEqual(0, SelectCommand.WriteSlurmJob(console, path, 4, "fashion", "postgresql://u:it's@db/dbp", Path.Combine(folder, "work"), Path.Combine(folder, "report"),
            ["select", "--trials", "27", "--workers", "4", "--storage", "postgresql://u:it's@db/dbp", "--time", "1h"]));
        string script = File.ReadAllText(path);
        StringAssert.Contains(script, "#SBATCH --array=0-3\n");
        StringAssert.Contains(script, "#SBATCH --cpus-per-task=1\n");
        StringAssert.Contains(script, $"#SBATCH --output={Path.Combine(folder, "report")}/task-%a.log");
        StringAssert.Contains(script, "export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}");
        StringAssert.Contains(script, "'select' '--trials' '27' '--time' '1h' '--worker' '--storage' 'postgresql://u:it'\\''s@db/dbp' '--study' 'fashion'");
        if (!OperatingSystem.IsWindows())
            Assert.AreEqual(UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute, File.GetUnixFileMode(path), "the storage string is readable by its owner only");

        // bash parses it, and its command line reaches the program as written (the quoted password intact).
        var check = System.Diagnostics.Process.Start(new System.Diagnostics.ProcessStartInfo("bash", ["-c", $"sed 's/^exec dotnet [^ ]*/printf \"%s\\\\n\"/' {path} | bash"]) { RedirectStandardOutput = true })!;
        string[] printed = check.StandardOutput.ReadToEnd().Split('\n', StringSplitOptions.RemoveEmptyEntries);
        check.WaitForExit();
        Assert.AreEqual(0, check.ExitCode);
        CollectionAssert.AreEqual(new[] { "select", "--trials", "27", "--time", "1h", "--worker", "--storage", "postgresql://u:it's@db/dbp", "--study", "fashion",
            "--work", Path.Combine(folder, "work"), "--report", Path.Combine(folder, "report") }, printed);

        StringAssert.Contains(Assert.ThrowsExactly<ArgumentException>(() => SelectCommand.WriteSlurmJob(console, path, 2, "s", "study.sqlite", folder, folder, ["select"])).Message, "cannot share an SQLite file");
        StringAssert.Contains(Assert.ThrowsExactly<ArgumentException>(() => SelectCommand.WriteSlurmJob(console, path, 2, "s", "postgresql://h/d", null, folder, ["select"])).Message, "--work");
        StringAssert.Contains(output.ToString(), "sbatch");
    }

    [TestMethod]
    public void SelectTimeBudgetsParseWithUnitsAndBadOnesNameTheOption()
    {
        Assert.AreEqual(10, SelectCommand.ParseMinutes("10"));
        Assert.AreEqual(1.5, SelectCommand.ParseMinutes("90s"));
        Assert.AreEqual(15, SelectCommand.ParseMinutes("15m"));
        Assert.AreEqual(60, SelectCommand.ParseMinutes("1h"));
        StringAssert.Contains(Assert.ThrowsExactly<ArgumentException>(() => SelectCommand.ParseMinutes("soon")).Message, "'soon' is not a positive duration");
        StringAssert.Contains(Assert.ThrowsExactly<ArgumentException>(() => SelectCommand.ParseMinutes("-5m")).Message, "'-5m' is not a positive duration");
    }

    [TestMethod]
    [ReadmeCommand("dotnet run --project src/Samples -c Release")]
    public void MainJobAtTinySizeWritesChartsJsonAndALoadableModel()
    {
        var (console, output) = CapturedConsole();
        var report = Folder("report");
        new MainJob(console, Source()).Run(new MainJobSettings { Epochs = 1, TrainLimit = 1000, TestLimit = 500, ReportFolder = report });

        string text = output.ToString();
        StringAssert.Contains(text, "Fashion-MNIST subset shipped with the samples");
        StringAssert.Contains(text, "ML.NET evaluation of the DBP model");
        foreach (var png in new[] { "accuracy-vs-time.png", "decorrelation-loss.png" })
        {
            var bytes = File.ReadAllBytes(Path.Combine(report, png));
            CollectionAssert.AreEqual(new byte[] { 0x89, (byte)'P', (byte)'N', (byte)'G', 0x0D, 0x0A, 0x1A, 0x0A }, bytes[..8], png);
            Assert.IsGreaterThan(10_000, bytes.Length, $"{png} holds a real chart");
        }
        using var json = JsonDocument.Parse(File.ReadAllText(Path.Combine(report, "results.json")));
        var arms = json.RootElement.GetProperty("arms");
        foreach (var arm in new[] { "Backprop", "DBP" })
        {
            var epoch = arms.GetProperty(arm)[0];
            Assert.IsGreaterThan(0.3, epoch.GetProperty("testAccuracy").GetDouble(), arm);
            Assert.IsGreaterThan(0.0, epoch.GetProperty("seconds").GetDouble(), arm);
        }
        Assert.AreEqual(10, json.RootElement.GetProperty("dbpEvaluation").GetProperty("perClass").GetArrayLength());

        var model = new MLContext().Model.Load(Path.Combine(report, "model.zip"), out var schema);
        Assert.IsNotNull(schema.GetColumnOrNull("Features"));
    }

    [TestMethod]
    [ReadmeCommand("dotnet run --project src/Samples -c Release -- train --images photos --size 64")]
    [ReadmeCommand("dotnet run --project src/Samples -c Release -- predict --model model.zip photos/cat/1.jpg")]
    public void TrainOnAFolderThenPredictFromTheSavedModel()
    {
        var images = Folder("images");
        var rows = MLNetData.WritePngs(Folder("flat"), train: true, count: 200);
        foreach (var row in rows.Where(r => r.Label is "Trouser" or "Bag" or "Sneaker"))
        {
            var classFolder = Directory.CreateDirectory(Path.Combine(images, row.Label)).FullName;
            File.Copy(Path.Combine(TempFolder, "flat", row.ImagePath), Path.Combine(classFolder, row.ImagePath));
        }
        var (console, output) = CapturedConsole();
        var modelFile = new FileInfo(Path.Combine(TempFolder, "model.zip"));
        ImageFolderCommands.RunTrain(console, new ImageFolderCommands.TrainSettings(new DirectoryInfo(images), modelFile) { Epochs = 3, Size = 28, BatchSize = 16 });
        Assert.IsTrue(modelFile.Exists);

        var trousers = Directory.GetFiles(Path.Combine(images, "Trouser")).Take(3).Select(f => new FileInfo(f)).ToArray();
        ImageFolderCommands.RunPredict(console, modelFile, trousers);
        string text = output.ToString();
        Assert.IsGreaterThanOrEqualTo(2, text.Split('\n').Count(line => line.Contains("Trouser") && line.Contains(".png")), text);
    }

    [TestMethod]
    public void TrainFromPretrainedWeightsSaysWhatItLoadedAndPredicts()
    {
        var images = Folder("images");
        var rows = MLNetData.WritePngs(Folder("flat"), train: true, count: 120);
        foreach (var row in rows.Where(r => r.Label is "Trouser" or "Bag"))
        {
            var classFolder = Directory.CreateDirectory(Path.Combine(images, row.Label)).FullName;
            File.Copy(Path.Combine(TempFolder, "flat", row.ImagePath), Path.Combine(classFolder, row.ImagePath));
        }
        // A small CNN's weights for 3-channel 28×28 images and 10 classes, in PyTorch's format with this library's names.
        string weights = Path.Combine(TempFolder, "small-cnn.pth");
        using (var network = Torch.Architectures.NetworkBuilder.SmallCnn(3, 28, 28, 10))
            Torch.Pretrained.StateDictFile.WritePyTorch(weights, network.state_dict());
        var (console, output) = CapturedConsole();
        var modelFile = new FileInfo(Path.Combine(TempFolder, "model.zip"));
        ImageFolderCommands.RunTrain(console, new ImageFolderCommands.TrainSettings(new DirectoryInfo(images), modelFile)
        {
            Epochs = 2, Size = 28, BatchSize = 16, Pretrained = new FileInfo(weights), HeadOnlyEpochs = 1, BackboneLearningRateScale = 0.1,
        });
        string text = System.Text.RegularExpressions.Regex.Replace(output.ToString(), @"\s+", " ");   // the console wraps lines
        StringAssert.Contains(text, "Starting from the pretrained weights");
        StringAssert.Contains(text, "small CNN (3 input channels, 10 classes)");
        StringAssert.Contains(text, "has 10 classes and this network 2");
        StringAssert.Contains(text, "the classifier only for 1 epoch(s), backbone learning rate ×0.1");
        Assert.IsTrue(modelFile.Exists);
        ImageFolderCommands.RunPredict(console, modelFile, Directory.GetFiles(Path.Combine(images, "Bag")).Take(2).Select(f => new FileInfo(f)).ToArray());
        Assert.AreEqual(2, output.ToString().Split('\n').Count(line => line.Contains(".png") && line.Contains('%')), output.ToString());
    }

    [TestMethod]
    public void ExportThenPredictWithOnnxGivesTheClassesOfTheModel()
    {
        // The main job's model (pixel vectors, gray), exported and scored with ONNX Runtime; both in child processes (native ONNX Runtime).
        var (console, output) = CapturedConsole();
        var report = Folder("report");
        new MainJob(console, Source()).Run(new MainJobSettings { Epochs = 1, TrainLimit = 1000, TestLimit = 200, ReportFolder = report });
        var pngs = MLNetData.WritePngs(Folder("png"), train: false, count: 6).Select(p => Path.Combine(TempFolder, "png", p.ImagePath)).ToArray();
        string model = Path.Combine(report, "model.zip"), onnx = Path.Combine(TempFolder, "model.onnx");
        string samples = typeof(OnnxCommands).Assembly.Location;
        var exported = ChildProcessRunner.Run(samples, ["export", "--model", model, "--onnx", onnx], null, TimeSpan.FromMinutes(3));
        exported.AssertSucceeded("export");
        StringAssert.Contains(System.Text.RegularExpressions.Regex.Replace(exported.Output, @"\s+", " "), "input 'Features' [-1, 1, 28, 28]");
        var fromOnnx = ChildProcessRunner.Run(samples, ["predict", "--onnx", onnx, .. pngs], new Dictionary<string, string> { ["COLUMNS"] = "200" }, TimeSpan.FromMinutes(3));
        fromOnnx.AssertSucceeded("predict --onnx");
        ImageFolderCommands.RunPredict(console, new FileInfo(model), pngs.Select(p => new FileInfo(p)).ToArray());
        // Each image's row: name, class, probability, from both.
        static string[] Rows(string text) => text.Split('\n').Where(l => l.Contains("test-") && l.Contains('%'))
            .Select(l => System.Text.RegularExpressions.Regex.Replace(l, @"\s+", " ").Trim()).ToArray();
        var expected = Rows(output.ToString());
        Assert.HasCount(6, expected, output.ToString());
        CollectionAssert.AreEqual(expected, Rows(fromOnnx.Output), fromOnnx.Output);
    }

    [TestMethod]
    public void PredictReadsImagesForAModelTrainedOnPixelVectors()
    {
        var (console, output) = CapturedConsole();
        var report = Folder("report");
        new MainJob(console, Source()).Run(new MainJobSettings { Epochs = 1, TrainLimit = 1000, TestLimit = 200, ReportFolder = report });
        var pngs = MLNetData.WritePngs(Folder("png"), train: false, count: 4);
        ImageFolderCommands.RunPredict(console, new FileInfo(Path.Combine(report, "model.zip")),
            pngs.Select(p => new FileInfo(Path.Combine(TempFolder, "png", p.ImagePath))).ToArray());
        string text = output.ToString();
        Assert.AreEqual(4, text.Split('\n').Count(line => line.Contains("test-") && line.Contains('%')), text);
    }

    [TestMethod]
    public void ChartsAndImageTransformsShareOneProcess()
    {
        // OxyPlot on SkiaSharp 2.88 and ML.NET's image transforms (also SkiaSharp) in one process, in both orders.
        var ml = new MLContext(seed: 1);
        var rows = MLNetData.WritePngs(Folder("png"), train: true, count: 8);
        var pixels = ml.Transforms.LoadImages("Image", Path.Combine(TempFolder, "png"), "ImagePath")
            .Append(ml.Transforms.ResizeImages("Image", 28, 28)).Append(ml.Transforms.ExtractPixels("Features", "Image"));
        float[] Features() => ml.Data.CreateEnumerable<PixelsRow>(pixels.Fit(ml.Data.LoadFromEnumerable(rows)).Transform(ml.Data.LoadFromEnumerable(rows)), reuseRowObject: false).First().Features;
        var before = Features();

        string chart = Path.Combine(TempFolder, "chart.png");
        ReportCharts.LineChart(chart, "Test accuracy against training time", "Cumulative training time (s)", "Test accuracy (%)", legendAtBottom: true,
            [new ChartSeries("Backprop", [10, 20, 30], [80, 85, 88]), new ChartSeries("DBP", [11, 22, 33], [84, 88, 90])],
            new ChartMark(22, 88, "DBP reaches backprop's best (88.00 %) at 22 s"));

        CollectionAssert.AreEqual(before, Features(), "the image transforms still work after drawing");
        using var image = MLImage.CreateFromFile(chart);
        Assert.AreEqual(960, image.Width);
        Assert.AreEqual(620, image.Height);
        var bgra = image.GetBGRPixels;
        int stride = bgra.Length / (image.Width * image.Height);
        int Dark(int top, int bottom, int left, int right)
        {
            int count = 0;
            for (int y = top; y < bottom; y++)
                for (int x = left; x < right; x++)
                {
                    int at = (y * image.Width + x) * stride;
                    if (bgra[at] < 100 && bgra[at + 1] < 100 && bgra[at + 2] < 100)
                        count++;
                }
            return count;
        }
        Assert.IsGreaterThan(200, Dark(0, 45, 200, 760), "the title is drawn as text (a font was found)");
        Assert.IsGreaterThan(20_000, image.Width * image.Height - Dark(0, image.Height, 0, image.Width), "the chart is mostly light background");
    }

    private sealed class PixelsRow
    {
        public float[] Features { get; set; } = [];
    }
}
