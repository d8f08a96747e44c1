// One named weight: dtype, row-major shape (PyTorch order, [out, in] for linear layers) and its bytes in native memory.
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Kernels.Runtime.Numerics;

namespace Kernels.Runtime.Models;

internal sealed unsafe class WeightTensor
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
