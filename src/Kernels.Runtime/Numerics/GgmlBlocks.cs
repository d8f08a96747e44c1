// GGML's block-quantized weight formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and the k-quants Q2_K..Q6_K): their byte
// layouts, written out from the format definitions (llama.cpp ggml-common.h), and the reference dequantization.
//
// Layouts (little-endian; "h" = fp16; groups are consecutive values):
//   Q4_0 [18]  h d | u8 qs[16]                       w[j] = d (lo(qs[j]) - 8), w[j+16] = d (hi(qs[j]) - 8)
//   Q4_1 [20]  h d | h m | u8 qs[16]                 w[j] = d lo(qs[j]) + m,   w[j+16] = d hi(qs[j]) + m
//   Q5_0 [22]  h d | u32 qh | u8 qs[16]              5th bit of w[j] is qh bit j;  w = d (q - 16)
//   Q5_1 [24]  h d | h m | u32 qh | u8 qs[16]        w = d q + m
//   Q8_0 [34]  h d | i8 qs[32]                       w = d q
//   Q2_K [84]  u8 scales[16] | u8 qs[64] | h d | h dmin
//              group g of 16: sc = scales[g] & 15, mn = scales[g] >> 4; w = d sc q - dmin mn; q = 2 bits
//   Q3_K [110] u8 hmask[32] | u8 qs[64] | u8 scales[12] | h d
//              16 signed 6-bit group scales (s - 32); q = low 2 bits | hmask bit << 2, w = d (s - 32) (q - 4)
//   Q4_K [144] h d | h dmin | u8 scales[12] | u8 qs[128]
//              8 groups of 32 with 6-bit scale sc and minimum mn; w = d sc q - dmin mn; q = 4 bits
//   Q5_K [176] h d | h dmin | u8 scales[12] | u8 qh[32] | u8 qs[128]    as Q4_K with a 5th bit from qh
//   Q6_K [210] u8 ql[128] | u8 qh[64] | i8 scales[16] | h d              w = d sc (q - 32); q = 6 bits
// In the k-quants the codes of a 128-value half are interleaved: byte l of a 32-byte run holds value l of four groups
// (2-bit codes at shifts 0, 2, 4, 6; 4-bit codes low then high nibble), see Dequantize below.
using System.Runtime.CompilerServices;

namespace Kernels.Runtime.Numerics;

internal static unsafe class GgmlBlocks
{
    /// <summary>Values per super-block of the k-quants.</summary>
    public const int QK_K = 256;

    /// <summary>
    /// Converts destination.Length values (whole blocks) of a block-quantized <paramref name="type"/> at
    /// <paramref name="source"/> to fp32: the reference, scalar and in the operation order of llama.cpp's own
    /// dequantize_row_* (a product then a difference, each rounded to fp32).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Dequantize(TensorDType type, byte* source, Span<float> destination)
    {
        int block = type.BlockSize(), bytes = type.BlockBytes();
        if (block == 1) throw new ArgumentException($"{type} is not a block-quantized type", nameof(type));
        if (destination.Length % block != 0)
            throw new ArgumentException($"{type} rows must be whole blocks of {block} values, got {destination.Length}", nameof(destination));
        fixed (float* y = destination)
        {
            for (int b = 0; b < destination.Length / block; b++)
            {
                byte* x = source + (long)b * bytes;
                float* o = y + (long)b * block;
                switch (type)
                {
                    case TensorDType.Q4_0: Q4_0(x, o); break;
                    case TensorDType.Q4_1: Q4_1(x, o); break;
                    case TensorDType.Q5_0: Q5_0(x, o); break;
                    case TensorDType.Q5_1: Q5_1(x, o); break;
                    case TensorDType.Q8_0: Q8_0(x, o); break;
                    case TensorDType.Q2_K: Q2_K(x, o); break;
                    case TensorDType.Q3_K: Q3_K(x, o); break;
                    case TensorDType.Q4_K: Q4_K(x, o); break;
                    case TensorDType.Q5_K: Q5_K(x, o); break;
                    case TensorDType.Q6_K: Q6_K(x, o); break;
                    default: throw new ArgumentOutOfRangeException(nameof(type), type, "no dequantization");
                }
            }
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Half(byte* p) => (float)Unsafe.ReadUnaligned<System.Half>(p);

    private static void Q4_0(byte* x, float* y)
    {
        float d = Half(x);
        byte* qs = x + 2;
        for (int j = 0; j < 16; j++)
        {
            y[j] = ((qs[j] & 0xF) - 8) * d;
            y[j + 16] = ((qs[j] >> 4) - 8) * d;
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Q4_1(byte* x, float* y)
    {
        float d = Half(x), m = Half(x + 2);
        byte* qs = x + 4;
        for (int j = 0; j < 16; j++)
        {
            y[j] = (qs[j] & 0xF) * d + m;
            y[j + 16] = (qs[j] >> 4) * d + m;
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Q5_0(byte* x, float* y)
    {
        float d = Half(x);
        uint qh = Unsafe.ReadUnaligned<uint>(x + 2);
        byte* qs = x + 6;
        for (int j = 0; j < 16; j++)
        {
            int h0 = (int)((qh >> j) & 1) << 4, h1 = (int)((qh >> (j + 16)) & 1) << 4;
            y[j] = (((qs[j] & 0xF) | h0) - 16) * d;
            y[j + 16] = (((qs[j] >> 4) | h1) - 16) * d;
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Q5_1(byte* x, float* y)
    {
        float d = Half(x), m = Half(x + 2);
        uint qh = Unsafe.ReadUnaligned<uint>(x + 4);
        byte* qs = x + 8;
        for (int j = 0; j < 16; j++)
        {
            int h0 = (int)((qh >> j) & 1) << 4, h1 = (int)((qh >> (j + 16)) & 1) << 4;
            y[j] = ((qs[j] & 0xF) | h0) * d + m;
            y[j + 16] = ((qs[j] >> 4) | h1) * d + m;
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Q8_0(byte* x, float* y)
    {
        float d = Half(x);
        sbyte* qs = (sbyte*)(x + 2);
        for (int j = 0; j < 32; j++) y[j] = qs[j] * d;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Q2_K(byte* x, float* y)
    {
        byte* scales = x, q = x + 16;
        float d = Half(x + 80), min = Half(x + 82);
        int g = 0;
        for (int half = 0; half < 2; half++, q += 32)
            for (int shift = 0; shift < 8; shift += 2)
                for (int part = 0; part < 2; part++, g++)
                {
                    float dl = d * (scales[g] & 0xF), ml = min * (scales[g] >> 4);
                    for (int l = 0; l < 16; l++) *y++ = dl * ((q[16 * part + l] >> shift) & 3) - ml;
                }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Q3_K(byte* x, float* y)
    {
        byte* hmask = x, q = x + 32;
        Span<int> sc = stackalloc int[16];
        Q3_KScales(x + 96, sc);
        float d = Half(x + 108);
        int g = 0, bit = 0;
        for (int half = 0; half < 2; half++, q += 32)
            for (int shift = 0; shift < 8; shift += 2, bit++)
                for (int part = 0; part < 2; part++, g++)
                {
                    float dl = d * (sc[g] - 32);
                    for (int l = 0; l < 16; l++)
                    {
                        int i = 16 * part + l;
                        *y++ = dl * (((q[i] >> shift) & 3) - ((hmask[i] >> bit & 1) != 0 ? 0 : 4));
                    }
                }
    }

    /// <summary>
    /// Q3_K's 16 unsigned 6-bit group scales (subtract 32 for the signed value) from their 12 bytes: the low 4 bits of
    /// groups 0-7 are the low nibbles of bytes 0-7, those of groups 8-15 the high nibbles; the top 2 bits of group g
    /// are bits 2 (g / 4) of byte 8 + g % 4.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Q3_KScales(byte* s, Span<int> sc)
    {
        for (int g = 0; g < 16; g++)
        {
            int low = g < 8 ? s[g] & 0xF : s[g - 8] >> 4;
            int high = (s[8 + g % 4] >> (2 * (g / 4))) & 3;
            sc[g] = low | (high << 4);
        }
    }

    /// <summary>
    /// The 6-bit scale and minimum of group g (0-7) of a Q4_K / Q5_K super-block from its 12 scale bytes: groups 0-3
    /// keep them in the low 6 bits of bytes g and g + 4; groups 4-7 in the nibbles of byte g + 4 with their top 2 bits
    /// in the top bits of bytes g - 4 and g.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void ScaleMinK4(int g, byte* q, out int scale, out int min)
    {
        if (g < 4)
        {
            scale = q[g] & 63;
            min = q[g + 4] & 63;
        }
        else
        {
            scale = (q[g + 4] & 0xF) | ((q[g - 4] >> 6) << 4);
            min = (q[g + 4] >> 4) | ((q[g] >> 6) << 4);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Q4_K(byte* x, float* y)
    {
        float d = Half(x), min = Half(x + 2);
        byte* scales = x + 4, q = x + 16;
        for (int g = 0; g < 8; g += 2, q += 32)
        {
            ScaleMinK4(g, scales, out int s1, out int m1);
            ScaleMinK4(g + 1, scales, out int s2, out int m2);
            float d1 = d * s1, n1 = min * m1, d2 = d * s2, n2 = min * m2;
            for (int l = 0; l < 32; l++) *y++ = d1 * (q[l] & 0xF) - n1;
            for (int l = 0; l < 32; l++) *y++ = d2 * (q[l] >> 4) - n2;
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Q5_K(byte* x, float* y)
    {
        float d = Half(x), min = Half(x + 2);
        byte* scales = x + 4, qh = x + 16, ql = x + 48;
        for (int g = 0; g < 8; g += 2, ql += 32)
        {
            ScaleMinK4(g, scales, out int s1, out int m1);
            ScaleMinK4(g + 1, scales, out int s2, out int m2);
            float d1 = d * s1, n1 = min * m1, d2 = d * s2, n2 = min * m2;
            for (int l = 0; l < 32; l++) *y++ = d1 * ((ql[l] & 0xF) + ((qh[l] >> g & 1) << 4)) - n1;
            for (int l = 0; l < 32; l++) *y++ = d2 * ((ql[l] >> 4) + ((qh[l] >> (g + 1) & 1) << 4)) - n2;
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Q6_K(byte* x, float* y)
    {
        byte* ql = x, qh = x + 128;
        sbyte* sc = (sbyte*)(x + 192);
        float d = Half(x + 208);
        for (int half = 0; half < 2; half++, y += 128, ql += 64, qh += 32, sc += 8)
            for (int l = 0; l < 32; l++)
            {
                int g = l / 16;
                int q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) - 32;
                int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
                int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                y[l] = d * sc[g] * q1;
                y[l + 32] = d * sc[g + 2] * q2;
                y[l + 64] = d * sc[g + 4] * q3;
                y[l + 96] = d * sc[g + 6] * q4;
            }
    }
}
