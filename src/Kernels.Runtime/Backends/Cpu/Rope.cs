// Rotary embedding (rotate-half convention), reference for kernels/ops rope: pairs (i, i + d/2) turned by pos * inv_freq[i].
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace Kernels.Runtime.Backends.Cpu;

internal static class Rope
{
    /// <summary>
    /// The cos and sin of every row's angles, [rows, d/2] each: (float)pos * invFreq[i] in fp32 and cos/sin in fp32
    /// (MathF), the numeric contract the CUDA kernel follows. A step computes them once for all its layers.
    /// </summary>
    public static (float[] Cos, float[] Sin) Angles(ReadOnlySpan<int> positions, ReadOnlySpan<float> invFreq)
    {
        int half = invFreq.Length;
        var cos = new float[positions.Length * half];
        var sin = new float[positions.Length * half];
        for (int t = 0; t < positions.Length; t++)
        {
            float pos = positions[t];
            for (int i = 0; i < half; i++)
            {
                float angle = pos * invFreq[i];
                cos[t * half + i] = MathF.Cos(angle);
                sin[t * half + i] = MathF.Sin(angle);
            }
        }
        return (cos, sin);
    }

    /// <summary>Rotates every head of <paramref name="x"/> [rows, heads, d] in place; row t is at positions[t].</summary>
    public static void Apply(Span<float> x, int rows, int heads, int headDim, ReadOnlySpan<int> positions, ReadOnlySpan<float> invFreq)
    {
        var (cos, sin) = Angles(positions[..rows], invFreq[..(headDim / 2)]);
        Apply(x, rows, heads, headDim, cos, sin);
    }

    /// <summary>Rotates every head of <paramref name="x"/> [rows, heads, d] in place by the angles of <see cref="Angles"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Apply(Span<float> x, int rows, int heads, int headDim, ReadOnlySpan<float> cos, ReadOnlySpan<float> sin)
    {
        int half = headDim / 2;
        for (int t = 0; t < rows; t++)
        {
            var c = cos.Slice(t * half, half);
            var s = sin.Slice(t * half, half);
            for (int h = 0; h < heads; h++)
            {
                var v = x.Slice((t * heads + h) * headDim, headDim);
                int i = 0;
                if (Vector256.IsHardwareAccelerated) // the same products and sums per element, 8 pairs at a time
                    for (; i + 8 <= half; i += 8)
                    {
                        var a = Vector256.Create(v.Slice(i, 8));
                        var b = Vector256.Create(v.Slice(i + half, 8));
                        var ci = Vector256.Create(c.Slice(i, 8));
                        var si = Vector256.Create(s.Slice(i, 8));
                        (a * ci - b * si).CopyTo(v.Slice(i, 8));
                        (b * ci + a * si).CopyTo(v.Slice(i + half, 8));
                    }
                for (; i < half; i++)
                {
                    float a = v[i], b = v[i + half];
                    v[i] = a * c[i] - b * s[i];
                    v[i + half] = b * c[i] + a * s[i];
                }
            }
        }
    }
}
