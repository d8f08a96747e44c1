// The CPU backend: the full Llama forward pass over a batch of sequences, fp32 math, SIMD and all cores.
using System.Buffers;
using Kernels.Runtime.KvCache;
using Kernels.Runtime.Models;
using Kernels.Runtime.Quantization;

namespace Kernels.Runtime.Backends.Cpu;

public sealed record CpuBackendOptions
{
    /// <summary>Tokens per KV block (the KIVI formats use their group size G instead: one key group per block).</summary>
    public int KvBlockSize { get; init; } = 16;
    /// <summary>Most memory the KV cache may take (allocated as it is used).</summary>
    public long KvCacheBytes { get; init; } = 4L << 30;
    /// <summary>Sees the input of every transformer linear layer (calibration); null in normal runs.</summary>
    internal ILinearInputObserver? LinearInputs { get; init; }

    /// <summary>How keys and values are stored: fp32 (default, exact), fp16, or KIVI 2/4-bit with a full-precision window.</summary>
    public KvCacheFormat KvCache { get; init; } = KvCacheFormat.Fp32;
}

internal sealed unsafe class CpuBackend : IBackend
{
    /// <summary>Query rows (row x head) per task of a shared level: bounds its score buffer and spreads the work.</summary>
    private const int LevelRowsPerTask = 64;

    private readonly ModelWeights _weights;
    private readonly float[] _invFreq;
    private readonly float[][] _attnNorm, _ffnNorm;
    private readonly float[] _finalNorm;
    private readonly CpuKvStorage _kv;
    private readonly ILinearInputObserver? _linearInputs;

    /// <summary>
    /// The last step's activation buffers, reused by the next step of as many rows (decode steps mostly are): allocated
    /// each step they were ~0.6 MB a 16-sequence decode step of the 100M model, a third of it on the large-object heap,
    /// and a collection of generation 1 or 2 every few steps. A step takes them for its duration; a step running at the
    /// same time on another thread allocates its own.
    /// </summary>
    private StepBuffers? _stepBuffers;

    private sealed class StepBuffers(int rows, int h, int qd, int kvd, int heads, int ff)
    {
        public readonly int Rows = rows;
        public readonly float[] X = new float[rows * h], Xn = new float[rows * h], Q = new float[rows * qd], K = new float[rows * kvd], V = new float[rows * kvd],
            Attn = new float[rows * qd], Lse = new float[rows * heads], Proj = new float[rows * h],
            Gate = GC.AllocateUninitializedArray<float>(rows * ff), Up = GC.AllocateUninitializedArray<float>(rows * ff);
    }

    public string Name => "cpu";

    /// <summary>The instruction paths the kernels take on this machine, e.g. "matmul AVX-512, GGML int8 dots AVX-VNNI".</summary>
    public static string InstructionPaths =>
        $"matmul {MatMul.DensePath}, GGML int8 dots {GgmlDot.Best switch { GgmlDot.Path.AvxVnni => "AVX-VNNI", GgmlDot.Path.Avx2 => "AVX2", _ => "scalar" }}";
    public ModelConfig Config { get; }
    public KvBlockPool KvPool { get; }

    public CpuBackend(LoadedModel model, CpuBackendOptions? options = null)
    {
        options ??= new CpuBackendOptions();
        Config = model.Config;
        _weights = model.Weights;
        _invFreq = RopeFrequencies.Compute(Config);
        _attnNorm = _weights.Layers.Select(l => l.AttentionNorm.ToFloatArray()).ToArray();
        _ffnNorm = _weights.Layers.Select(l => l.FfnNorm.ToFloatArray()).ToArray();
        _finalNorm = _weights.FinalNorm.ToFloatArray();
        _linearInputs = options.LinearInputs;
        var format = options.KvCache;
        int blockSize = format.IsKivi ? format.Group : options.KvBlockSize;
        _kv = new CpuKvStorage(Config, blockSize, format);
        long full = _kv.FullBlockBytes;
        if (format.IsKivi)
        {
            // A full-precision KIVI block also owns its compact slot; compacting gives back the fp16 rows.
            var costs = new KvBlockCosts(full + _kv.CompactBlockBytes, _kv.CompactBlockBytes, format.WindowBlocks);
            KvPool = new KvBlockPool(Math.Max(options.KvCacheBytes, costs.FullBytes), blockSize, _kv, costs);
        }
        else KvPool = new KvBlockPool((int)Math.Clamp(options.KvCacheBytes / full, 1, int.MaxValue / 2), blockSize, _kv);
    }

    public KvCacheFormat KvFormat => _kv.Format;

    /// <summary>Bytes of KV memory one full-precision token takes in every layer (keys and values).</summary>
    public long KvBytesPerToken => _kv.FullBlockBytes / KvPool.BlockSize;

    public IKvCache CreateCache() => new KvSequence(KvPool);

    /// <summary>A transformer linear layer: shown to the calibration observer, if any, then multiplied.</summary>
    private void Project(float[] x, int rows, LinearWeight w, float[] y, WeightTensor? bias = null)
    {
        _linearInputs?.Observe(w, x.AsSpan(0, rows * w.InFeatures), rows);
        Linear.Multiply(x, rows, w, y, bias);
    }

    /// <summary>
    /// Linear layers that read the same x (q, k, v; gate, up): dense ones run as one matmul call, x prepared once and
    /// the cores meeting once; other stored forms one at a time.
    /// </summary>
    private void ProjectShared(float[] x, int rows, params ReadOnlySpan<(LinearWeight W, float[] Y, WeightTensor? Bias)> layers)
    {
        bool dense = true;
        foreach (var layer in layers) dense &= layer.W is DenseLinear;
        if (!dense)
        {
            foreach (var layer in layers) Project(x, rows, layer.W, layer.Y, layer.Bias);
            return;
        }
        var products = new MatMul.Product[layers.Length];
        var pins = new System.Buffers.MemoryHandle[layers.Length];
        try
        {
            for (int i = 0; i < layers.Length; i++)
            {
                _linearInputs?.Observe(layers[i].W, x.AsSpan(0, rows * layers[i].W.InFeatures), rows);
                pins[i] = layers[i].Y.AsMemory().Pin();
                products[i] = new MatMul.Product(((DenseLinear)layers[i].W).Weight, (float*)pins[i].Pointer, layers[i].Y.Length, layers[i].Bias);
            }
            MatMul.Multiply(x, rows, products);
        }
        finally
        {
            foreach (var pin in pins) pin.Dispose();
        }
    }

    public float[][] Forward(IReadOnlyList<SequenceStep> batch, AttentionPlan? attention = null)
    {
        var (logits, firstRow) = Run(batch, attention);
        int vocab = Config.VocabSize;
        var result = new float[batch.Count][];
        WorkerTeam.For(batch.Count, s =>
        {
            int n = firstRow[s + 1] - firstRow[s];
            result[s] = GC.AllocateUninitializedArray<float>(n * vocab);
            logits.AsSpan(firstRow[s] * vocab, n * vocab).CopyTo(result[s]);
        });
        ArrayPool<float>.Shared.Return(logits);
        return result;
    }

    /// <summary>The tokens are chosen from the LM head's output where it lies, a sequence per worker (no copies).</summary>
    public StepOutput[] Step(IReadOnlyList<SequenceStep> batch, AttentionPlan? attention = null)
    {
        var (logits, firstRow) = Run(batch, attention);
        int vocab = Config.VocabSize;
        var outputs = new StepOutput[batch.Count];
        try
        {
            WorkerTeam.For(batch.Count, s =>
            {
                int n = firstRow[s + 1] - firstRow[s];
                outputs[s] = TokenChooser.Choose(batch[s], logits.AsSpan(firstRow[s] * vocab, n * vocab), n, vocab);
            });
        }
        finally
        {
            ArrayPool<float>.Shared.Return(logits);
        }
        return outputs;
    }

    /// <summary>
    /// The forward pass: returns the logits of the rows asked for (a pooled array the caller returns), sequence s's
    /// rows from firstRow[s] to firstRow[s + 1].
    /// </summary>
    private (float[] Logits, int[] FirstRow) Run(IReadOnlyList<SequenceStep> batch, AttentionPlan? attention)
    {
        var c = Config;
        int h = c.HiddenSize, qd = c.QueryDim, kvd = c.KvDim, ff = c.IntermediateSize, bs = KvPool.BlockSize;
        var plan = attention ?? AttentionPlan.None(batch.Count);
        if (plan.SuffixStart.Length != batch.Count) throw new ArgumentException("the attention plan was made for another batch");
        if (plan.Levels.Count > 0 && c.SlidingWindow != null) throw new ArgumentException("shared-prefix attention does not support a sliding window");
        if (_kv.Format.IsKivi && c.SlidingWindow != null) throw new NotSupportedException($"the {_kv.Format} KV cache does not support sliding-window attention");

        // Row layout: the new tokens of every sequence, one after the other.
        var seqs = new KvSequence[batch.Count];
        var rowStart = new int[batch.Count + 1];
        var start = new int[batch.Count];
        for (int s = 0; s < batch.Count; s++)
        {
            seqs[s] = batch[s].Cache as KvSequence ?? throw new ArgumentException("the cache was not created by this backend");
            if (seqs[s].Pool != KvPool) throw new ArgumentException("the cache belongs to another backend's KV pool");
            int n = batch[s].Tokens.Length;
            if (n == 0) throw new ArgumentException($"sequence {s} of the batch has no tokens");
            start[s] = seqs[s].Length;
            if (start[s] + n > c.MaxPositions)
                throw new InvalidOperationException($"sequence {s} would hold {start[s] + n} tokens, beyond the model's context of {c.MaxPositions}");
            if (plan.SuffixStart[s] > start[s]) throw new ArgumentException($"sequence {s}: the plan's suffix starts after its cached keys");
            rowStart[s + 1] = rowStart[s] + n;
        }
        foreach (var level in plan.Levels)
            foreach (int s in level.Sequences)
                if (level.End > start[s]) throw new ArgumentException($"a shared level ends at {level.End}, past sequence {s}'s cached keys ({start[s]})");
        for (int s = 0; s < batch.Count; s++) seqs[s].Reserve(batch[s].Tokens.Length);
        var (compactBefore, compacting) = CompactionOf(seqs, batch);

        int rows = rowStart[^1];
        long widest = Math.Max(Math.Max(h, qd), Math.Max(ff, c.VocabSize));
        if ((long)rows * widest > Array.MaxLength)
            throw new ArgumentException($"a step of {rows} token rows needs buffers of {(long)rows * widest} floats; split it into smaller steps");
        int longest = 0; // the most keys any query row of this step attends over: the size of its score buffer
        for (int s = 0; s < batch.Count; s++) longest = Math.Max(longest, start[s] + batch[s].Tokens.Length);
        var ids = new int[rows];
        var positions = new int[rows];
        for (int s = 0; s < batch.Count; s++)
        {
            batch[s].Tokens.Span.CopyTo(ids.AsSpan(rowStart[s]));
            for (int t = 0; t < batch[s].Tokens.Length; t++) positions[rowStart[s] + t] = start[s] + t;
        }

        var (ropeCos, ropeSin) = Rope.Angles(positions, _invFreq.AsSpan(0, c.HeadDim / 2)); // once for every layer
        // Every buffer below is written whole before it is read (attn and lse by Attend's own reset).
        var buffers = Interlocked.Exchange(ref _stepBuffers, null);
        if (buffers == null || buffers.Rows != rows) buffers = new StepBuffers(rows, h, qd, kvd, c.NumHeads, ff);
        var (x, xn, q, k, v) = (buffers.X, buffers.Xn, buffers.Q, buffers.K, buffers.V);
        var (attn, lse, proj, gate, up) = (buffers.Attn, buffers.Lse, buffers.Proj, buffers.Gate, buffers.Up);
        Embedding.Gather(_weights.Embedding, ids, x);

        for (int l = 0; l < c.NumLayers; l++)
        {
            var w = _weights.Layers[l];
            RmsNorm.Apply(x, _attnNorm[l], (float)c.RmsNormEps, xn, rows);
            ProjectShared(xn, rows, (w.Wq, q, w.Bq), (w.Wk, k, w.Bk), (w.Wv, v, w.Bv));
            Rope.Apply(q, rows, c.NumHeads, c.HeadDim, ropeCos, ropeSin);
            Rope.Apply(k, rows, c.NumKvHeads, c.HeadDim, ropeCos, ropeSin);
            for (int s = 0; s < batch.Count; s++)
            {
                for (int r = rowStart[s]; r < rowStart[s + 1]; r++)
                {
                    int pos = positions[r];
                    _kv.WriteRow(l, seqs[s].Blocks[pos / bs], pos % bs, k.AsSpan(r * kvd, kvd), v.AsSpan(r * kvd, kvd));
                }
            }
            int layer = l;
            if (compacting.Length > 0) Parallel.ForEach(compacting, block => _kv.Quantize(layer, block));
            Attend(new Attention.Layer(_kv, l, bs, c.NumHeads, c.NumKvHeads, c.HeadDim), plan, seqs, rowStart, start, positions, compactBefore, batch, q, attn, lse, longest);
            Project(attn, rows, w.Wo, proj);
            ResidualAdd.Apply(x, proj);
            RmsNorm.Apply(x, _ffnNorm[l], (float)c.RmsNormEps, xn, rows);
            ProjectShared(xn, rows, (w.Gate, gate, null), (w.Up, up, null));
            RowsInParallel(rows, ff, r => SwiGlu.Apply(gate.AsSpan(r * ff, ff), up.AsSpan(r * ff, ff), gate.AsSpan(r * ff, ff)));
            Project(gate, rows, w.Down, proj);
            ResidualAdd.Apply(x, proj);
        }
        for (int s = 0; s < batch.Count; s++) seqs[s].Advance(batch[s].Tokens.Length);
        foreach (int block in compacting) KvPool.Compact(block);

        // Final norm and LM head only for the rows whose logits were asked for.
        var logitRows = new List<int>();
        for (int s = 0; s < batch.Count; s++)
        {
            if (batch[s].AllLogits) for (int r = rowStart[s]; r < rowStart[s + 1]; r++) logitRows.Add(r);
            else logitRows.Add(rowStart[s + 1] - 1);
        }
        var selected = new float[logitRows.Count * h];
        for (int i = 0; i < logitRows.Count; i++) x.AsSpan(logitRows[i] * h, h).CopyTo(selected.AsSpan(i * h));
        var normed = new float[selected.Length];
        RmsNorm.Apply(selected, _finalNorm, (float)c.RmsNormEps, normed, logitRows.Count);
        var logits = ArrayPool<float>.Shared.Rent(checked(logitRows.Count * c.VocabSize)); // written by the LM head
        MatMul.Multiply(normed, logitRows.Count, _weights.LmHead, logits);
        var firstRow = new int[batch.Count + 1];
        for (int s = 0; s < batch.Count; s++) firstRow[s + 1] = firstRow[s] + (batch[s].AllLogits ? rowStart[s + 1] - rowStart[s] : 1);
        Volatile.Write(ref _stepBuffers, buffers); // for the next step (a step that throws leaves them to the GC)
        return (logits, firstRow);
    }

    /// <summary>
    /// body(r) for every row r of a [rows, width] elementwise op, spread over the cores when there is enough of it (a
    /// row is always processed whole by one call, so its values do not depend on the batch).
    /// </summary>
    private static void RowsInParallel(int rows, int width, Action<int> body)
    {
        const int MinPerTask = 8192; // below this a fork costs more than it saves
        int tasks = (int)Math.Clamp((long)rows * width / MinPerTask, 1, Math.Min(rows, 2 * Environment.ProcessorCount));
        if (tasks == 1)
        {
            for (int r = 0; r < rows; r++) body(r);
            return;
        }
        WorkerTeam.For(tasks, task =>
        {
            for (int r = (int)((long)rows * task / tasks), end = (int)((long)rows * (task + 1) / tasks); r < end; r++) body(r);
        });
    }

    /// <summary>
    /// KIVI: per sequence, how many leading blocks were compact before this step, and the blocks this step quantizes
    /// (every layer, after writing its rows) and compacts at its end: those that end at or before the sequence's new
    /// length - R. A block shared by several sequences is quantized once, when the first of them passes it; its content
    /// is a function of its tokens only, so every sharer gets the same codes.
    /// </summary>
    private (int[] CompactBefore, int[] Compacting) CompactionOf(KvSequence[] seqs, IReadOnlyList<SequenceStep> batch)
    {
        var before = new int[seqs.Length];
        if (!_kv.Format.IsKivi) return (before, []);
        int bs = KvPool.BlockSize;
        var compacting = new List<int>();
        var seen = new HashSet<int>();
        for (int s = 0; s < seqs.Length; s++)
        {
            var blocks = seqs[s].Blocks;
            while (before[s] < blocks.Count && KvPool.IsCompact(blocks[before[s]])) before[s]++;
            int passed = _kv.Format.BlocksPassed(seqs[s].Length + batch[s].Tokens.Length);
            for (int b = before[s]; b < passed; b++)
                if (!KvPool.IsCompact(blocks[b]) && seen.Add(blocks[b])) compacting.Add(blocks[b]);
        }
        return (before, compacting.ToArray());
    }

    /// <summary>
    /// Attention of the step's query rows: every shared level (its keys read once for all member rows), then each
    /// sequence's causal suffix, merged into (attn, lse) through the one LSE merge.
    /// </summary>
    private void Attend(Attention.Layer kv, AttentionPlan plan, KvSequence[] seqs, int[] rowStart, int[] start,
        int[] positions, int[] compactBefore, IReadOnlyList<SequenceStep> batch, float[] q, float[] attn, float[] lse, int longest)
    {
        var c = Config;
        Array.Clear(attn);
        Array.Fill(lse, float.NegativeInfinity);
        fixed (float* qp = q)
        fixed (float* op = attn)
        fixed (float* lp = lse)
        {
            float* qs = qp, os = op, ls = lp;
            foreach (var level in plan.Levels)
            {
                // Rows of one kv head: every member's query rows times the query heads that read this kv head.
                var tasks = new List<(int KvHead, Attention.LevelRow[] Rows)>();
                for (int kvh = 0; kvh < c.NumKvHeads; kvh++)
                {
                    var all = new List<Attention.LevelRow>();
                    foreach (int s in level.Sequences)
                        for (int r = rowStart[s]; r < rowStart[s + 1]; r++)
                            for (int g = 0; g < kv.Group; g++)
                                all.Add(new Attention.LevelRow(r, kvh * kv.Group + g, kv.QuantizedEnd(positions[r], compactBefore[s])));
                    for (int i = 0; i < all.Count; i += LevelRowsPerTask)
                        tasks.Add((kvh, all.GetRange(i, Math.Min(LevelRowsPerTask, all.Count - i)).ToArray()));
                }
                var blocks = seqs[level.Sequences[0]].Blocks.ToArray();
                int keys = level.End - level.Start;
                WorkerTeam.For(tasks.Count, i =>
                {
                    var scores = ArrayPool<float>.Shared.Rent(LevelRowsPerTask * keys);
                    var partial = ArrayPool<float>.Shared.Rent(LevelRowsPerTask * c.HeadDim);
                    Attention.Level(kv, blocks, level.Start, level.End, tasks[i].KvHead, tasks[i].Rows, qs, os, ls, scores, partial);
                    ArrayPool<float>.Shared.Return(scores);
                    ArrayPool<float>.Shared.Return(partial);
                });
            }
            var tables = seqs.Select(s => s.Blocks.ToArray()).ToArray();
            // Tasks of whole sequences when there are enough of them (decode batches: fewer, larger tasks), else one
            // per sequence and kv head (the query heads that read the same key and value rows run on one core, one
            // after the other: a long prefill still spreads over every core).
            int headsPerTask = batch.Count >= 2 * Environment.ProcessorCount ? c.NumHeads : c.NumHeads / c.NumKvHeads;
            int tasksPerSeq = c.NumHeads / headsPerTask;
            WorkerTeam.For(batch.Count * tasksPerSeq, task =>
            {
                int s = task / tasksPerSeq, r0 = rowStart[s], rows = rowStart[s + 1] - r0;
                var scores = ArrayPool<float>.Shared.Rent(kv.Group * longest);
                var partial = ArrayPool<float>.Shared.Rent(kv.Group * c.HeadDim);
                float* qr = qs + (long)r0 * c.QueryDim, or = os + (long)r0 * c.QueryDim, lr = ls + (long)r0 * c.NumHeads;
                int firstHead = task % tasksPerSeq * headsPerTask;
                if (rows == 1 && headsPerTask == c.NumHeads) // the whole sequence's suffix, fetched up front
                    Attention.PrefetchRows(kv, tables[s], Math.Max(plan.SuffixStart[s], c.SlidingWindow is int sw ? start[s] - sw + 1 : 0), start[s] + 1);
                if (rows == 1) // decode: the heads of a kv group read its keys and values together
                    for (int kvh = firstHead / kv.Group, lastKv = (firstHead + headsPerTask) / kv.Group; kvh < lastKv; kvh++)
                        Attention.SuffixRow(kv, tables[s], qr, or, lr, start[s], plan.SuffixStart[s], kvh, c.SlidingWindow, scores, partial, compactBefore[s]);
                else
                    for (int head = firstHead; head < firstHead + headsPerTask; head++)
                        Attention.Suffix(kv, tables[s], qr, or, lr, rows, start[s], plan.SuffixStart[s], head, c.SlidingWindow, scores, partial, compactBefore[s]);
                ArrayPool<float>.Shared.Return(scores);
                ArrayPool<float>.Shared.Return(partial);
            });
        }
    }

    public void Dispose()
    {
        // The weights belong to the LoadedModel; KV storage is managed memory released with the backend.
    }
}
