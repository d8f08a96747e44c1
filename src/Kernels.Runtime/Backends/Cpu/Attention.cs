// Causal GQA attention of a sequence's new query rows over its KV cache (reference for the decode/prefill kernels).
using Kernels.Runtime.Numerics;

namespace Kernels.Runtime.Backends.Cpu;

public static unsafe class Attention
{
    /// <summary>
    /// For query row t at position start+t and head h: o = softmax(q.K^T / sqrt(d)) V over key positions
    /// j in (pos - window, pos], using kv head h / group. q and o are [rows, heads * d]; keys and values are
    /// [positions, kvHeads * d]. Softmax subtracts the row max, in fp32.
    /// </summary>
    public static void Causal(ReadOnlySpan<float> q, ReadOnlySpan<float> keys, ReadOnlySpan<float> values, Span<float> o,
        int rows, int start, int head, int heads, int kvHeads, int headDim, int? window, Span<float> scores)
    {
        int group = heads / kvHeads, kvh = head / group;
        int qStride = heads * headDim, kvStride = kvHeads * headDim;
        float scale = 1f / MathF.Sqrt(headDim);
        fixed (float* qp = q)
        fixed (float* kp = keys)
        fixed (float* vp = values)
        fixed (float* op = o)
        fixed (float* sp = scores)
        {
            for (int t = 0; t < rows; t++)
            {
                int pos = start + t;
                int first = window is int w ? Math.Max(0, pos - w + 1) : 0;
                float* qr = qp + (long)t * qStride + head * headDim;
                float max = float.NegativeInfinity;
                for (int j = first; j <= pos; j++)
                {
                    float s = Simd.Dot(qr, kp + (long)j * kvStride + kvh * headDim, headDim) * scale;
                    sp[j - first] = s;
                    if (s > max) max = s;
                }
                float sum = 0;
                for (int j = 0; j <= pos - first; j++)
                {
                    float e = MathF.Exp(sp[j] - max);
                    sp[j] = e;
                    sum += e;
                }
                float* orow = op + (long)t * qStride + head * headDim;
                new Span<float>(orow, headDim).Clear();
                float inv = 1f / sum;
                for (int j = first; j <= pos; j++)
                    Simd.AxpyInPlace(sp[j - first] * inv, vp + (long)j * kvStride + kvh * headDim, orow, headDim);
            }
        }
    }
}
