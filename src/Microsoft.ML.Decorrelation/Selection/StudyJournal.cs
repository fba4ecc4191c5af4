using System.Diagnostics;
using System.Data.Common;
using System.Text.Json;

namespace Microsoft.ML.Decorrelation.Selection;

/// <summary>
/// The record of one model-selection study in a database — an SQLite file (one machine) or a PostgreSQL schema (many
/// machines): what the study is (its settings and data), every trial's configuration, state and curve, every rung result in
/// the order reported, and the work handed out and not yet reported (claims, each held by one worker under a lease its
/// worker renews). Workers in several processes share a study through it: handing out work and reporting a result are
/// each one transaction, so every piece of work is handed out once; a claim whose lease ran out (its worker died) is
/// handed out again and continues from the trial's last checkpoint.
/// </summary>
/// <remarks>
/// The scheduler's state is a function of the reports and the claims (<see cref="AsynchronousSuccessiveHalving.Restore"/>),
/// so nothing else needs to be stored, and an experiment killed at any point resumes where it stopped. The schema is
/// versioned (SQLite's <c>user_version</c>, a <c>schema_version</c> table in PostgreSQL); older journals are migrated when
/// opened. Transactions that decide are serialised: SQLite's <c>BEGIN IMMEDIATE</c>, a PostgreSQL transaction-scoped
/// advisory lock on the study. Lease times come from the database's clock in PostgreSQL, so machines need not agree on
/// the time (docs/design.md, "Model selection").
/// </remarks>
internal sealed class StudyJournal : IDisposable
{
    /// <summary>The schema this code writes: 1 had no claims and stored accuracy only; 2 adds claims and the optimizing metric.</summary>
    public const int SchemaVersion = 2;

    /// <summary>How often a claim whose worker keeps dying is handed out before the trial is marked failed.</summary>
    public const int MaxAttempts = 3;

    private readonly DbConnection _connection;
    private readonly StudyStorage _storage;
    private readonly object _gate = new();   // the lease-renewal timer shares the connection with the worker

    /// <summary>A reported rung result: the optimizing metric's value, NaN when the trial failed.</summary>
    public readonly record struct Report(int Trial, int Rung, double Metric, bool Failed);

    /// <summary>Work handed out to <paramref name="Worker"/>, valid until <paramref name="ExpiresAt"/> (Unix milliseconds) unless renewed.</summary>
    public readonly record struct Claim(int Trial, int Rung, string Worker, long ExpiresAt, int Attempts);

    /// <summary>What <see cref="ClaimWork"/> decided.</summary>
    /// <param name="Work">The work for the asking worker, or null.</param>
    /// <param name="Requeued">Whether the work was handed out before to a worker whose lease ran out.</param>
    /// <param name="Finished">Whether the study has nothing left to do (no work now and none will come).</param>
    public readonly record struct Decision(TrialWork? Work, bool Requeued, bool Finished);

    // A curve point's metric is NaN where it was not measured (journals of version 1 have no macro-accuracy).
    private static readonly JsonSerializerOptions CurveJson = new() { NumberHandling = System.Text.Json.Serialization.JsonNumberHandling.AllowNamedFloatingPointLiterals };

    private StudyJournal(DbConnection connection, StudyStorage storage)
    {
        _connection = connection;
        _storage = storage;
    }

    /// <summary>Where the study is kept, as messages name it.</summary>
    public string Location => _storage.Display;

    /// <summary>Opens (or creates) the study described by <paramref name="study"/> in <paramref name="storage"/>.</summary>
    /// <exception cref="InvalidOperationException">The journal belongs to another study (other settings or data), or was written by a newer version; the message says which.</exception>
    /// <exception cref="IOException">The database cannot be opened or written (read-only, locked, unreachable); the message names it.</exception>
    public static StudyJournal Open(StudyStorage storage, IReadOnlyDictionary<string, string> study)
    {
        DbConnection connection;
        try
        {
            connection = storage.Connect();
        }
        catch (DbException e)
        {
            throw new IOException($"The study journal {storage.Display} cannot be opened for writing: {e.Message}", e);
        }
        var journal = new StudyJournal(connection, storage);
        try
        {
            using var transaction = journal.BeginDecision();
            journal.Migrate();
            foreach (var (key, value) in study)
            {
                if (journal.Scalar("SELECT value FROM study WHERE key = @key", ("@key", key)) is string stored)
                {
                    if (stored != value)
                        throw new InvalidOperationException($"The study journal {storage.Display} belongs to another study: its {key} is '{stored}', this experiment's is '{value}'. Use another journal.");
                }
                else
                {
                    journal.Execute("INSERT INTO study (key, value) VALUES (@key, @value)", ("@key", key), ("@value", value));
                }
            }
            transaction.Commit();
        }
        catch (DbException e)
        {
            journal.Dispose();
            throw new IOException($"The study journal {storage.Display} cannot be written: {e.Message}", e);
        }
        catch
        {
            journal.Dispose();
            throw;
        }
        return journal;
    }

    /// <summary>A transaction that may decide (hand out or report work): one at a time per study.</summary>
    private DbTransaction BeginDecision()
    {
        var transaction = _connection.BeginTransaction();   // SQLite: BEGIN IMMEDIATE, the write lock taken now
        if (_storage.IsPostgreSql)
            Execute("SELECT pg_advisory_xact_lock(hashtext(@study))", ("@study", _storage.Schema!));
        return transaction;
    }

    /// <summary>The study's clock in Unix milliseconds: the PostgreSQL server's, else this machine's.</summary>
    public long Now()
        => _storage.IsPostgreSql ? Locked(() => (long)Scalar("SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint")!)
            : DateTimeOffset.UtcNow.ToUnixTimeMilliseconds();

    // Each step brings the schema from version i to i + 1; a journal records the version it reached. SQLite and
    // PostgreSQL differ only in the reports table's sequence column.
    private static string[] Migrations(bool postgres) =>
    [
        $"""
        CREATE TABLE IF NOT EXISTS study (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE IF NOT EXISTS trials (id INTEGER PRIMARY KEY, configuration TEXT NOT NULL, state TEXT NOT NULL, rung INTEGER NOT NULL,
            epochs INTEGER NOT NULL, accuracy DOUBLE PRECISION, seconds DOUBLE PRECISION NOT NULL, error TEXT, curve TEXT NOT NULL);
        CREATE TABLE IF NOT EXISTS reports (sequence {(postgres ? "BIGSERIAL PRIMARY KEY" : "INTEGER PRIMARY KEY AUTOINCREMENT")}, trial INTEGER NOT NULL, rung INTEGER NOT NULL,
            accuracy DOUBLE PRECISION, failed INTEGER NOT NULL, UNIQUE (trial, rung));
        """,
        """
        ALTER TABLE trials ADD COLUMN metric DOUBLE PRECISION;
        UPDATE trials SET metric = accuracy;
        ALTER TABLE reports ADD COLUMN metric DOUBLE PRECISION;
        UPDATE reports SET metric = accuracy;
        CREATE TABLE claims (trial INTEGER PRIMARY KEY, rung INTEGER NOT NULL, worker TEXT NOT NULL, expires_at BIGINT NOT NULL, attempts INTEGER NOT NULL);
        """,
    ];

    private void Migrate()
    {
        long version;
        if (_storage.IsPostgreSql)
        {
            Execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)");
            version = Scalar("SELECT max(version) FROM schema_version") is int stored ? stored : 0;
        }
        else
        {
            version = (long)Scalar("PRAGMA user_version")!;
            // Version 1 journals predate the version stamp: they have tables but user_version 0.
            if (version == 0 && Scalar("SELECT count(*) FROM sqlite_master WHERE name = 'reports'") is long tables && tables > 0)
                version = 1;
        }
        if (version > SchemaVersion)
            throw new InvalidOperationException($"The study journal {_storage.Display} has schema version {version}, written by a newer version of this library (this one knows up to {SchemaVersion}).");
        var migrations = Migrations(_storage.IsPostgreSql);
        for (; version < SchemaVersion; version++)
            Execute(migrations[version]);
        if (_storage.IsPostgreSql)
        {
            Execute("DELETE FROM schema_version");
            Execute($"INSERT INTO schema_version (version) VALUES ({SchemaVersion})");
        }
        else
        {
            Execute($"PRAGMA user_version = {SchemaVersion}");
        }
    }

    /// <summary>Every rung result, in the order it was reported.</summary>
    public List<Report> Reports() => Locked(ReadReports);

    private List<Report> ReadReports()
    {
        using var command = Command("SELECT trial, rung, metric, failed FROM reports ORDER BY sequence");
        using var reader = command.ExecuteReader();
        var reports = new List<Report>();
        while (reader.Read())
            reports.Add(new Report(reader.GetInt32(0), reader.GetInt32(1), reader.IsDBNull(2) ? double.NaN : reader.GetDouble(2), reader.GetInt32(3) != 0));
        return reports;
    }

    private List<Claim> ReadClaims()
    {
        using var command = Command("SELECT trial, rung, worker, expires_at, attempts FROM claims ORDER BY trial");
        using var reader = command.ExecuteReader();
        var claims = new List<Claim>();
        while (reader.Read())
            claims.Add(new Claim(reader.GetInt32(0), reader.GetInt32(1), reader.GetString(2), reader.GetInt64(3), reader.GetInt32(4)));
        return claims;
    }

    /// <summary>
    /// Hands the next work to <paramref name="worker"/> in one transaction: a claim whose lease ran out before
    /// <paramref name="now"/> (its worker died; after <see cref="MaxAttempts"/> such deaths its trial is marked failed
    /// instead), else what <paramref name="search"/>, restored from the reports and live claims, decides.
    /// </summary>
    /// <param name="worker">The asking worker's name (unique per process).</param>
    /// <param name="now">The current time in Unix milliseconds.</param>
    /// <param name="lease">How long the claim stays valid without renewal.</param>
    /// <param name="search">A new scheduler with the study's settings.</param>
    /// <param name="score">Turns a stored metric into the scheduler's higher-is-better score.</param>
    /// <param name="newTrial">Makes the record of a trial started by this claim.</param>
    /// <param name="isDead">Whether a worker is known to be dead before its lease runs out (a process of this machine that is gone).</param>
    public Decision ClaimWork(string worker, long now, TimeSpan lease, AsynchronousSuccessiveHalving search, Func<double, double> score, Func<int, TrialRecord> newTrial,
        Func<string, bool> isDead)
    {
        return Locked(() =>
        {
            using var transaction = BeginDecision();
            var claims = ReadClaims();
            bool Abandoned(Claim c) => c.ExpiresAt < now || isDead(c.Worker);
            foreach (var dead in claims.Where(c => Abandoned(c) && c.Attempts >= MaxAttempts))
            {
                // The trial outlived MaxAttempts workers: most likely it kills them (a native crash), so it is not handed out again.
                Execute("DELETE FROM claims WHERE trial = @trial", ("@trial", dead.Trial));
                Execute("INSERT INTO reports (trial, rung, accuracy, metric, failed) VALUES (@trial, @rung, NULL, NULL, 1)", ("@trial", dead.Trial), ("@rung", dead.Rung));
                Execute("UPDATE trials SET state = @state, error = @error WHERE id = @trial", ("@trial", dead.Trial), ("@state", TrialState.Failed.ToString()),
                    ("@error", $"its worker stopped without reporting {dead.Attempts} times (last '{dead.Worker}'); not retried"));
            }
            claims.RemoveAll(c => Abandoned(c) && c.Attempts >= MaxAttempts);

            long expiresAt = now + (long)lease.TotalMilliseconds;
            if (claims.FirstOrDefault(Abandoned) is { Worker: not null } expired)
            {
                Execute("UPDATE claims SET worker = @worker, expires_at = @expires, attempts = attempts + 1 WHERE trial = @trial",
                    ("@worker", worker), ("@expires", expiresAt), ("@trial", expired.Trial));
                transaction.Commit();
                return new Decision(new TrialWork(expired.Trial, expired.Rung, search.Rungs[expired.Rung]), Requeued: true, Finished: false);
            }

            foreach (var report in ReadReports())
            {
                var work = new TrialWork(report.Trial, report.Rung, search.Rungs[report.Rung]);
                search.Restore(work);
                if (report.Failed)
                    search.ReportFailure(work);
                else
                    search.Report(work, score(report.Metric));
            }
            foreach (var claim in claims)
                search.Restore(new TrialWork(claim.Trial, claim.Rung, search.Rungs[claim.Rung]));
            if (search.Next() is not TrialWork next)
            {
                transaction.Commit();
                return new Decision(null, Requeued: false, Finished: search.IsFinished);
            }
            Execute("INSERT INTO claims (trial, rung, worker, expires_at, attempts) VALUES (@trial, @rung, @worker, @expires, 1)",
                ("@trial", next.Trial), ("@rung", next.Rung), ("@worker", worker), ("@expires", expiresAt));
            if (next.Rung == 0)
            {
                var trial = newTrial(next.Trial);
                trial.State = TrialState.Running;
                Save(trial);
            }
            else
            {
                Execute("UPDATE trials SET state = @state WHERE id = @trial", ("@state", TrialState.Running.ToString()), ("@trial", next.Trial));
            }
            transaction.Commit();
            return new Decision(next, Requeued: false, Finished: false);
        });
    }

    /// <summary>Extends <paramref name="worker"/>'s claim on <paramref name="trial"/> to <paramref name="expiresAt"/>; false when the claim is no longer its own.</summary>
    public bool Renew(string worker, int trial, long expiresAt)
    {
        return Locked(() => Execute("UPDATE claims SET expires_at = @expires WHERE trial = @trial AND worker = @worker",
                ("@expires", expiresAt), ("@trial", trial), ("@worker", worker)) == 1);
    }

    /// <summary>
    /// Gives up <paramref name="worker"/>'s claim on <paramref name="trial"/> (its work was cancelled): the next worker to ask
    /// takes it over at once, and the give-up does not count as one of its <see cref="MaxAttempts"/>.
    /// </summary>
    public void Release(string worker, int trial)
        => Locked(() => Execute("UPDATE claims SET expires_at = 0, attempts = attempts - 1 WHERE trial = @trial AND worker = @worker", ("@trial", trial), ("@worker", worker)));

    /// <summary>Records a trial's state (inserted or replaced).</summary>
    public void Save(TrialRecord trial)
    {
        Locked(() =>
        {
            Execute("""
                INSERT INTO trials (id, configuration, state, rung, epochs, accuracy, metric, seconds, error, curve)
                VALUES (@id, @configuration, @state, @rung, @epochs, @accuracy, @metric, @seconds, @error, @curve)
                ON CONFLICT (id) DO UPDATE SET configuration = excluded.configuration, state = excluded.state, rung = excluded.rung,
                    epochs = excluded.epochs, accuracy = excluded.accuracy, metric = excluded.metric, seconds = excluded.seconds,
                    error = excluded.error, curve = excluded.curve
                """,
                ("@id", trial.Trial), ("@configuration", JsonSerializer.Serialize(trial.Configuration)), ("@state", trial.State.ToString()),
                ("@rung", trial.Rung), ("@epochs", trial.EpochsRun), ("@accuracy", Nullable(trial.ValidationAccuracy)), ("@metric", Nullable(trial.Metric)),
                ("@seconds", trial.Seconds), ("@error", (object?)trial.Error ?? DBNull.Value),
                ("@curve", JsonSerializer.Serialize(trial.Curve.Select(c => new[] { c.Epoch, c.ValidationAccuracy, c.Seconds, c.ValidationMacroAccuracy, c.ValidationLogLoss, c.RecordedAt.ToUnixTimeMilliseconds() }), CurveJson)));
        });
    }

    /// <summary>The saved trials, by number.</summary>
    public Dictionary<int, TrialRecord> Trials(DecorrelatedImageClassificationTrainer.Options template)
    {
        return Locked(() =>
        {
            using var command = Command("SELECT id, configuration, state, rung, epochs, accuracy, metric, seconds, error, curve FROM trials ORDER BY id");
            using var reader = command.ExecuteReader();
            var trials = new Dictionary<int, TrialRecord>();
            while (reader.Read())
            {
                var configuration = JsonSerializer.Deserialize<TrialConfiguration>(reader.GetString(1))!;
                var trial = new TrialRecord(reader.GetInt32(0), configuration, configuration.Apply(template))
                {
                    State = Enum.Parse<TrialState>(reader.GetString(2)),
                    Rung = reader.GetInt32(3),
                    EpochsRun = reader.GetInt32(4),
                    ValidationAccuracy = reader.IsDBNull(5) ? double.NaN : reader.GetDouble(5),
                    Metric = reader.IsDBNull(6) ? double.NaN : reader.GetDouble(6),
                    Seconds = reader.GetDouble(7),
                    Error = reader.IsDBNull(8) ? null : reader.GetString(8),
                };
                // Version 1 stored (epoch, accuracy, seconds); version 2 adds macro-accuracy, log-loss and the time of measurement.
                foreach (var point in JsonSerializer.Deserialize<double[][]>(reader.GetString(9), CurveJson) ?? [])
                {
                    trial.Curve.Add(new TrialCurvePoint(point[0], point[2], point[1], point.Length > 3 ? point[3] : double.NaN, point.Length > 4 ? point[4] : double.NaN,
                        point.Length > 5 ? DateTimeOffset.FromUnixTimeMilliseconds((long)point[5]) : default));
                }
                trials[trial.Trial] = trial;
            }
            return trials;
        });
    }

    /// <summary>
    /// Records <paramref name="worker"/>'s rung result and the trial's state in one transaction, releasing its claim;
    /// false (and nothing recorded) when the claim is no longer the worker's (its lease ran out and another took it over).
    /// </summary>
    public bool Record(TrialRecord trial, TrialWork work, bool failed, string worker)
    {
        return Locked(() =>
        {
            using var transaction = BeginDecision();
            if (Execute("DELETE FROM claims WHERE trial = @trial AND rung = @rung AND worker = @worker", ("@trial", work.Trial), ("@rung", work.Rung), ("@worker", worker)) != 1)
                return false;
            Save(trial);
            Execute("INSERT INTO reports (trial, rung, accuracy, metric, failed) VALUES (@trial, @rung, @accuracy, @metric, @failed)",
                ("@trial", work.Trial), ("@rung", work.Rung), ("@accuracy", Nullable(trial.ValidationAccuracy)), ("@metric", failed ? DBNull.Value : Nullable(trial.Metric)),
                ("@failed", failed ? 1 : 0));
            transaction.Commit();
            return true;
        });
    }

    /// <summary>Time this process spent in the journal (waiting for its lock included): the study's bookkeeping cost.</summary>
    public TimeSpan Elapsed { get; private set; }

    private int _depth;

    private T Locked<T>(Func<T> body)
    {
        lock (_gate)
        {
            long start = Stopwatch.GetTimestamp();
            _depth++;
            try
            {
                return body();
            }
            finally
            {
                if (--_depth == 0)   // an operation that calls another is timed once
                    Elapsed += Stopwatch.GetElapsedTime(start);
            }
        }
    }

    private void Locked(Action body) => Locked(() => { body(); return 0; });

    private static object Nullable(double value) => double.IsNaN(value) ? DBNull.Value : value;

    private int Execute(string sql, params (string Name, object Value)[] parameters)
    {
        using var command = Command(sql, parameters);
        return command.ExecuteNonQuery();
    }

    private object? Scalar(string sql, params (string Name, object Value)[] parameters)
    {
        using var command = Command(sql, parameters);
        return command.ExecuteScalar();
    }

    private DbCommand Command(string sql, params (string Name, object Value)[] parameters)
    {
        var command = _connection.CreateCommand();
        command.CommandText = sql;
        foreach (var (name, value) in parameters)
        {
            var parameter = command.CreateParameter();
            parameter.ParameterName = name;
            parameter.Value = value;
            command.Parameters.Add(parameter);
        }
        return command;
    }

    /// <inheritdoc />
    public void Dispose()
    {
        _connection.Dispose();
        _storage.ReleasePool();
    }
}
