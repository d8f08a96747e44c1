// SwiGLU, reference for kernels/ops swiglu: out[i] = silu(gate[i]) * up[i], silu(x) = x / (1 + exp(-x)).
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace Kernels.Runtime.Backends.Cpu;

internal static class SwiGlu
{
    /// <summary>8 lanes at a time with the runtime's vector exp (within an ulp or two of MathF.Exp), the rest scalar.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Apply(ReadOnlySpan<float> gate, ReadOnlySpan<float> up, Span<float> output)
    {
        int n = output.Length, i = 0;
        if (gate.Length < n || up.Length < n) throw new ArgumentException("gate and up must hold as many values as the output");
        if (Vector256.IsHardwareAccelerated)
        {
            var one = Vector256<float>.One;
            for (; i + 8 <= n; i += 8)
            {
                var g = Vector256.Create(gate.Slice(i, 8));
                var u = Vector256.Create(up.Slice(i, 8));
                (g / (one + Vector256.Exp(-g)) * u).CopyTo(output.Slice(i, 8));
            }
        }
        for (; i < n; i++)
        {
            float g = gate[i];
            output[i] = g / (1f + MathF.Exp(-g)) * up[i];
        }
    }
}
