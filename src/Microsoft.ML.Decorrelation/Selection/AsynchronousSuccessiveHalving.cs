namespace Microsoft.ML.Decorrelation.Selection;

/// <summary>One unit of work the search asks for: train trial <see cref="Trial"/> until it has run <see cref="Epochs"/> epochs.</summary>
/// <param name="Trial">The trial's number, from 0 in the order trials were started.</param>
/// <param name="Rung">The rung this work completes (0 for a new trial).</param>
/// <param name="Epochs">The trial's epochs after this work: its rung's budget.</param>
public readonly record struct TrialWork(int Trial, int Rung, int Epochs);

/// <summary>
/// Asynchronous successive halving (ASHA): every trial starts on the lowest rung (the fewest epochs); whenever a worker
/// is free, the best not-yet-promoted trial of the highest rung that has one in its top 1/η is promoted to the next
/// rung, else a new trial starts. Higher metrics are better. Decisions depend only on the order of the reports, so a
/// search is reproducible from its journal. Failed trials are kept with their error and never promoted.
/// </summary>
/// <remarks>
/// Rungs are epoch budgets <c>min, min·η, min·η², …</c>, the last one <c>max</c>. A trial may have a full run shorter than
/// <c>max</c> (a search over the number of epochs): its rungs are the search's, capped at its own full run, and it finishes on
/// the first rung that reaches it, ranked there with the trials that are still on their way. A promoted trial continues from
/// its checkpoint with the learning-rate schedule of its full run, so a trial that finishes ends exactly where a plain run of
/// the same options would (docs/design.md, "Model selection").
/// </remarks>
public sealed class AsynchronousSuccessiveHalving
{
    private readonly int _maxTrials;
    private readonly int _reduction;
    private readonly List<Dictionary<int, double>> _completed = [];   // per rung: trial → metric
    private readonly List<HashSet<int>> _promoted = [];                // per rung: trials promoted out of it
    private readonly HashSet<int> _running = [];
    private readonly HashSet<int> _failed = [];
    private readonly HashSet<int> _finished = [];                      // trials that completed their full run
    private readonly Func<int, int> _trialEpochs;
    private int _started;

    /// <summary>Creates the scheduler.</summary>
    /// <param name="maxTrials">Trials to start at most.</param>
    /// <param name="minEpochs">The lowest rung's budget, at least 1.</param>
    /// <param name="maxEpochs">The top rung's budget: the longest full run of a trial.</param>
    /// <param name="reductionFactor">η: the top 1/η of a rung is promoted, and rungs grow η-fold; at least 2.</param>
    /// <param name="trialEpochs">
    /// Each trial's full run in epochs, in [1, <paramref name="maxEpochs"/>] (one shorter than the lowest rung finishes on it); null
    /// when every trial's is <paramref name="maxEpochs"/>.
    /// </param>
    /// <exception cref="ArgumentOutOfRangeException">A setting is out of range; the message names it.</exception>
    public AsynchronousSuccessiveHalving(int maxTrials, int minEpochs, int maxEpochs, int reductionFactor = 3, Func<int, int>? trialEpochs = null)
    {
        Validate(maxTrials, minEpochs, maxEpochs, reductionFactor);
        _maxTrials = maxTrials;
        _reduction = reductionFactor;
        _trialEpochs = trialEpochs ?? (_ => maxEpochs);
        var rungs = new List<int>();
        for (long epochs = minEpochs; epochs < maxEpochs; epochs *= reductionFactor)
            rungs.Add((int)epochs);
        rungs.Add(maxEpochs);
        Rungs = rungs;
        foreach (var _ in rungs)
        {
            _completed.Add([]);
            _promoted.Add([]);
        }
    }

    /// <summary>Checks the settings the constructor takes, without creating a scheduler.</summary>
    /// <exception cref="ArgumentOutOfRangeException">A setting is out of range; the message names it.</exception>
    public static void Validate(int maxTrials, int minEpochs, int maxEpochs, int reductionFactor = 3)
    {
        if (maxTrials < 1)
            throw new ArgumentOutOfRangeException(nameof(maxTrials), maxTrials, "The search needs at least one trial.");
        if (minEpochs < 1 || maxEpochs < minEpochs)
            throw new ArgumentOutOfRangeException(nameof(minEpochs), minEpochs, $"The lowest rung's epochs must lie in [1, {maxEpochs}] (the full run).");
        if (reductionFactor < 2)
            throw new ArgumentOutOfRangeException(nameof(reductionFactor), reductionFactor, "The reduction factor η must be at least 2.");
    }

    /// <summary>The epoch budget of each rung, lowest first.</summary>
    public IReadOnlyList<int> Rungs { get; }

    /// <summary>Trials started so far.</summary>
    public int StartedTrials => _started;

    /// <summary>Whether nothing is left to do: every trial started, none running, none to promote.</summary>
    public bool IsFinished => _running.Count == 0 && _started == _maxTrials && FindPromotion() is null;

    /// <summary>
    /// The next work for a free worker: a promotion, else a new trial; null when there is none now (the rest waits on
    /// running trials, or the search is finished).
    /// </summary>
    public TrialWork? Next()
    {
        if (FindPromotion() is (int trial, int rung))
        {
            _promoted[rung].Add(trial);
            _running.Add(trial);
            return new TrialWork(trial, rung + 1, EpochsAt(trial, rung + 1));
        }
        if (_started >= _maxTrials)
            return null;
        int next = _started++;
        _running.Add(next);
        return new TrialWork(next, 0, EpochsAt(next, 0));
    }

    /// <summary>The epochs <paramref name="trial"/> has run after rung <paramref name="rung"/>: the rung's, capped at its full run.</summary>
    /// <exception cref="ArgumentOutOfRangeException">The trial's full run lies outside the search's rungs.</exception>
    private int EpochsAt(int trial, int rung)
    {
        int full = _trialEpochs(trial);
        if (full < 1 || full > Rungs[^1])
            throw new ArgumentOutOfRangeException(nameof(trial), full, $"Trial {trial}'s full run of {full} epochs lies outside [1, {Rungs[^1]}], the top rung.");
        return Math.Min(Rungs[rung], full);
    }

    /// <summary>
    /// Marks <paramref name="work"/> as handed out, as <see cref="Next"/> would have: rebuilds a scheduler from a journal's
    /// reports (each restored, then reported) and its work in progress (restored only). The result does not depend on the
    /// order in which work in progress is restored.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">The work's rung or trial lies outside this search.</exception>
    /// <exception cref="InvalidOperationException">The trial is running already.</exception>
    public void Restore(TrialWork work)
    {
        if (work.Rung < 0 || work.Rung >= Rungs.Count)
            throw new ArgumentOutOfRangeException(nameof(work), work, $"Rung {work.Rung} does not exist: the search has {Rungs.Count} rungs.");
        if (work.Trial < 0 || work.Trial >= _maxTrials)
            throw new ArgumentOutOfRangeException(nameof(work), work, $"Trial {work.Trial} does not exist: the search starts {_maxTrials} trials.");
        if (!_running.Add(work.Trial))
            throw new InvalidOperationException($"Trial {work.Trial} is running already; it cannot be restored at rung {work.Rung}.");
        _started = Math.Max(_started, work.Trial + 1);
        if (work.Rung > 0)
            _promoted[work.Rung - 1].Add(work.Trial);
    }

    /// <summary>Records that <paramref name="work"/> finished with validation metric <paramref name="metric"/>.</summary>
    /// <exception cref="InvalidOperationException">The work was not handed out, or was reported already.</exception>
    public void Report(TrialWork work, double metric)
    {
        Finish(work);
        _completed[work.Rung][work.Trial] = double.IsNaN(metric) ? double.NegativeInfinity : metric;
        if (work.Epochs >= _trialEpochs(work.Trial))
            _finished.Add(work.Trial);
    }

    /// <summary>Records that <paramref name="work"/> failed: the trial is never promoted (nor retried).</summary>
    public void ReportFailure(TrialWork work)
    {
        Finish(work);
        _failed.Add(work.Trial);
    }

    private void Finish(TrialWork work)
    {
        if (!_running.Remove(work.Trial))
            throw new InvalidOperationException($"Trial {work.Trial} is not running; it cannot report rung {work.Rung}.");
    }

    /// <summary>
    /// The highest rung's best trial that stands in its rung's top 1/η, was not promoted yet and has not finished its full run;
    /// else, once every trial has started, none runs and none has finished, the best trial of the highest rung whose next rung is
    /// empty (so that a small or failure-ridden search still ends with a full run); else null.
    /// </summary>
    private (int Trial, int Rung)? FindPromotion()
    {
        if (_started == _maxTrials && _running.Count == 0 && _finished.Count == 0)
        {
            for (int rung = Rungs.Count - 2; rung >= 0; rung--)
            {
                if (_promoted[rung].Count > 0)
                    break;
                var best = _completed[rung].Where(r => !_failed.Contains(r.Key) && double.IsFinite(r.Value))
                    .OrderByDescending(r => r.Value).ThenBy(r => r.Key).Select(r => (int?)r.Key).FirstOrDefault();
                if (best is int trial)
                    return (trial, rung);
            }
        }
        for (int rung = Rungs.Count - 2; rung >= 0; rung--)
        {
            var results = _completed[rung];
            int top = results.Count / _reduction;
            if (top == 0)
                continue;
            foreach (var (trial, _) in results.OrderByDescending(r => r.Value).ThenBy(r => r.Key).Take(top))
            {
                if (!_promoted[rung].Contains(trial) && !_failed.Contains(trial) && !_finished.Contains(trial))
                    return (trial, rung);
            }
        }
        return null;
    }
}
