// SwiGLU, reference for kernels/ops swiglu: out[i] = silu(gate[i]) * up[i], silu(x) = x / (1 + exp(-x)).
namespace Kernels.Runtime.Backends.Cpu;

public static class SwiGlu
{
    public static void Apply(ReadOnlySpan<float> gate, ReadOnlySpan<float> up, Span<float> output)
    {
        for (int i = 0; i < output.Length; i++)
        {
            float g = gate[i];
            output[i] = g / (1f + MathF.Exp(-g)) * up[i];
        }
    }
}
