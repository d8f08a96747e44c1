// Attention over paged KV blocks, as partial (o, lse) states merged exactly: shared prefix levels (Hydragen: the
// keys read once for every query row of the level) and each sequence's causal suffix. Reference for the GPU kernels.
using Kernels.Runtime.Numerics;

namespace Kernels.Runtime.Backends.Cpu;

/// <summary>
/// Shapes: q and the output o are [rows, heads * d]; lse is [rows, heads]; a layer's keys and values live in blocks
/// of [block_size, kv_heads * d] (CpuKvStorage). Scores are q.k / sqrt(d); softmax subtracts the row max; lse is
/// natural-log. Query head h reads kv head h / (heads / kv_heads).
/// </summary>
public static unsafe class Attention
{
    /// <summary>One layer's KV blocks and the attention shape.</summary>
    public readonly struct Layer(CpuKvStorage storage, int layer, int blockSize, int heads, int kvHeads, int headDim)
    {
        public readonly int BlockSize = blockSize, Heads = heads, KvHeads = kvHeads, HeadDim = headDim;
        public int Group => Heads / KvHeads;
        public int KvStride => KvHeads * HeadDim;
        public float Scale => 1f / MathF.Sqrt(HeadDim);
        /// <summary>Keys of kv head <paramref name="kvh"/> at the first position of block <paramref name="block"/>; the next position is KvStride floats on.</summary>
        public float* BlockKeys(int block, int kvh) => storage.KeyPointer(layer, block) + kvh * HeadDim;
        public float* BlockValues(int block, int kvh) => storage.ValuePointer(layer, block) + kvh * HeadDim;
    }

    /// <summary>
    /// Causal partial for one sequence and query head: row t (position start + t) attends to keys
    /// [max(from, pos - window + 1), pos]; the result is merged into (o, lse) of that row and head.
    /// </summary>
    public static void Suffix(in Layer kv, int[] blocks, float* q, float* o, float* lse, int rows, int start, int from,
        int head, int? window, Span<float> scores, Span<float> partial)
    {
        int d = kv.HeadDim, kvh = head / kv.Group, qStride = kv.Heads * d, bs = kv.BlockSize, stride = kv.KvStride;
        float scale = kv.Scale;
        fixed (float* sp = scores)
        fixed (float* pp = partial)
        {
            for (int t = 0; t < rows; t++)
            {
                int pos = start + t;
                int first = Math.Max(from, window is int w ? pos - w + 1 : 0);
                if (first > pos) continue; // no key in range: the empty state, nothing to merge
                float* qr = q + (long)t * qStride + head * d;
                float max = float.NegativeInfinity;
                for (int j = first; j <= pos;)
                {
                    int b = j / bs, end = Math.Min(pos + 1, (b + 1) * bs);
                    float* kb = kv.BlockKeys(blocks[b], kvh) - (long)b * bs * stride; // indexed by absolute position below
                    for (; j < end; j++)
                    {
                        float s = Simd.Dot(qr, kb + (long)j * stride, d) * scale;
                        sp[j - first] = s;
                        if (s > max) max = s;
                    }
                }
                float sum = 0;
                for (int j = 0; j <= pos - first; j++)
                {
                    float e = MathF.Exp(sp[j] - max);
                    sp[j] = e;
                    sum += e;
                }
                new Span<float>(pp, d).Clear();
                float inv = 1f / sum;
                for (int j = first; j <= pos;)
                {
                    int b = j / bs, end = Math.Min(pos + 1, (b + 1) * bs);
                    float* vb = kv.BlockValues(blocks[b], kvh) - (long)b * bs * stride;
                    for (; j < end; j++) Simd.AxpyInPlace(sp[j - first] * inv, vb + (long)j * stride, pp, d);
                }
                AttentionState.Merge(new Span<float>(o + (long)t * qStride + head * d, d), ref lse[t * kv.Heads + head],
                    new ReadOnlySpan<float>(pp, d), max + MathF.Log(sum));
            }
        }
    }

    /// <summary>A query row of a shared level: where its query, output and lse live.</summary>
    public readonly record struct LevelRow(int Row, int Head);

    /// <summary>
    /// Non-causal partial over keys [start, end) shared by every listed (row, head): each key and value vector is
    /// loaded once and used for all of them (the matrix-matrix form of Hydragen's prefix attention). All heads in
    /// <paramref name="rows"/> read kv head <paramref name="kvh"/>.
    /// </summary>
    public static void Level(in Layer kv, int[] blocks, int start, int end, int kvh, ReadOnlySpan<LevelRow> rows,
        float* q, float* o, float* lse, float[] scoresBuffer, float[] partialBuffer)
    {
        int d = kv.HeadDim, n = rows.Length, keys = end - start, qStride = kv.Heads * d, bs = kv.BlockSize, stride = kv.KvStride;
        float scale = kv.Scale;
        fixed (float* sp = scoresBuffer)
        fixed (float* pp = partialBuffer)
        {
            for (int j = 0; j < keys; j++)
            {
                int pos = start + j;
                float* k = kv.BlockKeys(blocks[pos / bs], kvh) + (long)(pos % bs) * stride;
                for (int r = 0; r < n; r++)
                    sp[(long)r * keys + j] = Simd.Dot(q + (long)rows[r].Row * qStride + rows[r].Head * d, k, d) * scale;
            }
            var lseLevel = new float[n];
            for (int r = 0; r < n; r++)
            {
                float* row = sp + (long)r * keys;
                float max = float.NegativeInfinity;
                for (int j = 0; j < keys; j++) max = Math.Max(max, row[j]);
                float sum = 0;
                for (int j = 0; j < keys; j++)
                {
                    float e = MathF.Exp(row[j] - max);
                    row[j] = e;
                    sum += e;
                }
                float inv = 1f / sum;
                for (int j = 0; j < keys; j++) row[j] *= inv;
                lseLevel[r] = max + MathF.Log(sum);
            }
            new Span<float>(pp, n * d).Clear();
            for (int j = 0; j < keys; j++)
            {
                int pos = start + j;
                float* v = kv.BlockValues(blocks[pos / bs], kvh) + (long)(pos % bs) * stride;
                for (int r = 0; r < n; r++) Simd.AxpyInPlace(sp[(long)r * keys + j], v, pp + (long)r * d, d);
            }
            for (int r = 0; r < n; r++)
                AttentionState.Merge(new Span<float>(o + (long)rows[r].Row * qStride + rows[r].Head * d, d), ref lse[rows[r].Row * kv.Heads + rows[r].Head],
                    new ReadOnlySpan<float>(pp + (long)r * d, d), lseLevel[r]);
        }
    }
}
