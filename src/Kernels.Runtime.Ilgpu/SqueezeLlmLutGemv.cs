// ILGPU kernel: SqueezeLLM LUT GEMV for 1..8 activation rows, y[M, N] = x[M, K] . W[N, K]^T with W = LUT[codes] + outliers.
using ILGPU;
using ILGPU.Runtime;
using Kernels.Runtime.Quantization.SqueezeLlm;

namespace Kernels.Runtime.Backends.Ilgpu;

/// <summary>
/// Math: y[m, n] = sum_k table[n, code(n, k)] x[m, k] + sum_{e in CSR row n} delta[e] x[m, cols[e]], fp32 accumulate.
/// Pointers: codes I32 [N, WordsPerRow] (layout in <see cref="SqueezeLlmCodes"/>), table fp32 [N, 2^bits],
/// rowStart [N + 1], cols/delta [nnz] (<see cref="SqueezeLlmLinear"/>: delta = outlier - table[code]), x [M, K],
/// y [M, N]. Mapping: one warp per output row, <see cref="RowsPerGroup"/> warps per group. Lanes take consecutive
/// groups of 8 codes (lane l of step t: codes 8(32t + l) .. + 7, the `bits` bytes at byte bits(32t + l) of the row), so
/// a warp's code loads are one contiguous run per step and its x loads walk x in order (x[m, 8g + i] for lane g: the
/// eight loads of a step cover 256 consecutive floats, cached in L1 for the group's other warps). M (1..8) and the
/// code width (3 or 4) are specialized at compile time (SpecializedValue), so the M accumulators are registers and
/// the decoding has constant shifts. The row's table sits in shared memory, 16 consecutive floats per warp: 16
/// distinct banks, so a warp's lookups never conflict (equal codes broadcast). Then the row's outliers spread over
/// the lanes, then a shuffle-down reduction per x row.
/// History: the first version (verified on an H200, 2026-11-26, ~45x off its roofline) gave lane l the 32-code block
/// l, so lanes read x 128 bytes apart, with the M accumulators in local memory and the width decided at run time.
/// The tests run it on ILGPU's CPU accelerator against LutMatMul; its GPU timing is `kernels-bench squeeze-gpu`.
/// </summary>
internal sealed class SqueezeLlmLutGemv : IDisposable
{
    public const int MaxRows = 8;
    /// <summary>Output rows (warps) per group, sharing one group's shared-memory tables.</summary>
    public const int RowsPerGroup = 4;
    private const int TableStride = 16;

    public readonly struct Shape(int n, int k, int bits, int wordsPerRow, int rows)
    {
        public readonly int N = n, K = k, Bits = bits, WordsPerRow = wordsPerRow, Rows = rows;
    }

    private readonly Accelerator _accelerator;
    private readonly SqueezeLlmLinear _weight;
    private readonly MemoryBuffer1D<int, Stride1D.Dense> _codes, _rowStart, _cols;
    private readonly MemoryBuffer1D<float, Stride1D.Dense> _table, _delta;
    private readonly Action<KernelConfig, ArrayView<int>, ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<float>, ArrayView<float>, ArrayView<float>, Shape,
        SpecializedValue<int>, SpecializedValue<int>> _kernel;

    /// <summary>Uploads <paramref name="weight"/> to <paramref name="accelerator"/> and compiles the kernel.</summary>
    public unsafe SqueezeLlmLutGemv(Accelerator accelerator, SqueezeLlmLinear weight)
    {
        _accelerator = accelerator;
        _weight = weight;
        var codes = new ReadOnlySpan<int>(weight.Codes.Data, checked((int)weight.Codes.ElementCount)).ToArray();
        _codes = accelerator.Allocate1D(codes);
        _table = accelerator.Allocate1D(weight.Table);
        _rowStart = accelerator.Allocate1D(weight.RowStart);
        // Zero-length buffers are not allowed everywhere: pad the (possibly empty) CSR arrays by one unused entry.
        _cols = accelerator.Allocate1D(weight.Cols.Append(0).ToArray());
        _delta = accelerator.Allocate1D(weight.Delta.Append(0f).ToArray());
        _kernel = accelerator.LoadStreamKernel<ArrayView<int>, ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<float>, ArrayView<float>, ArrayView<float>, Shape,
            SpecializedValue<int>, SpecializedValue<int>>(Kernel);
    }

    /// <summary>y[rows, N] = x[rows, K] . W^T for 1..8 rows.</summary>
    public void Multiply(ReadOnlySpan<float> x, int rows, Span<float> y)
    {
        int n = _weight.OutFeatures, k = _weight.InFeatures;
        if (rows is < 1 or > MaxRows) throw new ArgumentOutOfRangeException(nameof(rows), rows, $"{_weight.Name}: the LUT GEMV takes 1..{MaxRows} rows");
        if (x.Length < rows * k) throw new ArgumentException($"x holds {x.Length} values, {rows}x{k} needed for {_weight.Name}");
        if (y.Length < rows * n) throw new ArgumentException($"y holds {y.Length} values, {rows}x{n} needed for {_weight.Name}");
        using var xs = _accelerator.Allocate1D(x[..(rows * k)].ToArray());
        using var ys = _accelerator.Allocate1D<float>(rows * n);
        Launch(xs.View, rows, ys.View);
        _accelerator.Synchronize();
        ys.GetAsArray1D().AsSpan().CopyTo(y);
    }

    /// <summary>
    /// y[rows, N] = x[rows, K] . W^T with x and y already on the accelerator: one launch on its default stream, no
    /// synchronization and no allocation (what a backend or a benchmark calls in a loop).
    /// </summary>
    public void Launch(ArrayView<float> x, int rows, ArrayView<float> y)
    {
        int n = _weight.OutFeatures, k = _weight.InFeatures;
        if (rows is < 1 or > MaxRows) throw new ArgumentOutOfRangeException(nameof(rows), rows, $"{_weight.Name}: the LUT GEMV takes 1..{MaxRows} rows");
        if (x.Length < (long)rows * k) throw new ArgumentException($"x holds {x.Length} values, {rows}x{k} needed for {_weight.Name}");
        if (y.Length < (long)rows * n) throw new ArgumentException($"y holds {y.Length} values, {rows}x{n} needed for {_weight.Name}");
        int warp = _accelerator.WarpSize;
        var config = new KernelConfig((n + RowsPerGroup - 1) / RowsPerGroup, warp * RowsPerGroup);
        var shape = new Shape(n, k, _weight.Bits, SqueezeLlmCodes.WordsPerRow(k, _weight.Bits), rows);
        _kernel(config, _codes.View, _table.View, _rowStart.View, _cols.View, _delta.View, x, y, shape,
            SpecializedValue.New(rows), SpecializedValue.New(_weight.Bits));
    }

    internal static void Kernel(ArrayView<int> codes, ArrayView<float> table, ArrayView<int> rowStart, ArrayView<int> cols,
        ArrayView<float> delta, ArrayView<float> x, ArrayView<float> y, Shape s, SpecializedValue<int> rowCount, SpecializedValue<int> codeBits)
    {
        int rows = rowCount.Value, bits = codeBits.Value;
        var lut = SharedMemory.Allocate<float>(RowsPerGroup * TableStride);
        int lane = Warp.LaneIdx, width = Warp.WarpSize, warp = Group.IdxX / width;
        int row = Grid.IdxX * RowsPerGroup + warp;
        int size = 1 << bits;
        if (row < s.N)
            for (int i = lane; i < size; i += width) lut[warp * TableStride + i] = table[row * size + i];
        Group.Barrier();
        if (row >= s.N) return;

        var acc = new Rows8();
        long rowBase = (long)row * s.WordsPerRow;
        int lutBase = warp * TableStride, groups = (s.K + 7) / 8;
        ulong mask = (ulong)(size - 1);
        for (int g = lane; g < groups; g += width)
        {
            // The group's 8 x bits bits: 4-bit, word g; 3-bit, 24 bits from bit 24g, crossing into the next word when
            // they start past bit 8 of a word (never past the row's last word: a 32-code block ends on a word boundary).
            int bit = g * 8 * bits, shift = bit & 31;
            long word = rowBase + (bit >> 5);
            ulong window = (uint)codes[word];
            if (shift + 8 * bits > 32) window |= (ulong)(uint)codes[word + 1] << 32;
            window >>= shift;
            int k0 = 8 * g;
            for (int i = 0; i < 8; i++)
            {
                int k = k0 + i;
                if (k >= s.K) break;
                acc.Add(rows, lut[lutBase + (int)((window >> (bits * i)) & mask)], x, s.K, k);
            }
        }
        for (int e = rowStart[row] + lane; e < rowStart[row + 1]; e += width) acc.Add(rows, delta[e], x, s.K, cols[e]);
        Store(y, s.N, row, 0, lane, width, acc.A0);
        if (rows > 1) Store(y, s.N, row, 1, lane, width, acc.A1);
        if (rows > 2) Store(y, s.N, row, 2, lane, width, acc.A2);
        if (rows > 3) Store(y, s.N, row, 3, lane, width, acc.A3);
        if (rows > 4) Store(y, s.N, row, 4, lane, width, acc.A4);
        if (rows > 5) Store(y, s.N, row, 5, lane, width, acc.A5);
        if (rows > 6) Store(y, s.N, row, 6, lane, width, acc.A6);
        if (rows > 7) Store(y, s.N, row, 7, lane, width, acc.A7);
    }

    /// <summary>
    /// The accumulators of up to 8 activation rows, as named fields (registers after inlining; an array would be local
    /// memory): Add does a_m += w * x[m, k] for m &lt; rows, for the dense codes and the outliers alike.
    /// </summary>
    private struct Rows8
    {
        public float A0, A1, A2, A3, A4, A5, A6, A7;

        [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveInlining)]
        public void Add(int rows, float w, ArrayView<float> x, int k, int col)
        {
            A0 += w * x[col];
            if (rows > 1) A1 += w * x[k + col];
            if (rows > 2) A2 += w * x[2 * k + col];
            if (rows > 3) A3 += w * x[3 * k + col];
            if (rows > 4) A4 += w * x[4 * k + col];
            if (rows > 5) A5 += w * x[5 * k + col];
            if (rows > 6) A6 += w * x[6 * k + col];
            if (rows > 7) A7 += w * x[7 * k + col];
        }
    }

    /// <summary>The warp's sum of <paramref name="v"/> (a shuffle-down tree), written by lane 0 to y[m, row].</summary>
    private static void Store(ArrayView<float> y, int n, int row, int m, int lane, int width, float v)
    {
        for (int offset = width / 2; offset > 0; offset /= 2) v += Warp.ShuffleDown(v, offset);
        if (lane == 0) y[(long)m * n + row] = v;
    }

    public void Dispose()
    {
        _codes.Dispose();
        _table.Dispose();
        _rowStart.Dispose();
        _cols.Dispose();
        _delta.Dispose();
    }
}
