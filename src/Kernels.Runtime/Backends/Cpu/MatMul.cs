// y[T, N] = x[T, K] . W[N, K]^T (+ bias): weights in their stored dtype, read once per call for every x row.
using System.Buffers;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Kernels.Runtime.Models;
using Kernels.Runtime.Numerics;

namespace Kernels.Runtime.Backends.Cpu;

/// <summary>
/// Register-blocked: 4 weight rows x up to 3 activation rows per micro-kernel (12 accumulators; 7 loads per 12 FMAs).
/// BF16 and F16 rows are widened in registers; Q8_0 rows are converted 4 at a time into an L1-resident buffer.
/// Batch invariance: every dot product, in every micro-kernel shape, is summed the same way (one 8-lane
/// accumulator over k in order, a fixed horizontal sum, then the scalar tail), so a row's result does not depend on
/// which other rows share the call.
/// </summary>
public static unsafe class MatMul
{
    /// <summary>Rows of W handed to one task: big enough to amortize scheduling, small enough to balance cores.</summary>
    private const int RowsPerTask = 64;

    /// <summary>
    /// From this many x rows on, F16 weight rows are converted once into a buffer: in registers the widening's
    /// temporaries and constants next to the 4x3 kernel's 12 accumulators spill (measured: the 4x3 kernel on F16 ran 3x
    /// slower than the 4x1 one), so only the single-row decode kernel widens in registers.
    /// </summary>
    private const int F16BufferedFromRows = 2;

    /// <summary>The vector path needs FMA and AVX2 (bf16 widening); otherwise every dot product runs scalar.</summary>
    private static readonly bool Vectorized = Fma.IsSupported && Avx2.IsSupported;

    public static void Multiply(ReadOnlySpan<float> x, int rows, WeightTensor w, Span<float> y, WeightTensor? bias = null)
    {
        int n = w.Rows, k = w.Columns;
        if (x.Length < (long)rows * k) throw new ArgumentException($"x holds {x.Length} values, {rows}x{k} needed for {w.Name}");
        if (y.Length < (long)rows * n) throw new ArgumentException($"y holds {y.Length} values, {rows}x{n} needed for {w.Name}");
        float[]? biasValues = bias?.ToFloatArray();

        fixed (float* xp = x)
        fixed (float* yp = y)
        {
            var job = new Job(xp, yp, rows, n, k, w, biasValues);
            int tasks = (n + RowsPerTask - 1) / RowsPerTask;
            if (tasks == 1) job.Run(0, n, null);
            else
            {
                Parallel.For(0, tasks, () => ArrayPool<float>.Shared.Rent(4 * k), (task, _, buffer) =>
                {
                    int start = task * RowsPerTask;
                    job.Run(start, Math.Min(n, start + RowsPerTask), buffer);
                    return buffer;
                }, buffer => ArrayPool<float>.Shared.Return(buffer));
            }
        }
    }

    private readonly struct Job(float* x, float* y, int rows, int n, int k, WeightTensor w, float[]? bias)
    {
        public void Run(int start, int end, float[]? buffer)
        {
            // F16 widening costs ~9 integer ops per 8 weights: in registers for one x row (decode), else once per row
            // into a buffer (see F16BufferedFromRows).
            bool f16Direct = w.DType == TensorDType.F16 && rows < F16BufferedFromRows;
            bool direct = w.DType is TensorDType.F32 or TensorDType.BF16 || f16Direct;
            bool finite = f16Direct && w.AllFinite;
            if (!direct) buffer ??= new float[4 * k];
            fixed (float* buf = buffer)
            {
                int j = start;
                for (; j + 4 <= end; j += 4) Group(j, 4, f16Direct, finite, buf);
                for (; j < end; j++) Group(j, 1, f16Direct, finite, buf);
            }
        }

        /// <summary>Weight rows j..j+count through the row loader their dtype calls for (or converted into buf).</summary>
        private void Group(int j, int count, bool f16Direct, bool finite, float* buf)
        {
            byte* rows16 = w.Data + (long)j * k * 2;
            if (w.DType == TensorDType.F32) Rows<F32Rows>(j, count, (byte*)((float*)w.Data + (long)j * k), k * 4);
            else if (w.DType == TensorDType.BF16) Rows<Bf16Rows>(j, count, rows16, k * 2);
            else if (f16Direct && finite) Rows<FiniteF16Rows>(j, count, rows16, k * 2);
            else if (f16Direct) Rows<F16Rows>(j, count, rows16, k * 2);
            else
            {
                DTypeConvert.ToSingle(w.DType, w.Data + w.DType.ByteCount((long)j * k), new Span<float>(buf, count * k));
                Rows<F32Rows>(j, count, (byte*)buf, k * 4);
            }
        }

        /// <summary>Weight rows j..j+count (count 4 or 1) starting at <paramref name="wr"/>, rowBytes apart, against every x row.</summary>
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

    /// <summary>4 weight rows x <paramref name="group"/> (1..3) x rows; d[c * 3 + r] = w_c . x_r.</summary>
    private static void Kernel4<L>(byte* w, int rowBytes, float* x, int group, int k, Span<float> d) where L : IRowLoad
    {
        if (!Vectorized)
        {
            for (int c = 0; c < 4; c++)
                for (int r = 0; r < group; r++) d[c * 3 + r] = Dot<L>(w + c * rowBytes, x + r * k, k);
            return;
        }
        if (group == 1)
        {
            Kernel4x1<L>(w, rowBytes, x, k, d); // decode of one sequence: no lanes wasted on repeated x rows
            return;
        }
        byte* w0 = w, w1 = w + rowBytes, w2 = w + 2 * rowBytes, w3 = w + 3 * rowBytes;
        float* x0 = x, x1 = group > 1 ? x + k : x, x2 = group > 2 ? x + 2 * k : x;
        var a00 = Vector256<float>.Zero; var a01 = a00; var a02 = a00;
        var a10 = a00; var a11 = a00; var a12 = a00;
        var a20 = a00; var a21 = a00; var a22 = a00;
        var a30 = a00; var a31 = a00; var a32 = a00;
        int i = 0;
        byte* ahead = w + 4 * rowBytes;
        int elementBytes = rowBytes / k;
        for (; i + 8 <= k; i += 8)
        {
            Sse.Prefetch0(ahead + i * elementBytes);
            Sse.Prefetch0(ahead + 2 * rowBytes + i * elementBytes);
            var v0 = Avx.LoadVector256(x0 + i);
            var v1 = Avx.LoadVector256(x1 + i);
            var v2 = Avx.LoadVector256(x2 + i);
            var c0 = L.Load(w0, i); a00 = Fma.MultiplyAdd(c0, v0, a00); a01 = Fma.MultiplyAdd(c0, v1, a01); a02 = Fma.MultiplyAdd(c0, v2, a02);
            var c1 = L.Load(w1, i); a10 = Fma.MultiplyAdd(c1, v0, a10); a11 = Fma.MultiplyAdd(c1, v1, a11); a12 = Fma.MultiplyAdd(c1, v2, a12);
            var c2 = L.Load(w2, i); a20 = Fma.MultiplyAdd(c2, v0, a20); a21 = Fma.MultiplyAdd(c2, v1, a21); a22 = Fma.MultiplyAdd(c2, v2, a22);
            var c3 = L.Load(w3, i); a30 = Fma.MultiplyAdd(c3, v0, a30); a31 = Fma.MultiplyAdd(c3, v1, a31); a32 = Fma.MultiplyAdd(c3, v2, a32);
        }
        d[0] = Tail<L>(a00, w0, x0, i, k); d[1] = Tail<L>(a01, w0, x1, i, k); d[2] = Tail<L>(a02, w0, x2, i, k);
        d[3] = Tail<L>(a10, w1, x0, i, k); d[4] = Tail<L>(a11, w1, x1, i, k); d[5] = Tail<L>(a12, w1, x2, i, k);
        d[6] = Tail<L>(a20, w2, x0, i, k); d[7] = Tail<L>(a21, w2, x1, i, k); d[8] = Tail<L>(a22, w2, x2, i, k);
        d[9] = Tail<L>(a30, w3, x0, i, k); d[10] = Tail<L>(a31, w3, x1, i, k); d[11] = Tail<L>(a32, w3, x2, i, k);
    }

    /// <summary>4 weight rows x 1 x row (the single-sequence decode shape), summed like every lane of Kernel4.</summary>
    private static void Kernel4x1<L>(byte* w, int rowBytes, float* x, int k, Span<float> d) where L : IRowLoad
    {
        byte* w0 = w, w1 = w + rowBytes, w2 = w + 2 * rowBytes, w3 = w + 3 * rowBytes;
        var a0 = Vector256<float>.Zero; var a1 = a0; var a2 = a0; var a3 = a0;
        int i = 0;
        // The next group of four rows starts 4 * rowBytes on; fetching it while this one is summed keeps the memory
        // system busy (measured on the 2-core EPYC: the 49 MB LM head at T=1 went from 6.2 to 13.2 GB/s, 16.8 peak).
        byte* ahead = w + 4 * rowBytes;
        int elementBytes = rowBytes / k;
        for (; i + 8 <= k; i += 8)
        {
            Sse.Prefetch0(ahead + i * elementBytes);
            Sse.Prefetch0(ahead + 2 * rowBytes + i * elementBytes);
            var v = Avx.LoadVector256(x + i);
            a0 = Fma.MultiplyAdd(L.Load(w0, i), v, a0);
            a1 = Fma.MultiplyAdd(L.Load(w1, i), v, a1);
            a2 = Fma.MultiplyAdd(L.Load(w2, i), v, a2);
            a3 = Fma.MultiplyAdd(L.Load(w3, i), v, a3);
        }
        d[0] = Tail<L>(a0, w0, x, i, k);
        d[3] = Tail<L>(a1, w1, x, i, k);
        d[6] = Tail<L>(a2, w2, x, i, k);
        d[9] = Tail<L>(a3, w3, x, i, k);
    }

    /// <summary>One dot product in the same order as every lane of Kernel4.</summary>
    private static float Dot<L>(byte* w, float* x, int k) where L : IRowLoad
    {
        if (!Vectorized)
        {
            float s = 0;
            for (int j = 0; j < k; j++) s += L.LoadScalar(w, j) * x[j];
            return s;
        }
        var a = Vector256<float>.Zero;
        int i = 0;
        for (; i + 8 <= k; i += 8) a = Fma.MultiplyAdd(L.Load(w, i), Avx.LoadVector256(x + i), a);
        return Tail<L>(a, w, x, i, k);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float Tail<L>(Vector256<float> acc, byte* w, float* x, int i, int k) where L : IRowLoad
    {
        float s = Vector256.Sum(acc);
        for (; i < k; i++) s += L.LoadScalar(w, i) * x[i];
        return s;
    }

    // ---------------------------------------------------------------------------------------------------------------
    // How a weight row's elements become fp32 lanes (specialized per struct by the JIT).
    private interface IRowLoad
    {
        static abstract Vector256<float> Load(byte* row, int i);
        static abstract float LoadScalar(byte* row, int i);
    }

    private readonly struct F32Rows : IRowLoad
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<float> Load(byte* row, int i) => Avx.LoadVector256((float*)row + i);
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static float LoadScalar(byte* row, int i) => ((float*)row)[i];
    }

    /// <summary>bf16 is the top half of an fp32: zero-extend 8 lanes to 32 bits and shift left by 16.</summary>
    private readonly struct Bf16Rows : IRowLoad
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<float> Load(byte* row, int i) =>
            Avx2.ShiftLeftLogical(Avx2.ConvertToVector256Int32((ushort*)row + i), 16).AsSingle();
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static float LoadScalar(byte* row, int i) => DTypeConvert.BFloat16ToSingle(((ushort*)row)[i]);
    }

    /// <summary>fp16 rows widened in registers (DTypeConvert.HalfToSingle8: exact, including subnormals, inf, NaN).</summary>
    /// <summary>fp16 rows of a tensor without infinities or NaNs: the cheaper exact widening (DTypeConvert.FiniteHalfToSingle8).</summary>
    private readonly struct FiniteF16Rows : IRowLoad
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<float> Load(byte* row, int i) => DTypeConvert.FiniteHalfToSingle8((ushort*)row + i);

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static float LoadScalar(byte* row, int i) => (float)((Half*)row)[i];
    }

    private readonly struct F16Rows : IRowLoad
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<float> Load(byte* row, int i) => DTypeConvert.HalfToSingle8((ushort*)row + i);

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static float LoadScalar(byte* row, int i) => (float)((Half*)row)[i];
    }
}
