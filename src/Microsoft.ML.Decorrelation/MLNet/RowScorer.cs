using Microsoft.ML.Data;

namespace Microsoft.ML.Decorrelation;

/// <summary>
/// Scores one row at a time for <c>PredictionEngine</c>: the scores of the current input row are computed
/// when first asked for and reused until the input moves to another row.
/// </summary>
internal sealed class RowScorer : IRowToRowMapper
{
    private readonly DecorrelatedImageClassificationTransformer _transformer;
    private readonly DataViewSchema.Column _featureColumn;

    public RowScorer(DecorrelatedImageClassificationTransformer transformer, DataViewSchema inputSchema)
    {
        _transformer = transformer;
        InputSchema = inputSchema;
        OutputSchema = transformer.GetOutputSchema(inputSchema);
        _featureColumn = transformer.Input.FindColumn(inputSchema);
    }

    public DataViewSchema InputSchema { get; }

    public DataViewSchema OutputSchema { get; }

    public IEnumerable<DataViewSchema.Column> GetDependencies(IEnumerable<DataViewSchema.Column> dependingColumns)
    {
        var columns = dependingColumns.ToArray();
        var inputs = columns.Where(c => c.Index < InputSchema.Count).Select(c => InputSchema[c.Index]).ToList();
        if (columns.Any(c => c.Index >= InputSchema.Count) && !inputs.Any(c => c.Index == _featureColumn.Index))
            inputs.Add(_featureColumn);
        return inputs;
    }

    public DataViewRow GetRow(DataViewRow input, IEnumerable<DataViewSchema.Column> activeColumns)
        => new ScoredRow(this, input, activeColumns.Select(c => c.Index).ToHashSet());

    private sealed class ScoredRow : DataViewRow
    {
        private readonly RowScorer _parent;
        private readonly DataViewRow _input;
        private readonly HashSet<int> _active;
        private readonly Action<Span<float>>? _readPixels;
        private readonly float[] _pixels;
        private float[] _scores = [];
        private long _scoredPosition = -1;
        private bool _scoredOnce;

        public ScoredRow(RowScorer parent, DataViewRow input, HashSet<int> active)
        {
            _parent = parent;
            _input = input;
            _active = active;
            bool scores = active.Any(i => i >= parent.InputSchema.Count);
            _readPixels = scores ? parent._transformer.Input.CreateReader(input) : null;
            _pixels = scores ? new float[parent._transformer.Input.Shape.Size] : [];
        }

        public override DataViewSchema Schema => _parent.OutputSchema;

        public override long Position => _input.Position;

        public override long Batch => _input.Batch;

        public override ValueGetter<DataViewRowId> GetIdGetter() => _input.GetIdGetter();

        public override bool IsColumnActive(DataViewSchema.Column column)
            => column.Index < _parent.InputSchema.Count ? _input.IsColumnActive(_parent.InputSchema[column.Index]) : _active.Contains(column.Index);

        private float[] CurrentScores()
        {
            if (!_scoredOnce || _input.Position != _scoredPosition)
            {
                _readPixels!(_pixels);
                _scores = _parent._transformer.Network.Score(_pixels, 1);
                _scoredPosition = _input.Position;
                _scoredOnce = true;
            }
            return _scores;
        }

        public override ValueGetter<TValue> GetGetter<TValue>(DataViewSchema.Column column)
        {
            int inputs = _parent.InputSchema.Count;
            if (column.Index < inputs)
                return _input.GetGetter<TValue>(_parent.InputSchema[column.Index]);
            if (!_active.Contains(column.Index))
                throw new InvalidOperationException($"Column '{column.Name}' is not active.");
            int classes = _parent._transformer.ClassCount;
            if (column.Index == inputs)
            {
                ValueGetter<VBuffer<float>> getter = (ref VBuffer<float> value) =>
                {
                    var editor = VBufferEditor.Create(ref value, classes);
                    CurrentScores().AsSpan().CopyTo(editor.Values);
                    value = editor.Commit();
                };
                return getter as ValueGetter<TValue>
                    ?? throw new InvalidOperationException($"Column '{column.Name}' is a float vector, not {typeof(TValue).Name}.");
            }
            ValueGetter<uint> keyGetter = (ref uint value) => value = ScoringDataView.ArgMaxKey(CurrentScores());
            return keyGetter as ValueGetter<TValue>
                ?? throw new InvalidOperationException($"Column '{column.Name}' is a uint key, not {typeof(TValue).Name}.");
        }
    }
}
