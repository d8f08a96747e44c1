// The matmul on GGML block weights (Q4_0..Q8_0, Q2_K..Q6_K): x quantized once per call, the dots in integers (GgmlDot).
using System.Buffers;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Kernels.Runtime.Models;
using Kernels.Runtime.Numerics;

namespace Kernels.Runtime.Backends.Cpu;

internal static unsafe partial class MatMul
{
    private readonly partial struct Job
    {
        /// <summary>GGML block weights against the quantized x rows, in integers (GgmlDot.Multiply).</summary>
        private void GgmlRows(int start, int end)
        {
            var buffer = ArrayPool<byte>.Shared.Rent(GgmlDot.BufferBytes(w.DType, k));
            GgmlDot.Multiply(w.DType, data, k, start, end, activations!, y, n, bias, buffer);
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }
}
