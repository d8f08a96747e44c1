// The CPU backend: the full Llama forward pass over a batch of sequences, fp32 math, SIMD and all cores.
using Kernels.Runtime.Models;

namespace Kernels.Runtime.Backends.Cpu;

public sealed class CpuBackend : IBackend
{
    private readonly ModelWeights _weights;
    private readonly float[] _invFreq;
    private readonly float[][] _attnNorm, _ffnNorm;
    private readonly float[] _finalNorm;

    public string Name => "cpu";
    public ModelConfig Config { get; }

    public CpuBackend(LoadedModel model)
    {
        Config = model.Config;
        _weights = model.Weights;
        _invFreq = RopeFrequencies.Compute(Config);
        _attnNorm = _weights.Layers.Select(l => l.AttentionNorm.ToFloatArray()).ToArray();
        _ffnNorm = _weights.Layers.Select(l => l.FfnNorm.ToFloatArray()).ToArray();
        _finalNorm = _weights.FinalNorm.ToFloatArray();
    }

    public IKvCache CreateCache() => new CpuKvCache(Config, 16);

    public float[][] Forward(IReadOnlyList<SequenceStep> batch)
    {
        var c = Config;
        int h = c.HiddenSize, qd = c.QueryDim, kvd = c.KvDim, ff = c.IntermediateSize;
        // Row layout: the new tokens of every sequence, one after the other.
        var caches = new CpuKvCache[batch.Count];
        var rowStart = new int[batch.Count + 1];
        for (int s = 0; s < batch.Count; s++)
        {
            caches[s] = batch[s].Cache as CpuKvCache ?? throw new ArgumentException("the cache was not created by the CPU backend");
            if (batch[s].Tokens.Length == 0) throw new ArgumentException($"sequence {s} of the batch has no tokens");
            caches[s].EnsureCapacity(caches[s].Length + batch[s].Tokens.Length);
            rowStart[s + 1] = rowStart[s] + batch[s].Tokens.Length;
        }
        int rows = rowStart[^1];
        int longest = 0; // the most keys any query row of this step attends over: the size of its score buffer
        for (int s = 0; s < batch.Count; s++) longest = Math.Max(longest, caches[s].Length + batch[s].Tokens.Length);
        var ids = new int[rows];
        var positions = new int[rows];
        for (int s = 0; s < batch.Count; s++)
        {
            batch[s].Tokens.Span.CopyTo(ids.AsSpan(rowStart[s]));
            for (int t = 0; t < batch[s].Tokens.Length; t++) positions[rowStart[s] + t] = caches[s].Length + t;
        }

        // Every activation buffer is rows x width; refuse a step whose buffers cannot exist rather than wrap around.
        long widest = Math.Max(Math.Max(h, qd), Math.Max(ff, c.VocabSize));
        if ((long)rows * widest > Array.MaxLength)
            throw new ArgumentException($"a step of {rows} token rows needs buffers of {(long)rows * widest} floats; split it into smaller steps");
        var x = new float[rows * h];
        var xn = new float[rows * h];
        var q = new float[rows * qd];
        var k = new float[rows * kvd];
        var v = new float[rows * kvd];
        var attn = new float[rows * qd];
        var proj = new float[rows * h];
        var gate = new float[rows * ff];
        var up = new float[rows * ff];
        Embedding.Gather(_weights.Embedding, ids, x);

        for (int l = 0; l < c.NumLayers; l++)
        {
            var w = _weights.Layers[l];
            RmsNorm.Apply(x, _attnNorm[l], (float)c.RmsNormEps, xn, rows);
            MatMul.Multiply(xn, rows, w.Wq, q, w.Bq);
            MatMul.Multiply(xn, rows, w.Wk, k, w.Bk);
            MatMul.Multiply(xn, rows, w.Wv, v, w.Bv);
            Rope.Apply(q, rows, c.NumHeads, c.HeadDim, positions, _invFreq);
            Rope.Apply(k, rows, c.NumKvHeads, c.HeadDim, positions, _invFreq);
            for (int s = 0; s < batch.Count; s++)
            {
                int start = caches[s].Length * kvd, n = (rowStart[s + 1] - rowStart[s]) * kvd;
                k.AsSpan(rowStart[s] * kvd, n).CopyTo(caches[s].Keys[l].AsSpan(start));
                v.AsSpan(rowStart[s] * kvd, n).CopyTo(caches[s].Values[l].AsSpan(start));
            }
            int layer = l;
            Parallel.For(0, batch.Count * c.NumHeads, () => new float[longest], (task, _, scores) =>
            {
                int s = task / c.NumHeads, head = task % c.NumHeads;
                int r0 = rowStart[s], n = rowStart[s + 1] - r0;
                int total = caches[s].Length + n;
                Attention.Causal(q.AsSpan(r0 * qd, n * qd), caches[s].Keys[layer].AsSpan(0, total * kvd),
                    caches[s].Values[layer].AsSpan(0, total * kvd), attn.AsSpan(r0 * qd, n * qd),
                    n, caches[s].Length, head, c.NumHeads, c.NumKvHeads, c.HeadDim, c.SlidingWindow, scores);
                return scores;
            }, _ => { });
            MatMul.Multiply(attn, rows, w.Wo, proj);
            ResidualAdd.Apply(x, proj);
            RmsNorm.Apply(x, _ffnNorm[l], (float)c.RmsNormEps, xn, rows);
            MatMul.Multiply(xn, rows, w.Gate, gate);
            MatMul.Multiply(xn, rows, w.Up, up);
            SwiGlu.Apply(gate, up, gate);
            MatMul.Multiply(gate, rows, w.Down, proj);
            ResidualAdd.Apply(x, proj);
        }
        for (int s = 0; s < batch.Count; s++) caches[s].Length += rowStart[s + 1] - rowStart[s];

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
        var logits = new float[logitRows.Count * c.VocabSize];
        MatMul.Multiply(normed, logitRows.Count, _weights.LmHead, logits);

        var result = new float[batch.Count][];
        int at = 0;
        for (int s = 0; s < batch.Count; s++)
        {
            int n = batch[s].AllLogits ? rowStart[s + 1] - rowStart[s] : 1;
            result[s] = logits.AsSpan(at * c.VocabSize, n * c.VocabSize).ToArray();
            at += n;
        }
        return result;
    }

    public void Dispose()
    {
        // The weights belong to the LoadedModel; the backend holds no native memory of its own.
    }
}
