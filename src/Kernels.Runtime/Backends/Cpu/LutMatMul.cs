// y[T, N] = x[T, K] . W[N, K]^T (+ bias) for SqueezeLLM weights: packed codes gathered from each row's lookup table,
// plus the row's CSR outliers, in one pass over the codes.
using System.Buffers;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Kernels.Runtime.Models;
using Kernels.Runtime.Quantization.SqueezeLlm;

namespace Kernels.Runtime.Backends.Cpu;

/// <summary>
/// Per output row the 8- or 16-entry fp32 table sits in two AVX2 registers; 8 codes at a time are decoded (one
/// broadcast, a variable shift, a mask) and turned into weights by vpermps (two and a blend for 16 entries). One x
/// row (decode): weights go straight into the FMA, two output rows interleaved for two independent dependency
/// chains. Several x rows: the row is decoded once into an L1 buffer and dotted with up to 4 x rows per pass, so the
/// codes are read once per call whatever the batch. Then the outliers: y += Delta[e] * x[col[e]] in CSR order.
/// Batch invariance: every output is one 8-lane accumulator over k in order, a fixed horizontal sum, the scalar
/// tail, then the outliers in order; both paths produce identical weights, so a row's result does not depend on
/// which other rows share the call.
/// </summary>
internal static unsafe class LutMatMul
{
    /// <summary>Output rows per task: as MatMul, enough work to amortize scheduling and few enough to balance cores.</summary>
    private const int RowsPerTask = 64;

    private static readonly bool Vectorized = Fma.IsSupported && Avx2.IsSupported;

    public static void Multiply(ReadOnlySpan<float> x, int rows, SqueezeLlmLinear w, Span<float> y, WeightTensor? bias = null)
    {
        int n = w.OutFeatures, k = w.InFeatures;
        if (x.Length < (long)rows * k) throw new ArgumentException($"x holds {x.Length} values, {rows}x{k} needed for {w.Name}");
        if (y.Length < (long)rows * n) throw new ArgumentException($"y holds {y.Length} values, {rows}x{n} needed for {w.Name}");
        if (bias is not null && bias.ElementCount != n) throw new ArgumentException($"{bias.Name} has {bias.ElementCount} values, {n} needed for {w.Name}");
        float[]? biasValues = bias?.ToFloatArray();
        fixed (float* xp = x)
        fixed (float* yp = y)
        {
            var job = new Job(xp, yp, rows, w, biasValues);
            if (w.Bits == 4) Run<SqueezeLlmCodes.FourBit>(job, n);
            else Run<SqueezeLlmCodes.ThreeBit>(job, n);
        }
    }

    private static void Run<TW>(Job job, int n) where TW : SqueezeLlmCodes.IWidth
    {
        int tasks = (n + RowsPerTask - 1) / RowsPerTask;
        if (tasks == 1) job.Run<TW>(0, n);
        else WorkerTeam.For(tasks, t => job.Run<TW>(t * RowsPerTask, Math.Min(n, (t + 1) * RowsPerTask)));
    }

    private readonly struct Job(float* x, float* y, int rows, SqueezeLlmLinear w, float[]? bias)
    {
        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        public void Run<TW>(int start, int end) where TW : SqueezeLlmCodes.IWidth
        {
            int k = w.InFeatures;
            if (rows == 1 && Vectorized)
            {
                int j = start;
                for (; j + 2 <= end; j += 2) Decode2<TW>(j);
                for (; j < end; j++) Store(0, j, Dot<TW>(j));
                return;
            }
            var buffer = ArrayPool<float>.Shared.Rent(k);
            try
            {
                Span<float> d = stackalloc float[4];
                fixed (float* buf = buffer)
                    for (int j = start; j < end; j++)
                    {
                        Dequantize<TW>(j, buf);
                        for (int t = 0; t < rows; t += 4)
                        {
                            int group = Math.Min(4, rows - t);
                            DotRows(buf, x + (long)t * k, group, k, d);
                            for (int r = 0; r < group; r++) Store(t + r, j, d[r]);
                        }
                    }
            }
            finally
            {
                ArrayPool<float>.Shared.Return(buffer);
            }
        }

        /// <summary>y[t, j] = dense dot + outliers + bias.</summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        private void Store(int t, int j, float dense)
        {
            float* xr = x + (long)t * w.InFeatures;
            float s = dense;
            var cols = w.Cols;
            var delta = w.Delta;
            for (int e = w.RowStart[j], end = w.RowStart[j + 1]; e < end; e++) s += delta[e] * xr[cols[e]];
            y[(long)t * w.OutFeatures + j] = s + (bias != null ? bias[j] : 0f);
        }

        /// <summary>Rows j and j+1 against the one x row, decoded in registers, each summed exactly as Dot sums it.</summary>
        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        private void Decode2<TW>(int j) where TW : SqueezeLlmCodes.IWidth
        {
            int k = w.InFeatures, bits = TW.Bits, size = 1 << TW.Bits;
            byte* c0 = w.CodeRow(j), c1 = w.CodeRow(j + 1);
            fixed (float* table = w.Table)
            {
                float* t0 = table + (long)j * size, t1 = t0 + size;
                var lo0 = Avx.LoadVector256(t0); var hi0 = bits == 4 ? Avx.LoadVector256(t0 + 8) : lo0;
                var lo1 = Avx.LoadVector256(t1); var hi1 = bits == 4 ? Avx.LoadVector256(t1 + 8) : lo1;
                var a0 = Vector256<float>.Zero; var a1 = a0;
                int i = 0;
                for (; i + 8 <= k; i += 8)
                {
                    var v = Avx.LoadVector256(x + i);
                    a0 = Fma.MultiplyAdd(TW.Lookup8(TW.Group8(c0, i >> 3), lo0, hi0), v, a0);
                    a1 = Fma.MultiplyAdd(TW.Lookup8(TW.Group8(c1, i >> 3), lo1, hi1), v, a1);
                }
                Store(0, j, Tail<TW>(a0, c0, t0, x, i));
                Store(0, j + 1, Tail<TW>(a1, c1, t1, x, i));
            }
        }

        /// <summary>Row j against the one x row, decoded in registers.</summary>
        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        private float Dot<TW>(int j) where TW : SqueezeLlmCodes.IWidth
        {
            int k = w.InFeatures, bits = TW.Bits, size = 1 << TW.Bits;
            byte* c = w.CodeRow(j);
            fixed (float* table = w.Table)
            {
                float* t = table + (long)j * size;
                var lo = Avx.LoadVector256(t); var hi = bits == 4 ? Avx.LoadVector256(t + 8) : lo;
                var a = Vector256<float>.Zero;
                int i = 0;
                for (; i + 8 <= k; i += 8)
                    a = Fma.MultiplyAdd(TW.Lookup8(TW.Group8(c, i >> 3), lo, hi), Avx.LoadVector256(x + i), a);
                return Tail<TW>(a, c, t, x, i);
            }
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        private float Tail<TW>(Vector256<float> acc, byte* codes, float* table, float* xr, int i) where TW : SqueezeLlmCodes.IWidth
        {
            float s = Vector256.Sum(acc);
            for (; i < w.InFeatures; i++) s += table[SqueezeLlmCodes.Code(codes, i, TW.Bits)] * xr[i];
            return s;
        }

        /// <summary>Row j's weights (without outliers, which Store adds) into buf[0..K).</summary>
        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        private void Dequantize<TW>(int j, float* buf) where TW : SqueezeLlmCodes.IWidth
        {
            int k = w.InFeatures, bits = TW.Bits, size = 1 << TW.Bits;
            byte* c = w.CodeRow(j);
            fixed (float* table = w.Table)
            {
                float* t = table + (long)j * size;
                int i = 0;
                if (Vectorized)
                {
                    var lo = Avx.LoadVector256(t); var hi = bits == 4 ? Avx.LoadVector256(t + 8) : lo;
                    for (; i + 8 <= k; i += 8) Avx.Store(buf + i, TW.Lookup8(TW.Group8(c, i >> 3), lo, hi));
                }
                for (; i < k; i++) buf[i] = t[SqueezeLlmCodes.Code(c, i, bits)];
            }
        }
    }

    /// <summary>d[r] = buf . x_r for <paramref name="group"/> (1..4) x rows, each summed like Dot: one accumulator, in order.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void DotRows(float* buf, float* x, int group, int k, Span<float> d)
    {
        if (!Vectorized)
        {
            for (int r = 0; r < group; r++)
            {
                float s = 0;
                for (int c = 0; c < k; c++) s += buf[c] * x[r * k + c];
                d[r] = s;
            }
            return;
        }
        float* x0 = x, x1 = group > 1 ? x + k : x, x2 = group > 2 ? x + 2 * k : x, x3 = group > 3 ? x + 3 * k : x;
        var a0 = Vector256<float>.Zero; var a1 = a0; var a2 = a0; var a3 = a0;
        int i = 0;
        for (; i + 8 <= k; i += 8)
        {
            var wv = Avx.LoadVector256(buf + i);
            a0 = Fma.MultiplyAdd(wv, Avx.LoadVector256(x0 + i), a0);
            a1 = Fma.MultiplyAdd(wv, Avx.LoadVector256(x1 + i), a1);
            a2 = Fma.MultiplyAdd(wv, Avx.LoadVector256(x2 + i), a2);
            a3 = Fma.MultiplyAdd(wv, Avx.LoadVector256(x3 + i), a3);
        }
        d[0] = Tail(a0, buf, x0, i, k);
        if (group > 1) d[1] = Tail(a1, buf, x1, i, k);
        if (group > 2) d[2] = Tail(a2, buf, x2, i, k);
        if (group > 3) d[3] = Tail(a3, buf, x3, i, k);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float Tail(Vector256<float> acc, float* buf, float* x, int i, int k)
    {
        float s = Vector256.Sum(acc);
        for (; i < k; i++) s += buf[i] * x[i];
        return s;
    }
}
