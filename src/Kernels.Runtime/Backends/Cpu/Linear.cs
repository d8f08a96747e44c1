// y[T, N] = x[T, K] . W[N, K]^T (+ bias) for any stored form of a linear layer: the one place the CPU backend
// chooses the kernel for a weight format.
using Kernels.Runtime.Models;
using Kernels.Runtime.Quantization.SqueezeLlm;
using Kernels.Runtime.Quantization.W4A8;

namespace Kernels.Runtime.Backends.Cpu;

internal static class Linear
{
    public static void Multiply(ReadOnlySpan<float> x, int rows, LinearWeight w, Span<float> y, WeightTensor? bias = null)
    {
        switch (w)
        {
            case DenseLinear dense:
                MatMul.Multiply(x, rows, dense.Weight, y, bias);
                break;
            case W4A8Linear w4a8:
                W4A8Gemm.Multiply(x, rows, w4a8, y, bias);
                break;
            case SqueezeLlmLinear squeeze:
                LutMatMul.Multiply(x, rows, squeeze, y, bias);
                break;
            default:
                throw new NotSupportedException($"{w.Name}: the CPU backend has no kernel for {w.Format} weights");
        }
    }
}
