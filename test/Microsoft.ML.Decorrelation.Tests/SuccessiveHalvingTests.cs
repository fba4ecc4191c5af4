using System.Globalization;
using Microsoft.ML.Data;
using Microsoft.ML.Decorrelation.Selection;
using Microsoft.VisualStudio.TestTools.UnitTesting;

namespace Microsoft.ML.Decorrelation.Tests;

/// <summary>The model-selection scheduler's decisions on a fake trial runner (no training).</summary>
[TestClass]
public class SuccessiveHalvingTests
{
    /// <summary>Runs the search with one worker: each work item reports <paramref name="metric"/>(trial, epochs); returns the work done.</summary>
    private static List<TrialWork> RunSequentially(AsynchronousSuccessiveHalving search, Func<int, int, double> metric, ISet<int>? failing = null)
    {
        var done = new List<TrialWork>();
        while (search.Next() is TrialWork work)
        {
            if (failing?.Contains(work.Trial) == true)
                search.ReportFailure(work);
            else
                search.Report(work, metric(work.Trial, work.Epochs));
            done.Add(work);
        }
        Assert.IsTrue(search.IsFinished);
        return done;
    }

    [TestMethod]
    public void RungsGrowByTheReductionFactorUpToTheFullRun()
    {
        CollectionAssert.AreEqual(new[] { 1, 3, 9 }, new AsynchronousSuccessiveHalving(9, 1, 9).Rungs.ToArray());
        CollectionAssert.AreEqual(new[] { 2, 4, 6 }, new AsynchronousSuccessiveHalving(9, 2, 6, reductionFactor: 2).Rungs.ToArray());
        CollectionAssert.AreEqual(new[] { 6 }, new AsynchronousSuccessiveHalving(3, 6, 6).Rungs.ToArray());
    }

    [TestMethod]
    public void EveryPromotionIsInTheTopThirdOfItsRungWhenMadeAndTheBestTrialRunsInFull()
    {
        // A fixed pseudo-random quality per trial, a little better with more epochs.
        var quality = Enumerable.Range(0, 27).Select(t => new Random(t * 7919).NextDouble()).ToArray();
        double Metric(int trial, int epochs) => quality[trial] + epochs / 1000.0;
        var work = RunSequentially(new AsynchronousSuccessiveHalving(27, 1, 9), Metric);

        for (int i = 0; i < work.Count; i++)
        {
            var w = work[i];
            if (w.Rung == 0)
                continue;
            // What the lower rung had reported when this promotion was handed out (one worker: everything before it).
            int lowerEpochs = new[] { 1, 3, 9 }[w.Rung - 1];
            var lower = work.Take(i).Where(x => x.Rung == w.Rung - 1).Select(x => (x.Trial, Metric: Metric(x.Trial, lowerEpochs))).ToList();
            var top = lower.OrderByDescending(x => x.Metric).Take(lower.Count / 3).Select(x => x.Trial).ToList();
            CollectionAssert.Contains(top, w.Trial, $"promotion {w} made from {lower.Count} results whose top third is {string.Join(", ", top)}");
        }
        Assert.AreEqual(27, work.Count(w => w.Rung == 0), "every trial started");
        for (int rung = 0; rung < 2; rung++)
        {
            // Once everything has reported, the final top third of each rung has been promoted (earlier leaders may be too).
            int epochs = new[] { 1, 3 }[rung];
            var reported = work.Where(w => w.Rung == rung).Select(w => w.Trial).ToList();
            var finalTop = reported.OrderByDescending(t => Metric(t, epochs)).Take(reported.Count / 3);
            var promoted = work.Where(w => w.Rung == rung + 1).Select(w => w.Trial).ToHashSet();
            Assert.IsTrue(finalTop.All(promoted.Contains), $"rung {rung}: top {string.Join(", ", finalTop)}, promoted {string.Join(", ", promoted)}");
            Assert.IsLessThan(reported.Count / 2, promoted.Count, $"rung {rung}: promotions stay near a third ({promoted.Count} of {reported.Count})");
        }
        int best = Enumerable.Range(0, 27).MaxBy(t => quality[t]);
        Assert.IsTrue(work.Contains(new TrialWork(best, 2, 9)), "the best trial runs its full 9 epochs");
        CollectionAssert.AreEqual(work, RunSequentially(new AsynchronousSuccessiveHalving(27, 1, 9), Metric), "the same reports give the same decisions");
    }

    [TestMethod]
    public void ASearchTooSmallForATopThirdStillGivesItsBestTrialAFullRun()
    {
        // Two trials and η 3: no rung ever has a top third, yet once both have run the better one is taken to the top rung.
        var done = RunSequentially(new AsynchronousSuccessiveHalving(2, 1, 9), (trial, epochs) => trial == 1 ? 0.8 : 0.6);
        CollectionAssert.AreEqual(new[] { new TrialWork(0, 0, 1), new TrialWork(1, 0, 1), new TrialWork(1, 1, 3), new TrialWork(1, 2, 9) }, done);
        // A trial whose metric is NaN is never taken there.
        var nan = RunSequentially(new AsynchronousSuccessiveHalving(1, 1, 3), (_, _) => double.NaN);
        CollectionAssert.AreEqual(new[] { new TrialWork(0, 0, 1) }, nan);
    }

    [TestMethod]
    public void TrialsWithShorterFullRunsFinishOnTheirRungAndAreNeverPromotedPastIt()
    {
        // Rungs 1, 3, 9; trials 0, 3, 6 have full runs of 3 epochs, trials 1, 4, 7 of 4, the rest of 9. Trial t's quality is t.
        int FullRun(int trial) => (trial % 3) switch { 0 => 3, 1 => 4, _ => 9 };
        var search = new AsynchronousSuccessiveHalving(9, 1, 9, trialEpochs: FullRun);
        CollectionAssert.AreEqual(new[] { 1, 3, 9 }, search.Rungs.ToArray());
        var work = RunSequentially(search, (trial, epochs) => trial + epochs / 100.0);
        Console.WriteLine(string.Join("\n", work));

        foreach (var w in work)
        {
            Assert.AreEqual(Math.Min(new[] { 1, 3, 9 }[w.Rung], FullRun(w.Trial)), w.Epochs, $"{w}: its rung's epochs, capped at its full run");
            Assert.IsFalse(w.Rung == 2 && FullRun(w.Trial) == 3, $"{w}: a trial that finished at 3 epochs is never promoted again");
        }
        // Rung 0's final top third (8, 7, 6) all went on; rung 1's best (8, 9 epochs) ran in full, and 7 (4 epochs) finished on rung 2.
        CollectionAssert.IsSubsetOf(new[] { 8, 7, 6 }, work.Where(w => w.Rung == 1).Select(w => w.Trial).ToArray());
        Assert.IsTrue(work.Contains(new TrialWork(8, 2, 9)), string.Join(", ", work));
        Assert.IsFalse(work.Any(w => w.Trial == 6 && w.Rung == 2), "trial 6 finished its 3 epochs on rung 1");
        Assert.AreEqual(9, search.StartedTrials);

        // A small search whose only promoted trial finished on rung 1 does not force another trial to the top: it has its full run.
        var small = RunSequentially(new AsynchronousSuccessiveHalving(2, 1, 9, trialEpochs: t => t == 0 ? 3 : 9), (trial, _) => trial == 0 ? 0.9 : 0.5);
        CollectionAssert.AreEqual(new[] { new TrialWork(0, 0, 1), new TrialWork(1, 0, 1), new TrialWork(0, 1, 3) }, small);
    }

    [TestMethod]
    public void OneRungAtTheLongestFullRunIsRandomSearchEveryTrialRunsItsOwnFullRunOnce()
    {
        var work = RunSequentially(new AsynchronousSuccessiveHalving(4, 6, 6, trialEpochs: t => t % 2 == 0 ? 3 : 6), (trial, _) => trial);
        CollectionAssert.AreEqual(new[] { new TrialWork(0, 0, 3), new TrialWork(1, 0, 6), new TrialWork(2, 0, 3), new TrialWork(3, 0, 6) }, work);
    }

    [TestMethod]
    public void FailedTrialsAreRecordedAndNeverPromoted()
    {
        var search = new AsynchronousSuccessiveHalving(6, 1, 3);
        var work = RunSequentially(search, (trial, _) => trial, failing: new HashSet<int> { 5, 2 });
        Assert.IsFalse(work.Any(w => w.Rung > 0 && (w.Trial == 5 || w.Trial == 2)), string.Join(", ", work));
        Assert.AreEqual(2, work.Count(w => w.Rung == 1), "two of six reported results promote; failures take no place");
        Assert.AreEqual(6, search.StartedTrials);
    }

    [TestMethod]
    public void ParallelWorkersWaitWhenNothingCanStartAndDecisionsFollowTheReportOrder()
    {
        var search = new AsynchronousSuccessiveHalving(3, 1, 3);
        var a = search.Next()!.Value;
        var b = search.Next()!.Value;
        var c = search.Next()!.Value;
        Assert.IsNull(search.Next(), "all trials started and none reported: a free worker waits");
        Assert.IsFalse(search.IsFinished);
        search.Report(b, 0.9);
        search.Report(a, 0.5);
        Assert.IsNull(search.Next(), "two results: the top third is empty");
        search.Report(c, 0.7);
        Assert.AreEqual(new TrialWork(b.Trial, 1, 3), search.Next());
        Assert.ThrowsExactly<InvalidOperationException>(() => search.Report(a, 0.1), "a finished trial cannot report again");
    }

    [TestMethod]
    public void BadSettingsAreRejectedNamingTheSetting()
    {
        StringAssert.Contains(Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => new AsynchronousSuccessiveHalving(0, 1, 3)).ParamName, "maxTrials");
        StringAssert.Contains(Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => new AsynchronousSuccessiveHalving(3, 4, 3)).Message, "lowest rung");
        StringAssert.Contains(Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => new AsynchronousSuccessiveHalving(3, 1, 3, 1)).ParamName, "reductionFactor");
    }

    [TestMethod]
    public void TinyExperimentFindsASavableModelAndPromotedTrialsEndLikePlainRuns()
    {
        var ml = new MLContext(seed: 1);
        var rows = MLNetData.PixelRows(train: true, count: 1200).ToArray();
        var keys = ml.Transforms.Conversion.MapValueToKey("Label").Fit(ml.Data.LoadFromEnumerable(rows));
        var train = keys.Transform(ml.Data.LoadFromEnumerable(rows.Take(1000)));
        var validation = keys.Transform(ml.Data.LoadFromEnumerable(rows.Skip(1000)));
        var progress = new List<string>();
        var experiment = new DecorrelatedImageClassificationExperiment(ml, new DecorrelatedImageClassificationExperiment.Settings
        {
            MaxTrials = 4, MinEpochs = 1, ReductionFactor = 2, Seed = 3,
            SearchSpace = new ImageClassificationSearchSpace { BatchSize = [100], MaxEpoch = [2] },
            Progress = t => progress.Add(t.ToString()),
        });
        var result = experiment.Execute(train, validation);
        using var best = result.BestModel;
        Console.WriteLine(string.Join("\n", result.Trials));

        Assert.HasCount(4, result.Trials);
        Assert.IsTrue(result.Trials.Count(t => t.State == TrialState.Completed) >= 2, "the top half of 4 reaches the full run");
        Assert.AreEqual(TrialState.Completed, result.BestTrial.State);
        Assert.AreEqual(result.Trials.Where(t => t.State == TrialState.Completed).Max(t => t.ValidationAccuracy), result.BestTrial.ValidationAccuracy);
        Assert.IsNotEmpty(progress);

        // The returned model scores the validation set as its trial reported it.
        var evaluation = ml.MulticlassClassification.Evaluate(best.Transform(validation));
        Assert.AreEqual(result.BestTrial.ValidationAccuracy, evaluation.MicroAccuracy, 1e-9);

        // A promoted trial resumed from its rung's checkpoint ends exactly where a plain run of the same options does.
        var options = result.BestTrial.Options.Clone();
        options.MaxEpoch = 2;
        options.Seed = 3 + result.BestTrial.Trial;
        options.ValidationSet = validation;
        using var plain = ml.MulticlassClassification.Trainers.DecorrelatedImageClassification(options).Fit(train);
        Assert.AreEqual(evaluation.MicroAccuracy, ml.MulticlassClassification.Evaluate(plain.Transform(validation)).MicroAccuracy, 1e-12);
        CollectionAssert.AreEqual(best.Transform(validation).GetColumn<float[]>("Score").SelectMany(x => x).ToArray(),
            plain.Transform(validation).GetColumn<float[]>("Score").SelectMany(x => x).ToArray(), "bit for bit");

        // Saves and loads like any model.
        var path = Path.Combine(Path.GetTempPath(), $"dbp-experiment-{Guid.NewGuid():N}.zip");
        try
        {
            ml.Model.Save(best, validation.Schema, path);
            var loaded = ml.Model.Load(path, out _);
            Assert.AreEqual(evaluation.MicroAccuracy, ml.MulticlassClassification.Evaluate(loaded.Transform(validation)).MicroAccuracy, 1e-12);
        }
        finally
        {
            File.Delete(path);
        }
    }

    [TestMethod]
    public void SearchingTheNumberOfEpochsEndsEachTrialWithItsOwnScheduleLikeAPlainRun()
    {
        var ml = new MLContext(seed: 1);
        var rows = ml.Data.LoadFromEnumerable(MLNetData.PixelRows(train: true, count: 600));
        var data = ml.Transforms.Conversion.MapValueToKey("Label").Fit(rows).Transform(rows);
        var split = ml.Data.TrainTestSplit(data, 0.25, seed: 2);
        var experiment = new DecorrelatedImageClassificationExperiment(ml, new DecorrelatedImageClassificationExperiment.Settings
        {
            MaxTrials = 4, MinEpochs = 1, ReductionFactor = 2, Seed = 2,
            SearchSpace = new ImageClassificationSearchSpace { BatchSize = [100], MaxEpoch = [1, 2] },
        });
        var result = experiment.Execute(split.TrainSet, split.TestSet);
        using var best = result.BestModel;
        Console.WriteLine(string.Join("\n", result.Trials));

        CollectionAssert.AreEquivalent(new[] { 1, 2 }, result.Trials.Select(t => t.Options.MaxEpoch).Distinct().ToArray(), "the seed draws both full runs");
        foreach (var trial in result.Trials)
        {
            Assert.AreEqual(trial.Configuration.MaxEpoch, trial.Options.MaxEpoch);
            if (trial.Options.MaxEpoch == 1)
                Assert.IsTrue(trial.State == TrialState.Completed && trial.Rung == 0 && trial.EpochsRun == 1, $"a 1-epoch trial finishes on the lowest rung: {trial}");
            else
                Assert.IsTrue(trial.State == TrialState.Stopped && trial.EpochsRun == 1 || trial.State == TrialState.Completed && trial.EpochsRun == 2, trial.ToString());
        }
        // The best trial, whatever its full run, ends where a plain run of its options (its own schedule) does.
        var options = result.BestTrial.Options.Clone();
        options.Seed = 2 + result.BestTrial.Trial;
        options.ValidationSet = split.TestSet;
        using var plain = ml.MulticlassClassification.Trainers.DecorrelatedImageClassification(options).Fit(split.TrainSet);
        CollectionAssert.AreEqual(best.Transform(split.TestSet).GetColumn<float[]>("Score").SelectMany(x => x).ToArray(),
            plain.Transform(split.TestSet).GetColumn<float[]>("Score").SelectMany(x => x).ToArray(), $"bit for bit: {result.BestTrial}");
    }

    [TestMethod]
    public void RandomSearchRunsEveryTrialToItsFullRunAndSaysSoInTheLog()
    {
        var ml = new MLContext(seed: 1);
        var log = new List<string>();
        ml.Log += (_, e) =>
        {
            if (e.Kind == Runtime.ChannelMessageKind.Info && e.Source.Contains(nameof(DecorrelatedImageClassificationExperiment)))
                lock (log) log.Add(e.RawMessage);
        };
        var rows = ml.Data.LoadFromEnumerable(MLNetData.PixelRows(train: true, count: 500));
        var data = ml.Transforms.Conversion.MapValueToKey("Label").Fit(rows).Transform(rows);
        var experiment = new DecorrelatedImageClassificationExperiment(ml, new DecorrelatedImageClassificationExperiment.Settings
        {
            Strategy = SearchStrategy.RandomSearch, MaxTrials = 3, MinEpochs = 5, Seed = 2,   // MinEpochs plays no part in random search
            SearchSpace = new ImageClassificationSearchSpace { BatchSize = [100], MaxEpoch = [1, 2] },
        });
        var result = experiment.Execute(data, validationFraction: 0.2);
        using var best = result.BestModel;
        Assert.HasCount(3, result.Trials);
        foreach (var trial in result.Trials)
            Assert.IsTrue(trial.State == TrialState.Completed && trial.Rung == 0 && trial.EpochsRun == trial.Options.MaxEpoch && trial.Curve.Count == trial.EpochsRun, trial.ToString());
        Assert.AreEqual(result.Trials.Max(t => t.Metric), result.BestTrial.Metric);
        StringAssert.Contains(log[0], ": searching 3 trials of 1 or 2 epochs (random search) by MicroAccuracy");
    }

    [TestMethod]
    public void ATrialThatThrowsIsRecordedAsFailedWithItsErrorAndTheExperimentGoesOn()
    {
        var ml = new MLContext(seed: 1);
        var rows = ml.Data.LoadFromEnumerable(MLNetData.PixelRows(train: true, count: 200));
        var data = ml.Transforms.Conversion.MapValueToKey("Label").Fit(rows).Transform(rows);
        string empty = Path.GetTempFileName();   // an empty state dict: the trainer's reader refuses it with an InvalidDataException
        try
        {
            var failures = new List<TrialRecord>();
            var experiment = new DecorrelatedImageClassificationExperiment(ml, new DecorrelatedImageClassificationExperiment.Settings
            {
                MaxTrials = 2, Seed = 1, BaseOptions = new DecorrelatedImageClassificationTrainer.Options { PretrainedWeightsPath = empty },
                SearchSpace = new ImageClassificationSearchSpace { BatchSize = [100], MaxEpoch = [1], Architectures = [CnnArchitecture.ResNet18] },
                Progress = t => { if (t.State == TrialState.Failed) failures.Add(t); },
            });
            var error = Assert.ThrowsExactly<InvalidOperationException>(() => experiment.Execute(data, validationFraction: 0.5));
            StringAssert.Contains(error.Message, "No trial finished its full run within the budget (2 started)");
            Assert.HasCount(2, failures, "both trials ran and failed; the first failure did not end the search");
            foreach (var trial in failures)
                StringAssert.Contains(trial.Error, empty, trial.ToString());
        }
        finally
        {
            File.Delete(empty);
        }
    }

    [TestMethod]
    public void ValidationFractionSplitsTheDataAndTheSearchReportsToMLNetsLog()
    {
        var ml = new MLContext(seed: 1);
        var log = new List<string>();
        ml.Log += (_, e) =>
        {
            if (e.Kind == Runtime.ChannelMessageKind.Info && e.Source.Contains(nameof(DecorrelatedImageClassificationExperiment)))
                lock (log) log.Add(e.RawMessage);
        };
        var rows = ml.Data.LoadFromEnumerable(MLNetData.PixelRows(train: true, count: 600));
        var data = ml.Transforms.Conversion.MapValueToKey("Label").Fit(rows).Transform(rows);
        var experiment = new DecorrelatedImageClassificationExperiment(ml, new DecorrelatedImageClassificationExperiment.Settings
        {
            MaxTrials = 2, MinEpochs = 1, ReductionFactor = 2, Seed = 5,
            SearchSpace = new ImageClassificationSearchSpace { BatchSize = [100], MaxEpoch = [1] },
        });
        var result = experiment.Execute(data, validationFraction: 0.25);
        using var best = result.BestModel;
        // ML.NET's TrainTestSplit with the experiment's seed: the same held-out rows score the best trial's reported accuracy.
        var held = ml.Data.TrainTestSplit(data, 0.25, seed: 5).TestSet;
        Assert.AreEqual(result.BestTrial.ValidationAccuracy, ml.MulticlassClassification.Evaluate(best.Transform(held)).MicroAccuracy, 1e-9);
        StringAssert.Contains(log[0], ": searching 2 trials of 1..1 epochs (η 2) by MicroAccuracy");
        Assert.AreEqual(2, log.Count(l => l.StartsWith("Rung 0 (1 epochs) of trial", StringComparison.Ordinal)), string.Join("\n", log));
        StringAssert.StartsWith(log[^1], "Best: trial");
        Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => experiment.Execute(data, validationFraction: 1));
    }

    [TestMethod]
    public void CrossValidatedSearchRanksByTheMeanOfTheFoldsReturnsTheBestFoldsModelAndLoadsBackFromItsJournal()
    {
        var ml = new MLContext(seed: 1);
        var rows = ml.Data.LoadFromEnumerable(MLNetData.PixelRows(train: true, count: 360));
        var data = ml.Transforms.Conversion.MapValueToKey("Label").Fit(rows).Transform(rows);
        string folder = Directory.CreateTempSubdirectory("dbp-folds").FullName;
        try
        {
            var experiment = new DecorrelatedImageClassificationExperiment(ml, new DecorrelatedImageClassificationExperiment.Settings
            {
                MaxTrials = 2, MinEpochs = 1, ReductionFactor = 2, Seed = 4, SearchSpace = new ImageClassificationSearchSpace { BatchSize = [100], MaxEpoch = [1] },
                Storage = Path.Combine(folder, "study.sqlite"),
            });
            var result = experiment.Execute(data, folds: 3);
            using var best = result.BestModel;
            // Each fold trained alone with the best trial's options: the trial's metric is their mean, the model the best fold's.
            var folds = ml.Data.CrossValidationSplit(data, 3, seed: 4);
            var accuracies = FoldAccuraciesTrainedAlone(ml, folds, result.BestTrial);
            AssertMeanOfFoldsAndBestFoldsModel(ml, folds, accuracies, result.BestTrial, best);

            // The study loaded back from its journal, as a report process would: the same trials, the same best model.
            var loaded = experiment.LoadResult(data, folds: 3);
            using var loadedBest = loaded.BestModel;
            Assert.AreEqual(result.BestTrial.Trial, loaded.BestTrial.Trial);
            CollectionAssert.AreEqual(result.Trials.Select(t => t.Metric).ToArray(), loaded.Trials.Select(t => t.Metric).ToArray());
            AssertMeanOfFoldsAndBestFoldsModel(ml, folds, accuracies, loaded.BestTrial, loadedBest);   // the same trial, so the same folds trained alone
            var otherFolds = Assert.ThrowsExactly<InvalidOperationException>(() => experiment.LoadResult(data, folds: 2));
            StringAssert.Contains(otherFolds.Message, "belongs to another study");
            StringAssert.Contains(otherFolds.Message, "3-fold cross-validation");
            Assert.ThrowsExactly<InvalidOperationException>(() => experiment.LoadResult(data, validationFraction: 0.25));
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
        Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => new DecorrelatedImageClassificationExperiment(ml, new DecorrelatedImageClassificationExperiment.Settings()).Execute(data, folds: 1));
    }

    private static double[] FoldAccuraciesTrainedAlone(MLContext ml, IReadOnlyList<DataOperationsCatalog.TrainTestData> folds, TrialRecord trial)
    {
        var options = trial.Configuration.Apply(new DecorrelatedImageClassificationTrainer.Options());
        options.MaxEpoch = 1;
        options.Seed = 4 + trial.Trial;
        return folds.Select(fold =>
        {
            options.ValidationSet = fold.TestSet;
            using var model = ml.MulticlassClassification.Trainers.DecorrelatedImageClassification(options).Fit(fold.TrainSet);
            return ml.MulticlassClassification.Evaluate(model.Transform(fold.TestSet)).MicroAccuracy;
        }).ToArray();
    }

    private static void AssertMeanOfFoldsAndBestFoldsModel(MLContext ml, IReadOnlyList<DataOperationsCatalog.TrainTestData> folds, double[] accuracies,
        TrialRecord trial, DecorrelatedImageClassificationTransformer best)
    {
        Assert.AreEqual(accuracies.Average(), trial.ValidationAccuracy, 1e-9, string.Join(", ", accuracies));
        Assert.AreEqual(accuracies.Average(), trial.Metric, 1e-9);
        int bestFold = Array.IndexOf(accuracies, accuracies.Max());
        Assert.AreEqual(accuracies[bestFold], ml.MulticlassClassification.Evaluate(best.Transform(folds[bestFold].TestSet)).MicroAccuracy, 1e-9, "the best fold's model");
    }

    [TestMethod]
    public void AJournalThatCannotBeOpenedIsAnErrorNamingIt()
    {
        var ml = new MLContext(seed: 1);
        var rows = ml.Data.LoadFromEnumerable(MLNetData.PixelRows(train: true, count: 40));
        var data = ml.Transforms.Conversion.MapValueToKey("Label").Fit(rows).Transform(rows);
        // A folder where the file should be: no SQLite database can be opened there (permissions would not stop root).
        var folder = Directory.CreateTempSubdirectory("dbp-journal-folder").FullName;
        try
        {
            var experiment = new DecorrelatedImageClassificationExperiment(ml, new DecorrelatedImageClassificationExperiment.Settings { Storage = folder, WorkFolder = folder + ".work" });
            var e = Assert.ThrowsExactly<IOException>(() => experiment.Execute(data, data));
            StringAssert.Contains(e.Message, $"The study journal '{folder}' cannot be opened for writing");
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
            if (Directory.Exists(folder + ".work"))
                Directory.Delete(folder + ".work", recursive: true);
        }
    }

    [TestMethod]
    public void EmptySearchSpaceIsRejectedNamingTheSetting()
    {
        var error = Assert.ThrowsExactly<ArgumentException>(() => new DecorrelatedImageClassificationExperiment(new MLContext(),
            new DecorrelatedImageClassificationExperiment.Settings { SearchSpace = new ImageClassificationSearchSpace { UseDecorrelation = [] } }));
        StringAssert.Contains(error.Message, "Search space UseDecorrelation is empty");
        StringAssert.Contains(Assert.ThrowsExactly<ArgumentException>(() => new ImageClassificationSearchSpace { LearningRate = (1e-2, 1e-3) }.Validate()).Message, "LearningRate");
    }

    [TestMethod]
    public void FullRunsTheSearchSpaceCannotHoldAreRejectedNamingTheSetting()
    {
        StringAssert.Contains(Assert.ThrowsExactly<ArgumentException>(() => new ImageClassificationSearchSpace { MaxEpoch = [] }.Validate()).Message, "Search space MaxEpoch is empty");
        StringAssert.Contains(Assert.ThrowsExactly<ArgumentException>(() => new ImageClassificationSearchSpace { MaxEpoch = [3, 0] }.Validate()).Message, "MaxEpoch holds 0");
        var error = Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => new DecorrelatedImageClassificationExperiment(new MLContext(),
            new DecorrelatedImageClassificationExperiment.Settings { MinEpochs = 2, SearchSpace = new ImageClassificationSearchSpace { MaxEpoch = [1, 6] } }));
        StringAssert.Contains(error.Message, "Settings.MinEpochs (2) exceeds the search space's shortest MaxEpoch (1)");
        var outside = new AsynchronousSuccessiveHalving(2, 1, 3, trialEpochs: trial => 4);
        StringAssert.Contains(Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => outside.Next()).Message, "Trial 0's full run of 4 epochs lies outside [1, 3], the top rung");
    }

    [TestMethod]
    public void KilledExperimentResumesFromItsJournalAndEndsAsAnUninterruptedOne()
    {
        var ml = new MLContext(seed: 1);
        var rows = MLNetData.PixelRows(train: true, count: 900).ToArray();
        var keys = ml.Transforms.Conversion.MapValueToKey("Label").Fit(ml.Data.LoadFromEnumerable(rows));
        var train = keys.Transform(ml.Data.LoadFromEnumerable(rows.Take(700)));
        var validation = keys.Transform(ml.Data.LoadFromEnumerable(rows.Skip(700)));
        string folder = Directory.CreateTempSubdirectory("dbp-journal").FullName;
        try
        {
            DecorrelatedImageClassificationExperiment.Settings Settings(string journal, Action<TrialRecord>? progress = null) => new()
            {
                MaxTrials = 4, MinEpochs = 1, ReductionFactor = 2, Seed = 5, Storage = Path.Combine(folder, journal),
                SearchSpace = new ImageClassificationSearchSpace { BatchSize = [100], MaxEpoch = [2] }, Progress = progress,
            };
            var uninterrupted = new DecorrelatedImageClassificationExperiment(ml, Settings("whole.sqlite")).Execute(train, validation);
            uninterrupted.BestModel.Dispose();

            // Killed after three rung results: the cancellation lands before the fourth work item is claimed.
            using var kill = new CancellationTokenSource();
            int reported = 0;
            var first = new DecorrelatedImageClassificationExperiment(ml, Settings("killed.sqlite", t => { if (t.State != TrialState.Running && ++reported == 3) kill.Cancel(); }));
            Assert.ThrowsExactly<OperationCanceledException>(() => first.Execute(train, validation, kill.Token));
            var resumedWork = new List<string>();
            ml.Log += (_, e) =>
            {
                if (e.Source.Contains(nameof(DecorrelatedImageClassificationExperiment)) && e.RawMessage.StartsWith("Rung ", StringComparison.Ordinal))
                    lock (resumedWork) resumedWork.Add(e.RawMessage);
            };
            var resumed = new DecorrelatedImageClassificationExperiment(ml, Settings("killed.sqlite")).Execute(train, validation);
            using var best = resumed.BestModel;

            Assert.AreEqual(uninterrupted.Trials.Count(t => t.State == TrialState.Completed) + uninterrupted.Trials.Count(t => t.State == TrialState.Stopped),
                resumed.Trials.Count, "every trial accounted for");
            Assert.AreEqual(uninterrupted.Trials.Sum(t => t.Rung + 1) - 3, resumedWork.Count,
                $"the resumed run does only the rungs not reported before the kill: {string.Join(", ", resumedWork)}");
            CollectionAssert.AreEqual(uninterrupted.Trials.Select(t => t.ValidationAccuracy).ToArray(), resumed.Trials.Select(t => t.ValidationAccuracy).ToArray(),
                "the same trials end with the same accuracies as the uninterrupted study");
            Assert.AreEqual(uninterrupted.BestTrial.Trial, resumed.BestTrial.Trial);

            // Another study cannot use this journal.
            var other = Settings("killed.sqlite");
            other.SearchSpace.MaxEpoch = [3];
            var error = Assert.ThrowsExactly<InvalidOperationException>(() => new DecorrelatedImageClassificationExperiment(ml, other).Execute(train, validation));
            StringAssert.Contains(error.Message, "belongs to another study: its search");
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    /// <summary>The work a worker reported, from its "Rung R (E epochs) of trial T: …" log lines.</summary>
    private static List<(int Trial, int Rung, string Line)> WorkDone(IEnumerable<string> lines)
        => lines.Where(l => l.StartsWith("Rung ", StringComparison.Ordinal)).Select(l =>
        {
            var words = l.Split(' ');
            return (int.Parse(words[6].TrimEnd(':'), CultureInfo.InvariantCulture), int.Parse(words[1], CultureInfo.InvariantCulture), l);
        }).ToList();

    /// <summary>Each trial's validation accuracy after each rung, as one worker alone finds them (computed once for the tests that compare with it).</summary>
    private static readonly Lazy<Dictionary<(int Trial, int Rung), double>> SingleWorker = new(() =>
    {
        string folder = Directory.CreateTempSubdirectory("dbp-single-worker").FullName;
        try
        {
            var (ml, train, validation) = SelectionCases.Data();
            var rungs = new Dictionary<(int, int), double>();
            var result = new DecorrelatedImageClassificationExperiment(ml, SelectionCases.Study(Path.Combine(folder, "single.sqlite"), t =>
            {
                if (t.State is TrialState.Stopped or TrialState.Completed)
                    rungs[(t.Trial, t.Rung)] = t.ValidationAccuracy;
            })).Execute(train, validation);
            result.BestModel.Dispose();
            return rungs;
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    });

    [TestMethod]
    [DataRow("sqlite")]
    [DataRow("postgresql")]
    public void TwoWorkerProcessesShareOneJournalAndRunEveryPieceOfWorkOnce(string database)
    {
        string journal = database == "sqlite" ? "" : PostgresServer.Url();
        string study = "w" + Guid.NewGuid().ToString("N")[..12];
        string folder = Directory.CreateTempSubdirectory("dbp-workers").FullName;
        try
        {
            if (database == "sqlite")
                journal = Path.Combine(folder, "shared.sqlite");
            var workers = Enumerable.Range(0, 2).Select(i => Task.Run(() => ChildProcess.Run(
                [SelectionCases.Command, journal, Path.Combine(folder, $"worker-{i}.txt"), "live", Path.Combine(folder, "work"), study], timeoutSeconds: 600))).ToArray();
            var single = SingleWorker.Value;
            foreach (var (worker, i) in workers.Select((w, i) => (w, i)))
                worker.Result.AssertSucceeded($"worker {i}");
            var outputs = Enumerable.Range(0, 2).Select(i => File.ReadAllLines(Path.Combine(folder, $"worker-{i}.txt"))).ToArray();
            var done = outputs.SelectMany(WorkDone).ToList();
            Console.WriteLine(string.Join("\n", outputs.Select((o, i) => $"worker {i}:\n  " + string.Join("\n  ", o))));

            Assert.IsTrue(outputs.All(o => WorkDone(o).Count > 0), "both workers did work");
            Assert.AreEqual(done.Count, done.Select(d => (d.Trial, d.Rung)).Distinct().Count(), "no piece of work ran twice");
            CollectionAssert.AreEquivalent(Enumerable.Range(0, 6).ToArray(), done.Where(d => d.Rung == 0).Select(d => d.Trial).ToArray(), "every trial started once");
            foreach (var (trial, rung, line) in done.Where(d => single.ContainsKey((d.Trial, d.Rung))))
                StringAssert.Contains(line, $"validation accuracy {single[(trial, rung)]:P2}", $"trial {trial} rung {rung} ends as in the single-worker study");
            Assert.AreEqual(outputs[0][^1], outputs[1][^1], "both workers return the study's best trial");
            int bestTrial = int.Parse(outputs[0][^1].Split(' ')[1], CultureInfo.InvariantCulture);
            Assert.IsTrue(done.Any(d => d.Trial == bestTrial && d.Rung == 1), "the best trial ran its full run");
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    [TestMethod]
    [Timeout(300_000)]
    public void WorkOfAWorkerThatDiesMidTrialIsFinishedByAnother()
    {
        string folder = Directory.CreateTempSubdirectory("dbp-dead-worker").FullName;
        try
        {
            string journal = Path.Combine(folder, "shared.sqlite");
            var dead = ChildProcess.Run([SelectionCases.Command, journal, Path.Combine(folder, "dead.txt"), "die"]);
            Assert.AreNotEqual(0, dead.ExitCode, dead.Output);
            StringAssert.Contains(dead.Output, "dying mid-trial as asked");

            var (ml, train, validation) = SelectionCases.Data();
            var warnings = new List<string>();
            var rungs = new Dictionary<(int, int), double>();
            ml.Log += (_, e) =>
            {
                if (e.Kind == Runtime.ChannelMessageKind.Warning && e.Source.Contains(nameof(DecorrelatedImageClassificationExperiment)))
                    lock (warnings) warnings.Add(e.RawMessage);
            };
            // The dead worker's claim is taken over at once, its process being gone: waiting out the 10-minute lease would hit the test's timeout.
            var result = new DecorrelatedImageClassificationExperiment(ml, SelectionCases.Study(journal, t =>
            {
                if (t.State is TrialState.Stopped or TrialState.Completed)
                    rungs[(t.Trial, t.Rung)] = t.ValidationAccuracy;
            })).Execute(train, validation);
            using var best = result.BestModel;

            Assert.AreEqual("Trial 0's rung 0 was claimed by a worker that stopped without reporting; continuing it from its last checkpoint.", warnings.Single());
            Assert.HasCount(6, result.Trials);
            Assert.IsTrue(result.Trials.All(t => t.State is TrialState.Stopped or TrialState.Completed), string.Join("\n", result.Trials));
            var single = SingleWorker.Value;
            CollectionAssert.AreEquivalent(single.Keys.ToArray(), rungs.Keys.ToArray(), "the same work as one uninterrupted worker");
            foreach (var (key, accuracy) in single)
                Assert.AreEqual(accuracy, rungs[key], 1e-12, $"trial {key.Item1} rung {key.Item2}");
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }
}
