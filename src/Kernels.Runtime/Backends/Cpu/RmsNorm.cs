// RMSNorm, reference for kernels/ops rms_norm: y[t, i] = x[t, i] / sqrt(mean(x[t, :]^2) + eps) * w[i].
using Kernels.Runtime.Numerics;

namespace Kernels.Runtime.Backends.Cpu;

public static unsafe class RmsNorm
{
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
            for (int i = 0; i < d; i++) yr[i] = xr[i] * scale * weight[i];
        }
    }
}
