// An fp32 dot product unrolled by hand over four Vector256 FMA accumulators, for the short reductions that are not
// matmuls: RMSNorm's sum of squares (Backends/Cpu/RmsNorm.cs) and KIVI's min-offset term (Quantization/Kivi.cs). The
// matmuls and attention scores have their own kernels in Backends/Cpu.
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Kernels.Runtime.Numerics;

internal static unsafe class Simd
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
}
