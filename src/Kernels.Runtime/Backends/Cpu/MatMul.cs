// y[T, N] = x[T, K] . W[N, K]^T (+ bias): weights in their stored dtype, read once per call for every x row.
using System.Buffers;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Kernels.Runtime.Models;
using Kernels.Runtime.Numerics;

namespace Kernels.Runtime.Backends.Cpu;

/// <summary>
/// Register-blocked (<see cref="DotTile"/>): 4 weight rows x 3 (or 2) activation rows per micro-kernel (12
/// accumulators; 7 loads per 12 FMAs) over K in L1-sized chunks, or from 8 activation rows and K up to 768, 6 weight
/// rows x 2 (8 loads, 2 of them from L2), with the weights converted to fp32 a panel at a time. One activation row
/// (decode) streams the weights instead: F32, BF16 and F16 rows are widened in registers, other stored forms
/// converted 4 rows at a time.
/// Batch invariance: every dot product, in every micro-kernel shape, is summed the same way (one 8-lane
/// accumulator over k in order, a fixed horizontal sum, then the scalar tail), so a row's result does not depend on
/// which other rows share the call.
/// </summary>
public static unsafe partial class MatMul
{
    /// <summary>Rows of W handed to one task: big enough to amortize scheduling, small enough to balance cores.</summary>
    private const int RowsPerTask = 64;

    /// <summary>
    /// Columns per chunk of the blocked (2+ x rows) kernel: 4 converted weight rows of it (16 KiB) stay in L1 while every
    /// x row streams past them from L2, each tile's accumulators in registers over the whole chunk (K up to 1024 is one
    /// chunk). Measured on the 2-core EPYC against 256-column chunks shared by 16 weight rows: 12-15 % less time for
    /// 16 and 64 x rows, the same for 2-8.
    /// </summary>
    private const int ChunkK = 1024;

    /// <summary>Widest K the six-row panels take (6 x 768 fp32 = 18 KiB, with two x rows 24 KiB of L1).</summary>
    private const int SixRowsMaxK = 768;

    /// <summary>
    /// Fewest x rows for the six-row panels: below it a step is bound by the weight stream, and the larger panel's
    /// prefetch bursts (its bytes over fewer tiles) cost more than the loads saved (measured 5 % slower at 4 rows).
    /// </summary>
    private const int SixRowsMinX = 8;

    /// <summary>
    /// How far ahead of its reads a decode row prefetches (bytes). One x row streams the weights one row at a time,
    /// front to back, with one prefetch per 64-byte line this far on: measured on the 2-core EPYC (all 85 matmuls of a
    /// 100M F16 decode step, interleaved A/B, medians of 28), 10-15 % less time than four rows at a time fetching the
    /// next four rows; 2-4 KiB leads were alike, 1.5 KiB slower.
    /// </summary>
    private const int DecodeLead = 3072;

    /// <summary>The vector path needs FMA and AVX2 (bf16 widening); otherwise every dot product runs scalar.</summary>
    private static readonly bool Vectorized = Fma.IsSupported && Avx2.IsSupported;

    public static void Multiply(ReadOnlySpan<float> x, int rows, WeightTensor w, Span<float> y, WeightTensor? bias = null)
    {
        fixed (float* yp = y)
            Multiply(x, rows, [new Product(w, yp, y.Length, bias)]);
    }

    /// <summary>One weight of a <see cref="Multiply(ReadOnlySpan{float}, int, ReadOnlySpan{Product})"/> call: its output (pinned by the caller) and bias.</summary>
    public readonly struct Product(WeightTensor weight, float* output, int outputLength, WeightTensor? bias = null)
    {
        public WeightTensor Weight => weight;
        public float* Output => output;
        public int OutputLength => outputLength;
        public WeightTensor? Bias => bias;
    }

    /// <summary>
    /// Several weights against the same x (the q, k and v projections; gate and up): x is prepared once and every
    /// weight's row ranges are tasks of one parallel loop, so the cores meet once instead of once per weight.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Multiply(ReadOnlySpan<float> x, int rows, ReadOnlySpan<Product> products)
    {
        if (products.Length == 0) return;
        int k = products[0].Weight.Columns;
        var keepAlive = new List<Q8Rows>();
        if (x.Length < (long)rows * k) throw new ArgumentException($"x holds {x.Length} values, {rows}x{k} needed for {products[0].Weight.Name}");
        foreach (var p in products)
        {
            if (p.Weight.Columns != k) throw new ArgumentException($"{p.Weight.Name} takes {p.Weight.Columns} inputs, not the {k} of the others sharing x");
            if (p.OutputLength < (long)rows * p.Weight.Rows) throw new ArgumentException($"y holds {p.OutputLength} values, {rows}x{p.Weight.Rows} needed for {p.Weight.Name}");
        }

        // Finite F16 weights are widened 16 at a time in unpack order (DTypeConvert.FiniteHalfFields16): x is paired
        // to match once per call, and prescaled by 2^112 (when every value allows) so the widening needs no multiply.
        bool anyPaired = false;
        foreach (var p in products) anyPaired |= PairedHalves(p.Weight, k);
        float[]? paired = anyPaired ? ArrayPool<float>.Shared.Rent(rows * k) : null;
        // GGML block weights multiply int8 activations: x quantized once per activation format the products need.
        var quantized = new Dictionary<Q8Format, GgmlDot.Activation[]>();
        foreach (var p in products)
            if (p.Weight.DType.IsBlockQuantized() && !quantized.ContainsKey(Q8Rows.FormatFor(p.Weight.DType)))
            {
                var q = Q8Rows.QuantizeReused(Q8Rows.FormatFor(p.Weight.DType), x, rows, k);
                quantized[q.Format] = Enumerable.Range(0, rows).Select(q.Row).ToArray();
                keepAlive.Add(q);
            }
        var jobs = new Job[products.Length];
        var firstTask = new int[products.Length + 1];
        fixed (float* xp = x)
        fixed (float* pp = paired)
        {
            bool prescaled = false;
            if (anyPaired)
            {
                prescaled = true;
                for (int t = 0; t < rows && prescaled; t++) prescaled = MaxAbs(xp + (long)t * k, k) < PrescaleLimit;
                for (int t = 0; t < rows; t++) PairColumns(xp + (long)t * k, pp + (long)t * k, k, prescaled ? DTypeConvert.HalfFieldsScale : 1f);
            }
            for (int i = 0; i < products.Length; i++)
            {
                var w = products[i].Weight;
                bool pairedHere = PairedHalves(w, k);
                var activations = w.DType.IsBlockQuantized() ? quantized[Q8Rows.FormatFor(w.DType)] : null;
                // The AVX2 kernels widen F16 through fp32 fields that a subnormal half would make denormal: they read a
                // flushed copy plus fix-ups. The AVX-512 ones convert exactly in integers and read the data as stored.
                var subnormals = WideDense(w) || !F16Subnormals.Needed ? null : F16Subnormals.For(w);
                jobs[i] = new Job(xp, products[i].Output, rows, w.Rows, k, w, subnormals != null ? (byte*)subnormals.Data : w.Data, subnormals,
                    products[i].Bias?.ToFloatArray(), pairedHere ? pp : null, pairedHere && prescaled, activations);
                firstTask[i + 1] = firstTask[i] + (w.Rows + RowsPerTask - 1) / RowsPerTask;
            }
            WorkerTeam.For(firstTask[^1], task =>
            {
                int i = 0;
                while (task >= firstTask[i + 1]) i++;
                int start = (task - firstTask[i]) * RowsPerTask;
                jobs[i].Run(start, Math.Min(jobs[i].N, start + RowsPerTask));
            });
        }
        if (paired != null) ArrayPool<float>.Shared.Return(paired);
        GC.KeepAlive(keepAlive);
    }

    private static bool PairedHalves(WeightTensor w, int k) => Vectorized && !WideDense(w) && w.DType == TensorDType.F16 && k >= 16 && w.AllFinite;

    /// <summary>Below this magnitude an x value times 2^112 stays finite (fp32 tops out near 2^128).</summary>
    private const float PrescaleLimit = 32768f;

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static float MaxAbs(float* x, int k)
    {
        var m = Vector256<float>.Zero;
        int i = 0;
        for (; i + 8 <= k; i += 8) m = Avx.Max(m, Vector256.Abs(Avx.LoadVector256(x + i)));
        float max = Vector256.Max(m, Vector256<float>.Zero).ToScalar();
        for (int l = 1; l < 8; l++) max = Math.Max(max, m.GetElement(l));
        for (; i < k; i++) max = Math.Max(max, Math.Abs(x[i]));
        return float.IsNaN(max) ? float.PositiveInfinity : max;
    }

    /// <summary>x in the column order of FiniteHalfFields16 for every whole 16-block, the rest in place; times <paramref name="scale"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void PairColumns(float* x, float* destination, int k, float scale)
    {
        var s = Vector256.Create(scale);
        int i = 0;
        for (; i + 16 <= k; i += 16)
        {
            var a = Avx.LoadVector256(x + i);
            var b = Avx.LoadVector256(x + i + 8);
            Avx.Store(destination + i, Avx.Permute2x128(a, b, 0x20) * s);
            Avx.Store(destination + i + 8, Avx.Permute2x128(a, b, 0x31) * s);
        }
        for (; i < k; i++) destination[i] = x[i] * scale;
    }

    /// <summary>
    /// One weight's rows against x. <paramref name="data"/> is what the kernels read: the weight's bytes, or for F16 with
    /// subnormal halves their flushed copy, whose fix-ups (<paramref name="subnormals"/>) are added to each finished dot.
    /// </summary>
    private readonly struct Job(float* x, float* y, int rows, int n, int k, WeightTensor w, byte* data, F16Subnormals? subnormals, float[]? bias,
        float* paired, bool prescaled, GgmlDot.Activation[]? activations)
    {
        public int N => n;

        public void Run(int start, int end)
        {
            Dots(start, end);
            subnormals?.Apply(start, end, x, rows, k, y, n);
        }

        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        private void Dots(int start, int end)
        {
            if (activations != null)
            {
                GgmlRows(start, end);
                return;
            }
            if (WideDense(w))
            {
                WideRows(w, data, x, rows, k, n, start, end, y, bias);
                return;
            }
            if (rows == 1 && paired != null)
            {
                if (prescaled) PairedDecode<PrescaledX>(start, end);
                else PairedDecode<UnscaledX>(start, end);
                return;
            }
            if (rows >= 2 && Vectorized && k >= 8)
            {
                Blocked(start, end);
                return;
            }
            bool f16Direct = w.DType == TensorDType.F16;
            bool direct = w.DType is TensorDType.F32 or TensorDType.BF16 || f16Direct;
            bool finite = f16Direct && w.AllFinite;
            if (rows == 1 && direct && Vectorized)
            {
                // Decode: F32, BF16 and F16 rows (those with infinities too) streamed and widened in registers.
                if (w.DType == TensorDType.F32) StreamRows<F32Rows>(start, end);
                else if (w.DType == TensorDType.BF16) StreamRows<Bf16Rows>(start, end);
                else if (finite) StreamRows<FiniteF16Rows>(start, end);
                else StreamRows<F16Rows>(start, end);
                return;
            }
            // No AVX2, or other stored forms: converted 4 rows at a time into a buffer.
            float[]? buffer = direct ? null : ArrayPool<float>.Shared.Rent(4 * k);
            fixed (float* buf = buffer)
            {
                int j = start;
                for (; j + 4 <= end; j += 4) Group(j, 4, f16Direct, finite, buf);
                for (; j < end; j++) Group(j, 1, f16Direct, finite, buf);
            }
            if (buffer != null) ArrayPool<float>.Shared.Return(buffer);
        }

        /// <summary>GGML block weights against the quantized x rows, in integers (GgmlDot.Multiply).</summary>
        private void GgmlRows(int start, int end)
        {
            var buffer = ArrayPool<byte>.Shared.Rent(GgmlDot.UnpackedBytes(w.DType, k) + 64);
            GgmlDot.Multiply(w.DType, data, k, start, end, activations!, y, n, bias, buffer);
            ArrayPool<byte>.Shared.Return(buffer);
        }

        /// <summary>
        /// Two or more x rows. The weights go four rows at a time (six from <see cref="SixRowsMinX"/> x rows when K fits
        /// one pass): their (contiguous) bytes are converted to fp32 whole, front to back, having been prefetched a slice
        /// per tile while the previous rows were summed. K goes in chunks of <see cref="ChunkK"/>: the four rows' chunk
        /// stays in L1 while the x rows pass over it, each tile's accumulators kept in memory between chunks. Each lane still sums its k's in order, so the result is the bits
        /// of the unchunked kernel. F32 weights are read in place.
        /// </summary>
        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        private void Blocked(int start, int end)
        {
            int k8 = k & ~7, groups = (rows + 2) / 3;
            float* xk = paired != null ? paired : x; // what the vector loop multiplies; tails read x itself
            var acc = ArrayPool<Vector256<float>>.Shared.Rent(groups * 12);
            bool inPlace = w.DType == TensorDType.F32;
            int ws = inPlace ? k : (k + 7) & ~7; // floats between the rows the tiles read
            var converted = inPlace ? null : ArrayPool<float>.Shared.Rent(6 * ws + 8);
            int tiles = (k8 + ChunkK - 1) / ChunkK * groups;
            // Six rows at a time where they fit L1 in one pass (K up to 768, no scalar tail): 6 weight rows x 2 x rows
            // per micro-kernel load 2 x vectors per 12 FMAs instead of 3 (x streams from L2).
            bool six = !inPlace && rows >= SixRowsMinX && k8 == k && k <= SixRowsMaxK;
            fixed (Vector256<float>* accp = acc)
            fixed (float* cp = converted)
            fixed (float* biasPtr = bias)
            {
                float* panel = (float*)(((nint)cp + 31) & ~(nint)31);
                int j = start;
                for (; six && j + 6 <= end; j += 6)
                {
                    for (int r = 0; r < 6; r++) ConvertRow(j + r, panel + r * ws);
                    // The next rows' bytes (six, or the four the 4-row loop takes next), a slice per tile.
                    int remaining = end - j - 6, next = remaining >= 6 ? 6 : remaining >= 4 ? 4 : 0;
                    byte* ahead = data + w.DType.ByteCount((long)(j + 6) * k), aheadEnd = ahead + w.DType.ByteCount((long)next * k);
                    int tiles6 = (rows + 1) / 2;
                    long perTile = ((aheadEnd - ahead) / 64 + tiles6 - 1) / tiles6 * 64;
                    for (int t = 0; t < rows; t += 2)
                    {
                        for (byte* stop = ahead + perTile; ahead < stop && ahead < aheadEnd; ahead += 64) Sse.Prefetch0(ahead);
                        float* x0 = xk + (long)t * k;
                        DotTile.Dots6(panel, ws, x0, x0 + k, Math.Min(2, rows - t), k, y + (long)t * n + j, y + (long)(t + 1) * n + j, bias != null ? biasPtr + j : null);
                    }
                }
                for (; j + 4 <= end; j += 4)
                {
                    // The next four rows' bytes, prefetched a slice per tile (a burst of prefetches would stall).
                    byte* ahead = null, aheadEnd = null;
                    long aheadPerTile = 0;
                    if (!inPlace)
                    {
                        for (int r = 0; r < 4; r++) ConvertRow(j + r, panel + r * ws);
                        if (j + 8 <= end)
                        {
                            ahead = data + w.DType.ByteCount((long)(j + 4) * k);
                            aheadEnd = ahead + w.DType.ByteCount(4L * k);
                            aheadPerTile = ((aheadEnd - ahead) / 64 + tiles - 1) / tiles * 64;
                        }
                    }
                    for (int kc = 0; kc < k8; kc += ChunkK)
                    {
                        bool last = kc + ChunkK >= k8;
                        int len = Math.Min(ChunkK, k8 - kc);
                        float* wc;
                        if (inPlace)
                        {
                            // Fetch what these rows need next (their next chunk, or the next rows' first one).
                            if (kc + ChunkK < k) PrefetchRows(j, kc + ChunkK);
                            else if (j + 8 <= end) PrefetchRows(j + 4, 0);
                            wc = (float*)data + (long)j * k + kc;
                        }
                        else wc = panel + kc;
                        for (int t = 0, g = 0; t < rows; t += DotTile.Rows(rows - t), g++)
                        {
                            int group = DotTile.Rows(rows - t);
                            Vector256<float>* a = accp + g * 12;
                            for (byte* stop = ahead + aheadPerTile; ahead < stop && ahead < aheadEnd; ahead += 64) Sse.Prefetch0(ahead);
                            float* x0 = xk + (long)t * k + kc, y0 = y + (long)t * n + j;
                            var b4 = bias != null ? Vector128.Create(bias, j) : Vector128<float>.Zero;
                            // The accumulators stay in registers over a chunk; between chunks, and for a scalar tail, they wait in a.
                            bool keep = !last || k8 != k;
                            DotTile.Dots(wc, ws, x0, x0 + k, x0 + 2 * k, group, len, a, kc > 0, keep, y0, y0 + n, y0 + 2 * n, b4);
                            if (!last || !keep) continue;
                            for (int r = 0; r < group; r++)
                            {
                                float* xr = x + (long)(t + r) * k;
                                for (int c = 0; c < 4; c++)
                                {
                                    float s = Vector256.Sum(a[c * 3 + r]);
                                    for (int i = k8; i < k; i++) s += wc[c * ws + i - kc] * xr[i];
                                    y[(long)(t + r) * n + j + c] = s + (bias != null ? bias[j + c] : 0f);
                                }
                            }
                        }
                    }
                }
                if (j < end) // the last 1-3 rows of the range, one at a time
                {
                    var rowBuffer = ArrayPool<float>.Shared.Rent(k);
                    fixed (float* wr = rowBuffer)
                    {
                        for (; j < end; j++)
                        {
                            if (paired != null)
                            {
                                ushort* row = (ushort*)data + (long)j * k;
                                for (int t = 0; t < rows; t++)
                                {
                                    long xo = (long)t * k;
                                    float d = prescaled ? DotPaired<PrescaledX>(row, k, paired + xo, x + xo) : DotPaired<UnscaledX>(row, k, paired + xo, x + xo);
                                    y[(long)t * n + j] = d + (bias != null ? bias[j] : 0f);
                                }
                                continue;
                            }
                            DTypeConvert.ToSingle(w.DType, data + w.DType.ByteCount((long)j * k), new Span<float>(wr, k));
                            for (int t = 0; t < rows; t++)
                                y[(long)t * n + j] = Dot<F32Rows>((byte*)wr, xk + (long)t * k, k) + (bias != null ? bias[j] : 0f);
                        }
                    }
                    ArrayPool<float>.Shared.Return(rowBuffer);
                }
            }
            ArrayPool<Vector256<float>>.Shared.Return(acc);
            if (converted != null) ArrayPool<float>.Shared.Return(converted);
        }

        /// <summary>
        /// Weight row <paramref name="row"/> as fp32 for the tiles: F16 in the paired column order of x (fields when x is
        /// prescaled), other stored forms converted in place.
        /// </summary>
        private void ConvertRow(int row, float* destination)
        {
            long at = (long)row * k;
            if (paired != null) DTypeConvert.FiniteHalfToSinglePaired((ushort*)data + at, destination, k & ~15, k, prescaled);
            else if (w.DType == TensorDType.F16 && w.AllFinite) DTypeConvert.FiniteHalfToSingle((ushort*)data + at, destination, k);
            else DTypeConvert.ToSingle(w.DType, data + w.DType.ByteCount(at), new Span<float>(destination, k));
        }

        /// <summary>Prefetches columns [from, from + ChunkK) of weight rows j..j+3 (F32 weights, read in place).</summary>
        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        private void PrefetchRows(int j, int from)
        {
            long bytes = w.DType.ByteCount(Math.Min(ChunkK, k - from));
            for (int c = 0; c < 4; c++)
            {
                byte* row = data + w.DType.ByteCount((long)(j + c) * k + from);
                for (long b = 0; b < bytes; b += 64) Sse.Prefetch0(row + b);
            }
        }

        /// <summary>One x row against weight rows start..end, each streamed through <see cref="DotStreaming{L}"/>.</summary>
        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        private void StreamRows<L>(int start, int end) where L : IRowLoad
        {
            WarmRange(start);
            int rowBytes = (int)w.DType.ByteCount(k);
            for (int j = start; j < end; j++) y[j] = DotStreaming<L>(data + (long)j * rowBytes, x, k) + (bias != null ? bias[j] : 0f);
        }

        /// <summary>One x row against finite F16 weights, with x paired (and prescaled when <typeparamref name="S"/> says so).</summary>
        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        private void PairedDecode<S>(int start, int end) where S : struct, IScaling
        {
            ushort* w16 = (ushort*)data;
            WarmRange(start);
            for (int j = start; j < end; j++) y[j] = DotPaired<S>(w16 + (long)j * k, k, paired, x) + (bias != null ? bias[j] : 0f);
        }

        /// <summary>
        /// A decode task's first <see cref="DecodeLead"/> bytes, fetched before its rows stream (a task starts where
        /// no earlier read prefetched; measured 2-3 % on the step).
        /// </summary>
        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        private void WarmRange(int start)
        {
            byte* first = data + w.DType.ByteCount((long)start * k);
            for (int b = 0; b < DecodeLead; b += 64) Sse.Prefetch0(first + b);
        }

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

    /// <summary>
    /// One finite F16 weight row against a paired x row, 16 columns per step (FiniteHalfFields16), then one 8-column
    /// step in place and the scalar tail: the order of the blocked kernel over FiniteHalfToSinglePaired rows. Streams:
    /// each 64-byte line of weights is fetched <see cref="DecodeLead"/> bytes ahead.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static float DotPaired<S>(ushort* w, int k, float* xp, float* x) where S : struct, IScaling
    {
        var a = Vector256<float>.Zero;
        var scale = Vector256.Create(DTypeConvert.HalfFieldsScale);
        int kp = k & ~15, k8 = k & ~7, i = 0;
        for (; i < kp; i += 16)
        {
            if ((i & 31) == 0) Sse.Prefetch0((byte*)(w + i) + DecodeLead);
            DTypeConvert.FiniteHalfFields16(w + i, out var l, out var h);
            if (!S.Prescaled) { l *= scale; h *= scale; }
            a = Fma.MultiplyAdd(h, Avx.LoadVector256(xp + i + 8), Fma.MultiplyAdd(l, Avx.LoadVector256(xp + i), a));
        }
        if (k8 > kp) a = Fma.MultiplyAdd(Fields8<S>(w + kp), Avx.LoadVector256(xp + kp), a);
        return Tail<F16Rows>(a, (byte*)w, x, k8, k);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> Fields8<S>(ushort* w) where S : struct, IScaling =>
        S.Prescaled ? DTypeConvert.FiniteHalfFields8(w) : DTypeConvert.FiniteHalfFields8(w) * Vector256.Create(DTypeConvert.HalfFieldsScale);

    /// <summary>Whether x was prescaled by 2^112 (the weights' fields are used as they are) or not (they are scaled).</summary>
    private interface IScaling { static abstract bool Prescaled { get; } }
    private readonly struct PrescaledX : IScaling { public static bool Prescaled => true; }
    private readonly struct UnscaledX : IScaling { public static bool Prescaled => false; }

    /// <summary>One dot product in the same order as every lane of Kernel4.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
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

    /// <summary><see cref="Dot{L}"/> for a decode row: each 64-byte line of weights fetched <see cref="DecodeLead"/> bytes ahead.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static float DotStreaming<L>(byte* w, float* x, int k) where L : IRowLoad
    {
        var a = Vector256<float>.Zero;
        int i = 0, line = 64 / L.ElementBytes; // 16 or 32 elements
        for (; i + 8 <= k; i += 8)
        {
            if ((i & (line - 1)) == 0) Sse.Prefetch0(w + i * L.ElementBytes + DecodeLead);
            a = Fma.MultiplyAdd(L.Load(w, i), Avx.LoadVector256(x + i), a);
        }
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
        static abstract int ElementBytes { get; }
        static abstract Vector256<float> Load(byte* row, int i);
        static abstract float LoadScalar(byte* row, int i);
    }

    private readonly struct F32Rows : IWideLoad
    {
        public static int ElementBytes => 4;
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<float> Load16(byte* row, int i) => Vector512.Load((float*)row + i);
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<float> Load(byte* row, int i) => Avx.LoadVector256((float*)row + i);
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static float LoadScalar(byte* row, int i) => ((float*)row)[i];
    }

    /// <summary>bf16 is the top half of an fp32: zero-extend 8 lanes to 32 bits and shift left by 16.</summary>
    private readonly struct Bf16Rows : IWideLoad
    {
        public static int ElementBytes => 2;
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<float> Load16(byte* row, int i) =>
            Avx512F.ShiftLeftLogical(Avx512F.ConvertToVector512Int32(Vector256.Load((ushort*)row + i)), 16).AsSingle();
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<float> Load(byte* row, int i) =>
            Avx2.ShiftLeftLogical(Avx2.ConvertToVector256Int32((ushort*)row + i), 16).AsSingle();
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static float LoadScalar(byte* row, int i) => DTypeConvert.BFloat16ToSingle(((ushort*)row)[i]);
    }

    /// <summary>fp16 rows of a tensor without infinities or NaNs: the cheaper exact widening (DTypeConvert.FiniteHalfToSingle8).</summary>
    private readonly struct FiniteF16Rows : IRowLoad
    {
        public static int ElementBytes => 2;
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<float> Load(byte* row, int i) => DTypeConvert.FiniteHalfToSingle8((ushort*)row + i);

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static float LoadScalar(byte* row, int i) => (float)((Half*)row)[i];
    }

    /// <summary>fp16 rows widened in registers (DTypeConvert.HalfToSingle8: exact, including subnormals, inf, NaN).</summary>
    private readonly struct F16Rows : IWideLoad
    {
        public static int ElementBytes => 2;
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<float> Load16(byte* row, int i) =>
            Vector512.Create(DTypeConvert.HalfToSingle8((ushort*)row + i), DTypeConvert.HalfToSingle8((ushort*)row + i + 8));
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<float> Load(byte* row, int i) => DTypeConvert.HalfToSingle8((ushort*)row + i);

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static float LoadScalar(byte* row, int i) => (float)((Half*)row)[i];
    }
}
