// RMSNorm, reference for kernels/ops rms_norm: y[t, i] = x[t, i] / sqrt(mean(x[t, :]^2) + eps) * w[i].
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using Kernels.Runtime.Numerics;

namespace Kernels.Runtime.Backends.Cpu;

internal static unsafe class RmsNorm
{
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Apply(ReadOnlySpan<float> x, ReadOnlySpan<float> weight, float eps, Span<float> y, int rows)
    {
        int d = weight.Length;
        for (int t = 0; t < rows; t++)
        {
            var xr = x.Slice(t * d, d);
            var yr = y.Slice(t * d, d);
            float sumSq;
            fixed (float* p = xr) sumSq = Simd.Dot(p, p, d);
            float scale = 1f / MathF.Sqrt(sumSq / d + eps);
            int i = 0;
            if (Vector256.IsHardwareAccelerated)
            {
                var sv = Vector256.Create(scale);
                for (; i + 8 <= d; i += 8) (Vector256.Create(xr.Slice(i, 8)) * sv * Vector256.Create(weight.Slice(i, 8))).CopyTo(yr.Slice(i, 8));
            }
            for (; i < d; i++) yr[i] = xr[i] * scale * weight[i];
        }
    }
}
