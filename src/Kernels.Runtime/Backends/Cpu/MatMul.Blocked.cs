// The matmul from two x rows on (AVX2): weight rows converted to fp32 panels, 4 (or 6) at a time, against register tiles
// of x rows (DotTile), K in L1-sized chunks.
using System.Buffers;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Kernels.Runtime.Models;
using Kernels.Runtime.Numerics;

namespace Kernels.Runtime.Backends.Cpu;

internal static unsafe partial class MatMul
{
    /// <summary>
    /// Columns per chunk of the blocked (2+ x rows) kernel: 4 converted weight rows of it (16 KiB) stay in L1 while every
    /// x row streams past them from L2, each tile's accumulators in registers over the whole chunk (K up to 1024 is one
    /// chunk). Measured on the 2-core EPYC against 256-column chunks shared by 16 weight rows: 12-15 % less time for
    /// 16 and 64 x rows, the same for 2-8.
    /// </summary>
    private const int ChunkK = 1024;

    /// <summary>Widest K the six-row panels take (6 x 768 fp32 = 18 KiB, with two x rows 24 KiB of L1).</summary>
    private const int SixRowsMaxK = 768;

    /// <summary>
    /// Fewest x rows for the six-row panels: below it a step is bound by the weight stream, and the larger panel's
    /// prefetch bursts (its bytes over fewer tiles) cost more than the loads saved (measured 5 % slower at 4 rows).
    /// </summary>
    private const int SixRowsMinX = 8;

    private readonly partial struct Job
    {
        /// <summary>
        /// Two or more x rows. The weights go four rows at a time (six from <see cref="SixRowsMinX"/> x rows when K fits
        /// one pass): their (contiguous) bytes are converted to fp32 whole, front to back, having been prefetched a slice
        /// per tile while the previous rows were summed. K goes in chunks of <see cref="ChunkK"/>: the four rows' chunk
        /// stays in L1 while the x rows pass over it, each tile's accumulators kept in memory between chunks. Each lane still sums its k's in order, so the result is the bits
        /// of the unchunked kernel. F32 weights are read in place.
        /// </summary>
        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        private void Blocked(int start, int end)
        {
            int k8 = k & ~7, groups = (rows + 2) / 3;
            float* xk = paired != null ? paired : x; // what the vector loop multiplies; tails read x itself
            var acc = ArrayPool<Vector256<float>>.Shared.Rent(groups * 24);
            bool inPlace = w.DType == TensorDType.F32;
            int ws = inPlace ? k : (k + 7) & ~7; // floats between the rows the tiles read
            var converted = inPlace ? null : ArrayPool<float>.Shared.Rent(6 * ws + 8);
            int tiles = (k8 + ChunkK - 1) / ChunkK * groups;
            // Six rows at a time where they fit L1 in one pass (K up to 768, no scalar tail): 6 weight rows x 2 x rows
            // per micro-kernel load 2 x vectors per 12 FMAs instead of 3 (x streams from L2).
            bool six = !inPlace && rows >= SixRowsMinX && k8 == k && k <= SixRowsMaxK;
            fixed (Vector256<float>* accp = acc)
            fixed (float* cp = converted)
            fixed (float* biasPtr = bias)
            {
                float* panel = (float*)(((nint)cp + 31) & ~(nint)31);
                int j = start;
                for (; six && j + 6 <= end; j += 6)
                {
                    for (int r = 0; r < 6; r++) ConvertRow(j + r, panel + r * ws);
                    // The next rows' bytes: six, or the four the 4-row loop takes next.
                    int remaining = end - j - 6, next = remaining >= 6 ? 6 : remaining >= 4 ? 4 : 0;
                    byte* ahead = data + w.DType.ByteCount((long)(j + 6) * k), aheadEnd = ahead + w.DType.ByteCount((long)next * k);
                    // Spread over the steps of the tiles below (two passes of k / 16 each), as every batched tile fetches
                    // (a burst per tile, which this replaced, measured level with it between builds: docs/gguf.md).
                    var feed = new LineFeed(ahead, aheadEnd - ahead, (rows + 1) / 2 * 2L * (k / 16));
                    for (int t = 0; t < rows; t += 2)
                    {
                        float* x0 = xk + (long)t * k;
                        DotTile.Dots6(panel, ws, x0, x0 + k, Math.Min(2, rows - t), k, paired != null, y + (long)t * n + j, y + (long)(t + 1) * n + j,
                            bias != null ? biasPtr + j : null, ref feed);
                    }
                    feed.Rest();
                }
                for (; j + 4 <= end; j += 4)
                {
                    // The next four rows' bytes, prefetched a slice per tile (a burst of prefetches would stall).
                    byte* ahead = null, aheadEnd = null;
                    long aheadPerTile = 0;
                    if (!inPlace)
                    {
                        for (int r = 0; r < 4; r++) ConvertRow(j + r, panel + r * ws);
                        if (j + 8 <= end)
                        {
                            ahead = data + w.DType.ByteCount((long)(j + 4) * k);
                            aheadEnd = ahead + w.DType.ByteCount(4L * k);
                            aheadPerTile = ((aheadEnd - ahead) / 64 + tiles - 1) / tiles * 64;
                        }
                    }
                    for (int kc = 0; kc < k8; kc += ChunkK)
                    {
                        bool last = kc + ChunkK >= k8;
                        int len = Math.Min(ChunkK, k8 - kc);
                        float* wc;
                        if (inPlace)
                        {
                            // Fetch what these rows need next (their next chunk, or the next rows' first one).
                            if (kc + ChunkK < k) PrefetchRows(j, kc + ChunkK);
                            else if (j + 8 <= end) PrefetchRows(j + 4, 0);
                            wc = (float*)data + (long)j * k + kc;
                        }
                        else wc = panel + kc;
                        for (int t = 0, g = 0; t < rows; t += DotTile.Rows(rows - t), g++)
                        {
                            int group = DotTile.Rows(rows - t);
                            Vector256<float>* a = accp + g * 24;
                            for (byte* stop = ahead + aheadPerTile; ahead < stop && ahead < aheadEnd; ahead += 64) Sse.Prefetch0(ahead);
                            float* x0 = xk + (long)t * k + kc, y0 = y + (long)t * n + j;
                            var b4 = bias != null ? Vector128.Create(bias, j) : Vector128<float>.Zero;
                            // The accumulators stay in registers over a chunk; between chunks (their halves), and folded
                            // for a scalar tail, they wait in a.
                            var finish = !last ? DotTile.Finish.Carry : k8 != k ? DotTile.Finish.Fold : DotTile.Finish.Store;
                            DotTile.Dots(wc, ws, x0, x0 + k, x0 + 2 * k, group, len, a, kc > 0, finish, paired != null, y0, y0 + n, y0 + 2 * n, b4);
                            if (finish != DotTile.Finish.Fold) continue;
                            for (int r = 0; r < group; r++)
                            {
                                float* xr = x + (long)(t + r) * k;
                                for (int c = 0; c < 4; c++)
                                {
                                    float s = Vector256.Sum(a[c * 3 + r]);
                                    for (int i = k8; i < k; i++) s += wc[c * ws + i - kc] * xr[i];
                                    y[(long)(t + r) * n + j + c] = s + (bias != null ? bias[j + c] : 0f);
                                }
                            }
                        }
                    }
                }
                if (j < end) // the last 1-3 rows of the range, one at a time
                {
                    var rowBuffer = ArrayPool<float>.Shared.Rent(k);
                    fixed (float* wr = rowBuffer)
                    {
                        for (; j < end; j++)
                        {
                            if (paired != null)
                            {
                                ushort* row = (ushort*)data + (long)j * k;
                                for (int t = 0; t < rows; t++)
                                {
                                    long xo = (long)t * k;
                                    float d = prescaled ? DotPaired<PrescaledX>(row, k, paired + xo, x + xo) : DotPaired<UnscaledX>(row, k, paired + xo, x + xo);
                                    y[(long)t * n + j] = d + (bias != null ? bias[j] : 0f);
                                }
                                continue;
                            }
                            DTypeConvert.ToSingle(w.DType, data + w.DType.ByteCount((long)j * k), new Span<float>(wr, k));
                            for (int t = 0; t < rows; t++)
                                y[(long)t * n + j] = Dot<F32Rows>((byte*)wr, xk + (long)t * k, k) + (bias != null ? bias[j] : 0f);
                        }
                    }
                    ArrayPool<float>.Shared.Return(rowBuffer);
                }
            }
            ArrayPool<Vector256<float>>.Shared.Return(acc);
            if (converted != null) ArrayPool<float>.Shared.Return(converted);
        }

        /// <summary>
        /// Weight row <paramref name="row"/> as fp32 for the tiles: F16 in the paired column order of x (fields when x is
        /// prescaled), other stored forms converted in place.
        /// </summary>
        private void ConvertRow(int row, float* destination)
        {
            long at = (long)row * k;
            if (paired != null) DTypeConvert.FiniteHalfToSinglePaired((ushort*)data + at, destination, k & ~15, k, prescaled);
            else if (w.DType == TensorDType.F16 && w.AllFinite) DTypeConvert.FiniteHalfToSingle((ushort*)data + at, destination, k);
            else DTypeConvert.ToSingle(w.DType, data + w.DType.ByteCount(at), new Span<float>(destination, k));
        }

        /// <summary>Prefetches columns [from, from + ChunkK) of weight rows j..j+3 (F32 weights, read in place).</summary>
        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        private void PrefetchRows(int j, int from)
        {
            long bytes = w.DType.ByteCount(Math.Min(ChunkK, k - from));
            for (int c = 0; c < 4; c++)
            {
                byte* row = data + w.DType.ByteCount((long)(j + c) * k + from);
                for (long b = 0; b < bytes; b += 64) Sse.Prefetch0(row + b);
            }
        }
    }
}
