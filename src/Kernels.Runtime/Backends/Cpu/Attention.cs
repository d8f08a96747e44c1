// Attention over paged KV blocks, as partial (o, lse) states merged exactly: shared prefix levels (Hydragen: the
// keys read once for every query row of the level) and each sequence's causal suffix. Blocks are fp32, fp16 or KIVI
// (quantized, dequantized inside the dot products). Reference for the GPU kernels.
using System.Numerics.Tensors;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
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
        float* wide = stackalloc float[kv.HalfRows && Tiled(d) ? KeyTile * d : 0];
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
            else if (kv.HalfRows && Tiled(d))
            {
                ushort* kb = kv.BlockKeysHalf(blocks[b], kvh) - (long)b * bs * stride; // indexed by absolute position
                for (; j < end; j += KeyTile)
                {
                    int n = Math.Min(KeyTile, end - j);
                    Widen(kb + (long)j * stride, stride, n, d, wide);
                    KeyScores(q, wide, n, d, scale, sp + (j - from));
                }
            }
            else if (kv.HalfRows)
            {
                ushort* kb = kv.BlockKeysHalf(blocks[b], kvh) - (long)b * bs * stride;
                for (; j < end; j++) sp[j - from] = Simd.DotHalf(q, kb + (long)j * stride, d) * scale;
            }
            else if (TiledSingle(d))
            {
                float* kb = kv.BlockKeys(blocks[b], kvh) - (long)b * bs * stride;
                KeyScoresSingle(q, kb + (long)j * stride, stride, end - j, d, scale, sp + (j - from));
                j = end;
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
        float* wide = stackalloc float[kv.HalfRows && Tiled(d) ? KeyTile * d : 0];
        for (int j = from; j < to;)
        {
            int b = j / bs, end = Math.Min(to, (b + 1) * bs);
            if (quantized)
            {
                Kivi.AccumulateValues(kv.Codes(blocks[b]), kv.Scales(blocks[b]), kv.Mins(blocks[b]), stride, bs, kv.Bits, kvh * d, d, w + (j - from), o);
                j = end;
            }
            else if (kv.HalfRows && Tiled(d))
            {
                ushort* vb = kv.BlockValuesHalf(blocks[b], kvh) - (long)b * bs * stride;
                for (; j < end; j += KeyTile)
                {
                    int n = Math.Min(KeyTile, end - j);
                    Widen(vb + (long)j * stride, stride, n, d, wide);
                    AccumulateRows(w + (j - from), wide, n, d, o);
                }
            }
            else if (kv.HalfRows)
            {
                ushort* vb = kv.BlockValuesHalf(blocks[b], kvh) - (long)b * bs * stride;
                for (; j < end; j++) Simd.AxpyHalfInPlace(w[j - from], vb + (long)j * stride, o, d);
            }
            else if (TiledSingle(d))
            {
                float* vb = kv.BlockValues(blocks[b], kvh) - (long)b * bs * stride;
                AccumulateSingleRows(w + (j - from), vb + (long)j * stride, stride, end - j, d, o);
                j = end;
            }
            else
            {
                float* vb = kv.BlockValues(blocks[b], kvh) - (long)b * bs * stride;
                for (; j < end; j++) Simd.AxpyInPlace(w[j - from], vb + (long)j * stride, o, d);
            }
        }
    }

    /// <summary>fp16 key and value rows are widened this many at a time, then used from L1 by every query row.</summary>
    private const int KeyTile = 16;

    /// <summary>Whether the tiled fp16 kernels apply: AVX2 + FMA and a head dimension of whole 8-lane vectors.</summary>
    private static bool Tiled(int d) => Fma.IsSupported && Avx2.IsSupported && d % 8 == 0 && d <= Models.ModelConfig.MaxHeadDim;

    /// <summary>n fp16 rows (<paramref name="stride"/> halves apart) of d values to fp32 rows d apart (exact).</summary>
    internal static void Widen(ushort* rows, int stride, int n, int d, float* destination)
    {
        for (int i = 0; i < n; i++)
            for (int c = 0; c < d; c += 8)
                Avx.Store(destination + i * d + c, DTypeConvert.HalfToSingle8(rows + (long)i * stride + c));
    }

    /// <summary>
    /// s[i] = (q . keys_i) * scale for n fp32 key rows d apart, four keys per pass with one horizontal-add reduction.
    /// Each dot is summed exactly as <see cref="Simd.DotHalf"/> sums it (two accumulators over 16-column steps, an
    /// 8-column remainder into the first, then Vector256.Sum of their sum), so the scores are that function's bits.
    /// </summary>
    internal static void KeyScores(float* q, float* keys, int n, int d, float scale, float* s)
    {
        int i = 0;
        var sv = Vector128.Create(scale);
        for (; i + 4 <= n; i += 4)
        {
            float* k0 = keys + i * d, k1 = k0 + d, k2 = k1 + d, k3 = k2 + d;
            var a0 = Vector256<float>.Zero; var b0 = a0; var a1 = a0; var b1 = a0; var a2 = a0; var b2 = a0; var a3 = a0; var b3 = a0;
            int c = 0;
            for (; c + 16 <= d; c += 16)
            {
                var ql = Avx.LoadVector256(q + c);
                var qh = Avx.LoadVector256(q + c + 8);
                a0 = Fma.MultiplyAdd(ql, Avx.LoadVector256(k0 + c), a0); b0 = Fma.MultiplyAdd(qh, Avx.LoadVector256(k0 + c + 8), b0);
                a1 = Fma.MultiplyAdd(ql, Avx.LoadVector256(k1 + c), a1); b1 = Fma.MultiplyAdd(qh, Avx.LoadVector256(k1 + c + 8), b1);
                a2 = Fma.MultiplyAdd(ql, Avx.LoadVector256(k2 + c), a2); b2 = Fma.MultiplyAdd(qh, Avx.LoadVector256(k2 + c + 8), b2);
                a3 = Fma.MultiplyAdd(ql, Avx.LoadVector256(k3 + c), a3); b3 = Fma.MultiplyAdd(qh, Avx.LoadVector256(k3 + c + 8), b3);
            }
            if (c < d)
            {
                var ql = Avx.LoadVector256(q + c);
                a0 = Fma.MultiplyAdd(ql, Avx.LoadVector256(k0 + c), a0);
                a1 = Fma.MultiplyAdd(ql, Avx.LoadVector256(k1 + c), a1);
                a2 = Fma.MultiplyAdd(ql, Avx.LoadVector256(k2 + c), a2);
                a3 = Fma.MultiplyAdd(ql, Avx.LoadVector256(k3 + c), a3);
            }
            var g = Avx.HorizontalAdd(Avx.HorizontalAdd(a0 + b0, a1 + b1), Avx.HorizontalAdd(a2 + b2, a3 + b3));
            ((g.GetLower() + g.GetUpper()) * sv).Store(s + i);
        }
        for (; i < n; i++)
        {
            float* k0 = keys + i * d;
            var a = Vector256<float>.Zero; var b = a;
            int c = 0;
            for (; c + 16 <= d; c += 16)
            {
                a = Fma.MultiplyAdd(Avx.LoadVector256(q + c), Avx.LoadVector256(k0 + c), a);
                b = Fma.MultiplyAdd(Avx.LoadVector256(q + c + 8), Avx.LoadVector256(k0 + c + 8), b);
            }
            if (c < d) a = Fma.MultiplyAdd(Avx.LoadVector256(q + c), Avx.LoadVector256(k0 + c), a);
            s[i] = Vector256.Sum(a + b) * scale;
        }
    }

    /// <summary>
    /// o += sum_i w[i] values_i over n fp32 value rows d apart, in row order per element with fused multiply-adds: the
    /// bits of <see cref="Simd.AxpyHalfInPlace"/> applied row by row, with each 8-lane slice of o held in a register.
    /// </summary>
    internal static void AccumulateRows(float* w, float* values, int n, int d, float* o)
    {
        int c = 0;
        for (; c + 32 <= d; c += 32) // four independent chains
        {
            var a0 = Avx.LoadVector256(o + c); var a1 = Avx.LoadVector256(o + c + 8);
            var a2 = Avx.LoadVector256(o + c + 16); var a3 = Avx.LoadVector256(o + c + 24);
            for (int i = 0; i < n; i++)
            {
                var wi = Vector256.Create(w[i]);
                float* v = values + i * d + c;
                a0 = Fma.MultiplyAdd(wi, Avx.LoadVector256(v), a0);
                a1 = Fma.MultiplyAdd(wi, Avx.LoadVector256(v + 8), a1);
                a2 = Fma.MultiplyAdd(wi, Avx.LoadVector256(v + 16), a2);
                a3 = Fma.MultiplyAdd(wi, Avx.LoadVector256(v + 24), a3);
            }
            Avx.Store(o + c, a0); Avx.Store(o + c + 8, a1); Avx.Store(o + c + 16, a2); Avx.Store(o + c + 24, a3);
        }
        for (; c < d; c += 8)
        {
            var acc = Avx.LoadVector256(o + c);
            for (int i = 0; i < n; i++) acc = Fma.MultiplyAdd(Vector256.Create(w[i]), Avx.LoadVector256(values + i * d + c), acc);
            Avx.Store(o + c, acc);
        }
    }

    /// <summary>Whether the fp32 tiled kernels apply: AVX2 + FMA and d of whole 8-lane vectors, at least 32 (Simd.Dot's FMA form).</summary>
    private static bool TiledSingle(int d) => Fma.IsSupported && Avx2.IsSupported && d % 8 == 0 && d >= 32;

    /// <summary>
    /// s[i] = (q . keys_i) * scale for n fp32 key rows <paramref name="stride"/> floats apart, summed exactly as
    /// <see cref="Simd.Dot"/> sums them for d >= 32 (four accumulators over 32-column steps, 8-column remainders into
    /// the first, Vector256.Sum((s0 + s1) + (s2 + s3))): two keys per pass over q, four reduced by horizontal adds.
    /// </summary>
    internal static void KeyScoresSingle(float* q, float* keys, int stride, int n, int d, float scale, float* s)
    {
        int i = 0;
        var sv = Vector128.Create(scale);
        for (; i + 4 <= n; i += 4)
        {
            float* k0 = keys + (long)i * stride;
            var (v0, v1) = DotPair(q, k0, k0 + stride, d);
            var (v2, v3) = DotPair(q, k0 + 2 * stride, k0 + 3 * stride, d);
            var g = Avx.HorizontalAdd(Avx.HorizontalAdd(v0, v1), Avx.HorizontalAdd(v2, v3));
            ((g.GetLower() + g.GetUpper()) * sv).Store(s + i);
        }
        for (; i < n; i++) s[i] = Simd.Dot(q, keys + (long)i * stride, d) * scale;
    }

    /// <summary>Lane sums ((s0 + s1) + (s2 + s3)) of Simd.Dot's four accumulators for q against two keys.</summary>
    private static (Vector256<float>, Vector256<float>) DotPair(float* q, float* ka, float* kb, int d)
    {
        var a0 = Vector256<float>.Zero; var a1 = a0; var a2 = a0; var a3 = a0;
        var b0 = a0; var b1 = a0; var b2 = a0; var b3 = a0;
        int c = 0;
        for (; c + 32 <= d; c += 32)
        {
            var q0 = Avx.LoadVector256(q + c); var q1 = Avx.LoadVector256(q + c + 8);
            var q2 = Avx.LoadVector256(q + c + 16); var q3 = Avx.LoadVector256(q + c + 24);
            a0 = Fma.MultiplyAdd(q0, Avx.LoadVector256(ka + c), a0); b0 = Fma.MultiplyAdd(q0, Avx.LoadVector256(kb + c), b0);
            a1 = Fma.MultiplyAdd(q1, Avx.LoadVector256(ka + c + 8), a1); b1 = Fma.MultiplyAdd(q1, Avx.LoadVector256(kb + c + 8), b1);
            a2 = Fma.MultiplyAdd(q2, Avx.LoadVector256(ka + c + 16), a2); b2 = Fma.MultiplyAdd(q2, Avx.LoadVector256(kb + c + 16), b2);
            a3 = Fma.MultiplyAdd(q3, Avx.LoadVector256(ka + c + 24), a3); b3 = Fma.MultiplyAdd(q3, Avx.LoadVector256(kb + c + 24), b3);
        }
        for (; c < d; c += 8)
        {
            var qc = Avx.LoadVector256(q + c);
            a0 = Fma.MultiplyAdd(qc, Avx.LoadVector256(ka + c), a0);
            b0 = Fma.MultiplyAdd(qc, Avx.LoadVector256(kb + c), b0);
        }
        return ((a0 + a1) + (a2 + a3), (b0 + b1) + (b2 + b3));
    }

    /// <summary>
    /// o += sum_i w[i] values_i over n fp32 value rows <paramref name="stride"/> floats apart: per element, row by row, a
    /// multiply then an add (the bits of <see cref="Simd.AxpyInPlace"/> applied row by row), each 8-lane slice of o in a register.
    /// </summary>
    internal static void AccumulateSingleRows(float* w, float* values, int stride, int n, int d, float* o)
    {
        int c = 0;
        for (; c + 32 <= d; c += 32)
        {
            var a0 = Avx.LoadVector256(o + c); var a1 = Avx.LoadVector256(o + c + 8);
            var a2 = Avx.LoadVector256(o + c + 16); var a3 = Avx.LoadVector256(o + c + 24);
            for (int i = 0; i < n; i++)
            {
                var wi = Vector256.Create(w[i]);
                float* v = values + (long)i * stride + c;
                a0 = Avx.Add(a0, Avx.Multiply(wi, Avx.LoadVector256(v)));
                a1 = Avx.Add(a1, Avx.Multiply(wi, Avx.LoadVector256(v + 8)));
                a2 = Avx.Add(a2, Avx.Multiply(wi, Avx.LoadVector256(v + 16)));
                a3 = Avx.Add(a3, Avx.Multiply(wi, Avx.LoadVector256(v + 24)));
            }
            Avx.Store(o + c, a0); Avx.Store(o + c + 8, a1); Avx.Store(o + c + 16, a2); Avx.Store(o + c + 24, a3);
        }
        for (; c < d; c += 8)
        {
            var acc = Avx.LoadVector256(o + c);
            for (int i = 0; i < n; i++) acc = Avx.Add(acc, Avx.Multiply(Vector256.Create(w[i]), Avx.LoadVector256(values + (long)i * stride + c)));
            Avx.Store(o + c, acc);
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

    /// <summary>
    /// One decode row's causal suffix for every query head that reads kv head <paramref name="kvh"/>: with a single
    /// row no key is masked, so it is a level over keys [first, pos] whose rows are those heads, and each fp16 key and
    /// value tile is widened once for the group instead of once per head. The same steps per head as
    /// <see cref="Suffix"/>, so the same bits; a row that reads part of its keys quantized (KIVI) goes through
    /// <see cref="Suffix"/> head by head. <paramref name="scores"/> holds Group x (pos + 1 - from) floats,
    /// <paramref name="partial"/> Group x HeadDim.
    /// </summary>
    public static void SuffixRow(in Layer kv, int[] blocks, float* q, float* o, float* lse, int pos, int from, int kvh,
        int? window, float[] scores, float[] partial, int compactBlocks = 0)
    {
        int first = Math.Max(from, window is int w ? pos - w + 1 : 0);
        if (first > pos) return;
        if (Math.Clamp(kv.QuantizedEnd(pos, compactBlocks), first, pos + 1) > first)
        {
            for (int h = kvh * kv.Group; h < (kvh + 1) * kv.Group; h++)
                Suffix(kv, blocks, q, o, lse, 1, pos, from, h, window, scores, partial, compactBlocks);
            return;
        }
        Span<LevelRow> rows = stackalloc LevelRow[kv.Group];
        for (int g = 0; g < kv.Group; g++) rows[g] = new LevelRow(0, kvh * kv.Group + g);
        Level(kv, blocks, first, pos + 1, kvh, rows, q, o, lse, scores, partial);
    }

    /// <summary>Whether any row reads the block ending at <paramref name="blockEnd"/> in full precision (KIVI: not quantized).</summary>
    private static bool ReadsFull(ReadOnlySpan<LevelRow> rows, int blockEnd)
    {
        foreach (var row in rows) if (blockEnd > row.QuantizedEnd) return true;
        return false;
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
            // fp16 rows are widened once per tile of keys for all the level's rows (rows reading a block quantized
            // take the quantized path); the per-row functions would widen them once per row.
            bool tiled = kv.HalfRows && Tiled(d);
            int stride = kv.KvStride;
            float* wide = stackalloc float[tiled ? KeyTile * d : 0];
            for (int j = start; j < end;)
            {
                int b = j / bs, blockEnd = Math.Min(end, (b + 1) * bs);
                for (int jt = j; tiled && ReadsFull(rows, blockEnd) && jt < blockEnd; jt += KeyTile)
                {
                    int count = Math.Min(KeyTile, blockEnd - jt);
                    Widen(kv.BlockKeysHalf(blocks[b], kvh) + (long)(jt - b * bs) * stride, stride, count, d, wide);
                    for (int r = 0; r < n; r++)
                        if (blockEnd > rows[r].QuantizedEnd)
                            KeyScores(q + (long)rows[r].Row * qStride + rows[r].Head * d, wide, count, d, kv.Scale, sp + (long)r * keys + (jt - start));
                }
                for (int r = 0; r < n; r++)
                    if (!tiled || blockEnd <= rows[r].QuantizedEnd)
                        Scores(kv, blocks, kvh, q + (long)rows[r].Row * qStride + rows[r].Head * d, j, blockEnd,
                            blockEnd <= rows[r].QuantizedEnd, sp + (long)r * keys + (j - start));
                j = blockEnd;
            }
            Span<float> lseLevel = n <= 256 ? stackalloc float[n] : new float[n];
            for (int r = 0; r < n; r++) lseLevel[r] = Softmax(new Span<float>(sp + (long)r * keys, keys));
            new Span<float>(pp, n * d).Clear();
            for (int j = start; j < end;)
            {
                int b = j / bs, blockEnd = Math.Min(end, (b + 1) * bs);
                for (int jt = j; tiled && ReadsFull(rows, blockEnd) && jt < blockEnd; jt += KeyTile)
                {
                    int count = Math.Min(KeyTile, blockEnd - jt);
                    Widen(kv.BlockValuesHalf(blocks[b], kvh) + (long)(jt - b * bs) * stride, stride, count, d, wide);
                    for (int r = 0; r < n; r++)
                        if (blockEnd > rows[r].QuantizedEnd)
                            AccumulateRows(sp + (long)r * keys + (jt - start), wide, count, d, pp + (long)r * d);
                }
                for (int r = 0; r < n; r++)
                    if (!tiled || blockEnd <= rows[r].QuantizedEnd)
                        Accumulate(kv, blocks, kvh, sp + (long)r * keys + (j - start), j, blockEnd, blockEnd <= rows[r].QuantizedEnd, pp + (long)r * d);
                j = blockEnd;
            }
            for (int r = 0; r < n; r++)
                AttentionState.Merge(new Span<float>(o + (long)rows[r].Row * qStride + rows[r].Head * d, d), ref lse[rows[r].Row * kv.Heads + rows[r].Head],
                    new ReadOnlySpan<float>(pp + (long)r * d, d), lseLevel[r]);
        }
    }
}
