using System.Data.Common;
using Microsoft.Data.Sqlite;
using Npgsql;

namespace Microsoft.ML.Decorrelation.Selection;

/// <summary>
/// Where a study is kept, from a storage string: <c>sqlite:FILE</c> (or a plain file path) for an embedded SQLite file on
/// one machine, or <c>postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE</c> for a PostgreSQL server that workers on many
/// machines share. In PostgreSQL each study has its own schema, named after the study, so one database holds many studies.
/// </summary>
/// <remarks>An SQLite file must not live on a network file system: its locks are not reliable there; use PostgreSQL.</remarks>
public sealed class StudyStorage
{
    private readonly string _connectionString;

    private StudyStorage(bool postgres, string connectionString, string display, string? schema)
    {
        IsPostgreSql = postgres;
        _connectionString = connectionString;
        Display = display;
        Schema = schema;
    }

    /// <summary>Whether the study is kept in PostgreSQL (else in an SQLite file).</summary>
    public bool IsPostgreSql { get; }

    /// <summary>How messages name it: the SQLite file, or the PostgreSQL server, database and study (never the password).</summary>
    public string Display { get; }

    /// <summary>The PostgreSQL schema holding the study; null for SQLite.</summary>
    public string? Schema { get; }

    /// <summary>The SQLite file; null for PostgreSQL.</summary>
    public string? FilePath { get; private init; }

    /// <summary>Parses <paramref name="storage"/> for the study named <paramref name="study"/>.</summary>
    /// <param name="storage"><c>sqlite:FILE</c>, a file path, or <c>postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE</c> (also <c>postgres://</c>).</param>
    /// <param name="study">The study's name: letters, digits and underscores, at most 40 characters; it names the PostgreSQL schema.</param>
    /// <exception cref="ArgumentException">The string or the name is malformed; the message says what is expected.</exception>
    public static StudyStorage Parse(string storage, string study = "default")
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(storage);
        if (string.IsNullOrEmpty(study) || study.Length > 40 || !study.All(c => char.IsAsciiLetterOrDigit(c) || c == '_'))
            throw new ArgumentException($"Study name '{study}': use 1 to 40 letters, digits or underscores (it names the database schema).", nameof(study));
        if (storage.StartsWith("postgresql://", StringComparison.OrdinalIgnoreCase) || storage.StartsWith("postgres://", StringComparison.OrdinalIgnoreCase))
        {
            if (!Uri.TryCreate(storage, UriKind.Absolute, out var uri) || string.IsNullOrEmpty(uri.Host) || uri.AbsolutePath.Trim('/').Length == 0)
                throw new ArgumentException($"Storage '{Redact(storage)}' is not of the form postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE.", nameof(storage));
            var userInfo = uri.UserInfo.Split(':', 2);
            string schema = "dbp_study_" + study.ToLowerInvariant();
            var builder = new NpgsqlConnectionStringBuilder
            {
                Host = uri.Host, Port = uri.IsDefaultPort || uri.Port < 0 ? 5432 : uri.Port, Database = Uri.UnescapeDataString(uri.AbsolutePath.Trim('/')),
                Username = userInfo[0].Length > 0 ? Uri.UnescapeDataString(userInfo[0]) : null,
                Password = userInfo.Length > 1 ? Uri.UnescapeDataString(userInfo[1]) : null,
                SearchPath = schema, Timeout = 30, CommandTimeout = 120,
            };
            return new StudyStorage(true, builder.ConnectionString, $"PostgreSQL {builder.Host}:{builder.Port}/{builder.Database}, study '{study}'", schema);
        }
        string path = storage.StartsWith("sqlite:", StringComparison.OrdinalIgnoreCase) ? storage["sqlite:".Length..] : storage;
        if (path.Length == 0)
            throw new ArgumentException("Storage 'sqlite:' names no file.", nameof(storage));
        string connection = new SqliteConnectionStringBuilder { DataSource = path, Mode = SqliteOpenMode.ReadWriteCreate, DefaultTimeout = 60 }.ToString();
        return new StudyStorage(false, connection, $"'{path}'", null) { FilePath = path };
    }

    private static string Redact(string storage)
        => Uri.TryCreate(storage, UriKind.Absolute, out var uri) && uri.UserInfo.Contains(':') ? storage.Replace(uri.UserInfo, uri.UserInfo.Split(':')[0] + ":***") : storage;

    /// <summary>An open connection; for PostgreSQL the study's schema exists.</summary>
    internal DbConnection Connect()
    {
        if (!IsPostgreSql)
        {
            var sqlite = new SqliteConnection(_connectionString);
            sqlite.Open();
            return sqlite;
        }
        var connection = new NpgsqlConnection(_connectionString);
        try
        {
            connection.Open();
            using var transaction = connection.BeginTransaction();
            using var command = connection.CreateCommand();
            // Workers starting together create the schema once: the advisory lock serialises them.
            command.CommandText = $"SELECT pg_advisory_xact_lock(hashtext('{Schema}')); CREATE SCHEMA IF NOT EXISTS {Schema};";
            command.ExecuteNonQuery();
            transaction.Commit();
            return connection;
        }
        catch
        {
            connection.Dispose();
            throw;
        }
    }

    /// <summary>Closes pooled connections (SQLite keeps the file open otherwise).</summary>
    internal void ReleasePool()
    {
        if (IsPostgreSql)
            NpgsqlConnection.ClearPool(new NpgsqlConnection(_connectionString));
        else
            SqliteConnection.ClearAllPools();
    }

    /// <inheritdoc />
    public override string ToString() => Display;
}
