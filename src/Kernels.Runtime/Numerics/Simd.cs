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

    /// <summary>sum_i a[i] * b[i] with b in fp16 (converted 8 lanes at a time, never materialized).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float DotHalf(float* a, ushort* b, int n)
    {
        int i = 0;
        float sum = 0;
        if (Fma.IsSupported && n >= 8)
        {
            var s0 = Vector256<float>.Zero; var s1 = s0;
            for (; i + 16 <= n; i += 16)
            {
                s0 = Fma.MultiplyAdd(Avx.LoadVector256(a + i), DTypeConvert.HalfToSingle8(b + i), s0);
                s1 = Fma.MultiplyAdd(Avx.LoadVector256(a + i + 8), DTypeConvert.HalfToSingle8(b + i + 8), s1);
            }
            for (; i + 8 <= n; i += 8) s0 = Fma.MultiplyAdd(Avx.LoadVector256(a + i), DTypeConvert.HalfToSingle8(b + i), s0);
            sum = Vector256.Sum(s0 + s1);
        }
        for (; i < n; i++) sum += a[i] * (float)BitConverter.UInt16BitsToHalf(b[i]);
        return sum;
    }

    /// <summary>y[i] += a * x[i] with x in fp16.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void AxpyHalfInPlace(float a, ushort* x, float* y, int n)
    {
        int i = 0;
        if (Fma.IsSupported)
        {
            var av = Vector256.Create(a);
            for (; i + 8 <= n; i += 8) Avx.Store(y + i, Fma.MultiplyAdd(av, DTypeConvert.HalfToSingle8(x + i), Avx.LoadVector256(y + i)));
        }
        for (; i < n; i++) y[i] += a * (float)BitConverter.UInt16BitsToHalf(x[i]);
    }
}
