// One named weight: dtype, row-major shape (PyTorch order, [out, in] for linear layers) and its bytes in native memory.
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using Kernels.Runtime.Numerics;

namespace Kernels.Runtime.Models;

public sealed unsafe class WeightTensor
{
    public string Name { get; }
    public TensorDType DType { get; }
    /// <summary>Row-major shape, slowest dimension first.</summary>
    public long[] Shape { get; }
    /// <summary>Start of the data; valid while the owning <see cref="ModelWeights"/> is alive.</summary>
    public byte* Data { get; }
    public long ElementCount { get; }
    public long ByteLength => DType.ByteCount(ElementCount);

    public WeightTensor(string name, TensorDType dtype, long[] shape, byte* data)
    {
        Name = name;
        DType = dtype;
        Shape = shape;
        Data = data;
        long n = 1;
        foreach (long d in shape) n = checked(n * d); // readers check shapes; a wrap here would silently shrink the tensor
        ElementCount = n;
    }

    public int Rows => Shape.Length == 1 ? 1 : checked((int)(ElementCount / Shape[^1]));
    public int Columns => checked((int)Shape[^1]);

    public string ShapeText => "[" + string.Join(", ", Shape) + "]";

    private int _finite; // 0 unknown, 1 every element finite, 2 some inf or NaN

    /// <summary>
    /// For F16 tensors: whether no element is an infinity or NaN (no exponent-31 half), checked once on first use; it
    /// lets the F16 matmul use a cheaper exact widening. Always false for other dtypes (nothing uses it there).
    /// </summary>
    public bool AllFinite
    {
        get
        {
            if (_finite == 0)
            {
                // Only F16 is checked (the only dtype with a finite-only fast path); others report false.
                bool finite = DType == TensorDType.F16 && ElementCount <= int.MaxValue
                              && DTypeConvert.AllFiniteHalves(new ReadOnlySpan<ushort>(Data, (int)ElementCount));
                _finite = finite ? 1 : 2;
            }
            return _finite == 1;
        }
    }

    private F16Subnormals? _subnormals;
    private bool _subnormalsScanned;

    /// <summary>
    /// For F16 matrices whose data holds subnormal halves (|w| &lt; 2^-14, about 0.2 % of the weights of a typical model):
    /// a copy with those flushed to zero and the flushed values as exact per-row fix-ups; null when there are none or
    /// the tensor is not F16. Found on first use. The CPU kernels widen halves to fp32 by placing their bits (no F16C
    /// in .NET), which turns a subnormal half into a denormal fp32 operand: an Intel core takes a ~100-cycle microcode
    /// assist on every multiply with one (measured: an F16 matmul of 64 rows 4x slower with 0.17 % such weights).
    /// </summary>
    public F16Subnormals? Subnormals
    {
        get
        {
            if (!Volatile.Read(ref _subnormalsScanned))
                lock (this)
                    if (!_subnormalsScanned)
                    {
                        _subnormals = DType == TensorDType.F16 && Shape.Length == 2 ? F16Subnormals.Split(this) : null;
                        Volatile.Write(ref _subnormalsScanned, true);
                    }
            return _subnormals;
        }
    }

    /// <summary>Converts row <paramref name="row"/> of a 2-D view [Rows, Columns] to fp32.</summary>
    public void ReadRow(int row, Span<float> destination)
    {
        int cols = Columns;
        if ((uint)row >= (uint)Rows) throw new ArgumentOutOfRangeException(nameof(row), $"{Name}: row {row} of {Rows}");
        DTypeConvert.ToSingle(DType, Data + DType.ByteCount((long)row * cols), destination[..cols]);
    }

    /// <summary>The whole tensor as fp32 (copies; for small tensors such as norms and biases).</summary>
    public float[] ToFloatArray()
    {
        var result = new float[ElementCount];
        DTypeConvert.ToSingle(DType, Data, result);
        return result;
    }

    public ReadOnlySpan<float> AsF32Span()
    {
        if (DType != TensorDType.F32) throw new InvalidOperationException($"{Name} is {DType.Name()}, not F32");
        return new ReadOnlySpan<float>(Data, checked((int)ElementCount));
    }

    public override string ToString() => $"{Name} {DType.Name()} {ShapeText}";
}

/// <summary>
/// An F16 matrix with its subnormal halves moved out: <see cref="Data"/> is the matrix with them flushed to +0, and row
/// r's were at columns Columns[RowStart[r]..RowStart[r + 1]] with fp32 values Values[...] (exact), in column order.
/// A dot product over Data plus the fix-ups of its row, in that order, is the product with the original row.
/// </summary>
public sealed unsafe class F16Subnormals
{
    private readonly ushort[] _flushed;
    public ushort* Data { get; }
    public int[] RowStart { get; }
    public int[] Columns { get; }
    public float[] Values { get; }

    private F16Subnormals(ushort[] flushed, int[] rowStart, int[] columns, float[] values)
    {
        _flushed = flushed;
        Data = (ushort*)System.Runtime.CompilerServices.Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(flushed));
        RowStart = rowStart;
        Columns = columns;
        Values = values;
    }

    /// <summary>Whether a half is subnormal: exponent 0, mantissa not.</summary>
    private static bool IsSubnormal(ushort h) => (h & 0x7C00) == 0 && (h & 0x3FF) != 0;

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static F16Subnormals? Split(WeightTensor w)
    {
        long n = w.ElementCount;
        if (n > Array.MaxLength) return null;
        ushort* h = (ushort*)w.Data;
        int rows = w.Rows, cols = w.Columns;
        var rowStart = new int[rows + 1];
        var columns = new List<int>();
        var values = new List<float>();
        for (int r = 0; r < rows; r++)
        {
            ushort* row = h + (long)r * cols;
            int c = 0;
            if (Vector256.IsHardwareAccelerated)
            {
                // 16 halves at a time: a lane is subnormal when (h & 0x7FFF) - 1 < 0x3FF.
                var magnitude = Vector256.Create((ushort)0x7FFF);
                for (; c + 16 <= cols; c += 16)
                {
                    var m = Vector256.Load(row + c) & magnitude;
                    if (Vector256.LessThanAny(m - Vector256<ushort>.One, Vector256.Create((ushort)0x3FF)))
                        for (int i = c; i < c + 16; i++)
                            if (IsSubnormal(row[i])) { columns.Add(i); values.Add((float)BitConverter.UInt16BitsToHalf(row[i])); }
                }
            }
            for (; c < cols; c++)
                if (IsSubnormal(row[c])) { columns.Add(c); values.Add((float)BitConverter.UInt16BitsToHalf(row[c])); }
            rowStart[r + 1] = columns.Count;
        }
        if (columns.Count == 0) return null;
        var flushed = GC.AllocateUninitializedArray<ushort>((int)n, pinned: true);
        new ReadOnlySpan<ushort>(h, (int)n).CopyTo(flushed);
        for (int r = 0; r < rows; r++)
            for (int p = rowStart[r]; p < rowStart[r + 1]; p++) flushed[(long)r * cols + columns[p]] = 0;
        return new F16Subnormals(flushed, rowStart, columns.ToArray(), values.ToArray());
    }

    /// <summary>y[t, j] += the fix-ups of rows [start, end) against x row t, for every t (x rows k apart, y rows n apart).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public void Apply(int start, int end, float* x, int rows, int k, float* y, int n)
    {
        for (int j = start; j < end; j++)
        {
            int from = RowStart[j], to = RowStart[j + 1];
            if (from == to) continue;
            for (int t = 0; t < rows; t++)
            {
                float* xr = x + (long)t * k;
                float s = y[(long)t * n + j];
                for (int p = from; p < to; p++) s = MathF.FusedMultiplyAdd(Values[p], xr[Columns[p]], s);
                y[(long)t * n + j] = s;
            }
        }
    }
}
