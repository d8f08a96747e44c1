// A SqueezeLLM dense-and-sparse linear layer: packed 3/4-bit codes into a per-row fp16 lookup table, plus CSR outliers.
using Kernels.Runtime.Models;
using Kernels.Runtime.Numerics;

namespace Kernels.Runtime.Quantization.SqueezeLlm;

/// <summary>
/// W[n, k] = outlier value where row n's CSR holds column k, else LookupTable[n, code(n, k)]. Stored tensors
/// (name + suffix):
///   qweight        I32 [N, WordsPerRow(K, bits)]  codes, layout in <see cref="SqueezeLlmCodes"/>
///   lookup_table   F16 [N, 2^bits]                each row's centroids, ascending
///   outlier_rows   I32 [N + 1]                    CSR row pointers (0 first, nnz last, non-decreasing)
///   outlier_cols   I32 [nnz]                      column of each outlier, strictly increasing within a row
///   outlier_values F32 [nnz]                      the original weight (not a correction: see <see cref="Delta"/>)
/// </summary>
internal sealed unsafe class SqueezeLlmLinear : LinearWeight
{
    public const string CodesSuffix = "qweight", TableSuffix = "lookup_table";
    public const string OutlierRowsSuffix = "outlier_rows", OutlierColsSuffix = "outlier_cols", OutlierValuesSuffix = "outlier_values";

    public int Bits { get; }
    public WeightTensor Codes { get; }
    public WeightTensor LookupTable { get; }
    public WeightTensor OutlierRows { get; }
    public WeightTensor OutlierCols { get; }
    public WeightTensor OutlierValues { get; }

    /// <summary>Entries of one row's table: 2^bits.</summary>
    public int TableSize => 1 << Bits;
    /// <summary>Bytes of one packed code row.</summary>
    public int RowBytes => SqueezeLlmCodes.WordsPerRow(InFeatures, Bits) * 4;
    public int OutlierCount => Cols.Length;

    // Widened once at load for the kernels (all small next to the codes): fp32 tables [N, 2^bits], the CSR arrays,
    // and each outlier's correction over what the dense part already contributes at its position,
    // Delta[e] = value - table[code]: the kernel adds Delta[e] * x[col] after the dense dot product (the outlier's
    // code is kept, so the dense pass needs no mask; SqueezeLLM stores value - centroid for the same reason).
    internal float[] Table { get; }
    internal int[] RowStart { get; }
    internal int[] Cols { get; }
    internal float[] Values { get; }
    internal float[] Delta { get; }

    public SqueezeLlmLinear(string name, int outFeatures, int inFeatures, int bits,
        WeightTensor codes, WeightTensor lookupTable, WeightTensor outlierRows, WeightTensor outlierCols, WeightTensor outlierValues, string source)
        : base(name, outFeatures, inFeatures)
    {
        if (bits is not (3 or 4)) throw new ModelFormatException(source, $"{name}: SqueezeLLM codes are 3 or 4 bits, not {bits}");
        Bits = bits;
        int n = outFeatures, k = inFeatures;
        Expect(codes, TensorDType.I32, [n, SqueezeLlmCodes.WordsPerRow(k, bits)], source);
        Expect(lookupTable, TensorDType.F16, [n, 1 << bits], source);
        Expect(outlierRows, TensorDType.I32, [n + 1L], source);
        if (outlierCols.Shape.Length != 1) throw Misshapen(outlierCols, "[nnz]", source);
        long nnz = outlierCols.Shape[0];
        Expect(outlierCols, TensorDType.I32, [nnz], source);
        Expect(outlierValues, TensorDType.F32, [nnz], source);
        (Codes, LookupTable, OutlierRows, OutlierCols, OutlierValues) = (codes, lookupTable, outlierRows, outlierCols, outlierValues);

        Table = lookupTable.ToFloatArray();
        foreach (float t in Table)
            if (!float.IsFinite(t)) throw new ModelFormatException(source, $"tensor '{lookupTable.Name}' holds a non-finite table entry ({t})");
        RowStart = new ReadOnlySpan<int>(outlierRows.Data, n + 1).ToArray();
        Cols = new ReadOnlySpan<int>(outlierCols.Data, checked((int)nnz)).ToArray();
        Values = outlierValues.AsF32Span().ToArray();
        if (RowStart[0] != 0 || RowStart[n] != nnz)
            throw new ModelFormatException(source, $"tensor '{outlierRows.Name}' must run from 0 to nnz = {nnz}, got {RowStart[0]} .. {RowStart[n]}");
        Delta = new float[nnz];
        for (int r = 0; r < n; r++)
        {
            if (RowStart[r + 1] < RowStart[r])
                throw new ModelFormatException(source, $"tensor '{outlierRows.Name}' decreases at row {r} ({RowStart[r]} then {RowStart[r + 1]})");
            byte* row = CodeRow(r);
            for (int e = RowStart[r]; e < RowStart[r + 1]; e++)
            {
                int c = Cols[e];
                if ((uint)c >= (uint)k)
                    throw new ModelFormatException(source, $"tensor '{outlierCols.Name}': column {c} of outlier {e} (row {r}) is outside [0, {k})");
                if (e > RowStart[r] && c <= Cols[e - 1])
                    throw new ModelFormatException(source, $"tensor '{outlierCols.Name}': columns of row {r} are not strictly increasing ({Cols[e - 1]} then {c})");
                Delta[e] = Values[e] - Table[r * TableSize + SqueezeLlmCodes.Code(row, c, bits)];
            }
        }
    }

    public override string Format => $"SqueezeLLM {Bits}-bit + {OutlierCount} outliers";
    public override IEnumerable<WeightTensor> Tensors => [Codes, LookupTable, OutlierRows, OutlierCols, OutlierValues];

    /// <summary>The packed codes of output row <paramref name="row"/>.</summary>
    internal byte* CodeRow(int row) => Codes.Data + (long)row * RowBytes;

    public override void ReadRow(int row, Span<float> destination)
    {
        if ((uint)row >= (uint)OutFeatures) throw new ArgumentOutOfRangeException(nameof(row), $"{Name}: row {row} of {OutFeatures}");
        byte* codes = CodeRow(row);
        var table = Table.AsSpan(row * TableSize, TableSize);
        for (int k = 0; k < InFeatures; k++) destination[k] = table[SqueezeLlmCodes.Code(codes, k, Bits)];
        for (int e = RowStart[row]; e < RowStart[row + 1]; e++) destination[Cols[e]] = Values[e];
    }

    private static void Expect(WeightTensor t, TensorDType dtype, long[] shape, string source)
    {
        if (t.DType != dtype || !t.Shape.SequenceEqual(shape))
            throw Misshapen(t, $"{dtype.Name()} [{string.Join(", ", shape)}]", source);
    }

    private static ModelFormatException Misshapen(WeightTensor t, string expected, string source) =>
        new(source, $"tensor '{t.Name}' is {t.DType.Name()} {t.ShapeText}, expected {expected} for a SqueezeLLM layer");
}
