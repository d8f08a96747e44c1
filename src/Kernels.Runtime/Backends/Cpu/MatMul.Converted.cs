// The matmul's unblocked path: 4 weight rows at a time against up to 3 x rows, for stored forms the other strategies
// do not read, K below 8, or no AVX2 (then every dot is scalar, in the same order).
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
        /// <summary>Weight rows j..j+count through the row loader their dtype calls for (or converted into buf).</summary>
        private void Group(int j, int count, bool f16Direct, bool finite, float* buf)
        {
            byte* rows16 = data + (long)j * k * 2;
            if (w.DType == TensorDType.F32) Rows<F32Rows>(j, count, (byte*)((float*)data + (long)j * k), k * 4);
            else if (w.DType == TensorDType.BF16) Rows<Bf16Rows>(j, count, rows16, k * 2);
            else if (f16Direct && finite) Rows<FiniteF16Rows>(j, count, rows16, k * 2);
            else if (f16Direct) Rows<F16Rows>(j, count, rows16, k * 2);
            else
            {
                DTypeConvert.ToSingle(w.DType, data + w.DType.ByteCount((long)j * k), new Span<float>(buf, count * k));
                Rows<F32Rows>(j, count, (byte*)buf, k * 4);
            }
        }

        /// <summary>Weight rows j..j+count (count 4 or 1) starting at <paramref name="wr"/>, rowBytes apart, against every x row.</summary>
        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        private void Rows<L>(int j, int count, byte* wr, int rowBytes) where L : IRowLoad
        {
            Span<float> d = stackalloc float[12];
            int t = 0;
            while (t < rows)
            {
                int group = Math.Min(3, rows - t);
                if (count == 4) Kernel4<L>(wr, rowBytes, x + (long)t * k, group, k, d);
                else for (int r = 0; r < group; r++) d[r] = Dot<L>(wr, x + (long)(t + r) * k, k);
                for (int r = 0; r < group; r++)
                    for (int c = 0; c < count; c++)
                        y[(long)(t + r) * n + j + c] = d[c * 3 + r] + (bias != null ? bias[j + c] : 0f);
                t += group;
            }
        }
    }

    /// <summary>4 weight rows x <paramref name="group"/> (1..3) x rows; d[c * 3 + r] = w_c . x_r (the unblocked path: converted rows, tiny K, or no AVX2).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Kernel4<L>(byte* w, int rowBytes, float* x, int group, int k, Span<float> d) where L : IRowLoad
    {
        for (int c = 0; c < 4; c++)
            for (int r = 0; r < group; r++) d[c * 3 + r] = Dot<L>(w + c * rowBytes, x + r * k, k);
    }
}
