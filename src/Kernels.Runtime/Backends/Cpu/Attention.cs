// Attention over paged KV blocks, as partial (o, lse) states merged exactly: shared prefix levels (Hydragen: the
// keys read once for every query row of the level) and each sequence's causal suffix. Blocks are fp32, fp16 or KIVI
// (quantized, dequantized inside the dot products). Reference for the GPU kernels.
// This file is the algorithm (partials over key ranges, suffix, shared levels); Attention.Kernels.cs holds the
// micro-kernels it runs on (scores, value accumulation, fp16 widening, softmax).
using System.Runtime.CompilerServices;
using System.Numerics.Tensors;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Kernels.Runtime.Numerics;
using Kernels.Runtime.Quantization;

namespace Kernels.Runtime.Backends.Cpu;

/// <summary>
/// Shapes: q and the output o are [rows, heads * d]; lse is [rows, heads]; a layer's keys and values live in blocks
/// of [block_size, kv_heads * d] (CpuKvStorage). Scores are q.k / sqrt(d): the dots are summed unscaled in one order
/// (<see cref="Dot"/>) whatever tile computes them, and softmax subtracts the row max, then scales; lse is
/// natural-log. Values are added key by key with one fused multiply-add per element, so a row's result does not
/// depend on which other rows, heads or sequences share its tiles. Query head h reads kv head h / (heads / kv_heads).
/// <para>
/// KIVI: a query row at position p reads keys before <see cref="Layer.QuantizedEnd"/> in their quantized form and the
/// rest (its full-precision window) as fp16 rows. The boundary depends only on p (blocks ending at or before
/// p + 1 - R, and blocks already compacted), so how a prompt was chunked or batched does not change what a row reads.
/// In a suffix the two parts are separate partials merged through their LSE; in a shared level one softmax covers
/// both (the same math: the level is one partial either way).
/// </para>
/// </summary>
internal static unsafe partial class Attention
{
    /// <summary>One layer's KV blocks and the attention shape.</summary>
    public readonly struct Layer(CpuKvStorage storage, int layer, int blockSize, int heads, int kvHeads, int headDim)
    {
        public readonly int BlockSize = blockSize, Heads = heads, KvHeads = kvHeads, HeadDim = headDim;
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
        public int QuantizedEnd(int pos, int compactBlocks) => storage.Format.QuantizedEnd(pos, compactBlocks);
    }

    /// <summary>Positions a decode row's suffix fetches ahead (64: 64 KiB of fp32 keys and values for 4 kv heads of 64).</summary>
    private const int PrefetchPositions = 64;

    /// <summary>
    /// Fetches the full-precision key and value rows (every kv head) of the first positions of [from, to): a block
    /// holds them contiguously, so a sequence's suffix is requested as a few sequential runs before its heads read it
    /// 256 bytes per row at a time (the rows come cold from DRAM each step: the weights evict them; measured ~13 % less
    /// suffix time in a 16-sequence step). Nothing for KIVI caches (their blocks may be compact), nor where the runtime
    /// has no SSE (ARM64, or DOTNET_EnableHWIntrinsic=0).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void PrefetchRows(in Layer kv, int[] blocks, int from, int to)
    {
        if (kv.Bits != 0 || !Sse.IsSupported) return;
        to = Math.Min(to, from + PrefetchPositions);
        int bs = kv.BlockSize, rowBytes = kv.KvStride * (kv.HalfRows ? 2 : 4);
        for (int j = from; j < to;)
        {
            int b = j / bs, end = Math.Min(to, (b + 1) * bs);
            long offset = (long)(j - b * bs) * rowBytes, bytes = (long)(end - j) * rowBytes;
            byte* keys = kv.HalfRows ? (byte*)kv.BlockKeysHalf(blocks[b], 0) : (byte*)kv.BlockKeys(blocks[b], 0);
            byte* values = kv.HalfRows ? (byte*)kv.BlockValuesHalf(blocks[b], 0) : (byte*)kv.BlockValues(blocks[b], 0);
            for (long o = offset; o < offset + bytes; o += 64)
            {
                Sse.Prefetch0(keys + o);
                Sse.Prefetch0(values + o);
            }
            j = end;
        }
    }

    /// <summary>fp16 key or value rows widened per tile: up to 16, at most 4096 floats of stack.</summary>
    private static int WideRows(int d) => Math.Clamp(4096 / d, 1, 16);

    /// <summary>
    /// Full-precision key (or value) rows of kv head <paramref name="kvh"/> from position <paramref name="j"/> on, up to
    /// <paramref name="to"/> and the end of j's block: fp32 rows read in place, fp16 ones widened into
    /// <paramref name="wide"/> (at most <see cref="WideRows"/> of them). Returns how many, with their address and stride.
    /// </summary>
    private static int FullRows(in Layer kv, int[] blocks, int kvh, bool values, int j, int to, float* wide, out float* rows, out int stride)
    {
        int d = kv.HeadDim, bs = kv.BlockSize, b = j / bs, n = Math.Min(to, (b + 1) * bs) - j;
        long offset = (long)(j - b * bs) * kv.KvStride;
        if (!kv.HalfRows)
        {
            rows = (values ? kv.BlockValues(blocks[b], kvh) : kv.BlockKeys(blocks[b], kvh)) + offset;
            stride = kv.KvStride;
            return n;
        }
        n = Math.Min(n, WideRows(d));
        Widen((values ? kv.BlockValuesHalf(blocks[b], kvh) : kv.BlockKeysHalf(blocks[b], kvh)) + offset, kv.KvStride, n, d, wide);
        rows = wide;
        stride = d;
        return n;
    }

    /// <summary>
    /// Full-precision scores of <paramref name="rows"/> query rows (q_r, s_r by address) against keys [from, to) of kv
    /// head <paramref name="kvh"/>: s_r[j - from], each key tile loaded (or widened) once for all the rows.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void FullScores(in Layer kv, int[] blocks, int kvh, nint* q, nint* s, int rows, int from, int to)
    {
        if (rows == 0) return; // (KIVI: every row reads these keys quantized; compact blocks have no full rows)
        float* wide = stackalloc float[kv.HalfRows ? WideRows(kv.HeadDim) * kv.HeadDim : 0];
        nint* at = stackalloc nint[rows];
        for (int j = from, n; j < to; j += n)
        {
            n = FullRows(kv, blocks, kvh, values: false, j, to, wide, out float* keys, out int stride);
            for (int r = 0; r < rows; r++) at[r] = s[r] + (j - from) * sizeof(float);
            ScoreRows(q, at, rows, keys, stride, n, kv.HeadDim);
        }
    }

    /// <summary>o_r += sum_j p_r[j - from] v_j over values [from, to) of kv head <paramref name="kvh"/> (as <see cref="FullScores"/>).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void FullValues(in Layer kv, int[] blocks, int kvh, nint* p, nint* o, int rows, int from, int to)
    {
        if (rows == 0) return;
        float* wide = stackalloc float[kv.HalfRows ? WideRows(kv.HeadDim) * kv.HeadDim : 0];
        nint* at = stackalloc nint[rows];
        for (int j = from, n; j < to; j += n)
        {
            n = FullRows(kv, blocks, kvh, values: true, j, to, wide, out float* values, out int stride);
            for (int r = 0; r < rows; r++) at[r] = p[r] + (j - from) * sizeof(float);
            AccumulateRows(at, o, rows, values, stride, n, kv.HeadDim);
        }
    }

    /// <summary>KIVI: unscaled scores of one query row against the quantized keys [from, to) (whole blocks).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void QuantizedScores(in Layer kv, int[] blocks, int kvh, float* q, int from, int to, float* sp)
    {
        int bs = kv.BlockSize;
        for (int j = from; j < to; j += bs)
            Kivi.KeyScores(kv.Codes(blocks[j / bs]), kv.Scales(blocks[j / bs]), kv.Mins(blocks[j / bs]), kv.KvStride, bs, kv.Bits, kvh * kv.HeadDim, kv.HeadDim, q, sp + (j - from));
    }

    /// <summary>KIVI: o += sum_j w[j - from] v_j over the quantized values [from, to) (whole blocks).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void QuantizedValues(in Layer kv, int[] blocks, int kvh, float* w, int from, int to, float* o)
    {
        int bs = kv.BlockSize;
        for (int j = from; j < to; j += bs)
            Kivi.AccumulateValues(kv.Codes(blocks[j / bs]), kv.Scales(blocks[j / bs]), kv.Mins(blocks[j / bs]), kv.KvStride, bs, kv.Bits, kvh * kv.HeadDim, kv.HeadDim, w + (j - from), o);
    }

    /// <summary>
    /// The normalized partial over keys [from, to) of one query row, merged into (o, lse) of that row and head;
    /// nothing when the range is empty.
    /// </summary>
    private static void Partial(in Layer kv, int[] blocks, int kvh, float* q, int from, int to, bool quantized,
        float* sp, float* pp, float* o, ref float lse)
    {
        if (from >= to) return;
        nint qa = (nint)q, sa = (nint)sp, pa = (nint)pp;
        if (quantized) QuantizedScores(kv, blocks, kvh, q, from, to, sp);
        else FullScores(kv, blocks, kvh, &qa, &sa, 1, from, to);
        float rowLse = Softmax(new Span<float>(sp, to - from), kv.Scale);
        new Span<float>(pp, kv.HeadDim).Clear();
        if (quantized) QuantizedValues(kv, blocks, kvh, sp, from, to, pp);
        else FullValues(kv, blocks, kvh, &sa, &pa, 1, from, to);
        AttentionState.Merge(new Span<float>(o, kv.HeadDim), ref lse, new ReadOnlySpan<float>(pp, kv.HeadDim), rowLse);
    }

    /// <summary>
    /// Causal partial for one sequence and query head: row t (position start + t) attends to keys
    /// [max(from, pos - window + 1), pos]; the result is merged into (o, lse) of that row and head. KIVI: the keys
    /// before the row's <see cref="Layer.QuantizedEnd"/> (<paramref name="compactBlocks"/>: the sequence's leading
    /// blocks compacted before this step) are a separate quantized partial.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
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
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
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

    /// <summary>A query row of a shared level: where its query, output and lse live, and where its quantized keys end.</summary>
    public readonly record struct LevelRow(int Row, int Head, int QuantizedEnd = 0);

    /// <summary>
    /// Non-causal partial over keys [start, end) shared by every listed (row, head): keys and values are read a tile at
    /// a time for all of them, 4 keys x 3 query rows per register tile for the scores and 3 rows x 32 columns for the
    /// values (the matrix-matrix form of Hydragen's prefix attention). All heads in
    /// <paramref name="rows"/> read kv head <paramref name="kvh"/>. Levels are whole blocks; a block is read quantized
    /// by the rows whose QuantizedEnd lies past it.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Level(in Layer kv, int[] blocks, int start, int end, int kvh, ReadOnlySpan<LevelRow> rows,
        float* q, float* o, float* lse, float[] scoresBuffer, float[] partialBuffer)
    {
        int d = kv.HeadDim, n = rows.Length, keys = end - start, qStride = kv.Heads * d, bs = kv.BlockSize;
        fixed (float* sp = scoresBuffer)
        fixed (float* pp = partialBuffer)
        {
            // Per row: its query, scores and partial output by address; the full-precision rows of a block are listed
            // together so each key and value tile is loaded (and widened) once for all of them.
            var addresses = n <= 128 ? stackalloc nint[5 * n] : new nint[5 * n];
            Span<float> lseLevel = n <= 256 ? stackalloc float[n] : new float[n];
            fixed (nint* ap = addresses)
            {
                nint* qa = ap, sa = ap + n, pa = ap + 2 * n, f1 = ap + 3 * n, f2 = ap + 4 * n;
                for (int r = 0; r < n; r++)
                {
                    qa[r] = (nint)(q + (long)rows[r].Row * qStride + rows[r].Head * d);
                    sa[r] = (nint)(sp + (long)r * keys);
                    pa[r] = (nint)(pp + (long)r * d);
                }
                bool anyQuantized = false;
                foreach (var row in rows) anyQuantized |= row.QuantizedEnd > start;
                // KIVI: block by block, the rows reading it quantized go one at a time, the others together.
                if (!anyQuantized) FullScores(kv, blocks, kvh, qa, sa, n, start, end);
                else
                    for (int j = start, blockEnd; j < end; j = blockEnd)
                    {
                        blockEnd = Math.Min(end, (j / bs + 1) * bs);
                        int m = 0;
                        for (int r = 0; r < n; r++)
                        {
                            if (blockEnd <= rows[r].QuantizedEnd) QuantizedScores(kv, blocks, kvh, (float*)qa[r], j, blockEnd, (float*)sa[r] + (j - start));
                            else { f1[m] = qa[r]; f2[m++] = sa[r] + (j - start) * sizeof(float); }
                        }
                        FullScores(kv, blocks, kvh, f1, f2, m, j, blockEnd);
                    }
                for (int r = 0; r < n; r++) lseLevel[r] = Softmax(new Span<float>(sp + (long)r * keys, keys), kv.Scale);
                new Span<float>(pp, n * d).Clear();
                if (!anyQuantized) FullValues(kv, blocks, kvh, sa, pa, n, start, end);
                else
                    for (int j = start, blockEnd; j < end; j = blockEnd)
                    {
                        blockEnd = Math.Min(end, (j / bs + 1) * bs);
                        int m = 0;
                        for (int r = 0; r < n; r++)
                        {
                            if (blockEnd <= rows[r].QuantizedEnd) QuantizedValues(kv, blocks, kvh, (float*)sa[r] + (j - start), j, blockEnd, (float*)pa[r]);
                            else { f1[m] = sa[r] + (j - start) * sizeof(float); f2[m++] = pa[r]; }
                        }
                        FullValues(kv, blocks, kvh, f1, f2, m, j, blockEnd);
                    }
            }
            for (int r = 0; r < n; r++)
                AttentionState.Merge(new Span<float>(o + (long)rows[r].Row * qStride + rows[r].Head * d, d), ref lse[rows[r].Row * kv.Heads + rows[r].Head],
                    new ReadOnlySpan<float>(pp + (long)r * d, d), lseLevel[r]);
        }
    }
}
