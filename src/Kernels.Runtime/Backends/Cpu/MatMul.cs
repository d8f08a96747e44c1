// y[T, N] = x[T, K] . W[N, K]^T (+ bias): weights in their stored dtype, each row converted once and used for every x row.
using System.Buffers;
using Kernels.Runtime.Models;
using Kernels.Runtime.Numerics;

namespace Kernels.Runtime.Backends.Cpu;

public static unsafe class MatMul
{
    /// <summary>Rows of W handed to one task: big enough to amortize scheduling, small enough to balance cores.</summary>
    private const int RowsPerTask = 64;

    public static void Multiply(ReadOnlySpan<float> x, int rows, WeightTensor w, Span<float> y, WeightTensor? bias = null)
    {
        int n = w.Rows, k = w.Columns;
        if (x.Length < rows * k) throw new ArgumentException($"x holds {x.Length} values, {rows}x{k} needed for {w.Name}");
        if (y.Length < rows * n) throw new ArgumentException($"y holds {y.Length} values, {rows}x{n} needed for {w.Name}");
        float[]? biasValues = bias?.ToFloatArray();

        fixed (float* xp = x)
        fixed (float* yp = y)
        {
            float* xs = xp, ys = yp;
            int tasks = (n + RowsPerTask - 1) / RowsPerTask;
            Parallel.For(0, tasks, () => ArrayPool<float>.Shared.Rent(k), (task, _, rowBuffer) =>
            {
                int start = task * RowsPerTask, end = Math.Min(n, start + RowsPerTask);
                fixed (float* buffer = rowBuffer)
                {
                    for (int j = start; j < end; j++)
                    {
                        float* wr;
                        if (w.DType == TensorDType.F32) wr = (float*)w.Data + (long)j * k;
                        else
                        {
                            DTypeConvert.ToSingle(w.DType, w.Data + w.DType.ByteCount((long)j * k), new Span<float>(buffer, k));
                            wr = buffer;
                        }
                        float b = biasValues != null ? biasValues[j] : 0f;
                        int t = 0;
                        for (; t + 4 <= rows; t += 4)
                        {
                            Simd.RowDot4(wr, xs + (long)t * k, xs + (long)(t + 1) * k, xs + (long)(t + 2) * k, xs + (long)(t + 3) * k, k,
                                out float d0, out float d1, out float d2, out float d3);
                            ys[(long)t * n + j] = d0 + b;
                            ys[(long)(t + 1) * n + j] = d1 + b;
                            ys[(long)(t + 2) * n + j] = d2 + b;
                            ys[(long)(t + 3) * n + j] = d3 + b;
                        }
                        for (; t < rows; t++) ys[(long)t * n + j] = Simd.RowDot(wr, xs + (long)t * k, k) + b;
                    }
                }
                return rowBuffer;
            }, buffer => ArrayPool<float>.Shared.Return(buffer));
        }
    }
}
