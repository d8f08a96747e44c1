// GGML's tensor type ids (ggml.h enum ggml_type) and the ones this engine reads: the one table GGUF reading and
// writing share.
using Kernels.Runtime.Numerics;

namespace Kernels.Runtime.Models;

internal static class GgmlTypes
{
    /// <summary>The dtype stored under GGML type id <paramref name="id"/>, or null for a type this engine does not read.</summary>
    public static TensorDType? ToDType(int id) => id switch
    {
        0 => TensorDType.F32,
        1 => TensorDType.F16,
        2 => TensorDType.Q4_0,
        3 => TensorDType.Q4_1,
        6 => TensorDType.Q5_0,
        7 => TensorDType.Q5_1,
        8 => TensorDType.Q8_0,
        10 => TensorDType.Q2_K,
        11 => TensorDType.Q3_K,
        12 => TensorDType.Q4_K,
        13 => TensorDType.Q5_K,
        14 => TensorDType.Q6_K,
        30 => TensorDType.BF16,
        _ => null,
    };

    /// <summary>The GGML type id of <paramref name="type"/> (raw integer dtypes have none).</summary>
    public static uint ToId(TensorDType type) => type switch
    {
        TensorDType.F32 => 0,
        TensorDType.F16 => 1,
        TensorDType.Q4_0 => 2,
        TensorDType.Q4_1 => 3,
        TensorDType.Q5_0 => 6,
        TensorDType.Q5_1 => 7,
        TensorDType.Q8_0 => 8,
        TensorDType.Q2_K => 10,
        TensorDType.Q3_K => 11,
        TensorDType.Q4_K => 12,
        TensorDType.Q5_K => 13,
        TensorDType.Q6_K => 14,
        TensorDType.BF16 => 30,
        _ => throw new ArgumentOutOfRangeException(nameof(type), type, "no GGML type"),
    };

    /// <summary>GGML's name for type id <paramref name="id"/> (for messages), e.g. "IQ4_XS", or "type 99" when unknown.</summary>
    public static string Name(int id) => id switch
    {
        9 => "Q8_1",
        15 => "Q8_K",
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        20 => "IQ4_NL",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        34 => "TQ1_0",
        35 => "TQ2_0",
        39 => "MXFP4",
        _ => ToDType(id)?.Name() ?? $"type {id}",
    };

    /// <summary>The types this engine reads, for messages.</summary>
    public const string Supported = "F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K";
}
