using Microsoft.Data.Sqlite;
using Microsoft.ML.Decorrelation.Selection;
using Microsoft.VisualStudio.TestTools.UnitTesting;

namespace Microsoft.ML.Decorrelation.Tests;

/// <summary>The study journal's transactions on a fake clock: claims, leases, requeues, reports, schema migration.</summary>
[TestClass]
public class StudyJournalTests : TempFolderTest
{
    private static readonly Dictionary<string, string> Study = new() { ["search"] = "test study" };
    private static readonly TimeSpan Lease = TimeSpan.FromSeconds(10);

    private static TrialRecord NewTrial(int number)
    {
        var configuration = new ImageClassificationSearchSpace().Sample(0, number);
        return new TrialRecord(number, configuration, configuration.Apply(new DecorrelatedImageClassificationTrainer.Options()));
    }

    private static StudyJournal.Decision Claim(StudyJournal journal, string worker, long now, int trials = 3, Func<string, bool>? isDead = null)
        => journal.ClaimWork(worker, now, Lease, new AsynchronousSuccessiveHalving(trials, 1, 3), m => m, NewTrial, isDead ?? (_ => false));

    /// <summary>A new study in an SQLite file or on the PostgreSQL server of the tests.</summary>
    private StudyStorage NewStudy(string database)
        => database == "sqlite" ? StudyStorage.Parse(Path.Combine(TempFolder, $"study-{Guid.NewGuid():N}.sqlite")) : PostgresServer.NewStudy();

    [TestMethod]
    [DataRow("sqlite")]
    [DataRow("postgresql")]
    public void WorkIsHandedOutOnceAndAbandonedClaimsAreRequeuedUntilTheTrialIsFailed(string database)
    {
        using var journal = StudyJournal.Open(NewStudy(database), Study);
        Assert.AreEqual(new TrialWork(0, 0, 1), Claim(journal, "a", now: 0).Work);
        Assert.AreEqual(new TrialWork(1, 0, 1), Claim(journal, "b", now: 1000).Work, "a's claim is live: b gets the next trial");
        Assert.IsTrue(journal.Renew("a", 0, 30_000), "a renews its own claim");
        Assert.IsFalse(journal.Renew("b", 0, 30_000), "b cannot renew a's claim");

        // At 20 s b's lease (to 11 s) has run out, a's (renewed to 30 s) has not: c takes over trial 1.
        var requeued = Claim(journal, "c", now: 20_000);
        Assert.AreEqual(new TrialWork(1, 0, 1), requeued.Work);
        Assert.IsTrue(requeued.Requeued);
        var late = NewTrial(1);
        late.State = TrialState.Stopped;
        Assert.IsFalse(journal.Record(late, new TrialWork(1, 0, 1), failed: false, "b"), "b lost its claim: its late report does not count");

        // A worker whose process is known to be dead loses its claim before the lease ends; after MaxAttempts the trial is failed.
        Assert.AreEqual(new TrialWork(1, 0, 1), Claim(journal, "d", now: 21_000, isDead: w => w == "c").Work, "attempt 3");
        var decision = Claim(journal, "e", now: 22_000, isDead: w => w == "d");
        Assert.AreEqual(new TrialWork(2, 0, 1), decision.Work, "trial 1 outlived 3 workers: failed, and e starts trial 2");
        var failed = journal.Trials(new DecorrelatedImageClassificationTrainer.Options())[1];
        Assert.AreEqual(TrialState.Failed, failed.State);
        StringAssert.Contains(failed.Error, "its worker stopped without reporting 3 times (last 'd')");
        CollectionAssert.AreEqual(new[] { new StudyJournal.Report(1, 0, double.NaN, Failed: true) }, journal.Reports());

        // Reports release claims; when nothing is left the study is finished.
        foreach (var (worker, trial) in new[] { ("a", 0), ("e", 2) })
        {
            var record = NewTrial(trial);
            record.State = TrialState.Stopped;
            record.Metric = record.ValidationAccuracy = 0.5 + trial / 10.0;
            Assert.IsTrue(journal.Record(record, new TrialWork(trial, 0, 1), failed: false, worker));
        }
        var promotion = Claim(journal, "a", now: 23_000);
        Assert.AreEqual(new TrialWork(2, 1, 3), promotion.Work, "2 results have no top third, but with every trial started and none running the best one still gets its full run");
        Assert.IsNull(Claim(journal, "b", now: 23_500).Work);
        Assert.IsFalse(Claim(journal, "b", now: 23_500).Finished, "trial 2 is still running");
        var done = journal.Trials(new DecorrelatedImageClassificationTrainer.Options())[2];
        done.State = TrialState.Completed;
        Assert.IsTrue(journal.Record(done, promotion.Work!.Value, failed: false, "a"));
        Assert.IsTrue(Claim(journal, "b", now: 24_000).Finished);
        Assert.IsGreaterThan(TimeSpan.Zero, journal.Elapsed);
    }

    [TestMethod]
    [DataRow("sqlite")]
    [DataRow("postgresql")]
    public void ReleasedClaimIsTakenOverAtOnceWithoutCountingAnAttempt(string database)
    {
        using var journal = StudyJournal.Open(NewStudy(database), Study);
        for (int i = 0; i < StudyJournal.MaxAttempts + 1; i++)
        {
            var decision = Claim(journal, $"w{i}", now: i);
            Assert.AreEqual(new TrialWork(0, 0, 1), decision.Work, $"claim {i}");
            Assert.AreEqual(i > 0, decision.Requeued);
            journal.Release($"w{i}", 0);
        }
        Assert.AreNotEqual(TrialState.Failed, journal.Trials(new DecorrelatedImageClassificationTrainer.Options())[0].State, "cancellations are not deaths");
    }

    [TestMethod]
    public void VersionOneJournalIsMigratedAndANewerOneIsRefused()
    {
        string path = Path.Combine(TempFolder, "v1.sqlite");
        using (var connection = new SqliteConnection($"Data Source={path}"))
        {
            connection.Open();
            using var command = connection.CreateCommand();
            command.CommandText = """
                CREATE TABLE study (key TEXT PRIMARY KEY, value TEXT NOT NULL);
                CREATE TABLE trials (id INTEGER PRIMARY KEY, configuration TEXT NOT NULL, state TEXT NOT NULL, rung INTEGER NOT NULL,
                    epochs INTEGER NOT NULL, accuracy REAL, seconds REAL NOT NULL, error TEXT, curve TEXT NOT NULL);
                CREATE TABLE reports (sequence INTEGER PRIMARY KEY AUTOINCREMENT, trial INTEGER NOT NULL, rung INTEGER NOT NULL,
                    accuracy REAL, failed INTEGER NOT NULL, UNIQUE (trial, rung));
                INSERT INTO study VALUES ('search', 'test study');
                INSERT INTO trials VALUES (0, '{"Architecture":0,"UseDecorrelation":true,"LearningRate":0.001,"BatchSize":64,"WeightDecay":0.0001,"DecorrelationLearningRate":0.01}',
                    'Stopped', 0, 1, 0.75, 12.5, NULL, '[[1,0.75,12.5]]');
                INSERT INTO reports (trial, rung, accuracy, failed) VALUES (0, 0, 0.75, 0);
                """;
            command.ExecuteNonQuery();
        }
        using (var journal = StudyJournal.Open(StudyStorage.Parse(path), Study))
        {
            CollectionAssert.AreEqual(new[] { new StudyJournal.Report(0, 0, 0.75, false) }, journal.Reports(), "the accuracy became the metric");
            var trial = journal.Trials(new DecorrelatedImageClassificationTrainer.Options())[0];
            Assert.AreEqual(0.75, trial.Metric);
            Assert.AreEqual(0.01, trial.Configuration.Kappa, "a setting version 1 did not sample takes the trainer's default");
            var point = trial.Curve.Single();
            Assert.AreEqual((1.0, 12.5, 0.75), (point.Epoch, point.Seconds, point.ValidationAccuracy));
            Assert.IsTrue(double.IsNaN(point.ValidationMacroAccuracy));
            journal.Save(trial);   // a NaN metric is written back
            Assert.IsTrue(double.IsNaN(journal.Trials(new DecorrelatedImageClassificationTrainer.Options())[0].Curve.Single().ValidationLogLoss));
            Assert.AreEqual(new TrialWork(1, 0, 1), Claim(journal, "a", now: 0).Work, "the migrated study goes on");
        }
        using (var connection = new SqliteConnection($"Data Source={path};Pooling=False"))
        {
            connection.Open();
            using var command = connection.CreateCommand();
            command.CommandText = $"PRAGMA user_version = {StudyJournal.SchemaVersion + 1}";
            command.ExecuteNonQuery();
        }
        var error = Assert.ThrowsExactly<InvalidOperationException>(() => StudyJournal.Open(StudyStorage.Parse(path), Study));
        StringAssert.Contains(error.Message, $"has schema version {StudyJournal.SchemaVersion + 1}, written by a newer version");
    }

    [TestMethod]
    [DataRow("sqlite")]
    [DataRow("postgresql")]
    public void AnotherStudysJournalIsRefusedNamingTheSettingThatDiffers(string database)
    {
        var storage = NewStudy(database);
        using (StudyJournal.Open(storage, Study))
        {
        }
        var error = Assert.ThrowsExactly<InvalidOperationException>(() => StudyJournal.Open(storage, new Dictionary<string, string> { ["search"] = "another study" }));
        StringAssert.Contains(error.Message, $"The study journal {storage.Display} belongs to another study: its search is 'test study', this experiment's is 'another study'");
    }

    [TestMethod]
    public void ConcurrentWorkersOnPostgreSqlNeverGetTheSameWork()
    {
        var storage = PostgresServer.NewStudy();
        const int trials = 40;
        var handedOut = new System.Collections.Concurrent.ConcurrentBag<TrialWork>();
        // Eight workers with their own connections ask at once; every claim is reported at once, so promotions follow.
        Parallel.For(0, 8, worker =>
        {
            using var journal = StudyJournal.Open(storage, Study);
            while (true)
            {
                var decision = journal.ClaimWork($"w{worker}", journal.Now(), Lease, new AsynchronousSuccessiveHalving(trials, 1, 3), m => m, NewTrial, _ => false);
                if (decision.Finished)
                    break;
                if (decision.Work is not TrialWork work)
                    continue;
                handedOut.Add(work);
                var trial = journal.Trials(new DecorrelatedImageClassificationTrainer.Options())[work.Trial];
                trial.State = work.Rung == 1 ? TrialState.Completed : TrialState.Stopped;
                trial.Metric = trial.ValidationAccuracy = (work.Trial * 7919 % 101) / 101.0;
                Assert.IsTrue(journal.Record(trial, work, failed: false, $"w{worker}"));
            }
        });
        Assert.HasCount(handedOut.Distinct().Count(), handedOut, "no work handed out twice");
        Assert.AreEqual(trials, handedOut.Count(w => w.Rung == 0));
        Assert.IsGreaterThanOrEqualTo(trials / 3, handedOut.Count(w => w.Rung == 1), "the top third of the first rung was promoted");
    }
}
