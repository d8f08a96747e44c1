// F16 matrices with their subnormal halves moved out of the data the AVX2 kernels read (a flushed copy plus exact
// per-row fix-ups), on CPUs where a denormal multiply operand costs a microcode assist.
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using Kernels.Runtime.Models;
using Kernels.Runtime.Numerics;

namespace Kernels.Runtime.Backends.Cpu;

/// <summary>
/// An F16 matrix with its subnormal halves moved out: <see cref="Data"/> is the matrix with them flushed to +0, and row
/// r's were at columns Columns[RowStart[r]..RowStart[r + 1]] with fp32 values Values[...] (exact), in column order.
/// A dot product over Data plus the fix-ups of its row, in that order, is the product with the original row.
/// </summary>
internal sealed unsafe class F16Subnormals
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

    private static readonly ConditionalWeakTable<WeightTensor, Holder> Cache = new();

    private sealed class Holder(F16Subnormals? value)
    {
        public F16Subnormals? Value { get; } = value;
    }

    /// <summary>
    /// Whether to split on this CPU: Intel cores take a microcode assist on a multiply with a denormal operand
    /// (measured on this project's Xeon: an FMA loop ~10x slower per denormal, an F16 matmul of 64 rows 4x slower with
    /// 0.17 % subnormal halves). Elsewhere (AMD) the AVX2 kernels read F16 data as stored, as they did when the 2-core
    /// EPYC measurements of BENCHMARKS.md were made; whether Zen pays for denormal operands was not measured here.
    /// </summary>
    public static bool Needed { get; } = System.Runtime.Intrinsics.X86.X86Base.IsSupported && Vendor() == "GenuineIntel";

    private static string Vendor()
    {
        var (_, ebx, ecx, edx) = System.Runtime.Intrinsics.X86.X86Base.CpuId(0, 0);
        Span<int> v = [ebx, edx, ecx];
        return System.Text.Encoding.ASCII.GetString(MemoryMarshal.AsBytes(v));
    }

    /// <summary>
    /// The split of an F16 matrix whose data holds subnormal halves (|w| &lt; 2^-14, about 0.2 % of the weights of a
    /// typical model), found on first use and kept while the tensor lives; null when there are none or the tensor is not
    /// a 2-D F16 one. The AVX2 kernels widen halves by placing their bits into fp32 fields, which turns a subnormal half
    /// into a denormal fp32 operand.
    /// </summary>
    public static F16Subnormals? For(WeightTensor w) =>
        w.DType == TensorDType.F16 && w.Shape.Length == 2 ? Cache.GetValue(w, t => new Holder(Split(t))).Value : null;

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
