// Element types of stored weights, and their sizes; everything else about a dtype lives next to its converter.
namespace Kernels.Runtime.Models;

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
}

public static class TensorDTypeInfo
{
    public const int Q8_0BlockSize = 32;
    public const int Q8_0BlockBytes = 34;

    /// <summary>
    /// Bytes taken by <paramref name="elements"/> values of this type (elements must fill whole blocks). Checked: a
    /// count whose size overflows 64 bits throws <see cref="OverflowException"/> (readers turn it into a format error).
    /// </summary>
    public static long ByteCount(this TensorDType type, long elements)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(elements);
        return type switch
        {
            TensorDType.F32 => checked(elements * 4),
            TensorDType.F16 or TensorDType.BF16 => checked(elements * 2),
            TensorDType.Q8_0 => checked(elements / Q8_0BlockSize * Q8_0BlockBytes),
            TensorDType.I8 or TensorDType.U8 => elements,
            TensorDType.I32 => checked(elements * 4),
            _ => throw new ArgumentOutOfRangeException(nameof(type), type, "unknown dtype"),
        };
    }

    public static string Name(this TensorDType type) => type switch
    {
        TensorDType.F32 => "F32",
        TensorDType.F16 => "F16",
        TensorDType.BF16 => "BF16",
        TensorDType.Q8_0 => "Q8_0",
        TensorDType.I8 => "I8",
        TensorDType.U8 => "U8",
        TensorDType.I32 => "I32",
        _ => type.ToString(),
    };

    /// <summary>Whether values of this type are real numbers a matmul can read (floats and Q8_0), not raw integers.</summary>
    public static bool IsNumeric(this TensorDType type) => type is TensorDType.F32 or TensorDType.F16 or TensorDType.BF16 or TensorDType.Q8_0;
}
