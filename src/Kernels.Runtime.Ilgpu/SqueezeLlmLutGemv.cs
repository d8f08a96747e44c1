// ILGPU kernel: SqueezeLLM LUT GEMV for 1..8 activation rows, y[M, N] = x[M, K] . W[N, K]^T with W = LUT[codes] + outliers.
using ILGPU;
using ILGPU.Runtime;
using Kernels.Runtime.Quantization.SqueezeLlm;

namespace Kernels.Runtime.Backends.Ilgpu;

/// <summary>
/// Math: y[m, n] = sum_k table[n, code(n, k)] x[m, k] + sum_{e in CSR row n} delta[e] x[m, cols[e]], fp32 accumulate.
/// Pointers: codes I32 [N, WordsPerRow] (layout in <see cref="SqueezeLlmCodes"/>), table fp32 [N, 2^bits],
/// rowStart [N + 1], cols/delta [nnz] (<see cref="SqueezeLlmLinear"/>: delta = outlier - table[code]), x [M, K],
/// y [M, N]. Mapping: one warp per output row, <see cref="RowsPerGroup"/> warps per group; lane l takes the 32-code
/// blocks l, l + warp, ... of its row, so the row's codes are read once per launch whatever M (M accumulators per
/// lane in local memory), then the row's outliers spread over the lanes, then a shuffle-down reduction per x row.
/// The row's table sits in shared memory, 16 consecutive floats per warp: 16 distinct banks, so a warp's lookups
/// never conflict (equal codes broadcast). Preconditions: 1 &lt;= M &lt;= 8; bits 3 or 4. Not yet done: x is read from
/// global memory with a 32-float stride across lanes (L1-cached, not staged in shared memory).
/// Verified on an H200 (kernels-bench squeeze-gpu, 18 of 18 checks, 2026-11-26) but ~45x off its roofline there; the
/// tests run it on ILGPU's CPU accelerator against LutMatMul.
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
    private readonly Action<KernelConfig, ArrayView<int>, ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<float>, ArrayView<float>, ArrayView<float>, Shape> _kernel;

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
        _kernel = accelerator.LoadStreamKernel<ArrayView<int>, ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<float>, ArrayView<float>, ArrayView<float>, Shape>(Kernel);
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
        _kernel(config, _codes.View, _table.View, _rowStart.View, _cols.View, _delta.View, x, y, shape);
    }

    private static void Kernel(ArrayView<int> codes, ArrayView<float> table, ArrayView<int> rowStart, ArrayView<int> cols,
        ArrayView<float> delta, ArrayView<float> x, ArrayView<float> y, Shape s)
    {
        var lut = SharedMemory.Allocate<float>(RowsPerGroup * TableStride);
        int lane = Warp.LaneIdx, width = Warp.WarpSize, warp = Group.IdxX / width;
        int row = Grid.IdxX * RowsPerGroup + warp;
        int size = 1 << s.Bits;
        if (row < s.N)
            for (int i = lane; i < size; i += width) lut[warp * TableStride + i] = table[row * size + i];
        Group.Barrier();
        if (row >= s.N) return;

        var acc = LocalMemory.Allocate<float>(MaxRows);
        for (int m = 0; m < MaxRows; m++) acc[m] = 0f;
        int blocks = (s.K + SqueezeLlmCodes.BlockCodes - 1) / SqueezeLlmCodes.BlockCodes;
        long rowBase = (long)row * s.WordsPerRow;
        uint mask = (uint)(size - 1);
        for (int b = lane; b < blocks; b += width)
        {
            long at = rowBase + (long)b * s.Bits;
            uint w0 = (uint)codes[at], w1 = (uint)codes[at + 1], w2 = (uint)codes[at + 2], w3 = s.Bits == 4 ? (uint)codes[at + 3] : 0u;
            int first = b * SqueezeLlmCodes.BlockCodes;
            int count = Math.Min(SqueezeLlmCodes.BlockCodes, s.K - first);
            for (int i = 0; i < count; i++)
            {
                int bit = i * s.Bits, word = bit >> 5, shift = bit & 31;
                uint lo = word == 0 ? w0 : word == 1 ? w1 : word == 2 ? w2 : w3;
                uint code = lo >> shift;
                if (shift + s.Bits > 32) code |= (word == 0 ? w1 : w2) << (32 - shift); // a 3-bit code straddling words
                float weight = lut[warp * TableStride + (int)(code & mask)];
                for (int m = 0; m < s.Rows; m++) acc[m] += weight * x[m * s.K + first + i];
            }
        }
        for (int e = rowStart[row] + lane; e < rowStart[row + 1]; e += width)
            for (int m = 0; m < s.Rows; m++) acc[m] += delta[e] * x[m * s.K + cols[e]];
        for (int m = 0; m < s.Rows; m++)
        {
            float v = acc[m];
            for (int offset = width / 2; offset > 0; offset /= 2) v += Warp.ShuffleDown(v, offset);
            if (lane == 0) y[m * s.N + row] = v;
        }
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
