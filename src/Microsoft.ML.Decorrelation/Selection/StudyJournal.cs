using System.Text.Json;
using Microsoft.Data.Sqlite;

namespace Microsoft.ML.Decorrelation.Selection;

/// <summary>
/// The record of one model-selection study in an SQLite file: what the study is (its settings and data), every trial's
/// configuration and state, and every rung result in the order reported. The scheduler's decisions depend only on that
/// order, so an experiment killed at any point resumes by replaying the reports: finished work is not repeated, and the
/// trial that was running continues from its last checkpoint.
/// </summary>
internal sealed class StudyJournal : IDisposable
{
    private readonly SqliteConnection _connection;

    /// <summary>A reported rung result.</summary>
    public readonly record struct Report(int Trial, int Rung, double Accuracy, bool Failed);

    private StudyJournal(SqliteConnection connection) => _connection = connection;

    /// <summary>Opens (or creates) the journal at <paramref name="path"/> for the study described by <paramref name="study"/>.</summary>
    /// <exception cref="InvalidOperationException">The journal belongs to another study (other settings or data); the message says which differs.</exception>
    /// <exception cref="IOException">The file cannot be opened or written (read-only, locked); the message names it.</exception>
    public static StudyJournal Open(string path, IReadOnlyDictionary<string, string> study)
    {
        SqliteConnection connection;
        try
        {
            connection = new SqliteConnection(new SqliteConnectionStringBuilder { DataSource = path, Mode = SqliteOpenMode.ReadWriteCreate, DefaultTimeout = 30 }.ToString());
            connection.Open();
            Execute(connection, """
                CREATE TABLE IF NOT EXISTS study (key TEXT PRIMARY KEY, value TEXT NOT NULL);
                CREATE TABLE IF NOT EXISTS trials (id INTEGER PRIMARY KEY, configuration TEXT NOT NULL, state TEXT NOT NULL, rung INTEGER NOT NULL,
                    epochs INTEGER NOT NULL, accuracy REAL, seconds REAL NOT NULL, error TEXT, curve TEXT NOT NULL);
                CREATE TABLE IF NOT EXISTS reports (sequence INTEGER PRIMARY KEY AUTOINCREMENT, trial INTEGER NOT NULL, rung INTEGER NOT NULL,
                    accuracy REAL, failed INTEGER NOT NULL, UNIQUE (trial, rung));
                """);
        }
        catch (SqliteException e)
        {
            throw new IOException($"The study journal '{path}' cannot be opened for writing: {e.Message}", e);
        }
        var journal = new StudyJournal(connection);
        try
        {
            using var transaction = connection.BeginTransaction();
            foreach (var (key, value) in study)
            {
                using var read = Command(connection, "SELECT value FROM study WHERE key = $key", ("$key", key));
                if (read.ExecuteScalar() is string stored)
                {
                    if (stored != value)
                        throw new InvalidOperationException($"The study journal '{path}' belongs to another study: its {key} is '{stored}', this experiment's is '{value}'. Use another journal file.");
                }
                else
                {
                    using var write = Command(connection, "INSERT INTO study (key, value) VALUES ($key, $value)", ("$key", key), ("$value", value));
                    write.ExecuteNonQuery();
                }
            }
            transaction.Commit();
        }
        catch (Exception e) when (e is SqliteException)
        {
            journal.Dispose();
            throw new IOException($"The study journal '{path}' cannot be written: {e.Message}", e);
        }
        catch
        {
            journal.Dispose();
            throw;
        }
        return journal;
    }

    /// <summary>Every rung result, in the order it was reported.</summary>
    public List<Report> Reports()
    {
        using var command = Command(_connection, "SELECT trial, rung, accuracy, failed FROM reports ORDER BY sequence");
        using var reader = command.ExecuteReader();
        var reports = new List<Report>();
        while (reader.Read())
            reports.Add(new Report(reader.GetInt32(0), reader.GetInt32(1), reader.IsDBNull(2) ? double.NaN : reader.GetDouble(2), reader.GetInt32(3) != 0));
        return reports;
    }

    /// <summary>Records a trial's state (inserted or replaced).</summary>
    public void Save(TrialRecord trial)
    {
        using var command = Command(_connection, """
            INSERT OR REPLACE INTO trials (id, configuration, state, rung, epochs, accuracy, seconds, error, curve)
            VALUES ($id, $configuration, $state, $rung, $epochs, $accuracy, $seconds, $error, $curve)
            """,
            ("$id", trial.Trial), ("$configuration", JsonSerializer.Serialize(trial.Configuration)), ("$state", trial.State.ToString()),
            ("$rung", trial.Rung), ("$epochs", trial.EpochsRun), ("$accuracy", double.IsNaN(trial.ValidationAccuracy) ? DBNull.Value : trial.ValidationAccuracy),
            ("$seconds", trial.Seconds), ("$error", (object?)trial.Error ?? DBNull.Value),
            ("$curve", JsonSerializer.Serialize(trial.Curve.Select(c => new[] { c.Epoch, c.ValidationAccuracy, c.Seconds }))));
        command.ExecuteNonQuery();
    }

    /// <summary>The saved trials, by number.</summary>
    public Dictionary<int, TrialRecord> Trials(DecorrelatedImageClassificationTrainer.Options template)
    {
        using var command = Command(_connection, "SELECT id, configuration, state, rung, epochs, accuracy, seconds, error, curve FROM trials ORDER BY id");
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
                Seconds = reader.GetDouble(6),
                Error = reader.IsDBNull(7) ? null : reader.GetString(7),
            };
            foreach (var point in JsonSerializer.Deserialize<double[][]>(reader.GetString(8)) ?? [])
                trial.Curve.Add((point[0], point[1], point[2]));
            trials[trial.Trial] = trial;
        }
        return trials;
    }

    /// <summary>Records a rung result and the trial's state in one transaction.</summary>
    public void Record(TrialRecord trial, TrialWork work, bool failed)
    {
        using var transaction = _connection.BeginTransaction();
        Save(trial);
        using var command = Command(_connection, "INSERT INTO reports (trial, rung, accuracy, failed) VALUES ($trial, $rung, $accuracy, $failed)",
            ("$trial", work.Trial), ("$rung", work.Rung), ("$accuracy", double.IsNaN(trial.ValidationAccuracy) ? DBNull.Value : trial.ValidationAccuracy),
            ("$failed", failed ? 1 : 0));
        command.ExecuteNonQuery();
        transaction.Commit();
    }

    private static void Execute(SqliteConnection connection, string sql)
    {
        using var command = Command(connection, sql);
        command.ExecuteNonQuery();
    }

    private static SqliteCommand Command(SqliteConnection connection, string sql, params (string Name, object Value)[] parameters)
    {
        var command = connection.CreateCommand();
        command.CommandText = sql;
        foreach (var (name, value) in parameters)
            command.Parameters.AddWithValue(name, value);
        return command;
    }

    public void Dispose()
    {
        _connection.Dispose();
        SqliteConnection.ClearAllPools();
    }
}
