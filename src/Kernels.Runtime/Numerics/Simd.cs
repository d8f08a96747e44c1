// Hand-unrolled Vector256 + FMA dot products: the inner loop of every CPU matmul and attention score.
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Kernels.Runtime.Numerics;

public static unsafe class Simd
{
    /// <summary>sum_i a[i] * b[i], fp32 with four independent accumulators (hides FMA latency).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Dot(float* a, float* b, int n)
    {
        int i = 0;
        float sum = 0;
        if (Fma.IsSupported && n >= 32)
        {
            var s0 = Vector256<float>.Zero; var s1 = s0; var s2 = s0; var s3 = s0;
            for (; i + 32 <= n; i += 32)
            {
                s0 = Fma.MultiplyAdd(Avx.LoadVector256(a + i), Avx.LoadVector256(b + i), s0);
                s1 = Fma.MultiplyAdd(Avx.LoadVector256(a + i + 8), Avx.LoadVector256(b + i + 8), s1);
                s2 = Fma.MultiplyAdd(Avx.LoadVector256(a + i + 16), Avx.LoadVector256(b + i + 16), s2);
                s3 = Fma.MultiplyAdd(Avx.LoadVector256(a + i + 24), Avx.LoadVector256(b + i + 24), s3);
            }
            for (; i + 8 <= n; i += 8) s0 = Fma.MultiplyAdd(Avx.LoadVector256(a + i), Avx.LoadVector256(b + i), s0);
            sum = Vector256.Sum((s0 + s1) + (s2 + s3));
        }
        else if (Vector256.IsHardwareAccelerated && n >= 8)
        {
            var s0 = Vector256<float>.Zero;
            for (; i + 8 <= n; i += 8) s0 += Vector256.Load(a + i) * Vector256.Load(b + i);
            sum = Vector256.Sum(s0);
        }
        for (; i < n; i++) sum += a[i] * b[i];
        return sum;
    }

    // RowDot and RowDot4 sum in exactly the same order (two 8-lane accumulators over 16-element steps, one 8-step,
    // then the scalar tail), so a matmul row gives bit-identical results whether it was computed alone or in a
    // group of four: batch composition never changes a sequence's logits.

    /// <summary>One weight row against one activation row, in the order RowDot4 uses.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float RowDot(float* w, float* x, int n)
    {
        int i = 0;
        float sum = 0;
        if (Fma.IsSupported)
        {
            var a0 = Vector256<float>.Zero; var a1 = a0;
            for (; i + 16 <= n; i += 16)
            {
                a0 = Fma.MultiplyAdd(Avx.LoadVector256(w + i), Avx.LoadVector256(x + i), a0);
                a1 = Fma.MultiplyAdd(Avx.LoadVector256(w + i + 8), Avx.LoadVector256(x + i + 8), a1);
            }
            if (i + 8 <= n) { a0 = Fma.MultiplyAdd(Avx.LoadVector256(w + i), Avx.LoadVector256(x + i), a0); i += 8; }
            sum = Vector256.Sum(a0 + a1);
        }
        for (; i < n; i++) sum += w[i] * x[i];
        return sum;
    }

    /// <summary>Four dot products of one weight row w against four activation rows (w is loaded once).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void RowDot4(float* w, float* x0, float* x1, float* x2, float* x3, int n, out float d0, out float d1, out float d2, out float d3)
    {
        if (!Fma.IsSupported)
        {
            d0 = RowDot(w, x0, n); d1 = RowDot(w, x1, n); d2 = RowDot(w, x2, n); d3 = RowDot(w, x3, n);
            return;
        }
        int i = 0;
        var a0 = Vector256<float>.Zero; var a1 = a0; var b0 = a0; var b1 = a0; var c0 = a0; var c1 = a0; var e0 = a0; var e1 = a0;
        for (; i + 16 <= n; i += 16)
        {
            var w0 = Avx.LoadVector256(w + i);
            var w1 = Avx.LoadVector256(w + i + 8);
            a0 = Fma.MultiplyAdd(w0, Avx.LoadVector256(x0 + i), a0); a1 = Fma.MultiplyAdd(w1, Avx.LoadVector256(x0 + i + 8), a1);
            b0 = Fma.MultiplyAdd(w0, Avx.LoadVector256(x1 + i), b0); b1 = Fma.MultiplyAdd(w1, Avx.LoadVector256(x1 + i + 8), b1);
            c0 = Fma.MultiplyAdd(w0, Avx.LoadVector256(x2 + i), c0); c1 = Fma.MultiplyAdd(w1, Avx.LoadVector256(x2 + i + 8), c1);
            e0 = Fma.MultiplyAdd(w0, Avx.LoadVector256(x3 + i), e0); e1 = Fma.MultiplyAdd(w1, Avx.LoadVector256(x3 + i + 8), e1);
        }
        if (i + 8 <= n)
        {
            var w0 = Avx.LoadVector256(w + i);
            a0 = Fma.MultiplyAdd(w0, Avx.LoadVector256(x0 + i), a0);
            b0 = Fma.MultiplyAdd(w0, Avx.LoadVector256(x1 + i), b0);
            c0 = Fma.MultiplyAdd(w0, Avx.LoadVector256(x2 + i), c0);
            e0 = Fma.MultiplyAdd(w0, Avx.LoadVector256(x3 + i), e0);
            i += 8;
        }
        d0 = Vector256.Sum(a0 + a1); d1 = Vector256.Sum(b0 + b1); d2 = Vector256.Sum(c0 + c1); d3 = Vector256.Sum(e0 + e1);
        for (; i < n; i++)
        {
            float wi = w[i];
            d0 += wi * x0[i]; d1 += wi * x1[i]; d2 += wi * x2[i]; d3 += wi * x3[i];
        }
    }

    /// <summary>y[i] += a * x[i].</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void AxpyInPlace(float a, float* x, float* y, int n)
    {
        int i = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            var av = Vector256.Create(a);
            for (; i + 8 <= n; i += 8) Vector256.Store(Vector256.Load(y + i) + av * Vector256.Load(x + i), y + i);
        }
        for (; i < n; i++) y[i] += a * x[i];
    }
}
