// Where each 4-bit weight code and each group scale byte of a W4A8 layer sits: QServe's compute-aware tile layout,
// the one the GPU kernel (kernels/ops/w4a8_gemm.cuh) loads with one 128-bit load per lane and no ldmatrix.
namespace Kernels.Runtime.Quantization.W4A8;

/// <summary>
/// <para>
/// qweight is stored as bytes [Npad/32][Kpad/32][32 lanes][16 bytes] (Npad, Kpad: N and K rounded up to 32; padding
/// codes are 0): one 512-byte tile per 32 output x 32 input channels. Write n = 32*nt + 16*a + 8*b + c and
/// k = 32*kt + 16*e + 4*f + h (a, b, e in {0,1}; c in 0..7; f, h in 0..3). The code of (n, k) sits in lane 4c + f at
/// byte 8e + 4b + h, in the low nibble when a = 0 and the high nibble when a = 1 (channels n and n + 16 share a byte).
/// A lane's 16 bytes are then exactly its B fragments of mma.m16n8k32 for the tile's four 8-channel subtiles
/// (low nibbles of dwords 0,2 / 1,3 = subtiles 0 / 1; high nibbles = subtiles 2 / 3) over both 16-wide k halves.
/// </para>
/// <para>
/// Group scales and zeros [G, Npad] are column-permuted inside every 32-channel block: column 32*nt + 4c + j holds
/// channel 32*nt + 8j + c, so the four bytes a lane reads at 4c are the values for its four subtiles.
/// </para>
/// </summary>
internal static class W4A8Layout
{
    public const int Tile = 32;
    public const int TileBytes = Tile * Tile / 2;

    public static int Padded(int size) => (size + Tile - 1) / Tile * Tile;

    /// <summary>Byte offset of the code of (n, k) in a qweight with <paramref name="kPadded"/> input columns, and whether it is the high nibble.</summary>
    public static long ByteIndex(int n, int k, int kPadded, out bool high)
    {
        int nt = n >> 5, a = (n >> 4) & 1, b = (n >> 3) & 1, c = n & 7;
        int kt = k >> 5, e = (k >> 4) & 1, f = (k >> 2) & 3, h = k & 3;
        high = a == 1;
        long tile = (long)nt * (kPadded / Tile) + kt;
        return tile * TileBytes + (4 * c + f) * 16 + 8 * e + 4 * b + h;
    }

    /// <summary>Packs codes [N, K] (row-major, values 0..15) into the tile layout, padded with zero codes.</summary>
    public static byte[] Pack(ReadOnlySpan<byte> codes, int n, int k)
    {
        if (codes.Length != (long)n * k) throw new ArgumentException($"codes hold {codes.Length} values, {n}x{k} expected", nameof(codes));
        int kPadded = Padded(k);
        var packed = new byte[(long)Padded(n) * kPadded / 2];
        for (int r = 0; r < n; r++)
            for (int col = 0; col < k; col++)
            {
                byte q = codes[r * k + col];
                if (q > 15) throw new ArgumentException($"code [{r}, {col}] = {q} is not 4-bit", nameof(codes));
                long i = ByteIndex(r, col, kPadded, out bool high);
                packed[i] |= high ? (byte)(q << 4) : q;
            }
        return packed;
    }

    /// <summary>The code of (n, k) from a packed qweight.</summary>
    public static byte Code(ReadOnlySpan<byte> packed, int n, int k, int kPadded)
    {
        byte v = packed[checked((int)ByteIndex(n, k, kPadded, out bool high))];
        return (byte)(high ? v >> 4 : v & 15);
    }

    /// <summary>Codes [N, K] row-major from a packed qweight (the inverse of <see cref="Pack"/>).</summary>
    public static byte[] Unpack(ReadOnlySpan<byte> packed, int n, int k)
    {
        int kPadded = Padded(k);
        if (packed.Length != (long)Padded(n) * kPadded / 2)
            throw new ArgumentException($"packed holds {packed.Length} bytes, {Padded(n)}x{kPadded}/2 expected for [{n}, {k}]", nameof(packed));
        var codes = new byte[(long)n * k];
        for (int r = 0; r < n; r++)
            for (int col = 0; col < k; col++) codes[r * k + col] = Code(packed, r, col, kPadded);
        return codes;
    }

    /// <summary>The stored column of channel <paramref name="n"/> in a group scale/zero row (see the class summary).</summary>
    public static int ScaleColumn(int n) => (n & ~31) | ((n & 7) << 2) | ((n >> 3) & 3);
}
