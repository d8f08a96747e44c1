// The register-blocked dot-product tile shared by the CPU matmul and attention: 4 rows of one operand against up to
// 3 rows of the other, 8 columns per fused multiply-add, 12 accumulators in registers (7 loads per 12 FMAs).
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Kernels.Runtime.Backends.Cpu;

/// <summary>
/// Every dot product a tile computes is summed in one fixed order: one 8-lane accumulator over the columns in order,
/// then Vector256.Sum's reduction. A dot computed one at a time the same way gives the same bits, so a result never
/// depends on how rows were grouped into tiles. Needs AVX2 and FMA.
/// </summary>
internal static unsafe class DotTile
{
    /// <summary>y0[c] = Sum(r_c) + bias[c] and y1[c] = Sum(s_c) + bias[c] for c = 0..3, in Vector256.Sum's order.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void SumPair(Vector256<float> r0, Vector256<float> r1, Vector256<float> r2, Vector256<float> r3,
        Vector256<float> s0, Vector256<float> s1, Vector256<float> s2, Vector256<float> s3, float* y0, float* y1, Vector128<float> bias)
    {
        var g0 = Avx.HorizontalAdd(Avx.HorizontalAdd(r0, r1), Avx.HorizontalAdd(r2, r3));
        var g1 = Avx.HorizontalAdd(Avx.HorizontalAdd(s0, s1), Avx.HorizontalAdd(s2, s3));
        var s = Avx.Permute2x128(g0, g1, 0x20) + Avx.Permute2x128(g0, g1, 0x31);
        (s.GetLower() + bias).Store(y0);
        (s.GetUpper() + bias).Store(y1);
    }

    /// <summary>y[c] = Sum(r_c) + bias[c] for c = 0..3, in Vector256.Sum's order.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void SumOne(Vector256<float> r0, Vector256<float> r1, Vector256<float> r2, Vector256<float> r3, float* y, Vector128<float> bias)
    {
        var g = Avx.HorizontalAdd(Avx.HorizontalAdd(r0, r1), Avx.HorizontalAdd(r2, r3));
        (g.GetLower() + g.GetUpper() + bias).Store(y);
    }

    /// <summary>
    /// 4 fp32 rows w_c (<paramref name="ws"/> floats apart) x <paramref name="group"/> (1..3) rows x0, x1, x2 over
    /// <paramref name="len"/> (a multiple of 8) columns: acc[c][r] += w_c[i..i+8] * x_r[i..i+8] for i = 0, 8, ... in
    /// order, one fused multiply-add each, the 12 accumulators in registers. They start from zero, or from
    /// carry[c * 3 + r] with <paramref name="carryIn"/> (a later chunk of K); they end in carry with
    /// <paramref name="carryOut"/>, else as y_r[c] = Sum(acc[c][r]) + bias[c] in Vector256.Sum's order (y_r: y0, y1, y2).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Dots(float* w, int ws, float* x0, float* x1, float* x2, int group, int len, Vector256<float>* carry, bool carryIn, bool carryOut,
        float* y0, float* y1, float* y2, Vector128<float> bias)
    {
        float* w0 = w, w1 = w + ws, w2 = w + 2 * ws, w3 = w + 3 * ws;
        var a00 = Vector256<float>.Zero; var a10 = a00; var a20 = a00; var a30 = a00;
        var a01 = a00; var a11 = a00; var a21 = a00; var a31 = a00;
        var a02 = a00; var a12 = a00; var a22 = a00; var a32 = a00;
        if (carryIn)
        {
            a00 = carry[0]; a10 = carry[3]; a20 = carry[6]; a30 = carry[9];
            if (group >= 2) { a01 = carry[1]; a11 = carry[4]; a21 = carry[7]; a31 = carry[10]; }
            if (group == 3) { a02 = carry[2]; a12 = carry[5]; a22 = carry[8]; a32 = carry[11]; }
        }
        if (group == 1)
        {
            for (int i = 0; i < len; i += 8)
            {
                var v = Avx.LoadVector256(x0 + i);
                a00 = Fma.MultiplyAdd(Avx.LoadVector256(w0 + i), v, a00);
                a10 = Fma.MultiplyAdd(Avx.LoadVector256(w1 + i), v, a10);
                a20 = Fma.MultiplyAdd(Avx.LoadVector256(w2 + i), v, a20);
                a30 = Fma.MultiplyAdd(Avx.LoadVector256(w3 + i), v, a30);
            }
        }
        else if (group == 2)
        {
            for (int i = 0; i < len; i += 8)
            {
                var v0 = Avx.LoadVector256(x0 + i);
                var v1 = Avx.LoadVector256(x1 + i);
                var c0 = Avx.LoadVector256(w0 + i); a00 = Fma.MultiplyAdd(c0, v0, a00); a01 = Fma.MultiplyAdd(c0, v1, a01);
                var c1 = Avx.LoadVector256(w1 + i); a10 = Fma.MultiplyAdd(c1, v0, a10); a11 = Fma.MultiplyAdd(c1, v1, a11);
                var c2 = Avx.LoadVector256(w2 + i); a20 = Fma.MultiplyAdd(c2, v0, a20); a21 = Fma.MultiplyAdd(c2, v1, a21);
                var c3 = Avx.LoadVector256(w3 + i); a30 = Fma.MultiplyAdd(c3, v0, a30); a31 = Fma.MultiplyAdd(c3, v1, a31);
            }
        }
        else
        {
            for (int i = 0; i < len; i += 8)
            {
                var v0 = Avx.LoadVector256(x0 + i);
                var v1 = Avx.LoadVector256(x1 + i);
                var v2 = Avx.LoadVector256(x2 + i);
                var c0 = Avx.LoadVector256(w0 + i); a00 = Fma.MultiplyAdd(c0, v0, a00); a01 = Fma.MultiplyAdd(c0, v1, a01); a02 = Fma.MultiplyAdd(c0, v2, a02);
                var c1 = Avx.LoadVector256(w1 + i); a10 = Fma.MultiplyAdd(c1, v0, a10); a11 = Fma.MultiplyAdd(c1, v1, a11); a12 = Fma.MultiplyAdd(c1, v2, a12);
                var c2 = Avx.LoadVector256(w2 + i); a20 = Fma.MultiplyAdd(c2, v0, a20); a21 = Fma.MultiplyAdd(c2, v1, a21); a22 = Fma.MultiplyAdd(c2, v2, a22);
                var c3 = Avx.LoadVector256(w3 + i); a30 = Fma.MultiplyAdd(c3, v0, a30); a31 = Fma.MultiplyAdd(c3, v1, a31); a32 = Fma.MultiplyAdd(c3, v2, a32);
            }
        }
        if (carryOut)
        {
            carry[0] = a00; carry[3] = a10; carry[6] = a20; carry[9] = a30;
            carry[1] = a01; carry[4] = a11; carry[7] = a21; carry[10] = a31;
            carry[2] = a02; carry[5] = a12; carry[8] = a22; carry[11] = a32;
            return;
        }
        if (group == 1) SumOne(a00, a10, a20, a30, y0, bias);
        else SumPair(a00, a10, a20, a30, a01, a11, a21, a31, y0, y1, bias);
        if (group == 3) SumOne(a02, a12, a22, a32, y2, bias);
    }

    /// <summary>
    /// 6 fp32 rows w_c (<paramref name="ws"/> floats apart) x <paramref name="group"/> (1 or 2) rows x0, x1 over
    /// <paramref name="len"/> (a multiple of 8) columns from zero, accumulators in registers, then y_r[c] =
    /// Sum(acc[c][r]) + bias[c] for c = 0..5 (<paramref name="bias"/> null: none): the same dots as <see cref="Dots"/>
    /// with 2 x loads per 12 fused multiply-adds instead of 3 (x streams from L2, the 6 rows sit in L1).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Dots6(float* w, int ws, float* x0, float* x1, int group, int len, float* y0, float* y1, float* bias)
    {
        float* w0 = w, w1 = w + ws, w2 = w + 2 * ws, w3 = w + 3 * ws, w4 = w + 4 * ws, w5 = w + 5 * ws;
        var a00 = Vector256<float>.Zero; var a10 = a00; var a20 = a00; var a30 = a00; var a40 = a00; var a50 = a00;
        var a01 = a00; var a11 = a00; var a21 = a00; var a31 = a00; var a41 = a00; var a51 = a00;
        if (group == 2)
            for (int i = 0; i < len; i += 8)
            {
                var v0 = Avx.LoadVector256(x0 + i);
                var v1 = Avx.LoadVector256(x1 + i);
                var c = Avx.LoadVector256(w0 + i); a00 = Fma.MultiplyAdd(c, v0, a00); a01 = Fma.MultiplyAdd(c, v1, a01);
                c = Avx.LoadVector256(w1 + i); a10 = Fma.MultiplyAdd(c, v0, a10); a11 = Fma.MultiplyAdd(c, v1, a11);
                c = Avx.LoadVector256(w2 + i); a20 = Fma.MultiplyAdd(c, v0, a20); a21 = Fma.MultiplyAdd(c, v1, a21);
                c = Avx.LoadVector256(w3 + i); a30 = Fma.MultiplyAdd(c, v0, a30); a31 = Fma.MultiplyAdd(c, v1, a31);
                c = Avx.LoadVector256(w4 + i); a40 = Fma.MultiplyAdd(c, v0, a40); a41 = Fma.MultiplyAdd(c, v1, a41);
                c = Avx.LoadVector256(w5 + i); a50 = Fma.MultiplyAdd(c, v0, a50); a51 = Fma.MultiplyAdd(c, v1, a51);
            }
        else
            for (int i = 0; i < len; i += 8)
            {
                var v0 = Avx.LoadVector256(x0 + i);
                a00 = Fma.MultiplyAdd(Avx.LoadVector256(w0 + i), v0, a00);
                a10 = Fma.MultiplyAdd(Avx.LoadVector256(w1 + i), v0, a10);
                a20 = Fma.MultiplyAdd(Avx.LoadVector256(w2 + i), v0, a20);
                a30 = Fma.MultiplyAdd(Avx.LoadVector256(w3 + i), v0, a30);
                a40 = Fma.MultiplyAdd(Avx.LoadVector256(w4 + i), v0, a40);
                a50 = Fma.MultiplyAdd(Avx.LoadVector256(w5 + i), v0, a50);
            }
        var b0 = bias != null ? Vector128.Load(bias) : Vector128<float>.Zero;
        var b4 = bias != null ? Vector128.Create(bias[4], bias[5], 0f, 0f) : Vector128<float>.Zero;
        SumOne(a00, a10, a20, a30, y0, b0);
        Sum2(a40, a50, y0 + 4, b4);
        if (group == 2)
        {
            SumOne(a01, a11, a21, a31, y1, b0);
            Sum2(a41, a51, y1 + 4, b4);
        }
    }

    /// <summary>y[c] = Sum(r_c) + bias[c] for c = 0, 1, in Vector256.Sum's order.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Sum2(Vector256<float> r0, Vector256<float> r1, float* y, Vector128<float> bias)
    {
        var g = Avx.HorizontalAdd(Avx.HorizontalAdd(r0, r1), Avx.HorizontalAdd(r0, r1));
        var s = g.GetLower() + g.GetUpper() + bias;
        y[0] = s.GetElement(0);
        y[1] = s.GetElement(1);
    }

    /// <summary>
    /// Rows taken by the next tile when <paramref name="remaining"/> are left: 3, but never a lone row after a group
    /// (4 left go as 2 + 2), since a 4x1 tile does 4 FMAs per 5 loads.
    /// </summary>
    public static int Rows(int remaining) => remaining == 4 ? 2 : Math.Min(3, remaining);
}
