// Attention over paged KV blocks, as partial (o, lse) states merged exactly: shared prefix levels (Hydragen: the
// keys read once for every query row of the level) and each sequence's causal suffix. Blocks are fp32, fp16 or KIVI
// (quantized, dequantized inside the dot products). Reference for the GPU kernels.
using System.Numerics.Tensors;
using Kernels.Runtime.Numerics;
using Kernels.Runtime.Quantization;

namespace Kernels.Runtime.Backends.Cpu;

/// <summary>
/// Shapes: q and the output o are [rows, heads * d]; lse is [rows, heads]; a layer's keys and values live in blocks
/// of [block_size, kv_heads * d] (CpuKvStorage). Scores are q.k / sqrt(d); softmax subtracts the row max; lse is
/// natural-log. Query head h reads kv head h / (heads / kv_heads).
/// <para>
/// KIVI: a query row at position p reads keys before <see cref="Layer.QuantizedEnd"/> in their quantized form and the
/// rest (its full-precision window) as fp16 rows. The boundary depends only on p (blocks ending at or before
/// p + 1 - R, and blocks already compacted), so how a prompt was chunked or batched does not change what a row reads.
/// In a suffix the two parts are separate partials merged through their LSE; in a shared level one softmax covers
/// both (the same math: the level is one partial either way).
/// </para>
/// </summary>
public static unsafe class Attention
{
    /// <summary>One layer's KV blocks and the attention shape.</summary>
    public readonly struct Layer(CpuKvStorage storage, int layer, int blockSize, int heads, int kvHeads, int headDim)
    {
        public readonly int BlockSize = blockSize, Heads = heads, KvHeads = kvHeads, HeadDim = headDim;
        private readonly int _window = storage.Format.IsKivi ? storage.Format.Window : -1;
        public int Group => Heads / KvHeads;
        public int KvStride => KvHeads * HeadDim;
        public float Scale => 1f / MathF.Sqrt(HeadDim);
        public bool HalfRows => storage.HalfRows;
        public int Bits => storage.Format.Bits;
        /// <summary>Keys of kv head <paramref name="kvh"/> at the first position of block <paramref name="block"/>; the next position is KvStride floats on.</summary>
        public float* BlockKeys(int block, int kvh) => storage.KeyPointer(layer, block) + kvh * HeadDim;
        public float* BlockValues(int block, int kvh) => storage.ValuePointer(layer, block) + kvh * HeadDim;
        public ushort* BlockKeysHalf(int block, int kvh) => storage.KeyHalfPointer(layer, block) + kvh * HeadDim;
        public ushort* BlockValuesHalf(int block, int kvh) => storage.ValueHalfPointer(layer, block) + kvh * HeadDim;
        public uint* Codes(int block) => storage.Codes(layer, block);
        public Half* Scales(int block) => storage.Scales(layer, block);
        public float* Mins(int block) => storage.Mins(layer, block);

        /// <summary>
        /// The position before which a row at <paramref name="pos"/> reads keys quantized: whole blocks that end at or
        /// before pos + 1 - R, and at least the sequence's first <paramref name="compactBlocks"/> (already compacted,
        /// so they have no full-precision rows left). 0 when the format does not quantize.
        /// </summary>
        public int QuantizedEnd(int pos, int compactBlocks) =>
            _window < 0 ? 0 : Math.Max(compactBlocks, Math.Max(0, pos + 1 - _window) / BlockSize) * BlockSize;
    }

    /// <summary>Scaled scores of one query row against keys [from, to) of kv head <paramref name="kvh"/> into sp[0, to - from).</summary>
    private static void Scores(in Layer kv, int[] blocks, int kvh, float* q, int from, int to, bool quantized, float* sp)
    {
        int d = kv.HeadDim, bs = kv.BlockSize, stride = kv.KvStride;
        float scale = kv.Scale;
        for (int j = from; j < to;)
        {
            int b = j / bs, end = Math.Min(to, (b + 1) * bs);
            if (quantized) // whole blocks: the quantized part always is
            {
                float* s = sp + (j - from);
                Kivi.KeyScores(kv.Codes(blocks[b]), kv.Scales(blocks[b]), kv.Mins(blocks[b]), stride, bs, kv.Bits, kvh * d, d, q, s);
                for (int i = 0; i < bs; i++) s[i] *= scale;
                j = end;
            }
            else if (kv.HalfRows)
            {
                ushort* kb = kv.BlockKeysHalf(blocks[b], kvh) - (long)b * bs * stride; // indexed by absolute position
                for (; j < end; j++) sp[j - from] = Simd.DotHalf(q, kb + (long)j * stride, d) * scale;
            }
            else
            {
                float* kb = kv.BlockKeys(blocks[b], kvh) - (long)b * bs * stride;
                for (; j < end; j++) sp[j - from] = Simd.Dot(q, kb + (long)j * stride, d) * scale;
            }
        }
    }

    /// <summary>o += sum_j w[j - from] v_j over values [from, to) of kv head <paramref name="kvh"/>.</summary>
    private static void Accumulate(in Layer kv, int[] blocks, int kvh, float* w, int from, int to, bool quantized, float* o)
    {
        int d = kv.HeadDim, bs = kv.BlockSize, stride = kv.KvStride;
        for (int j = from; j < to;)
        {
            int b = j / bs, end = Math.Min(to, (b + 1) * bs);
            if (quantized)
            {
                Kivi.AccumulateValues(kv.Codes(blocks[b]), kv.Scales(blocks[b]), kv.Mins(blocks[b]), stride, bs, kv.Bits, kvh * d, d, w + (j - from), o);
                j = end;
            }
            else if (kv.HalfRows)
            {
                ushort* vb = kv.BlockValuesHalf(blocks[b], kvh) - (long)b * bs * stride;
                for (; j < end; j++) Simd.AxpyHalfInPlace(w[j - from], vb + (long)j * stride, o, d);
            }
            else
            {
                float* vb = kv.BlockValues(blocks[b], kvh) - (long)b * bs * stride;
                for (; j < end; j++) Simd.AxpyInPlace(w[j - from], vb + (long)j * stride, o, d);
            }
        }
    }

    /// <summary>
    /// The normalized partial over keys [from, to) of one query row, merged into (o, lse) of that row and head;
    /// nothing when the range is empty.
    /// </summary>
    private static void Partial(in Layer kv, int[] blocks, int kvh, float* q, int from, int to, bool quantized,
        float* sp, float* pp, float* o, ref float lse)
    {
        if (from >= to) return;
        Scores(kv, blocks, kvh, q, from, to, quantized, sp);
        float rowLse = Softmax(new Span<float>(sp, to - from));
        new Span<float>(pp, kv.HeadDim).Clear();
        Accumulate(kv, blocks, kvh, sp, from, to, quantized, pp);
        AttentionState.Merge(new Span<float>(o, kv.HeadDim), ref lse, new ReadOnlySpan<float>(pp, kv.HeadDim), rowLse);
    }

    /// <summary>Scores to probabilities in place (max subtracted, vector exp); returns the log-sum-exp of the scores.</summary>
    private static float Softmax(Span<float> row)
    {
        float max = TensorPrimitives.Max(row);
        TensorPrimitives.Subtract(row, max, row);
        TensorPrimitives.Exp(row, row);
        float sum = TensorPrimitives.Sum(row);
        TensorPrimitives.Multiply(row, 1f / sum, row);
        return max + MathF.Log(sum);
    }

    /// <summary>
    /// Causal partial for one sequence and query head: row t (position start + t) attends to keys
    /// [max(from, pos - window + 1), pos]; the result is merged into (o, lse) of that row and head. KIVI: the keys
    /// before the row's <see cref="Layer.QuantizedEnd"/> (<paramref name="compactBlocks"/>: the sequence's leading
    /// blocks compacted before this step) are a separate quantized partial.
    /// </summary>
    public static void Suffix(in Layer kv, int[] blocks, float* q, float* o, float* lse, int rows, int start, int from,
        int head, int? window, Span<float> scores, Span<float> partial, int compactBlocks = 0)
    {
        int d = kv.HeadDim, kvh = head / kv.Group, qStride = kv.Heads * d;
        fixed (float* sp = scores)
        fixed (float* pp = partial)
        {
            for (int t = 0; t < rows; t++)
            {
                int pos = start + t;
                int first = Math.Max(from, window is int w ? pos - w + 1 : 0);
                if (first > pos) continue; // no key in range: the empty state, nothing to merge
                float* qr = q + (long)t * qStride + head * d;
                float* or = o + (long)t * qStride + head * d;
                ref float lr = ref lse[t * kv.Heads + head];
                int split = Math.Clamp(kv.QuantizedEnd(pos, compactBlocks), first, pos + 1);
                Partial(kv, blocks, kvh, qr, first, split, true, sp, pp, or, ref lr);
                Partial(kv, blocks, kvh, qr, split, pos + 1, false, sp, pp, or, ref lr);
            }
        }
    }

    /// <summary>A query row of a shared level: where its query, output and lse live, and where its quantized keys end.</summary>
    public readonly record struct LevelRow(int Row, int Head, int QuantizedEnd = 0);

    /// <summary>
    /// Non-causal partial over keys [start, end) shared by every listed (row, head): each key and value vector is
    /// loaded once and used for all of them (the matrix-matrix form of Hydragen's prefix attention). All heads in
    /// <paramref name="rows"/> read kv head <paramref name="kvh"/>. Levels are whole blocks; a block is read quantized
    /// by the rows whose QuantizedEnd lies past it.
    /// </summary>
    public static void Level(in Layer kv, int[] blocks, int start, int end, int kvh, ReadOnlySpan<LevelRow> rows,
        float* q, float* o, float* lse, float[] scoresBuffer, float[] partialBuffer)
    {
        int d = kv.HeadDim, n = rows.Length, keys = end - start, qStride = kv.Heads * d, bs = kv.BlockSize;
        fixed (float* sp = scoresBuffer)
        fixed (float* pp = partialBuffer)
        {
            for (int j = start; j < end;)
            {
                int blockEnd = Math.Min(end, (j / bs + 1) * bs);
                for (int r = 0; r < n; r++)
                    Scores(kv, blocks, kvh, q + (long)rows[r].Row * qStride + rows[r].Head * d, j, blockEnd,
                        blockEnd <= rows[r].QuantizedEnd, sp + (long)r * keys + (j - start));
                j = blockEnd;
            }
            var lseLevel = new float[n];
            for (int r = 0; r < n; r++) lseLevel[r] = Softmax(new Span<float>(sp + (long)r * keys, keys));
            new Span<float>(pp, n * d).Clear();
            for (int j = start; j < end;)
            {
                int blockEnd = Math.Min(end, (j / bs + 1) * bs);
                for (int r = 0; r < n; r++)
                    Accumulate(kv, blocks, kvh, sp + (long)r * keys + (j - start), j, blockEnd, blockEnd <= rows[r].QuantizedEnd, pp + (long)r * d);
                j = blockEnd;
            }
            for (int r = 0; r < n; r++)
                AttentionState.Merge(new Span<float>(o + (long)rows[r].Row * qStride + rows[r].Head * d, d), ref lse[rows[r].Row * kv.Heads + rows[r].Head],
                    new ReadOnlySpan<float>(pp + (long)r * d, d), lseLevel[r]);
        }
    }
}
