// SqueezeLLM's packed lookup-table codes: the bit layout of one output row, packing, and scalar/8-wide decoding.
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Kernels.Runtime.Quantization.SqueezeLlm;

/// <summary>
/// Layout of qweight I32 [N, WordsPerRow(K, bits)], one row per output channel, packed along the input dimension:
/// the row is a little-endian bit stream in which code k (an index into the row's 2^bits-entry lookup table) occupies
/// bits [bits*k, bits*k + bits). Rows are padded to whole blocks of 32 codes (4-bit: 4 words; 3-bit: 3 words), the
/// padding codes are 0. So every group of 8 codes k = 8g..8g+7 is the `bits` bytes starting at byte bits*g of the
/// row: 4-bit, word g with code 8g+i in bits [4i, 4i+3] (the lowest k in the least-significant nibble); 3-bit, a
/// 24-bit field straddling words with code 8g+i in its bits [3i, 3i+2]. One byte-aligned group per 8 codes is what
/// the AVX2 kernel decodes with one broadcast, one variable shift and one mask.
/// </summary>
internal static unsafe class SqueezeLlmCodes
{
    public const int BlockCodes = 32;

    public static void CheckBits(int bits)
    {
        if (bits is not (3 or 4)) throw new ArgumentOutOfRangeException(nameof(bits), bits, "SqueezeLLM codes are 3 or 4 bits");
    }

    /// <summary>32-bit words per row of <paramref name="inFeatures"/> codes (padded to 32 codes).</summary>
    public static int WordsPerRow(int inFeatures, int bits) => (inFeatures + BlockCodes - 1) / BlockCodes * bits;

    /// <summary>Packs one row of codes (each below 2^bits) into <paramref name="row"/> (WordsPerRow words, zero-filled first).</summary>
    public static void Pack(ReadOnlySpan<byte> codes, int bits, Span<int> row)
    {
        CheckBits(bits);
        if (row.Length != WordsPerRow(codes.Length, bits))
            throw new ArgumentException($"a row of {codes.Length} {bits}-bit codes takes {WordsPerRow(codes.Length, bits)} words, not {row.Length}", nameof(row));
        row.Clear();
        for (int k = 0; k < codes.Length; k++)
        {
            uint c = codes[k];
            if (c >> bits != 0) throw new ArgumentOutOfRangeException(nameof(codes), $"code {c} at {k} does not fit in {bits} bits");
            int bit = k * bits, word = bit >> 5, shift = bit & 31;
            row[word] |= (int)(c << shift);
            if (shift + bits > 32) row[word + 1] |= (int)(c >> (32 - shift)); // a 3-bit code straddling two words
        }
    }

    /// <summary>Code <paramref name="k"/> of a packed row (reads only the row's own bytes).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static int Code(byte* row, int k, int bits)
    {
        int bit = k * bits, b = bit >> 3, shift = bit & 7;
        int v = row[b];
        if (shift + bits > 8) v |= row[b + 1] << 8;
        return (v >> shift) & ((1 << bits) - 1);
    }

    /// <summary>Unpacks the first <paramref name="codes"/>.Length codes of a packed row.</summary>
    public static void Unpack(ReadOnlySpan<int> row, int bits, Span<byte> codes)
    {
        CheckBits(bits);
        if (row.Length < WordsPerRow(codes.Length, bits)) throw new ArgumentException($"a row of {codes.Length} {bits}-bit codes needs {WordsPerRow(codes.Length, bits)} words, got {row.Length}", nameof(row));
        fixed (int* p = row)
            for (int k = 0; k < codes.Length; k++) codes[k] = (byte)Code((byte*)p, k, bits);
    }

    // -------------------------------------------------------------------------------------------------------------
    // 8-wide decoding (AVX2), one struct per code width so the JIT specializes the kernels: with the width a runtime
    // value, the shift and mask constants and the 3- vs 4-bit branches stayed in the inner loop (measured 3-5x slower).

    public interface IWidth
    {
        static abstract int Bits { get; }
        /// <summary>The 8 codes of group g (codes 8g..8g+7) as int lanes.</summary>
        static abstract Vector256<int> Group8(byte* row, int g);
        /// <summary>LUT[codes] for 8 lanes from a table held in two registers (entries 0-7 in lo, 8-15 in hi).</summary>
        static abstract Vector256<float> Lookup8(Vector256<int> codes, Vector256<float> lo, Vector256<float> hi);
    }

    public readonly struct FourBit : IWidth
    {
        public static int Bits => 4;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<int> Group8(byte* row, int g) =>
            (Avx2.ShiftRightLogicalVariable(Vector256.Create(((uint*)row)[g]), Vector256.Create(0u, 4, 8, 12, 16, 20, 24, 28)) & Vector256.Create(15u)).AsInt32();

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<float> Lookup8(Vector256<int> codes, Vector256<float> lo, Vector256<float> hi) =>
            // vpermps uses the code's low 3 bits; bit 3 moved to the sign bit picks the upper half of the table.
            Avx.BlendVariable(Avx2.PermuteVar8x32(lo, codes), Avx2.PermuteVar8x32(hi, codes), Avx2.ShiftLeftLogical(codes, 28).AsSingle());
    }

    public readonly struct ThreeBit : IWidth
    {
        public static int Bits => 3;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<int> Group8(byte* row, int g)
        {
            byte* p = row + 3 * g; // 3 bytes: a 4-byte load could run past the last row of the tensor
            uint field = *(ushort*)p | (uint)p[2] << 16;
            return (Avx2.ShiftRightLogicalVariable(Vector256.Create(field), Vector256.Create(0u, 3, 6, 9, 12, 15, 18, 21)) & Vector256.Create(7u)).AsInt32();
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<float> Lookup8(Vector256<int> codes, Vector256<float> lo, Vector256<float> hi) => Avx2.PermuteVar8x32(lo, codes);
    }
}
