// y[T, N] = x[T, K] . W[N, K]^T (+ bias): weights in their stored dtype, read once per call for every x row.
// This file is the dispatcher: the entry points, x's preparation, and Job.Dots choosing one strategy per weight. The
// strategies live one per file: MatMul.Ggml.cs (GGML blocks, in integers), MatMul.Avx512.cs (the wide dense path),
// MatMul.Decode.cs (one x row streaming the weights), MatMul.Blocked.cs (register tiles over converted panels),
// MatMul.Converted.cs (4 rows at a time: no AVX2, tiny K, other stored forms); MatMul.RowLoads.cs holds the row
// loaders and the one dot order they all share.
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
/// Batch invariance: every dot product, in every micro-kernel shape and on both the AVX2 and the AVX-512 path, is
/// summed the same way (16 columns per step as two 8-lane halves folded, one 8-column step, a fixed horizontal sum,
/// then the scalar tail: DotTile's summary), so a row's result depends neither on which other rows share the call
/// nor on the instruction path.
/// </summary>
internal static unsafe partial class MatMul
{
    /// <summary>The fewest rows of W a claim takes (<see cref="RowClaims"/>): enough work to amortize starting its stream.</summary>
    internal const int RowsPerTask = 64;

    /// <summary>
    /// A claim takes 1 / (<see cref="TasksPerCore"/> x cores) of what is left of its weight, so the first claims are the
    /// long streams of a static split into two tasks per core (measured against 64-row tasks on the 2-core AMD EPYC with
    /// AVX-512, 100M model: decode step Q8_0 3.9-4.0 -> 2.9-3.7 ms, F16 6.1-6.3 -> 5.3-5.4, Q4_K_M 3.3 -> 2.3-2.4;
    /// 16 rows in a step's order Q8_0 (VNNI) 7.34 -> 6.58 ms, Q4_K_M 9.01 -> 8.04: every task starts a stream whose first
    /// lines wait on memory, and batched a tile pipeline that fills and drains).
    /// </summary>
    private const int TasksPerCore = 2;

    /// <summary>
    /// The row ranges of one call's weights, handed out front to back to whichever core asks next (guided
    /// self-scheduling): each claim a share of what is left of its weight (<see cref="TasksPerCore"/>), whole pairs of
    /// rows for decode and whole chunks of 8 for batches, at least <see cref="RowsPerTask"/>. Long ranges first and
    /// shorter ones as a weight runs out, so the cores finish a call together even when one runs slower than the other
    /// (a static split into two tasks per core left the calling thread waiting 6 % of the parallel loops' time in a
    /// 16-row AVX2 F16 decode, and more when the VM slowed one core). Which rows a claim holds changes no result (each
    /// row is summed alone). Zen 5 host, the two schedules alternated step by step in one process (medians of 100 each,
    /// 16 sequences at context 96): F16 AVX2 27.2 -> 27.1 ms and 37.8 -> 34.4 (a noisy period), AVX-512 21.1 -> 20.4
    /// and 23.5 -> 22.0; Q8_0 AVX2 22.4 -> 22.5 and 27.5 -> 26.5, VNNI 17.6 -> 16.4 and 15.9 -> 15.2; Q4_K_M AVX2
    /// 22.0 -> 19.7, VNNI 17.7 -> 16.2; 1, 4 and 64 sequences within +-3 %.
    /// </summary>
    internal sealed class RowClaims(int[] rows, int quantum, int cores)
    {
        private readonly object _gate = new();
        private int _job, _next;

        /// <summary>The next range: rows [start, end) of weight <paramref name="job"/>; false once every row is handed out.</summary>
        public bool Next(out int job, out int start, out int end)
        {
            lock (_gate)
            {
                while (_job < rows.Length && _next >= rows[_job]) { _job++; _next = 0; }
                if (_job == rows.Length) { job = start = end = 0; return false; }
                int left = rows[_job] - _next;
                int share = (left / (TasksPerCore * cores) + quantum - 1) / quantum * quantum;
                int size = Math.Min(left, Math.Max(RowsPerTask, share));
                if (left - size < RowsPerTask / 2) size = left; // no sliver left for a claim of its own
                job = _job; start = _next; end = _next + size;
                _next = end;
                return true;
            }
        }
    }

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
    /// weight's row ranges are claimed in one parallel loop, so the cores meet once instead of once per weight.
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
        bool anyPaired = false, anyFields = false;
        foreach (var p in products)
        {
            anyPaired |= PairedHalves(p.Weight, k);
            anyFields |= WideHalfFields(p.Weight);
        }
        float[]? paired = anyPaired ? ArrayPool<float>.Shared.Rent(rows * k) : null;
        // The AVX-512 kernels read finite F16 as fields where denormal operands cost nothing: against x times 2^112.
        float[]? scaled = anyFields ? ArrayPool<float>.Shared.Rent(rows * k) : null;
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
        fixed (float* xp = x)
        fixed (float* pp = paired)
        fixed (float* sp = scaled)
        {
            // x times 2^112 (paired for the AVX2 kernels) in one pass that also checks every value allows it; where one
            // does not (|x| >= PrescaleLimit or NaN), the paired copy is redone unscaled and the wide kernels read x.
            const float Scale = DTypeConvert.HalfFieldsScale;
            bool prescaled = false;
            if (anyPaired) prescaled = CopyScaled(xp, pp, rows, k, paired: true, Scale);
            else if (anyFields) prescaled = CopyScaled(xp, sp, rows, k, paired: false, Scale);
            if (anyPaired && !prescaled) CopyScaled(xp, pp, rows, k, paired: true, 1f);
            if (anyPaired && anyFields && prescaled) CopyScaled(xp, sp, rows, k, paired: false, Scale);
            for (int i = 0; i < products.Length; i++)
            {
                var w = products[i].Weight;
                bool pairedHere = PairedHalves(w, k);
                var activations = w.DType.IsBlockQuantized() ? quantized[Q8Rows.FormatFor(w.DType)] : null;
                // The AVX2 kernels widen F16 through fp32 fields that a subnormal half would make denormal: they read a
                // flushed copy plus fix-ups. The AVX-512 ones convert exactly in integers and read the data as stored.
                var subnormals = WideDense(w) || !F16Subnormals.Needed ? null : F16Subnormals.For(w);
                bool fieldsHere = WideHalfFields(w) && prescaled;
                jobs[i] = new Job(fieldsHere ? sp : xp, products[i].Output, rows, w.Rows, k, w, subnormals != null ? (byte*)subnormals.Data : w.Data, subnormals,
                    products[i].Bias?.ToFloatArray(), pairedHere ? pp : null, pairedHere && prescaled, activations, fieldsHere);
            }
            // Every core takes row ranges until none is left (RowClaims).
            var claims = new RowClaims(Array.ConvertAll(jobs, j => j.N), rows == 1 ? 2 : 8, Environment.ProcessorCount);
            WorkerTeam.For(Environment.ProcessorCount, _ =>
            {
                while (claims.Next(out int i, out int start, out int end)) jobs[i].Run(start, end);
            });
        }
        if (paired != null) ArrayPool<float>.Shared.Return(paired);
        if (scaled != null) ArrayPool<float>.Shared.Return(scaled);
        GC.KeepAlive(keepAlive);
    }

    private static bool PairedHalves(WeightTensor w, int k) => Vectorized && !WideDense(w) && w.DType == TensorDType.F16 && k >= 16 && w.AllFinite;

    /// <summary>Below this magnitude an x value times 2^112 stays finite (fp32 tops out near 2^128).</summary>
    private const float PrescaleLimit = 32768f;

    /// <summary>
    /// The <paramref name="rows"/> x <paramref name="k"/> values of x times <paramref name="scale"/> into
    /// <paramref name="destination"/>, one pass; <paramref name="paired"/>: each row in the column order of
    /// FiniteHalfFields16 for every whole 16-block (the rest in place). Returns whether every value is below
    /// <see cref="PrescaleLimit"/> in magnitude (false for a NaN), i.e. whether a copy times 2^112 is finite and exact.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static bool CopyScaled(float* x, float* destination, int rows, int k, bool paired, float scale)
    {
        var s = Vector256.Create(scale);
        var limit = Vector256.Create(PrescaleLimit);
        var over = Vector256<float>.Zero; // lanes that saw |x| >= limit or a NaN (not-less-than is true for unordered)
        bool scalarOver = false;
        for (long t = 0; t < rows; t++)
        {
            float* from = x + t * k, to = destination + t * k;
            int i = 0;
            if (paired)
                for (; i + 16 <= k; i += 16)
                {
                    var a = Avx.LoadVector256(from + i);
                    var b = Avx.LoadVector256(from + i + 8);
                    over = Avx.Or(over, Avx.Or(Avx.CompareNotLessThan(Vector256.Abs(a), limit), Avx.CompareNotLessThan(Vector256.Abs(b), limit)));
                    Avx.Store(to + i, Avx.Permute2x128(a, b, 0x20) * s);
                    Avx.Store(to + i + 8, Avx.Permute2x128(a, b, 0x31) * s);
                }
            else
                for (; i + 8 <= k; i += 8)
                {
                    var a = Avx.LoadVector256(from + i);
                    over = Avx.Or(over, Avx.CompareNotLessThan(Vector256.Abs(a), limit));
                    Avx.Store(to + i, a * s);
                }
            for (; i < k; i++)
            {
                scalarOver |= !(Math.Abs(from[i]) < PrescaleLimit);
                to[i] = from[i] * scale;
            }
        }
        return !scalarOver && Avx.MoveMask(over) == 0;
    }

    /// <summary>
    /// One weight's rows against x. <paramref name="data"/> is what the kernels read: the weight's bytes, or for F16 with
    /// subnormal halves their flushed copy, whose fix-ups (<paramref name="subnormals"/>) are added to each finished dot.
    /// <paramref name="halfFields"/>: the wide kernels read F16 as fields and x is the call's x times 2^112.
    /// The strategies' methods are parts of this struct in their own files (the parameters are in scope in every part).
    /// </summary>
    private readonly partial struct Job(float* x, float* y, int rows, int n, int k, WeightTensor w, byte* data, F16Subnormals? subnormals, float[]? bias,
        float* paired, bool prescaled, GgmlDot.Activation[]? activations, bool halfFields = false)
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
                WideRows(w, data, x, rows, k, n, start, end, y, bias, halfFields);
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
    }
}
