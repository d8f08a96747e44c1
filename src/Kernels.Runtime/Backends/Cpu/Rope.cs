// Rotary embedding (rotate-half convention), reference for kernels/ops rope: pairs (i, i + d/2) turned by pos * inv_freq[i].
namespace Kernels.Runtime.Backends.Cpu;

public static class Rope
{
    /// <summary>
    /// Rotates every head of <paramref name="x"/> [rows, heads, d] in place; row t is at positions[t]. The angle is
    /// (float)pos * invFreq[i] in fp32 and cos/sin are fp32 (MathF), the numeric contract the CUDA kernel follows.
    /// </summary>
    public static void Apply(Span<float> x, int rows, int heads, int headDim, ReadOnlySpan<int> positions, ReadOnlySpan<float> invFreq)
    {
        int half = headDim / 2;
        Span<float> cos = stackalloc float[half], sin = stackalloc float[half];
        for (int t = 0; t < rows; t++)
        {
            float pos = positions[t];
            for (int i = 0; i < half; i++)
            {
                float angle = pos * invFreq[i];
                cos[i] = MathF.Cos(angle);
                sin[i] = MathF.Sin(angle);
            }
            for (int h = 0; h < heads; h++)
            {
                var v = x.Slice((t * heads + h) * headDim, headDim);
                for (int i = 0; i < half; i++)
                {
                    float a = v[i], b = v[i + half];
                    v[i] = a * cos[i] - b * sin[i];
                    v[i + half] = b * cos[i] + a * sin[i];
                }
            }
        }
    }
}
