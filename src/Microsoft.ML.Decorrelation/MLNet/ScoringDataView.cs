using Microsoft.ML.Data;

namespace Microsoft.ML.Decorrelation;

/// <summary>
/// The output of <see cref="DecorrelatedImageClassificationTransformer.Transform"/>: the input's columns
/// plus the score and predicted label, computed a batch of rows at a time.
/// </summary>
/// <remarks>
/// A cursor that needs the new columns opens a second cursor over the input that reads only the feature
/// column and runs ahead by one batch. The input's other columns come from the first cursor unchanged. Both
/// must see the same rows in the same order, as every IDataView cursor without a random source does; the
/// cursor checks it row by row with the rows' ids and fails, instead of pairing scores with other rows, on an
/// input whose cursors disagree (a nondeterministic or shuffling source).
/// </remarks>
internal sealed partial class ScoringDataView : IDataView
{
    private readonly DecorrelatedImageClassificationTransformer _transformer;
    private readonly IDataView _input;
    private readonly DataViewSchema.Column _featureColumn;

    public ScoringDataView(DecorrelatedImageClassificationTransformer transformer, IDataView input)
    {
        _transformer = transformer;
        _input = input;
        Schema = transformer.GetOutputSchema(input.Schema);
        _featureColumn = transformer.Input.FindColumn(input.Schema);
    }

    public bool CanShuffle => false;

    public DataViewSchema Schema { get; }

    private int ScoreIndex => _input.Schema.Count;

    private int PredictedLabelIndex => _input.Schema.Count + 1;

    public long? GetRowCount() => _input.GetRowCount();

    public DataViewRowCursor GetRowCursor(IEnumerable<DataViewSchema.Column> columnsNeeded, Random? rand = null)
    {
        var needed = columnsNeeded.ToArray();
        bool scores = needed.Any(c => c.Index >= ScoreIndex);
        var inputColumns = needed.Where(c => c.Index < ScoreIndex).Select(c => _input.Schema[c.Index]);
        var rows = _input.GetRowCursor(inputColumns);
        var features = scores ? _input.GetRowCursor([_featureColumn]) : null;
        return new Cursor(this, rows, features, scoreActive: needed.Any(c => c.Index == ScoreIndex), labelActive: needed.Any(c => c.Index == PredictedLabelIndex));
    }

    public DataViewRowCursor[] GetRowCursorSet(IEnumerable<DataViewSchema.Column> columnsNeeded, int n, Random? rand = null)
        => [GetRowCursor(columnsNeeded, rand)];

    private sealed class Cursor : DataViewRowCursor
    {
        private readonly ScoringDataView _parent;
        private readonly DataViewRowCursor _rows;
        private readonly DataViewRowCursor? _features;
        private readonly Action<Span<float>>? _readPixels;
        private readonly bool _scoreActive;
        private readonly bool _labelActive;
        private readonly float[] _pixels = [];
        private readonly DataViewRowId[] _featureRowIds = [];
        private readonly ValueGetter<DataViewRowId>? _featureRowId;
        private readonly ValueGetter<DataViewRowId>? _rowId;
        private float[] _scores = [];
        private int _batchRows;
        private int _batchIndex;

        public Cursor(ScoringDataView parent, DataViewRowCursor rows, DataViewRowCursor? features, bool scoreActive, bool labelActive)
        {
            _parent = parent;
            _rows = rows;
            _features = features;
            _scoreActive = scoreActive;
            _labelActive = labelActive;
            if (features is not null)
            {
                _readPixels = parent._transformer.Input.CreateReader(features);
                _pixels = new float[parent._transformer.ScoringBatchSize * parent._transformer.Input.Shape.Size];
                _featureRowIds = new DataViewRowId[parent._transformer.ScoringBatchSize];
                _featureRowId = features.GetIdGetter();
                _rowId = rows.GetIdGetter();
            }
        }

        public override DataViewSchema Schema => _parent.Schema;

        public override long Position => _rows.Position;

        public override long Batch => _rows.Batch;

        public override ValueGetter<DataViewRowId> GetIdGetter() => _rows.GetIdGetter();

        public override bool IsColumnActive(DataViewSchema.Column column)
        {
            if (column.Index == _parent.ScoreIndex)
                return _scoreActive;
            if (column.Index == _parent.PredictedLabelIndex)
                return _labelActive;
            return _rows.IsColumnActive(_parent._input.Schema[column.Index]);
        }

        public override bool MoveNext()
        {
            if (!_rows.MoveNext())
                return false;
            if (_features is null)
                return true;
            if (++_batchIndex >= _batchRows)
                ScoreNextBatch();
            DataViewRowId id = default;
            _rowId!(ref id);
            if (!id.Equals(_featureRowIds[_batchIndex]))
                throw new InvalidOperationException(
                    $"The input data view returned row {id} to one cursor and row {_featureRowIds[_batchIndex]} to another at position {_rows.Position}: " +
                    "its cursors see rows in different orders (a shuffling or nondeterministic source), so scores could be paired with the wrong rows. " +
                    "Score before shuffling, or cache the input first (mlContext.Data.Cache).");
            return true;
        }

        private void ScoreNextBatch()
        {
            var transformer = _parent._transformer;
            int size = transformer.Input.Shape.Size, capacity = transformer.ScoringBatchSize, count = 0;
            while (count < capacity && _features!.MoveNext())
            {
                _readPixels!(_pixels.AsSpan(count * size, size));
                _featureRowId!(ref _featureRowIds[count]);
                count++;
            }
            if (count == 0)
                throw new InvalidOperationException("The input data view returned fewer rows to a second cursor than to the first; scoring needs a repeatable input.");
            _scores = transformer.Network.Score(_pixels, count);
            _batchRows = count;
            _batchIndex = 0;
        }

        public override ValueGetter<TValue> GetGetter<TValue>(DataViewSchema.Column column)
        {
            int classes = _parent._transformer.ClassCount;
            if (column.Index == _parent.ScoreIndex && _scoreActive)
            {
                ValueGetter<VBuffer<float>> getter = (ref VBuffer<float> value) =>
                {
                    var editor = VBufferEditor.Create(ref value, classes);
                    _scores.AsSpan(_batchIndex * classes, classes).CopyTo(editor.Values);
                    value = editor.Commit();
                };
                return getter as ValueGetter<TValue>
                    ?? throw new InvalidOperationException($"Column '{column.Name}' is a float vector, not {typeof(TValue).Name}.");
            }
            if (column.Index == _parent.PredictedLabelIndex && _labelActive)
            {
                ValueGetter<uint> getter = (ref uint value) => value = ArgMaxKey(_scores.AsSpan(_batchIndex * classes, classes));
                return getter as ValueGetter<TValue>
                    ?? throw new InvalidOperationException($"Column '{column.Name}' is a uint key, not {typeof(TValue).Name}.");
            }
            if (column.Index >= _parent.ScoreIndex)
                throw new InvalidOperationException($"Column '{column.Name}' is not active in this cursor.");
            return _rows.GetGetter<TValue>(_parent._input.Schema[column.Index]);
        }

        protected override void Dispose(bool disposing)
        {
            if (disposing)
            {
                _rows.Dispose();
                _features?.Dispose();
            }
            base.Dispose(disposing);
        }
    }

    /// <summary>The key (1-based) of the largest score; ties go to the first.</summary>
    internal static uint ArgMaxKey(ReadOnlySpan<float> scores)
    {
        int best = 0;
        for (int i = 1; i < scores.Length; i++)
        {
            if (scores[i] > scores[best])
                best = i;
        }
        return (uint)best + 1;
    }
}
