// The micro-kernels of CPU attention (Attention.cs): one query-key dot in the order every tile keeps, register tiles
// of scores (4 keys x 3 rows) and of value accumulation (3 rows x 32 columns), fp16 rows widened to fp32, and the
// softmax of a row of scores. Each sums in one fixed order, so a row's bits do not depend on the tile that ran it.
using System.Runtime.CompilerServices;
using System.Numerics.Tensors;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Kernels.Runtime.Numerics;
using Kernels.Runtime.Quantization;

namespace Kernels.Runtime.Backends.Cpu;

internal static unsafe partial class Attention
{
    /// <summary>Whether the tiled kernels run: AVX2 + FMA (otherwise every dot and update is scalar, in the same order).</summary>
    private static readonly bool Vectorized = Fma.IsSupported && Avx2.IsSupported;

    /// <summary>
    /// The score of a query row and a key, unscaled, in DotTile's order (two 8-lane accumulators over 16-column steps,
    /// folded, one 8-column step, Vector256.Sum, then the d % 8 tail), so a tile of scores gives these bits.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static float Dot(float* q, float* k, int d)
    {
        float s = 0;
        int c = 0;
        if (Vectorized)
        {
            s = Vector256.Sum(DotTile.Lanes(k, q, d));
            c = d & ~7;
        }
        for (; c < d; c++) s += k[c] * q[c];
        return s;
    }

    /// <summary>
    /// s_r[i] = q_r . key_i (unscaled, <see cref="Dot"/>) for <paramref name="rows"/> query rows (q_r and s_r given by
    /// address) and n keys <paramref name="keyStride"/> floats apart: 4 keys x 3 rows per register tile (16-lane where
    /// AVX-512 runs and d is a multiple of 16: 5-6 % less time for a 16-sequence decode step of the 100M model at
    /// context 96, alternated step by step in one process on the AMD EPYC Zen 5).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void ScoreRows(nint* q, nint* s, int rows, float* keys, int keyStride, int n, int d)
    {
        if (!Vectorized || d % 8 != 0)
        {
            for (int r = 0; r < rows; r++)
                for (int i = 0; i < n; i++) ((float*)s[r])[i] = Dot((float*)q[r], keys + (long)i * keyStride, d);
            return;
        }
        for (int r = 0; r < rows;)
        {
            int g = DotTile.Rows(rows - r);
            float* q0 = (float*)q[r], q1 = (float*)q[r + g / 2], q2 = (float*)q[r + g - 1];
            float* s0 = (float*)s[r], s1 = (float*)s[r + g / 2], s2 = (float*)s[r + g - 1];
            int i = 0;
            if (Wide && d % 16 == 0)
                for (; i + 4 <= n; i += 4) Scores4Wide(keys + (long)i * keyStride, keyStride, q0, q1, q2, d, s0 + i, s1 + i, s2 + i);
            for (; i + 4 <= n; i += 4) DotTile.Dots(keys + (long)i * keyStride, keyStride, q0, q1, q2, g, d, null, false, DotTile.Finish.Store, false, s0 + i, s1 + i, s2 + i, Vector128<float>.Zero);
            for (; i < n; i++)
                for (int t = r; t < r + g; t++) ((float*)s[t])[i] = Dot((float*)q[t], keys + (long)i * keyStride, d);
            r += g;
        }
    }

    /// <summary>
    /// o_r += sum_i p_r[i] value_i for <paramref name="rows"/> rows (p_r and o_r given by address) over n value rows
    /// <paramref name="valueStride"/> floats apart: per element, value by value in order, one fused multiply-add each;
    /// 3 rows x 32 columns of o held in registers (3 x 64 in 16-lane registers where AVX-512 runs: 6-7 % less time for a
    /// 16-sequence decode step of the 100M model at context 96, measured as the score tile's).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void AccumulateRows(nint* p, nint* o, int rows, float* values, int valueStride, int n, int d)
    {
        int d8 = Vectorized ? d & ~7 : 0;
        int r = 0;
        for (; r + 3 <= rows && d8 >= 32; r += 3)
        {
            float* p0 = (float*)p[r], p1 = (float*)p[r + 1], p2 = (float*)p[r + 2];
            float* o0 = (float*)o[r], o1 = (float*)o[r + 1], o2 = (float*)o[r + 2];
            int c = Wide ? AccumulateRows64(p0, p1, p2, o0, o1, o2, values, valueStride, n, d) : 0;
            for (; c + 32 <= d8; c += 32)
            {
                var a00 = Avx.LoadVector256(o0 + c); var a01 = Avx.LoadVector256(o0 + c + 8); var a02 = Avx.LoadVector256(o0 + c + 16); var a03 = Avx.LoadVector256(o0 + c + 24);
                var a10 = Avx.LoadVector256(o1 + c); var a11 = Avx.LoadVector256(o1 + c + 8); var a12 = Avx.LoadVector256(o1 + c + 16); var a13 = Avx.LoadVector256(o1 + c + 24);
                var a20 = Avx.LoadVector256(o2 + c); var a21 = Avx.LoadVector256(o2 + c + 8); var a22 = Avx.LoadVector256(o2 + c + 16); var a23 = Avx.LoadVector256(o2 + c + 24);
                for (int i = 0; i < n; i++)
                {
                    float* v = values + (long)i * valueStride + c;
                    var v0 = Avx.LoadVector256(v); var v1 = Avx.LoadVector256(v + 8); var v2 = Avx.LoadVector256(v + 16); var v3 = Avx.LoadVector256(v + 24);
                    var w = Vector256.Create(p0[i]);
                    a00 = Fma.MultiplyAdd(w, v0, a00); a01 = Fma.MultiplyAdd(w, v1, a01); a02 = Fma.MultiplyAdd(w, v2, a02); a03 = Fma.MultiplyAdd(w, v3, a03);
                    w = Vector256.Create(p1[i]);
                    a10 = Fma.MultiplyAdd(w, v0, a10); a11 = Fma.MultiplyAdd(w, v1, a11); a12 = Fma.MultiplyAdd(w, v2, a12); a13 = Fma.MultiplyAdd(w, v3, a13);
                    w = Vector256.Create(p2[i]);
                    a20 = Fma.MultiplyAdd(w, v0, a20); a21 = Fma.MultiplyAdd(w, v1, a21); a22 = Fma.MultiplyAdd(w, v2, a22); a23 = Fma.MultiplyAdd(w, v3, a23);
                }
                Avx.Store(o0 + c, a00); Avx.Store(o0 + c + 8, a01); Avx.Store(o0 + c + 16, a02); Avx.Store(o0 + c + 24, a03);
                Avx.Store(o1 + c, a10); Avx.Store(o1 + c + 8, a11); Avx.Store(o1 + c + 16, a12); Avx.Store(o1 + c + 24, a13);
                Avx.Store(o2 + c, a20); Avx.Store(o2 + c + 8, a21); Avx.Store(o2 + c + 16, a22); Avx.Store(o2 + c + 24, a23);
            }
            AccumulateColumns(p0, o0, values, valueStride, n, c, d);
            AccumulateColumns(p1, o1, values, valueStride, n, c, d);
            AccumulateColumns(p2, o2, values, valueStride, n, c, d);
        }
        for (; r < rows; r++) AccumulateColumns((float*)p[r], (float*)o[r], values, valueStride, n, 0, d);
    }

    /// <summary>
    /// Scores of 4 keys (<paramref name="keyStride"/> floats apart) against query rows q0, q1, q2 (the same row repeated
    /// where the group has fewer; DotTile.Rows' convention) over d (a multiple of 16) columns with 16-lane registers:
    /// each dot one 16-lane accumulator over the columns in order, folded to 8 lanes and summed in Vector256.Sum's order
    /// (DotTile.SumOne), which is the order of <see cref="Dot"/>, so the same bits as DotTile's 8-lane tile.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Scores4Wide(float* keys, int keyStride, float* q0, float* q1, float* q2, int d, float* s0, float* s1, float* s2)
    {
        float* k0 = keys, k1 = keys + keyStride, k2 = keys + 2 * keyStride, k3 = keys + 3 * keyStride;
        Vector512<float> a00 = default, a01 = default, a02 = default, a10 = default, a11 = default, a12 = default;
        Vector512<float> a20 = default, a21 = default, a22 = default, a30 = default, a31 = default, a32 = default;
        for (int i = 0; i < d; i += 16)
        {
            var x0 = Vector512.Load(q0 + i); var x1 = Vector512.Load(q1 + i); var x2 = Vector512.Load(q2 + i);
            var c = Vector512.Load(k0 + i);
            a00 = Avx512F.FusedMultiplyAdd(c, x0, a00); a01 = Avx512F.FusedMultiplyAdd(c, x1, a01); a02 = Avx512F.FusedMultiplyAdd(c, x2, a02);
            c = Vector512.Load(k1 + i);
            a10 = Avx512F.FusedMultiplyAdd(c, x0, a10); a11 = Avx512F.FusedMultiplyAdd(c, x1, a11); a12 = Avx512F.FusedMultiplyAdd(c, x2, a12);
            c = Vector512.Load(k2 + i);
            a20 = Avx512F.FusedMultiplyAdd(c, x0, a20); a21 = Avx512F.FusedMultiplyAdd(c, x1, a21); a22 = Avx512F.FusedMultiplyAdd(c, x2, a22);
            c = Vector512.Load(k3 + i);
            a30 = Avx512F.FusedMultiplyAdd(c, x0, a30); a31 = Avx512F.FusedMultiplyAdd(c, x1, a31); a32 = Avx512F.FusedMultiplyAdd(c, x2, a32);
        }
        // Where the group has fewer than 3 rows the repeated ones store the same scores to the same place.
        DotTile.SumOne(DotTile.Fold(a02), DotTile.Fold(a12), DotTile.Fold(a22), DotTile.Fold(a32), s2, Vector128<float>.Zero);
        DotTile.SumOne(DotTile.Fold(a01), DotTile.Fold(a11), DotTile.Fold(a21), DotTile.Fold(a31), s1, Vector128<float>.Zero);
        DotTile.SumOne(DotTile.Fold(a00), DotTile.Fold(a10), DotTile.Fold(a20), DotTile.Fold(a30), s0, Vector128<float>.Zero);
    }

    /// <summary>Whether the 16-lane tiles run: where MatMul's wide path does (AVX-512; tests switch it).</summary>
    private static bool Wide => MatMul.Wide;

    /// <summary>
    /// <see cref="AccumulateRows"/> for three rows over the leading multiple of 64 columns with 16-lane registers (3 rows
    /// x 64 columns of o held in 12 of them): per element the same fused multiply-adds in the same order, so the same
    /// bits, in half the instructions of the 8-lane tile, and each value row read once where d is 64. Returns the first
    /// column left.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static int AccumulateRows64(float* p0, float* p1, float* p2, float* o0, float* o1, float* o2, float* values, int valueStride, int n, int d)
    {
        int c = 0;
        for (; c + 64 <= d; c += 64)
        {
            var a00 = Vector512.Load(o0 + c); var a01 = Vector512.Load(o0 + c + 16); var a02 = Vector512.Load(o0 + c + 32); var a03 = Vector512.Load(o0 + c + 48);
            var a10 = Vector512.Load(o1 + c); var a11 = Vector512.Load(o1 + c + 16); var a12 = Vector512.Load(o1 + c + 32); var a13 = Vector512.Load(o1 + c + 48);
            var a20 = Vector512.Load(o2 + c); var a21 = Vector512.Load(o2 + c + 16); var a22 = Vector512.Load(o2 + c + 32); var a23 = Vector512.Load(o2 + c + 48);
            for (int i = 0; i < n; i++)
            {
                float* v = values + (long)i * valueStride + c;
                var v0 = Vector512.Load(v); var v1 = Vector512.Load(v + 16); var v2 = Vector512.Load(v + 32); var v3 = Vector512.Load(v + 48);
                var w = Vector512.Create(p0[i]);
                a00 = Avx512F.FusedMultiplyAdd(w, v0, a00); a01 = Avx512F.FusedMultiplyAdd(w, v1, a01); a02 = Avx512F.FusedMultiplyAdd(w, v2, a02); a03 = Avx512F.FusedMultiplyAdd(w, v3, a03);
                w = Vector512.Create(p1[i]);
                a10 = Avx512F.FusedMultiplyAdd(w, v0, a10); a11 = Avx512F.FusedMultiplyAdd(w, v1, a11); a12 = Avx512F.FusedMultiplyAdd(w, v2, a12); a13 = Avx512F.FusedMultiplyAdd(w, v3, a13);
                w = Vector512.Create(p2[i]);
                a20 = Avx512F.FusedMultiplyAdd(w, v0, a20); a21 = Avx512F.FusedMultiplyAdd(w, v1, a21); a22 = Avx512F.FusedMultiplyAdd(w, v2, a22); a23 = Avx512F.FusedMultiplyAdd(w, v3, a23);
            }
            a00.Store(o0 + c); a01.Store(o0 + c + 16); a02.Store(o0 + c + 32); a03.Store(o0 + c + 48);
            a10.Store(o1 + c); a11.Store(o1 + c + 16); a12.Store(o1 + c + 32); a13.Store(o1 + c + 48);
            a20.Store(o2 + c); a21.Store(o2 + c + 16); a22.Store(o2 + c + 32); a23.Store(o2 + c + 48);
        }
        return c;
    }

    /// <summary>Columns [c, d) of one row of <see cref="AccumulateRows"/>: 8 at a time where AVX2 allows, then one by one.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void AccumulateColumns(float* p, float* o, float* values, int valueStride, int n, int c, int d)
    {
        if (Vectorized)
        {
            for (; c + 32 <= d; c += 32)
            {
                var a0 = Avx.LoadVector256(o + c); var a1 = Avx.LoadVector256(o + c + 8);
                var a2 = Avx.LoadVector256(o + c + 16); var a3 = Avx.LoadVector256(o + c + 24);
                for (int i = 0; i < n; i++)
                {
                    var w = Vector256.Create(p[i]);
                    float* v = values + (long)i * valueStride + c;
                    a0 = Fma.MultiplyAdd(w, Avx.LoadVector256(v), a0); a1 = Fma.MultiplyAdd(w, Avx.LoadVector256(v + 8), a1);
                    a2 = Fma.MultiplyAdd(w, Avx.LoadVector256(v + 16), a2); a3 = Fma.MultiplyAdd(w, Avx.LoadVector256(v + 24), a3);
                }
                Avx.Store(o + c, a0); Avx.Store(o + c + 8, a1); Avx.Store(o + c + 16, a2); Avx.Store(o + c + 24, a3);
            }
            for (; c + 8 <= d; c += 8)
            {
                var a0 = Avx.LoadVector256(o + c);
                for (int i = 0; i < n; i++) a0 = Fma.MultiplyAdd(Vector256.Create(p[i]), Avx.LoadVector256(values + (long)i * valueStride + c), a0);
                Avx.Store(o + c, a0);
            }
        }
        for (; c < d; c++)
        {
            float acc = o[c];
            for (int i = 0; i < n; i++) acc = MathF.FusedMultiplyAdd(p[i], values[(long)i * valueStride + c], acc);
            o[c] = acc;
        }
    }

    /// <summary>n fp16 rows (<paramref name="stride"/> halves apart) of d values to fp32 rows d apart (exact).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void Widen(ushort* rows, int stride, int n, int d, float* destination)
    {
        for (int i = 0; i < n; i++)
        {
            ushort* h = rows + (long)i * stride;
            float* f = destination + i * d;
            int c = 0;
            if (Avx2.IsSupported)
                for (; c + 8 <= d; c += 8) Avx.Store(f + c, DTypeConvert.HalfToSingle8(h + c));
            for (; c < d; c++) f[c] = (float)BitConverter.UInt16BitsToHalf(h[c]);
        }
    }

    /// <summary>
    /// Unscaled scores to probabilities of the scaled scores in place (max subtracted, then scaled, vector exp);
    /// returns the log-sum-exp of the scaled scores.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static float Softmax(Span<float> row, float scale)
    {
        // Three passes over a row of tens to hundreds of scores: max; exp of the scaled differences, summed; the
        // normalization (one loop each, not six library calls: per-call overhead dominated rows this short).
        float max = TensorPrimitives.Max(row);
        int n = row.Length, i = 0;
        float sum = 0;
        fixed (float* p = row)
        {
            if (Vector256.IsHardwareAccelerated)
            {
                var m = Vector256.Create(max);
                var sc = Vector256.Create(scale);
                var acc = Vector256<float>.Zero;
                for (; i + 8 <= n; i += 8)
                {
                    var e = Vector256.Exp((Vector256.Load(p + i) - m) * sc);
                    e.Store(p + i);
                    acc += e;
                }
                sum = Vector256.Sum(acc);
            }
            for (; i < n; i++)
            {
                float e = MathF.Exp((p[i] - max) * scale);
                p[i] = e;
                sum += e;
            }
            float inv = 1f / sum;
            i = 0;
            if (Vector256.IsHardwareAccelerated)
                for (var v = Vector256.Create(inv); i + 8 <= n; i += 8) (Vector256.Load(p + i) * v).Store(p + i);
            for (; i < n; i++) p[i] *= inv;
        }
        return max * scale + MathF.Log(sum);
    }
}
