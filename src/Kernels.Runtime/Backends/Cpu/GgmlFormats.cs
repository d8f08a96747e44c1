// How each GGML block format becomes what the integer dot products consume: per 32-value chunk, 32 codes as bytes
// (unsigned for the k-quants and Q4_1 / Q5_1, two's-complement signed for Q4_0 / Q5_0 / Q8_0) and, for the k-quants,
// the chunk's int16 scales (lanes 0-7 scale values 0-15, lanes 8-15 values 16-31); per block its fp32 scale(s) and,
// for the k-quants, the 16 int16 coefficients e of the group sums (offset x scale, or the group minimum). The
// kernels in GgmlDot are generic over these structs; the JIT specializes and inlines them per format.
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Kernels.Runtime.Numerics;

namespace Kernels.Runtime.Backends.Cpu;

/// <summary>A k-quant (super-blocks of 256 = 8 chunks of 32 values).</summary>
internal unsafe interface IKQuant
{
    static abstract TensorDType Type { get; }
    /// <summary>Bytes per super-block (a constant the JIT folds; TensorDTypeInfo.BlockBytes is a switch).</summary>
    static abstract int BlockBytes { get; }
    /// <summary>Whether the group term is a minimum with its own scale (Q2_K, Q4_K, Q5_K) rather than an offset times d (Q3_K, Q6_K).</summary>
    static abstract bool HasMin { get; }
    /// <summary>Decodes the super-block header: d, dmin (or 0), the per-group scales in the format's own layout, and e.</summary>
    static abstract void Header(byte* block, out float d, out float dmin, out Vector256<short> scales, out Vector256<short> e);
    static abstract Vector256<byte> Codes(byte* block, int chunk);
    static abstract Vector256<short> ChunkScales(Vector256<short> scales, int chunk);
    /// <summary>The 16 groups' scales from <see cref="Header"/>'s, lane g for values 16g..16g + 15 (what the unpacked row stores).</summary>
    static abstract Vector256<short> GroupScales(Vector256<short> scales);
    /// <summary>Whether both 16-value groups of a chunk share one scale (Q4_K, Q5_K: 8 scales per super-block, codes &lt;= 31).</summary>
    static abstract bool ChunkScale { get; }
}

/// <summary>A 32-value block format (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0).</summary>
internal unsafe interface ILegacyQuant
{
    static abstract TensorDType Type { get; }
    /// <summary>Bytes per block.</summary>
    static abstract int BlockBytes { get; }
    /// <summary>Signed codes (w = d q) rather than unsigned ones with a block minimum (w = d q + m).</summary>
    static abstract bool Signed { get; }
    static abstract void Header(byte* block, out float d, out float m);
    static abstract Vector256<byte> Codes(byte* block);
    /// <summary>
    /// The block holds its codes as the bytes the tile multiplies, 2 bytes on (Q8_0): the batched kernel reads the rows
    /// in place instead of unpacking them (biasing each broadcast itself where the ops multiply biased codes).
    /// </summary>
    static abstract bool InPlace { get; }
}

internal static unsafe class GgmlFormats
{
    /// <summary>Every fp16 value as fp32 (256 KiB), exact: the block scales are converted by one load each.</summary>
    private static readonly float[] HalfTable = CreateHalfTable();
    /// <summary>The table's address. GgmlDot reads it in its static constructor, so this class is initialized before any
    /// kernel is compiled and the JIT folds the address into the code as a constant (no class-init check in the loops).</summary>
    internal static readonly float* HalfTablePointer = (float*)Unsafe.AsPointer(ref System.Runtime.InteropServices.MemoryMarshal.GetArrayDataReference(HalfTable));

    private static float[] CreateHalfTable()
    {
        var table = GC.AllocateUninitializedArray<float>(65536, pinned: true);
        for (int h = 0; h < 65536; h++) table[h] = (float)BitConverter.UInt16BitsToHalf((ushort)h);
        return table;
    }

    /// <summary>
    /// fp16 to fp32 by table: exact for every value, and never a denormal multiply (the shorter "shift the bits, times
    /// 2^112" multiplies a denormal for every subnormal half, a ~100-cycle microcode assist on Intel cores; the scales
    /// of Q6_K super-blocks are often fp16 subnormals). One load replaces the ~8 integer operations of converting in
    /// registers, which mattered for the 32-value formats (a conversion per 32 weights).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Half(byte* p) => HalfTablePointer[Unsafe.ReadUnaligned<ushort>(p)];

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static uint U32(byte* p) => Unsafe.ReadUnaligned<uint>(p);

    /// <summary>16 int16 lanes: lanes 0-7 take lane 2c of <paramref name="s"/>, lanes 8-15 lane 2c + 1 (the two 16-value groups of chunk c).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<short> GroupPair(Vector256<short> s, int c)
    {
        var pair = Avx2.PermuteVar8x32(s.AsInt32(), Vector256.Create(c)).AsByte();
        return Avx2.Shuffle(pair, Vector256.Create((byte)0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3)).AsInt16();
    }

    /// <summary>Lanes 0-7 of <paramref name="s"/> each twice: [s0, s0, s1, s1, ..., s7, s7].</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<short> EachTwice(Vector256<short> s)
    {
        var low = s.GetLower();
        return Vector256.Create(Sse2.UnpackLow(low, low), Sse2.UnpackHigh(low, low));
    }

    /// <summary>All 16 lanes take lane c (0-7) of <paramref name="s"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<short> Broadcast(Vector256<short> s, int c)
    {
        var low = Avx2.Permute2x128(s, s, 0x00).AsByte();
        byte i = (byte)(2 * c);
        return Avx2.Shuffle(low, Vector256.Create(i, (byte)(i + 1), i, (byte)(i + 1), i, (byte)(i + 1), i, (byte)(i + 1), i, (byte)(i + 1), i, (byte)(i + 1), i, (byte)(i + 1), i, (byte)(i + 1),
            i, (byte)(i + 1), i, (byte)(i + 1), i, (byte)(i + 1), i, (byte)(i + 1), i, (byte)(i + 1), i, (byte)(i + 1), i, (byte)(i + 1), i, (byte)(i + 1))).AsInt16();
    }

    /// <summary>
    /// The 12 scale bytes of a Q4_K / Q5_K super-block as 16 int16 lanes: the 8 group scales then the 8 minimums
    /// (6 bits each: groups 0-3 in the low 6 bits of bytes 0-3 and 4-7; groups 4-7 in the nibbles of bytes 8-11 with
    /// their top 2 bits in the top bits of bytes 0-3 and 4-7).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<short> ScalesAndMinsK4(byte* s)
    {
        // In vector lanes: a = (a0, a1) the first two words, b = (a2, a2 >> 4); lane 0 gives the scales, lane 1 the
        // minimums: (a & 0x3F) for groups 0-3, (b & 0x0F) | the top two bits of a's bytes for groups 4-7.
        var a = Vector128.CreateScalar(Unsafe.ReadUnaligned<ulong>(s)).AsUInt32();
        var b = Avx2.ShiftRightLogicalVariable(Vector128.Create(U32(s + 8)), Vector128.Create(0u, 4, 0, 0)) & Vector128.Create(0x0F0F0F0Fu);
        var low = a & Vector128.Create(0x3F3F3F3Fu);
        var high = b | (Vector128.ShiftRightLogical(a, 2) & Vector128.Create(0x30303030u));
        return Avx2.ConvertToVector256Int16(Sse2.UnpackLow(low, high).AsByte());
    }

    /// <summary>Lanes 8-15 of <paramref name="s"/> (the minimums) each twice: the coefficient of every 16-value group sum.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<short> MinsPerGroup(Vector256<short> s)
    {
        var high = Avx2.Permute2x128(s, s, 0x11).AsByte();
        return Avx2.Shuffle(high, Vector256.Create((byte)0, 1, 0, 1, 2, 3, 2, 3, 4, 5, 4, 5, 6, 7, 6, 7, 8, 9, 8, 9, 10, 11, 10, 11, 12, 13, 12, 13, 14, 15, 14, 15)).AsInt16();
    }

    /// <summary>Q3_K's 16 signed 6-bit group scales (s - 32) from their 12 bytes, as int16 lanes.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<short> ScalesQ3_K(byte* s)
    {
        uint a0 = U32(s), a1 = U32(s + 4), t = U32(s + 8);
        uint b0 = (a0 & 0x0F0F0F0F) | ((t & 0x03030303) << 4);
        uint b1 = (a1 & 0x0F0F0F0F) | (((t >> 2) & 0x03030303) << 4);
        uint b2 = ((a0 >> 4) & 0x0F0F0F0F) | (((t >> 4) & 0x03030303) << 4);
        uint b3 = ((a1 >> 4) & 0x0F0F0F0F) | (((t >> 6) & 0x03030303) << 4);
        return Avx2.ConvertToVector256Int16(Vector128.Create(b0, b1, b2, b3).AsByte()) - Vector256.Create((short)32);
    }

    /// <summary>
    /// The bytes of <paramref name="v"/> with bit <paramref name="from"/> moved to bit <paramref name="to"/>: one 16-bit
    /// shift, or none when they are equal (both constants after inlining). Bits crossing into the neighbouring byte
    /// are the caller's to mask off.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<byte> MoveBits(Vector256<byte> v, int from, int to) =>
        to > from ? Vector256.ShiftLeft(v.AsUInt16(), to - from).AsByte()
        : to < from ? Vector256.ShiftRightLogical(v.AsUInt16(), from - to).AsByte()
        : v;

    /// <summary>32 codes of 2 bits at <paramref name="shift"/> of 32 bytes.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<byte> TwoBits(byte* q, int shift) =>
        MoveBits(Vector256.Load(q), shift, 0) & Vector256.Create((byte)3);

    /// <summary>16 bytes of nibbles as 32 codes, low nibbles first.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<byte> Nibbles(byte* q)
    {
        var v = Vector128.Load(q);
        var lo = v & Vector128.Create((byte)0xF);
        var hi = Vector128.ShiftRightLogical(v.AsUInt16(), 4).AsByte() & Vector128.Create((byte)0xF);
        return Vector256.Create(lo, hi);
    }

    /// <summary>0x10 in byte j where bit j of <paramref name="qh"/> is set (Q5_0 / Q5_1's fifth bits).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<byte> FifthBits(uint qh)
    {
        var spread = Avx2.Shuffle(Vector256.Create(qh).AsByte(), Vector256.Create(
            (byte)0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3));
        var bit = Vector256.Create(0x8040201008040201UL).AsByte();
        return Vector256.Equals(spread & bit, bit) & Vector256.Create((byte)0x10);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The k-quants. Chunk c covers values 32c..32c+31 of the super-block.

internal readonly unsafe struct Q2K : IKQuant
{
    public static TensorDType Type => TensorDType.Q2_K;
    public static int BlockBytes => 84;
    public static bool HasMin => true;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Header(byte* x, out float d, out float dmin, out Vector256<short> scales, out Vector256<short> e)
    {
        d = GgmlFormats.Half(x + 80);
        dmin = GgmlFormats.Half(x + 82);
        var s = Vector128.Load(x);
        scales = Avx2.ConvertToVector256Int16(s & Vector128.Create((byte)0xF));
        e = Avx2.ConvertToVector256Int16(Vector128.ShiftRightLogical(s.AsUInt16(), 4).AsByte() & Vector128.Create((byte)0xF));
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<byte> Codes(byte* x, int c) => GgmlFormats.TwoBits(x + 16 + 32 * (c / 4), 2 * (c % 4));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<short> ChunkScales(Vector256<short> scales, int c) => GgmlFormats.GroupPair(scales, c);

    public static Vector256<short> GroupScales(Vector256<short> scales) => scales;

    public static bool ChunkScale => false;
}

internal readonly unsafe struct Q3K : IKQuant
{
    public static TensorDType Type => TensorDType.Q3_K;
    public static int BlockBytes => 110;
    public static bool HasMin => false;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Header(byte* x, out float d, out float dmin, out Vector256<short> scales, out Vector256<short> e)
    {
        d = GgmlFormats.Half(x + 108);
        dmin = 0;
        scales = GgmlFormats.ScalesQ3_K(x + 96);
        e = Vector256.ShiftLeft(scales, 2); // offset 4
    }

    /// <summary>Low 2 bits from qs, the third from hmask (bit 4h + j of byte l for chunk 4h + j).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<byte> Codes(byte* x, int c)
    {
        int h = c / 4, j = c % 4;
        var low = GgmlFormats.TwoBits(x + 32 + 32 * h, 2 * j);
        return low | GgmlFormats.MoveBits(Vector256.Load(x), 4 * h + j, 2) & Vector256.Create((byte)4);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<short> ChunkScales(Vector256<short> scales, int c) => GgmlFormats.GroupPair(scales, c);

    public static Vector256<short> GroupScales(Vector256<short> scales) => scales;

    public static bool ChunkScale => false;
}

internal readonly unsafe struct Q4K : IKQuant
{
    public static TensorDType Type => TensorDType.Q4_K;
    public static int BlockBytes => 144;
    public static bool HasMin => true;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Header(byte* x, out float d, out float dmin, out Vector256<short> scales, out Vector256<short> e)
    {
        d = GgmlFormats.Half(x);
        dmin = GgmlFormats.Half(x + 2);
        scales = GgmlFormats.ScalesAndMinsK4(x + 4);
        e = GgmlFormats.MinsPerGroup(scales);
    }

    /// <summary>Chunk 2j is the low nibbles of qs[32j..32j+31], chunk 2j + 1 their high nibbles.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<byte> Codes(byte* x, int c)
    {
        var v = Vector256.Load(x + 16 + 32 * (c / 2));
        return (c & 1) == 0 ? v & Vector256.Create((byte)0xF) : Vector256.ShiftRightLogical(v.AsUInt16(), 4).AsByte() & Vector256.Create((byte)0xF);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<short> ChunkScales(Vector256<short> scales, int c) => GgmlFormats.Broadcast(scales, c);

    public static Vector256<short> GroupScales(Vector256<short> scales) => GgmlFormats.EachTwice(scales);

    public static bool ChunkScale => true;
}

internal readonly unsafe struct Q5K : IKQuant
{
    public static TensorDType Type => TensorDType.Q5_K;
    public static int BlockBytes => 176;
    public static bool HasMin => true;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Header(byte* x, out float d, out float dmin, out Vector256<short> scales, out Vector256<short> e) =>
        Q4K.Header(x, out d, out dmin, out scales, out e);

    /// <summary>As Q4_K from qs at 48, plus 16 x bit c of qh[l].</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<byte> Codes(byte* x, int c)
    {
        var v = Vector256.Load(x + 48 + 32 * (c / 2));
        var low = (c & 1) == 0 ? v & Vector256.Create((byte)0xF) : Vector256.ShiftRightLogical(v.AsUInt16(), 4).AsByte() & Vector256.Create((byte)0xF);
        return low | GgmlFormats.MoveBits(Vector256.Load(x + 16), c, 4) & Vector256.Create((byte)0x10);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<short> ChunkScales(Vector256<short> scales, int c) => GgmlFormats.Broadcast(scales, c);

    public static Vector256<short> GroupScales(Vector256<short> scales) => GgmlFormats.EachTwice(scales);

    public static bool ChunkScale => true;
}

internal readonly unsafe struct Q6K : IKQuant
{
    public static TensorDType Type => TensorDType.Q6_K;
    public static int BlockBytes => 210;
    public static bool HasMin => false;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Header(byte* x, out float d, out float dmin, out Vector256<short> scales, out Vector256<short> e)
    {
        d = GgmlFormats.Half(x + 208);
        dmin = 0;
        scales = Avx2.ConvertToVector256Int16(Vector128.Load((sbyte*)(x + 192)));
        e = Vector256.ShiftLeft(scales, 5); // offset 32
    }

    /// <summary>Chunk 4h + j: nibble (low for j &lt; 2) of ql[64h + 32(j % 2) + l], top 2 bits at 2j of qh[32h + l].</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<byte> Codes(byte* x, int c)
    {
        int h = c / 4, j = c % 4;
        var ql = Vector256.Load(x + 64 * h + 32 * (j & 1));
        var low = j < 2 ? ql & Vector256.Create((byte)0xF) : Vector256.ShiftRightLogical(ql.AsUInt16(), 4).AsByte() & Vector256.Create((byte)0xF);
        return low | GgmlFormats.MoveBits(Vector256.Load(x + 128 + 32 * h), 2 * j, 4) & Vector256.Create((byte)0x30);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<short> ChunkScales(Vector256<short> scales, int c) => GgmlFormats.GroupPair(scales, c);

    public static Vector256<short> GroupScales(Vector256<short> scales) => scales;

    public static bool ChunkScale => false;
}

// ---------------------------------------------------------------------------------------------------------------
// The 32-value formats.

internal readonly unsafe struct Q40 : ILegacyQuant
{
    public static TensorDType Type => TensorDType.Q4_0;
    public static int BlockBytes => 18;
    public static bool InPlace => false;
    public static bool Signed => true;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Header(byte* x, out float d, out float m) { d = GgmlFormats.Half(x); m = 0; }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<byte> Codes(byte* x) => GgmlFormats.Nibbles(x + 2) - Vector256.Create((byte)8);
}

internal readonly unsafe struct Q41 : ILegacyQuant
{
    public static TensorDType Type => TensorDType.Q4_1;
    public static int BlockBytes => 20;
    public static bool InPlace => false;
    public static bool Signed => false;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Header(byte* x, out float d, out float m) { d = GgmlFormats.Half(x); m = GgmlFormats.Half(x + 2); }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<byte> Codes(byte* x) => GgmlFormats.Nibbles(x + 4);
}

internal readonly unsafe struct Q50 : ILegacyQuant
{
    public static TensorDType Type => TensorDType.Q5_0;
    public static int BlockBytes => 22;
    public static bool InPlace => false;
    public static bool Signed => true;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Header(byte* x, out float d, out float m) { d = GgmlFormats.Half(x); m = 0; }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<byte> Codes(byte* x) => (GgmlFormats.Nibbles(x + 6) | GgmlFormats.FifthBits(GgmlFormats.U32(x + 2))) - Vector256.Create((byte)16);
}

internal readonly unsafe struct Q51 : ILegacyQuant
{
    public static TensorDType Type => TensorDType.Q5_1;
    public static int BlockBytes => 24;
    public static bool InPlace => false;
    public static bool Signed => false;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Header(byte* x, out float d, out float m) { d = GgmlFormats.Half(x); m = GgmlFormats.Half(x + 2); }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<byte> Codes(byte* x) => GgmlFormats.Nibbles(x + 8) | GgmlFormats.FifthBits(GgmlFormats.U32(x + 4));
}

internal readonly unsafe struct Q80 : ILegacyQuant
{
    public static TensorDType Type => TensorDType.Q8_0;
    public static int BlockBytes => 34;
    public static bool InPlace => true;
    public static bool Signed => true;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Header(byte* x, out float d, out float m) { d = GgmlFormats.Half(x); m = 0; }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<byte> Codes(byte* x) => Vector256.Load(x + 2);
}
