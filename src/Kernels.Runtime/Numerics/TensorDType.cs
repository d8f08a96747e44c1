// Element types of stored weights, and their sizes; everything else about a dtype lives next to its converter
// (DTypeConvert for the float types, Numerics/GgmlBlocks for GGML's block-quantized types).
namespace Kernels.Runtime.Numerics;

public enum TensorDType
{
    F32,
    F16,
    BF16,
    /// <summary>GGML Q8_0: blocks of 32 int8 values with one fp16 scale (34 bytes per block).</summary>
    Q8_0,
    /// <summary>Raw integers: packed codes, integer scales and zero points of quantized linear layers (never matmul operands).</summary>
    I8,
    U8,
    I32,
    /// <summary>GGML Q4_0: 32 values, 4-bit codes, one fp16 scale: w = d (q - 8) (18 bytes per block).</summary>
    Q4_0,
    /// <summary>GGML Q4_1: 32 values, 4-bit codes, fp16 scale and minimum: w = d q + m (20 bytes).</summary>
    Q4_1,
    /// <summary>GGML Q5_0: 32 values, 5-bit codes (high bits apart), one fp16 scale: w = d (q - 16) (22 bytes).</summary>
    Q5_0,
    /// <summary>GGML Q5_1: 32 values, 5-bit codes, fp16 scale and minimum: w = d q + m (24 bytes).</summary>
    Q5_1,
    /// <summary>GGML Q2_K: super-blocks of 256 in 16 groups of 16, 2-bit codes, 4-bit group scales and minimums (84 bytes).</summary>
    Q2_K,
    /// <summary>GGML Q3_K: super-blocks of 256 in 16 groups of 16, 3-bit codes, 6-bit signed group scales (110 bytes).</summary>
    Q3_K,
    /// <summary>GGML Q4_K: super-blocks of 256 in 8 groups of 32, 4-bit codes, 6-bit group scales and minimums (144 bytes).</summary>
    Q4_K,
    /// <summary>GGML Q5_K: super-blocks of 256 in 8 groups of 32, 5-bit codes, 6-bit group scales and minimums (176 bytes).</summary>
    Q5_K,
    /// <summary>GGML Q6_K: super-blocks of 256 in 16 groups of 16, 6-bit codes, 8-bit signed group scales (210 bytes).</summary>
    Q6_K,
}

internal static class TensorDTypeInfo
{
    public const int Q8_0BlockSize = 32;
    public const int Q8_0BlockBytes = 34;

    /// <summary>Values per block: 1 for element types, 32 for GGML's Q4_0..Q8_0, 256 for its k-quants.</summary>
    public static int BlockSize(this TensorDType type) => type switch
    {
        TensorDType.Q4_0 or TensorDType.Q4_1 or TensorDType.Q5_0 or TensorDType.Q5_1 or TensorDType.Q8_0 => 32,
        TensorDType.Q2_K or TensorDType.Q3_K or TensorDType.Q4_K or TensorDType.Q5_K or TensorDType.Q6_K => 256,
        _ => 1,
    };

    /// <summary>Bytes per block (per element for element types).</summary>
    public static int BlockBytes(this TensorDType type) => type switch
    {
        TensorDType.F32 or TensorDType.I32 => 4,
        TensorDType.F16 or TensorDType.BF16 => 2,
        TensorDType.I8 or TensorDType.U8 => 1,
        TensorDType.Q4_0 => 18,
        TensorDType.Q4_1 => 20,
        TensorDType.Q5_0 => 22,
        TensorDType.Q5_1 => 24,
        TensorDType.Q8_0 => Q8_0BlockBytes,
        TensorDType.Q2_K => 84,
        TensorDType.Q3_K => 110,
        TensorDType.Q4_K => 144,
        TensorDType.Q5_K => 176,
        TensorDType.Q6_K => 210,
        _ => throw new ArgumentOutOfRangeException(nameof(type), type, "unknown dtype"),
    };

    /// <summary>Whether values are stored in GGML blocks (codes plus per-block scales), not one element at a time.</summary>
    public static bool IsBlockQuantized(this TensorDType type) => type.BlockSize() > 1;

    /// <summary>
    /// Bytes taken by <paramref name="elements"/> values of this type (block types: whole blocks, a partial block
    /// counts as none, so callers check divisibility where it matters). Overflow throws.
    /// </summary>
    public static long ByteCount(this TensorDType type, long elements)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(elements);
        return checked(elements / type.BlockSize() * type.BlockBytes());
    }

    public static string Name(this TensorDType type) => type.ToString();

    /// <summary>Whether values of this type are real numbers a matmul can read (floats and GGML blocks), not raw integers.</summary>
    public static bool IsNumeric(this TensorDType type) => type is TensorDType.F32 or TensorDType.F16 or TensorDType.BF16 || type.IsBlockQuantized();
}
