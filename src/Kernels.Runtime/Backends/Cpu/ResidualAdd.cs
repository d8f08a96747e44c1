// Residual add, reference for kernels/ops residual_add: x[i] += y[i].
using System.Numerics.Tensors;

namespace Kernels.Runtime.Backends.Cpu;

internal static class ResidualAdd
{
    public static void Apply(Span<float> x, ReadOnlySpan<float> y) => TensorPrimitives.Add(x, y, x);
}
