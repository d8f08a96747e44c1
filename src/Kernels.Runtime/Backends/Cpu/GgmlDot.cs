// Dot products of GGML block-quantized weight rows with int8 activation rows (Q8Rows), in integers the way the
// formats are meant to be used: a weight row is first unpacked (codes to bytes, packed scales to int16 lanes), then
// dotted with any number of activation rows; the unpacked row is what the batched matmul reuses across rows.
//
// The value every path computes (scalar, AVX2, AVX-VNNI: the same bits, and the same for one activation row or many):
//   legacy types (blocks of 32, activations Q8_0 / Q8_1), per block b:
//     I[b] = sum over its 32 values of w_i x_i, exactly (w the signed code: q - 8, q - 16, q; Q4_1 / Q5_1: q)
//     acc = fma(dw[b] * dx[b], (float)I[b], acc);  m += mw[b] * sx[b] (Q4_1, Q5_1)
//     dot = acc + m, in block order
//   k-quants (super-blocks of 256, activations Q8_K), per super-block b:
//     I[b] = sum over its 256 values of sc_i c_i x_i, exactly (c the unsigned code, sc its group's integer scale)
//     E[b] = sum over the 16-value groups g of e_g * bsum_g (e = offset * sc for Q3_K / Q6_K, the minimum for
//            Q2_K / Q4_K / Q5_K), exactly
//     acc = fma(dx[b] * d[b], (float)I[b], acc);  acc = fma(dx[b] * -dmin[b], (float)E[b], acc)   (Q2_K, Q4_K, Q5_K)
//     acc = fma(dx[b] * d[b], (float)(I[b] - E[b]), acc)                                          (Q3_K, Q6_K)
//     dot = acc, in super-block order
// A block's (super-block's) integers are summed whole before the float step, so the batched kernels finish a block
// for eight activation rows in one vector (one row per lane). The 32-value formats' batched kernel reads the eight rows'
// codes interleaved by 4 bytes (Q8Rows' tile), so one vpdpbusd of 4 broadcast weight codes advances all eight rows'
// block sums at once and no reduction is needed. The integer parts are what llama.cpp's kernels compute; the
// float parts differ from its per-lane accumulation by float rounding only.
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Kernels.Runtime.Numerics;

namespace Kernels.Runtime.Backends.Cpu;

internal static unsafe partial class GgmlDot
{
    static GgmlDot()
    {
        if (GgmlFormats.HalfTablePointer == null) throw new InvalidOperationException("the fp16 table is missing");
    }

    /// <summary>Which instruction path the dot products take on this machine (tests force each in turn).</summary>
    public enum Path { Scalar, Avx2, AvxVnni }

    public static Path Best { get; } = !(Avx2.IsSupported && Fma.IsSupported) ? Path.Scalar : AvxVnni.IsSupported ? Path.AvxVnni : Path.Avx2;

    // ---------------------------------------------------------------------------------------------------------------
    // The unpacked row: codes (K bytes, 32-byte aligned) first, then per format
    //   k-quants: group scales [K/16] int32 (one per 16 values) | e16 [K/256][16 x int16] | d [K/256] f32 | f [K/256] f32
    //   legacy:   d [K/32] f32 | m [K/32] f32 (the block minimum of Q4_1 / Q5_1)

    /// <summary>Where the parts of an unpacked k-quant row of <paramref name="k"/> values at <paramref name="u"/> lie (the layout above).</summary>
    private readonly struct KRow(byte* u, int k)
    {
        /// <summary>The group scales, one int32 per 16 values.</summary>
        public readonly int* Scales = (int*)(u + k);
        /// <summary>The group terms, 16 int16 per super-block.</summary>
        public readonly short* E = (short*)(u + k + k / 4);
        /// <summary>d per super-block.</summary>
        public readonly float* D = (float*)(u + k + k / 4 + k / 8);
        /// <summary>dmin (Q2_K, Q4_K, Q5_K) or d per super-block.</summary>
        public readonly float* F = (float*)(u + k + k / 4 + k / 8) + k / 256;
    }

    /// <summary>Bytes of an unpacked row of <paramref name="k"/> values (a multiple of 64, so rows stay aligned).</summary>
    public static int UnpackedBytes(TensorDType type, int k) =>
        (type.BlockSize() == 256 ? k + k / 4 + k / 8 + k / 32 : k + k / 4) + 63 & ~63;

    /// <summary>
    /// Batched rows of the 32-value formats: weight rows unpacked together, then passed by each group of
    /// <see cref="TileRows"/> activation rows in turn, so a group's interleaved codes stay in L1 across the chunk.
    /// </summary>
    public const int ChunkRows = 8;

    /// <summary>How far ahead the batched k-quant rows are fetched: this many pairs of weight rows.</summary>
    private const int FeedPairs = 2;

    /// <summary>The scratch <see cref="Multiply"/> needs: <see cref="ChunkRows"/> unpacked rows, 64-byte aligned.</summary>
    public static int BufferBytes(TensorDType type, int k) => ChunkRows * UnpackedBytes(type, k) + 64;

    /// <summary>Unpacks one weight row of <paramref name="k"/> values at <paramref name="row"/> into <paramref name="destination"/> (64-byte aligned).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Unpack(TensorDType type, byte* row, int k, byte* destination)
    {
        int bytes = type.BlockBytes();
        if (type.BlockSize() == 256)
        {
            int n = k / 256;
            var parts = new KRow(destination, k);
            int* scales = parts.Scales;
            short* e = parts.E;
            float* d = parts.D, f = parts.F;
            for (int b = 0; b < n; b++)
            {
                byte* x = row + (long)b * bytes, c = destination + 256 * b;
                int* s = scales + 16 * b;
                short* eb = e + 16 * b;
                switch (type)
                {
                    case TensorDType.Q2_K: UnpackQ2_K(x, c, s, eb, out d[b], out f[b]); break;
                    case TensorDType.Q3_K: UnpackQ3_K(x, c, s, eb, out d[b], out f[b]); break;
                    case TensorDType.Q4_K: UnpackQ45_K(x, c, s, eb, out d[b], out f[b], five: false); break;
                    case TensorDType.Q5_K: UnpackQ45_K(x, c, s, eb, out d[b], out f[b], five: true); break;
                    case TensorDType.Q6_K: UnpackQ6_K(x, c, s, eb, out d[b], out f[b]); break;
                    default: throw new ArgumentOutOfRangeException(nameof(type), type, "not a k-quant");
                }
            }
        }
        else
        {
            int n = k / 32;
            float* d = (float*)(destination + k), m = d + n;
            for (int b = 0; b < n; b++)
            {
                byte* x = row + (long)b * bytes, c = destination + 32 * b;
                m[b] = 0;
                switch (type)
                {
                    case TensorDType.Q4_0: d[b] = GgmlBlocks.Half(x); Nibbles(x + 2, c, -8); break;
                    case TensorDType.Q4_1: d[b] = GgmlBlocks.Half(x); m[b] = GgmlBlocks.Half(x + 2); Nibbles(x + 4, c, 0); break;
                    case TensorDType.Q5_0: d[b] = GgmlBlocks.Half(x); Nibbles(x + 6, c, -16); FifthBits(Unsafe.ReadUnaligned<uint>(x + 2), c); break;
                    case TensorDType.Q5_1: d[b] = GgmlBlocks.Half(x); m[b] = GgmlBlocks.Half(x + 2); Nibbles(x + 8, c, 0); FifthBits(Unsafe.ReadUnaligned<uint>(x + 4), c); break;
                    case TensorDType.Q8_0: d[b] = GgmlBlocks.Half(x); Buffer.MemoryCopy(x + 2, c, 32, 32); break;
                    default: throw new ArgumentOutOfRangeException(nameof(type), type, "not a GGML block type");
                }
            }
        }
    }

    /// <summary>16 bytes of nibbles to 32 codes (low nibbles first) plus <paramref name="offset"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Nibbles(byte* q, byte* c, int offset)
    {
        for (int j = 0; j < 16; j++)
        {
            c[j] = (byte)((q[j] & 0xF) + offset);
            c[j + 16] = (byte)((q[j] >> 4) + offset);
        }
    }

    /// <summary>Adds 16 x bit j of <paramref name="qh"/> to code j (Q5_0 / Q5_1's fifth bits; before or after the offset alike).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void FifthBits(uint qh, byte* c)
    {
        for (int j = 0; j < 32; j++) c[j] += (byte)(((qh >> j) & 1) << 4);
    }

    /// <summary>The scales of one 32-value chunk's two 16-value groups (values 0-15, then 16-31).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void ChunkScales(int* s, int first, int second)
    {
        s[0] = first;
        s[1] = second;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void UnpackQ2_K(byte* x, byte* c, int* s, short* e, out float d, out float f)
    {
        byte* scales = x, qs = x + 16;
        d = GgmlBlocks.Half(x + 80);
        f = GgmlBlocks.Half(x + 82);
        for (int u = 0; u < 8; u++)
        {
            int h = u / 4, shift = 2 * (u % 4), g = 8 * h + 2 * (u % 4);
            TwoBits(qs + 32 * h, shift, c + 32 * u);
            ChunkScales(s + 2 * u, scales[g] & 0xF, scales[g + 1] & 0xF);
        }
        for (int g = 0; g < 16; g++) e[g] = (short)(scales[g] >> 4);
    }

    /// <summary>32 codes of 2 bits at <paramref name="shift"/> of each byte.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void TwoBits(byte* q, int shift, byte* c)
    {
        for (int l = 0; l < 32; l++) c[l] = (byte)((q[l] >> shift) & 3);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void UnpackQ3_K(byte* x, byte* c, int* s, short* e, out float d, out float f)
    {
        byte* hmask = x, qs = x + 32;
        Span<int> sc = stackalloc int[16];
        GgmlBlocks.Q3_KScales(x + 96, sc);
        d = f = GgmlBlocks.Half(x + 108);
        for (int u = 0; u < 8; u++)
        {
            int h = u / 4, j = u % 4, g = 8 * h + 2 * j;
            byte* cu = c + 32 * u;
            TwoBits(qs + 32 * h, 2 * j, cu);
            int bit = 4 * h + j;
            for (int l = 0; l < 32; l++) cu[l] |= (byte)(((hmask[l] >> bit) & 1) << 2);
            ChunkScales(s + 2 * u, sc[g] - 32, sc[g + 1] - 32);
        }
        for (int g = 0; g < 16; g++) e[g] = (short)(4 * (sc[g] - 32));
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void UnpackQ45_K(byte* x, byte* c, int* s, short* e, out float d, out float f, bool five)
    {
        d = GgmlBlocks.Half(x);
        f = GgmlBlocks.Half(x + 2);
        byte* scales = x + 4, qh = x + 16, qs = x + (five ? 48 : 16);
        for (int g = 0; g < 8; g++)
        {
            GgmlBlocks.ScaleMinK4(g, scales, out int sc, out int mn);
            ChunkScales(s + 2 * g, sc, sc);
            e[2 * g] = e[2 * g + 1] = (short)mn;
        }
        for (int j = 0; j < 4; j++)
        {
            byte* lo = c + 64 * j, hi = lo + 32;
            for (int i = 0; i < 32; i++)
            {
                byte q = qs[32 * j + i];
                lo[i] = (byte)((q & 0xF) | (five ? ((qh[i] >> 2 * j) & 1) << 4 : 0));
                hi[i] = (byte)((q >> 4) | (five ? ((qh[i] >> (2 * j + 1)) & 1) << 4 : 0));
            }
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void UnpackQ6_K(byte* x, byte* c, int* s, short* e, out float d, out float f)
    {
        sbyte* sc = (sbyte*)(x + 192);
        d = f = GgmlBlocks.Half(x + 208);
        for (int h = 0; h < 2; h++)
        {
            byte* ql = x + 64 * h, qh = x + 128 + 32 * h;
            for (int j = 0; j < 4; j++)
            {
                byte* cu = c + 128 * h + 32 * j;
                byte* low = ql + (j & 1) * 32; // chunks 0, 2 take ql[0..31]; 1, 3 take ql[32..63]
                int nibbleShift = j < 2 ? 0 : 4, highShift = 2 * j;
                for (int l = 0; l < 32; l++) cu[l] = (byte)(((low[l] >> nibbleShift) & 0xF) | (((qh[l] >> highShift) & 3) << 4));
                int g = 8 * h + 2 * j;
                ChunkScales(s + 2 * (4 * h + j), sc[g], sc[g + 1]);
            }
        }
        for (int g = 0; g < 16; g++) e[g] = (short)(32 * sc[g]);
    }

    // ---------------------------------------------------------------------------------------------------------------
    // The matmul task: weight rows [start, end) against every activation row.

    /// <summary>
    /// y[t, j] = row j of the weights . activation row t (+ bias[j]) for j in [start, end) and every t: one activation
    /// row streams the weight rows through the fused kernels, two weight rows at a time; more unpack each weight row once
    /// into <paramref name="buffer"/> (<see cref="BufferBytes"/>) and dot it with eight activation rows at a time (the
    /// 32-value types: a chunk of <see cref="ChunkRows"/> unpacked rows, two at a time, against each group of eight).
    /// <paramref name="forced"/>: an instruction path this machine has, instead of <see cref="Best"/> (tests).
    /// </summary>
    public static void Multiply(TensorDType type, byte* weights, int k, int start, int end, Activation[] x, float* y, int n, float[]? bias, byte[] buffer,
        Path? forced = null)
    {
        var path = forced ?? Best;
        if (buffer.Length < BufferBytes(type, k)) throw new ArgumentException($"the unpack buffer holds {buffer.Length} bytes, {BufferBytes(type, k)} needed", nameof(buffer));
        fixed (byte* b0 = buffer)
        {
            byte* u = (byte*)(((nint)b0 + 63) & ~(nint)63);
            var job = new Rows(weights, type.ByteCount(k), k, x, y, n, bias, u);
            if (path == Path.Scalar)
            {
                job.Scalar(type, start, end);
                return;
            }
            Dispatch<MultiplyCall, bool>(type, path == Path.AvxVnni, new MultiplyCall(job, start, end));
        }
    }

    /// <summary>
    /// One activation row of a <see cref="Q8Rows"/> (pointers null where the format has none). BlockOffsets (Q8_0 form):
    /// -128 x the sum of each block's codes. The tile pointers point at the row's group of <see cref="TileRows"/> rows
    /// (only for two rows or more): TileScales per (super-)block the group's scales [8]; Q8_K: TileGroupSums, per
    /// super-block its group sums as 8 pairs of 16-value groups [8][8 x 2]; Q8_0 / Q8_1: TileCodes, per block the eight
    /// rows' codes interleaved by 4 bytes [8 quads][8 rows][4], TileOffsets (Q8_0) and TileSums (Q8_1) per block [8].
    /// Wide (Q8_K with AVX-512BW, rows of a whole pair of groups): the pair's <see cref="Q8Rows.Wide"/>.
    /// </summary>
    public readonly struct Activation(sbyte* codes, float* scales, float* sums, short* groupSums, int* blockOffsets, float* tileScales = null,
        short* tileGroupSums = null, sbyte* tileCodes = null, int* tileOffsets = null, float* tileSums = null, sbyte* wide = null)
    {
        public readonly sbyte* Codes = codes;
        public readonly float* Scales = scales;
        public readonly float* Sums = sums;
        public readonly short* GroupSums = groupSums;
        public readonly int* BlockOffsets = blockOffsets;
        public readonly float* TileScales = tileScales;
        public readonly short* TileGroupSums = tileGroupSums;
        public readonly sbyte* TileCodes = tileCodes;
        public readonly int* TileOffsets = tileOffsets;
        public readonly float* TileSums = tileSums;
        public readonly sbyte* Wide = wide;
    }

    /// <summary>Activation rows the batched kernels take at once (their rows' scales and sums, and the 32-value formats' codes, come transposed by Q8Rows).</summary>
    public const int TileRows = 8;

    private readonly struct Rows(byte* weights, long rowBytes, int k, Activation[] x, float* y, int n, float[]? bias, byte* u)
    {
        private float Bias(int j) => bias != null ? bias[j] : 0f;

        /// <summary>
        /// Decode streams the weights once, front to back: a task's first <see cref="MatMul.DecodeLead"/> bytes are
        /// fetched before it starts, and each pair of rows fetches the two rows' worth of lines that lead further on
        /// (as the dense decode kernels do per line; without it the hardware prefetcher left these kernels at a third
        /// of the dense ones' bandwidth on the AMD EPYC with AVX-512, docs/gguf.md).
        /// </summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public void WarmRange(int start)
        {
            byte* first = weights + start * rowBytes;
            for (int b = 0; b < MatMul.DecodeLead; b += 64) Sse.Prefetch0(first + b);
        }

        /// <summary>Batched rows: weight row <paramref name="j"/> fetched while the tiles work on the row before it.</summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public void FetchRow(int j)
        {
            byte* row = weights + j * rowBytes;
            for (long b = 0; b < rowBytes; b += 64) Sse.Prefetch0(row + b);
        }

        /// <summary>Decode: the lines of rows r and r + 1, <see cref="MatMul.DecodeLead"/> bytes on.</summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public void FetchAhead(int r)
        {
            byte* ahead = weights + r * rowBytes + MatMul.DecodeLead;
            for (long b = 0; b < 2 * rowBytes; b += 64) Sse.Prefetch0(ahead + b);
        }

        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        public void KQuant<F, O>(int start, int end) where F : struct, IKQuant where O : struct, IOps
        {
            if (x.Length == 1)
            {
                var x0 = x[0];
                int r = start;
                WarmRange(start);
                for (; r + 2 <= end; r += 2)
                {
                    FetchAhead(r);
                    FusedKQuant2<F, O>(weights + r * rowBytes, rowBytes, k, x0, y + r);
                    if (bias != null) { y[r] += bias[r]; y[r + 1] += bias[r + 1]; }
                }
                for (; r < end; r++) y[r] = FusedKQuant<F, O>(weights + r * rowBytes, k, x0) + Bias(r);
                return;
            }
            // Two weight rows unpacked at a time; every group of eight activation rows (the last one padded), by pairs
            // of groups where two remain, through the interleaved tile.
            // The rows two pairs on are fetched a line per chunk of the tiles (LineFeed), the first two pairs up front.
            int stride = UnpackedBytes(F.Type, k);
            for (int j = start; j < Math.Min(end, start + 2 * FeedPairs); j++) FetchRow(j);
            for (int j = start; j < end; j += 2)
            {
                bool two = j + 1 < end;
                UnpackKQuant<F>(weights + j * rowBytes, k, u);
                if (two) UnpackKQuant<F>(weights + (j + 1) * rowBytes, k, u + stride);
                byte* u1 = two ? u + stride : u;
                int ahead = j + 2 * FeedPairs;
                // A line per chunk from the first (spread over the whole pair instead: 2-10 % slower on AVX2 at 64 rows).
                var feed = LineFeed.PerStep(weights + ahead * rowBytes, Math.Max(0, Math.Min(end, ahead + 2) - ahead) * rowBytes);
                for (int t = 0; t < x.Length;)
                {
                    if (x.Length - t >= 2 * TileRows)
                    {
                        if (WideTiles)
                            TileKQuantWide<F>(u, u1, k, x[t], x[t + TileRows], y + (long)t * n + j, n, Bias(j), two ? Bias(j + 1) : 0f, two, ref feed);
                        else
                            TileKQuantPair<F, O>(u, u1, k, x[t], x[t + TileRows], y + (long)t * n + j, n, Bias(j), two ? Bias(j + 1) : 0f, two, ref feed);
                        t += 2 * TileRows;
                    }
                    else
                    {
                        TileKQuant<F, O>(u, u1, k, x[t], y + (long)t * n + j, n, Bias(j), two ? Bias(j + 1) : 0f, Math.Min(TileRows, x.Length - t), two, ref feed);
                        t += TileRows;
                    }
                }
                feed.Rest();
            }
        }

        /// <summary>Tile calls per weight row pair for <paramref name="rows"/> activation rows: a call per pair of groups of eight, one per group left.</summary>
        private static long TileCalls(int rows)
        {
            int groups = (rows + TileRows - 1) / TileRows;
            return groups / 2 + groups % 2;
        }

        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        public void Legacy<L, O>(int start, int end) where L : struct, ILegacyQuant where O : struct, IOps
        {
            if (x.Length == 1)
            {
                var x0 = x[0];
                int r = start;
                WarmRange(start);
                for (; r + 2 <= end; r += 2)
                {
                    FetchAhead(r);
                    FusedLegacy2<L, O>(weights + r * rowBytes, rowBytes, k, x0, y + r);
                    if (bias != null) { y[r] += bias[r]; y[r + 1] += bias[r + 1]; }
                }
                for (; r < end; r++) y[r] = FusedLegacy<L, O>(weights + r * rowBytes, k, x0) + Bias(r);
                return;
            }
            // Weight rows unpacked ChunkRows at a time; every group of eight activation rows (the last one padded) then
            // passes over the chunk two weight rows at a time, so the group's interleaved codes stay in L1.
            int stride = UnpackedBytes(L.Type, k);
            for (int j = start; j < Math.Min(end, start + ChunkRows); j++) FetchRow(j);
            for (int j0 = start; j0 < end; j0 += ChunkRows)
            {
                int j1 = Math.Min(end, j0 + ChunkRows);
                // Q8_0 rows are read in place (their codes are the tile's bytes); the others unpacked into u.
                byte* chunk = L.InPlace ? weights + j0 * rowBytes : u;
                long chunkStride = L.InPlace ? rowBytes : stride;
                if (!L.InPlace)
                    for (int j = j0; j < j1; j++) UnpackLegacy<L, O>(weights + j * rowBytes, k, u + (j - j0) * stride);
                // The next chunk's rows, spread over the blocks of the tiles below.
                var feed = new LineFeed(weights + j1 * rowBytes, (Math.Min(end, j1 + ChunkRows) - j1) * rowBytes, TileCalls(x.Length) * ((j1 - j0 + 1) / 2) * (k / 32L));
                for (int t = 0; t < x.Length;)
                {
                    int live = Math.Min(TileRows, x.Length - t);
                    bool pair = x.Length - t >= 2 * TileRows;
                    for (int j = j0; j < j1; j += 2)
                    {
                        byte* uj = chunk + (j - j0) * chunkStride;
                        bool two = j + 1 < j1;
                        byte* uk = two ? uj + chunkStride : uj;
                        if (pair) TileLegacy<L, O, TwoGroups>(uj, uk, k, x[t], x[t + TileRows], y + (long)t * n + j, n, Bias(j), two ? Bias(j + 1) : 0f, 2 * TileRows, two, ref feed);
                        else TileLegacy<L, O, OneGroup>(uj, uk, k, x[t], x[t], y + (long)t * n + j, n, Bias(j), two ? Bias(j + 1) : 0f, live, two, ref feed);
                    }
                    t += pair ? 2 * TileRows : TileRows;
                }
                feed.Rest();
            }
        }

        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        public void Scalar(TensorDType type, int start, int end)
        {
            for (int j = start; j < end; j++)
            {
                Unpack(type, weights + j * rowBytes, k, u);
                for (int t = 0; t < x.Length; t++) y[(long)t * n + j] = Dot(type, u, k, x[t], Path.Scalar) + Bias(j);
            }
        }
    }

    /// <summary>The dot product of an unpacked row (<see cref="Unpack"/>) with one activation row on <paramref name="path"/> (the reference the tests compare).</summary>
    public static float Dot(TensorDType type, byte* unpacked, int k, in Activation x, Path path)
    {
        if (path == Path.Scalar) return type.BlockSize() == 256 ? KQuantScalar(type, unpacked, k, x) : LegacyScalar(type, unpacked, k, x);
        return Dispatch<DotCall, float>(type, path == Path.AvxVnni, new DotCall(unpacked, k, x));
    }

    /// <summary>The dot product of raw weight row <paramref name="row"/> with one activation row, through the fused (decode) kernel of <paramref name="path"/>.</summary>
    public static float FusedDot(TensorDType type, byte* row, int k, in Activation x, Path path)
    {
        if (path == Path.Scalar) throw new ArgumentException("the scalar path has no fused kernel", nameof(path));
        return Dispatch<FusedDotCall, float>(type, path == Path.AvxVnni, new FusedDotCall(row, k, x));
    }

    /// <summary>Unpacks one weight row with the vector format decoders (what the batched kernels read; the same bytes as <see cref="Unpack"/>).</summary>
    public static void UnpackVector(TensorDType type, byte* row, int k, byte* destination)
    {
        Dispatch<UnpackCall, bool>(type, vnni: false, new UnpackCall(row, k, destination));
    }

    /// <summary>
    /// What runs once the block type and the instruction path are known: a k-quant or a 32-value kernel, specialized by
    /// the JIT for each format and ops struct (<see cref="Dispatch{TCall, TResult}"/> is the one place a type picks them).
    /// </summary>
    private interface IKernelCall<TResult>
    {
        TResult KQuant<F, O>() where F : struct, IKQuant where O : struct, IOps;
        TResult Legacy<L, O>() where L : struct, ILegacyQuant where O : struct, IOps;
    }

    private static TResult Dispatch<TCall, TResult>(TensorDType type, bool vnni, TCall call) where TCall : struct, IKernelCall<TResult> => type switch
    {
        TensorDType.Q2_K => vnni ? call.KQuant<Q2K, VnniOps>() : call.KQuant<Q2K, Avx2Ops>(),
        TensorDType.Q3_K => vnni ? call.KQuant<Q3K, VnniOps>() : call.KQuant<Q3K, Avx2Ops>(),
        TensorDType.Q4_K => vnni ? call.KQuant<Q4K, VnniOps>() : call.KQuant<Q4K, Avx2Ops>(),
        TensorDType.Q5_K => vnni ? call.KQuant<Q5K, VnniOps>() : call.KQuant<Q5K, Avx2Ops>(),
        TensorDType.Q6_K => vnni ? call.KQuant<Q6K, VnniOps>() : call.KQuant<Q6K, Avx2Ops>(),
        TensorDType.Q4_0 => vnni ? call.Legacy<Q40, VnniOps>() : call.Legacy<Q40, Avx2Ops>(),
        TensorDType.Q4_1 => vnni ? call.Legacy<Q41, VnniOps>() : call.Legacy<Q41, Avx2Ops>(),
        TensorDType.Q5_0 => vnni ? call.Legacy<Q50, VnniOps>() : call.Legacy<Q50, Avx2Ops>(),
        TensorDType.Q5_1 => vnni ? call.Legacy<Q51, VnniOps>() : call.Legacy<Q51, Avx2Ops>(),
        TensorDType.Q8_0 => vnni ? call.Legacy<Q80, VnniOps>() : call.Legacy<Q80, Avx2Ops>(),
        _ => throw new ArgumentOutOfRangeException(nameof(type), type, "not a GGML block type"),
    };

    private readonly struct MultiplyCall(Rows job, int start, int end) : IKernelCall<bool>
    {
        public bool KQuant<F, O>() where F : struct, IKQuant where O : struct, IOps { job.KQuant<F, O>(start, end); return true; }
        public bool Legacy<L, O>() where L : struct, ILegacyQuant where O : struct, IOps { job.Legacy<L, O>(start, end); return true; }
    }

    private readonly struct DotCall(byte* unpacked, int k, Activation x) : IKernelCall<float>
    {
        public float KQuant<F, O>() where F : struct, IKQuant where O : struct, IOps => TileKQuant1<F, O>(unpacked, k, x);
        public float Legacy<L, O>() where L : struct, ILegacyQuant where O : struct, IOps
        {
            if (!Offset<L, O>()) return TileLegacy1<L, O>(unpacked, k, x);
            // The reference unpacking keeps signed codes as they are; this path reads them biased.
            int bytes = UnpackedBytes(L.Type, k);
            byte* biased = (byte*)NativeMemory.AlignedAlloc((nuint)bytes, 64);
            try
            {
                Buffer.MemoryCopy(unpacked, biased, bytes, bytes);
                for (int i = 0; i < k; i++) biased[i] ^= 0x80;
                return TileLegacy1<L, O>(biased, k, x);
            }
            finally
            {
                NativeMemory.AlignedFree(biased);
            }
        }
    }

    private readonly struct FusedDotCall(byte* row, int k, Activation x) : IKernelCall<float>
    {
        public float KQuant<F, O>() where F : struct, IKQuant where O : struct, IOps => FusedKQuant<F, O>(row, k, x);
        public float Legacy<L, O>() where L : struct, ILegacyQuant where O : struct, IOps => FusedLegacy<L, O>(row, k, x);
    }

    /// <summary>The vector unpackers depend on the format only (O is whichever the dispatch passes).</summary>
    private readonly struct UnpackCall(byte* row, int k, byte* destination) : IKernelCall<bool>
    {
        public bool KQuant<F, O>() where F : struct, IKQuant where O : struct, IOps { UnpackKQuant<F>(row, k, destination); return true; }
        public bool Legacy<L, O>() where L : struct, ILegacyQuant where O : struct, IOps { UnpackLegacy<L, Avx2Ops>(row, k, destination); return true; }
    }

    /// <summary>The integer steps that differ between instruction sets (the JIT specializes per struct).</summary>
    private interface IOps
    {
        /// <summary>acc + the int16 scales times the pairwise sums of codes x activations (k-quant chunk).</summary>
        static abstract Vector256<int> ScaledChunk(Vector256<int> acc, Vector256<byte> codes, Vector256<sbyte> x, Vector256<short> scales);
        /// <summary>
        /// Signed codes are multiplied as unsigned bytes w + 128 (vpdpbusd takes unsigned x signed), so a block's sum
        /// exceeds the true one by 128 x the sum of its activation codes, which the kernels add back from
        /// <see cref="Activation.BlockOffsets"/> (or the tile's offsets); the batched kernel's unpacked codes are stored biased.
        /// </summary>
        static abstract bool Biased { get; }
        /// <summary>acc + per lane of 4: sum of signed codes w x activations (biased: of (w + 128) x).</summary>
        static abstract Vector256<int> SignedLanes(Vector256<int> acc, Vector256<sbyte> w, Vector256<sbyte> x);
        /// <summary>acc + per lane of 4: sum of unsigned codes x activations.</summary>
        static abstract Vector256<int> UnsignedLanes(Vector256<int> acc, Vector256<byte> c, Vector256<sbyte> x);
        /// <summary>
        /// acc + <paramref name="scale"/> x the sum over four lanes-of-4 of unsigned k-quant codes (&lt;= 63) x activations:
        /// one 16-value group of a tile's eight rows (lane r for row r), exactly.
        /// </summary>
        static abstract Vector256<int> ScaledGroup(Vector256<int> acc, Vector256<byte> c0, Vector256<sbyte> x0, Vector256<byte> c1, Vector256<sbyte> x1,
            Vector256<byte> c2, Vector256<sbyte> x2, Vector256<byte> c3, Vector256<sbyte> x3, int* scale);
        /// <summary>
        /// acc + *<paramref name="scale"/> x the sum over the eight quads of a 32-value chunk of unsigned codes (&lt;= 31,
        /// one scale for the chunk: Q4_K, Q5_K) x activations: w the chunk's 8 weight quads, x the tile's 8 x 32 bytes.
        /// </summary>
        static abstract Vector256<int> ScaledChunk8(Vector256<int> acc, uint* w, sbyte* x, int* scale);
        /// <summary>acc + the pairwise products of int16 lanes a x b, summed in pairs (vpmaddwd).</summary>
        static abstract Vector256<int> PairProducts(Vector256<int> acc, Vector256<short> a, Vector256<short> b);
        /// <summary>
        /// A partial sum of quads, lane r for row r, of unsigned k-quant codes x activations: AVX2 in int16 pairs (bounded
        /// by the caller: 4 x 2 x 31 x 128 or 2 x 2 x 63 x 128 &lt; 2^15), VNNI in int32. Start it with
        /// <paramref name="first"/>, then add quads, then <see cref="ScalePartial"/>.
        /// </summary>
        static abstract Vector256<int> AddQuad(Vector256<int> partial, Vector256<byte> c, Vector256<sbyte> x, bool first);
        /// <summary>acc + a partial of <see cref="AddQuad"/> times the int16 scale at <paramref name="scale"/> (its int32 slot), exactly.</summary>
        static abstract Vector256<int> ScalePartial(Vector256<int> acc, Vector256<int> partial, short* scale);
    }

    private readonly struct Avx2Ops : IOps
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<int> ScaledChunk(Vector256<int> acc, Vector256<byte> codes, Vector256<sbyte> x, Vector256<short> scales) =>
            Avx2.Add(acc, Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(codes, x), scales));

        public static bool Biased => false;

        /// <summary>|w| x (x with w's sign): the products w x, paired by vpmaddubsw without saturating (|x| &lt;= 127).</summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<int> SignedLanes(Vector256<int> acc, Vector256<sbyte> w, Vector256<sbyte> x) => SignedLanes(acc, Avx2.Abs(w), w, x);

        /// <summary><see cref="SignedLanes(Vector256{int}, Vector256{sbyte}, Vector256{sbyte})"/> with |w| given (one |w| for several x).</summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<int> SignedLanes(Vector256<int> acc, Vector256<byte> absW, Vector256<sbyte> w, Vector256<sbyte> x) =>
            Avx2.Add(acc, Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(absW, Avx2.Sign(x, w)), Vector256.Create((short)1)));

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<int> UnsignedLanes(Vector256<int> acc, Vector256<byte> c, Vector256<sbyte> x) =>
            Avx2.Add(acc, Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(c, x), Vector256.Create((short)1)));

        /// <summary>Pairs of quads summed in int16 (|sum| &lt;= 2 x 2 x 63 x 127 &lt; 2^15), then scaled and widened by vpmaddwd.</summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<int> ScaledGroup(Vector256<int> acc, Vector256<byte> c0, Vector256<sbyte> x0, Vector256<byte> c1, Vector256<sbyte> x1,
            Vector256<byte> c2, Vector256<sbyte> x2, Vector256<byte> c3, Vector256<sbyte> x3, int* scale)
        {
            var s = Vector256.Create(*(short*)scale); // the scale's low half (|scale| < 2^15)
            var a = Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(c0, x0) + Avx2.MultiplyAddAdjacent(c1, x1), s);
            var b = Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(c2, x2) + Avx2.MultiplyAddAdjacent(c3, x3), s);
            return acc + a + b;
        }

        /// <summary>Quads summed four at a time in int16 (|sum| &lt;= 4 x 2 x 31 x 127 &lt; 2^15), then scaled and widened by vpmaddwd.</summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<int> ScaledChunk8(Vector256<int> acc, uint* w, sbyte* x, int* scale)
        {
            var s = Vector256.Create(*(short*)scale);
            var a = Avx2.MultiplyAddAdjacent(Vector256.Create(w[0]).AsByte(), Vector256.Load(x)) + Avx2.MultiplyAddAdjacent(Vector256.Create(w[1]).AsByte(), Vector256.Load(x + 32))
                  + (Avx2.MultiplyAddAdjacent(Vector256.Create(w[2]).AsByte(), Vector256.Load(x + 64)) + Avx2.MultiplyAddAdjacent(Vector256.Create(w[3]).AsByte(), Vector256.Load(x + 96)));
            var b = Avx2.MultiplyAddAdjacent(Vector256.Create(w[4]).AsByte(), Vector256.Load(x + 128)) + Avx2.MultiplyAddAdjacent(Vector256.Create(w[5]).AsByte(), Vector256.Load(x + 160))
                  + (Avx2.MultiplyAddAdjacent(Vector256.Create(w[6]).AsByte(), Vector256.Load(x + 192)) + Avx2.MultiplyAddAdjacent(Vector256.Create(w[7]).AsByte(), Vector256.Load(x + 224)));
            return acc + Avx2.MultiplyAddAdjacent(a, s) + Avx2.MultiplyAddAdjacent(b, s);
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<int> PairProducts(Vector256<int> acc, Vector256<short> a, Vector256<short> b) => Avx2.Add(acc, Avx2.MultiplyAddAdjacent(a, b));

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<int> AddQuad(Vector256<int> partial, Vector256<byte> c, Vector256<sbyte> x, bool first) =>
            first ? Avx2.MultiplyAddAdjacent(c, x).AsInt32() : (partial.AsInt16() + Avx2.MultiplyAddAdjacent(c, x)).AsInt32();

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<int> ScalePartial(Vector256<int> acc, Vector256<int> partial, short* scale) =>
            acc + Avx2.MultiplyAddAdjacent(partial.AsInt16(), Vector256.Create(*scale));
    }

    private readonly struct VnniOps : IOps
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<int> ScaledChunk(Vector256<int> acc, Vector256<byte> codes, Vector256<sbyte> x, Vector256<short> scales) =>
            AvxVnni.MultiplyWideningAndAdd(acc, Avx2.MultiplyAddAdjacent(codes, x), scales);

        public static bool Biased => true;

        /// <summary>(w + 128) x by vpdpbusd: w x plus 128 x, which the caller's block offset (-128 x the sum of x) removes.</summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<int> SignedLanes(Vector256<int> acc, Vector256<sbyte> w, Vector256<sbyte> x) =>
            AvxVnni.MultiplyWideningAndAdd(acc, w.AsByte() ^ Vector256.Create((byte)0x80), x);

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<int> UnsignedLanes(Vector256<int> acc, Vector256<byte> c, Vector256<sbyte> x) =>
            AvxVnni.MultiplyWideningAndAdd(acc, c, x);

        /// <summary>Four vpdpbusd into one sum, then one vpmulld by the scale.</summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<int> ScaledGroup(Vector256<int> acc, Vector256<byte> c0, Vector256<sbyte> x0, Vector256<byte> c1, Vector256<sbyte> x1,
            Vector256<byte> c2, Vector256<sbyte> x2, Vector256<byte> c3, Vector256<sbyte> x3, int* scale)
        {
            var p = AvxVnni.MultiplyWideningAndAdd(Vector256<int>.Zero, c0, x0);
            p = AvxVnni.MultiplyWideningAndAdd(p, c1, x1);
            p = AvxVnni.MultiplyWideningAndAdd(p, c2, x2);
            p = AvxVnni.MultiplyWideningAndAdd(p, c3, x3);
            return acc + p * Vector256.Create(*scale);
        }

        /// <summary>Two chains of four vpdpbusd, added, then one vpmulld by the scale.</summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<int> ScaledChunk8(Vector256<int> acc, uint* w, sbyte* x, int* scale)
        {
            var p = AvxVnni.MultiplyWideningAndAdd(Vector256<int>.Zero, Vector256.Create(w[0]).AsByte(), Vector256.Load(x));
            var q = AvxVnni.MultiplyWideningAndAdd(Vector256<int>.Zero, Vector256.Create(w[1]).AsByte(), Vector256.Load(x + 32));
            p = AvxVnni.MultiplyWideningAndAdd(p, Vector256.Create(w[2]).AsByte(), Vector256.Load(x + 64));
            q = AvxVnni.MultiplyWideningAndAdd(q, Vector256.Create(w[3]).AsByte(), Vector256.Load(x + 96));
            p = AvxVnni.MultiplyWideningAndAdd(p, Vector256.Create(w[4]).AsByte(), Vector256.Load(x + 128));
            q = AvxVnni.MultiplyWideningAndAdd(q, Vector256.Create(w[5]).AsByte(), Vector256.Load(x + 160));
            p = AvxVnni.MultiplyWideningAndAdd(p, Vector256.Create(w[6]).AsByte(), Vector256.Load(x + 192));
            q = AvxVnni.MultiplyWideningAndAdd(q, Vector256.Create(w[7]).AsByte(), Vector256.Load(x + 224));
            return acc + (p + q) * Vector256.Create(*scale);
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<int> PairProducts(Vector256<int> acc, Vector256<short> a, Vector256<short> b) => AvxVnni.MultiplyWideningAndAdd(acc, a, b);

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<int> AddQuad(Vector256<int> partial, Vector256<byte> c, Vector256<sbyte> x, bool first) =>
            AvxVnni.MultiplyWideningAndAdd(first ? Vector256<int>.Zero : partial, c, x);

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<int> ScalePartial(Vector256<int> acc, Vector256<int> partial, short* scale) => acc + partial * Vector256.Create(*(int*)scale);
    }

    // ---------------------------------------------------------------------------------------------------------------
    // k-quants. The unpacked row is read as: codes[K] | group scales [K/16] int32 | e [K/256][16] | d [K/256] | f [K/256].

    /// <summary>
    /// The float step of one super-block for one activation row: acc + dx d I - dx dmin E (Q2_K, Q4_K, Q5_K), or
    /// acc + dx d (I - E) (Q3_K, Q6_K, whose group term is an offset in d's units).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float Step<F>(float acc, int i, int e, float dx, float d, float f) where F : struct, IKQuant
    {
        if (!F.HasMin) return MathF.FusedMultiplyAdd(dx * d, i - e, acc);
        acc = MathF.FusedMultiplyAdd(dx * d, i, acc);
        return MathF.FusedMultiplyAdd(dx * -f, e, acc);
    }

    /// <summary><see cref="Step{F}"/> for the eight rows of a tile at once, lane r for row r (the same operations per lane).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> Step8<F>(Vector256<float> acc, Vector256<int> i, Vector256<int> e, Vector256<float> dx, float d, float f) where F : struct, IKQuant
    {
        if (!F.HasMin) return Fma.MultiplyAdd(dx * Vector256.Create(d), Avx.ConvertToVector256Single(i - e), acc);
        acc = Fma.MultiplyAdd(dx * Vector256.Create(d), Avx.ConvertToVector256Single(i), acc);
        return Fma.MultiplyAdd(dx * Vector256.Create(-f), Avx.ConvertToVector256Single(e), acc);
    }

    /// <summary>The super-block's I (the lanes of <paramref name="s"/>) and E (those of <paramref name="g"/>), summed exactly.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Totals(Vector256<int> s, Vector256<int> g, out int i, out int e)
    {
        var h = Partials(s, g);
        h = Ssse3.HorizontalAdd(h, h); // I E I E
        i = h.ToScalar();
        e = h.GetElement(1);
    }

    /// <summary>
    /// E of super-block <paramref name="b"/> for a tile's eight rows: the weight row's 16 group terms (pairs broadcast)
    /// against the rows' transposed group sums, 8 pair products.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<int> TileGroupTerm<O>(short* e, short* tileSums) where O : struct, IOps
    {
        int* ep = (int*)e;
        // Two chains of four, so the eight dependent pair products do not serialize on one register.
        var g = O.PairProducts(Vector256<int>.Zero, Vector256.Create(ep[0]).AsInt16(), Vector256.Load(tileSums));
        var h = O.PairProducts(Vector256<int>.Zero, Vector256.Create(ep[1]).AsInt16(), Vector256.Load(tileSums + 16));
        g = O.PairProducts(g, Vector256.Create(ep[2]).AsInt16(), Vector256.Load(tileSums + 32));
        h = O.PairProducts(h, Vector256.Create(ep[3]).AsInt16(), Vector256.Load(tileSums + 48));
        g = O.PairProducts(g, Vector256.Create(ep[4]).AsInt16(), Vector256.Load(tileSums + 64));
        h = O.PairProducts(h, Vector256.Create(ep[5]).AsInt16(), Vector256.Load(tileSums + 80));
        g = O.PairProducts(g, Vector256.Create(ep[6]).AsInt16(), Vector256.Load(tileSums + 96));
        h = O.PairProducts(h, Vector256.Create(ep[7]).AsInt16(), Vector256.Load(tileSums + 112));
        return g + h;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static float FusedKQuant<F, O>(byte* row, int k, in Activation x) where F : struct, IKQuant where O : struct, IOps
    {
        int n = k / 256;
        long bytes = F.BlockBytes;
        sbyte* codes = x.Codes;
        float* xScales = x.Scales;
        short* groupSums = x.GroupSums;
        float acc = 0;
        for (int b = 0; b < n; b++)
        {
            var s = SuperBlock<F, O>(row + b * bytes, codes + 256 * b, Vector256.Load(groupSums + 16 * b), out var g, out float d, out float f);
            int i, e = 0;
            if (F.HasMin) Totals(s, g, out i, out e);
            else i = Vector256.Sum(s); // I - E: SuperBlock folded E into the lanes
            acc = Step<F>(acc, i, e, xScales[b], d, f);
        }
        return acc;
    }

    /// <summary>
    /// <see cref="FusedKQuant{F, O}"/> for two consecutive weight rows (decode): each row's super-block summed as in the
    /// one-row kernel (two independent chains the core overlaps), then the two rows' sums reduced together and their
    /// float steps done in the lanes of one vector (lanes 0 and 2 row 0, 1 and 3 row 1: the one-row kernel's operations
    /// per lane). Two rows, not four: the shuffles of the reduction share port 5 with the decoders', and four rows'
    /// temporaries spill on AVX2's 16 registers (measured slower on both paths, docs/gguf.md).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void FusedKQuant2<F, O>(byte* row, long rowBytes, int k, in Activation x, float* y) where F : struct, IKQuant where O : struct, IOps
    {
        int n = k / 256;
        long bytes = F.BlockBytes;
        sbyte* codes = x.Codes;
        float* xScales = x.Scales;
        short* groupSums = x.GroupSums;
        var acc = Vector128<float>.Zero;
        for (int b = 0; b < n; b++)
        {
            sbyte* xc = codes + 256 * b;
            var gs = Vector256.Load(groupSums + 16 * b);
            var s0 = SuperBlock<F, O>(row + b * bytes, xc, gs, out var g0, out float d0, out float f0);
            var s1 = SuperBlock<F, O>(row + rowBytes + b * bytes, xc, gs, out var g1, out float d1, out float f1);
            var dx = Vector128.Create(xScales[b]);
            if (!F.HasMin)
            {
                // Only I - E is needed, and SuperBlock already folded E into the lanes: half the shuffles.
                var u = Avx2.HorizontalAdd(s0, s1);
                var v = u.GetLower() + u.GetUpper();
                var w = Ssse3.HorizontalAdd(v, v); // (I-E)0 (I-E)1 (I-E)0 (I-E)1
                acc = Fma.MultiplyAdd(dx * Vector128.Create(d0, d1, d0, d1), Sse2.ConvertToVector128Single(w), acc);
                continue;
            }
            var t = Avx2.HorizontalAdd(Avx2.HorizontalAdd(s0, g0), Avx2.HorizontalAdd(s1, g1));
            var q = (t.GetLower() + t.GetUpper()).AsSingle(); // I0 E0 I1 E1
            var i = Sse.Shuffle(q, q, 0b10_00_10_00).AsInt32(); // I0 I1 I0 I1
            var e = Sse.Shuffle(q, q, 0b11_01_11_01).AsInt32(); // E0 E1 E0 E1
            acc = Fma.MultiplyAdd(dx * Vector128.Create(d0, d1, d0, d1), Sse2.ConvertToVector128Single(i), acc);
            acc = Fma.MultiplyAdd(dx * -Vector128.Create(f0, f1, f0, f1), Sse2.ConvertToVector128Single(e), acc);
        }
        y[0] = acc.ToScalar();
        y[1] = acc.GetElement(1);
    }

    /// <summary>A super-block's chunk-sum lanes and group-term lanes folded to partial sums (I_a, I_b, E_a, E_b): I = I_a + I_b, E = E_a + E_b, exactly.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector128<int> Partials(Vector256<int> s, Vector256<int> g)
    {
        var t = Avx2.HorizontalAdd(s, g);
        return t.GetLower() + t.GetUpper();
    }

    /// <summary>
    /// One raw super-block against its 256 activation codes: the chunk sums' lanes, the group term's lanes, d and f. For
    /// Q3_K and Q6_K, which use I - E only, the group term starts the chunk sums and g is zero.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<int> SuperBlock<F, O>(byte* w, sbyte* xc, Vector256<short> groupSums, out Vector256<int> g, out float d, out float f) where F : struct, IKQuant where O : struct, IOps
    {
        F.Header(w, out d, out f, out var scales, out var e);
        if (!F.HasMin) f = d;
        g = Avx2.MultiplyAddAdjacent(e, groupSums);
        // Four chains (chunk mod 4), so a row's eight multiply-accumulates are not one dependency chain of eight
        // latencies; integer sums, so the same bits.
        var s = O.ScaledChunk(F.HasMin ? Vector256<int>.Zero : -g, F.Codes(w, 0), Vector256.Load(xc), F.ChunkScales(scales, 0));
        var t = O.ScaledChunk(Vector256<int>.Zero, F.Codes(w, 1), Vector256.Load(xc + 32), F.ChunkScales(scales, 1));
        var u = O.ScaledChunk(Vector256<int>.Zero, F.Codes(w, 2), Vector256.Load(xc + 64), F.ChunkScales(scales, 2));
        var v = O.ScaledChunk(Vector256<int>.Zero, F.Codes(w, 3), Vector256.Load(xc + 96), F.ChunkScales(scales, 3));
        s = O.ScaledChunk(s, F.Codes(w, 4), Vector256.Load(xc + 128), F.ChunkScales(scales, 4));
        t = O.ScaledChunk(t, F.Codes(w, 5), Vector256.Load(xc + 160), F.ChunkScales(scales, 5));
        u = O.ScaledChunk(u, F.Codes(w, 6), Vector256.Load(xc + 192), F.ChunkScales(scales, 6));
        if (!F.HasMin) g = Vector256<int>.Zero;
        return (s + t) + (u + O.ScaledChunk(v, F.Codes(w, 7), Vector256.Load(xc + 224), F.ChunkScales(scales, 7)));
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void UnpackKQuant<F>(byte* row, int k, byte* u) where F : struct, IKQuant
    {
        int n = k / 256;
        long bytes = F.BlockBytes;
        var parts = new KRow(u, k);
        int* scales = parts.Scales;
        short* e = parts.E;
        float* d = parts.D, f = parts.F;
        for (int b = 0; b < n; b++)
        {
            byte* w = row + b * bytes, c = u + 256 * b;
            int* sc = scales + 16 * b;
            F.Header(w, out d[b], out float dmin, out var s, out var eb);
            f[b] = F.HasMin ? dmin : d[b];
            eb.Store(e + 16 * b);
            // Unrolled so each chunk index is a constant: the decoders' shuffle masks and shifts fold (a chunk index in a
            // loop variable made the JIT build a 32-byte shuffle mask lane by lane, half the time of a 16-row matmul).
            F.Codes(w, 0).Store(c);
            F.Codes(w, 1).Store(c + 32);
            F.Codes(w, 2).Store(c + 64);
            F.Codes(w, 3).Store(c + 96);
            F.Codes(w, 4).Store(c + 128);
            F.Codes(w, 5).Store(c + 160);
            F.Codes(w, 6).Store(c + 192);
            F.Codes(w, 7).Store(c + 224);
            var g = F.GroupScales(s);
            Avx2.ConvertToVector256Int32(g.GetLower()).Store(sc);
            Avx2.ConvertToVector256Int32(g.GetUpper()).Store(sc + 8);
        }
    }

    /// <summary>Whether a tile kernel takes one group of <see cref="TileRows"/> activation rows or two.</summary>
    private interface IGroups
    {
        static abstract bool Two { get; }
    }

    private readonly struct OneGroup : IGroups
    {
        public static bool Two => false;
    }

    private readonly struct TwoGroups : IGroups
    {
        public static bool Two => true;
    }

    /// <summary>
    /// Two unpacked k-quant weight rows against one group of <see cref="TileRows"/> activation rows (Q8Rows' tile: codes
    /// interleaved by 4 bytes, lane r for row r). Per 16-value group, four broadcast weight quads times the rows' quads
    /// give the eight rows' sums in one vector (<see cref="IOps.ScaledGroup"/>), scaled by the group's integer scale into
    /// I; no reduction. E from the weight row's group terms against the rows' transposed group sums, and one float step
    /// for the eight rows (their I and E are the one-row kernel's integers, so the same bits). Rows past
    /// <paramref name="live"/> are padding and not stored. Two groups at once: <see cref="TileKQuantPair{F, O}"/>, or
    /// <see cref="TileKQuantWide{F}"/> on AVX-512.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void TileKQuant<F, O>(byte* u0, byte* u1, int k, in Activation g, float* y, int n, float bias0, float bias1, int live, bool two,
        ref LineFeed feed)
        where F : struct, IKQuant where O : struct, IOps
    {
        var f = feed; // in registers for the loop (LineFeed's summary)
        int nb = k / 256;
        KRow r0 = new(u0, k), r1 = new(u1, k);
        int* sc0 = r0.Scales, sc1 = r1.Scales;
        short* e0 = r0.E, e1 = r1.E;
        float* d0 = r0.D, f0 = r0.F, d1 = r1.D, f1 = r1.F;
        sbyte* xg = g.TileCodes;
        Vector256<float> accG0 = default, accG1 = default;
        for (int b = 0; b < nb; b++)
        {
            Vector256<int> ig0 = default, ig1 = default;
            for (int ch = 0; ch < 8; ch++)
            {
                f.Step();
                int chunk = 8 * b + ch;
                uint* w0 = (uint*)(u0 + 32 * chunk), w1 = (uint*)(u1 + 32 * chunk);
                sbyte* xa = xg + 256 * chunk;
                int* s0 = sc0 + 2 * chunk, s1 = sc1 + 2 * chunk;
                if (F.ChunkScale)
                {
                    // One scale for the chunk's 32 values (Q4_K, Q5_K): eight quads summed, then one multiply.
                    ig0 = O.ScaledChunk8(ig0, w0, xa, s0);
                    ig1 = O.ScaledChunk8(ig1, w1, xa, s1);
                    continue;
                }
                for (int half = 0; half < 2; half++)
                {
                    int q = 4 * half;
                    Vector256<sbyte> x0 = Vector256.Load(xa + 32 * q), x1 = Vector256.Load(xa + 32 * q + 32),
                        x2 = Vector256.Load(xa + 32 * q + 64), x3 = Vector256.Load(xa + 32 * q + 96);
                    ig0 = O.ScaledGroup(ig0, Vector256.Create(w0[q]).AsByte(), x0, Vector256.Create(w0[q + 1]).AsByte(), x1,
                        Vector256.Create(w0[q + 2]).AsByte(), x2, Vector256.Create(w0[q + 3]).AsByte(), x3, s0 + half);
                    ig1 = O.ScaledGroup(ig1, Vector256.Create(w1[q]).AsByte(), x0, Vector256.Create(w1[q + 1]).AsByte(), x1,
                        Vector256.Create(w1[q + 2]).AsByte(), x2, Vector256.Create(w1[q + 3]).AsByte(), x3, s1 + half);
                }
            }
            var dxg = Vector256.Load(g.TileScales + 8 * b);
            accG0 = Step8<F>(accG0, ig0, TileGroupTerm<O>(e0 + 16 * b, g.TileGroupSums + 128 * b), dxg, d0[b], f0[b]);
            accG1 = Step8<F>(accG1, ig1, TileGroupTerm<O>(e1 + 16 * b, g.TileGroupSums + 128 * b), dxg, d1[b], f1[b]);
        }
        StoreTiles(accG0, accG1, default, default, bias0, bias1, y, n, live, two);
        feed = f;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static float TileKQuant1<F, O>(byte* u, int k, in Activation x) where F : struct, IKQuant where O : struct, IOps
    {
        int nb = k / 256;
        var parts = new KRow(u, k);
        int* scales = parts.Scales;
        short* e = parts.E;
        float* d = parts.D, f = parts.F;
        float acc = 0;
        for (int b = 0; b < nb; b++)
        {
            var s = Vector256<int>.Zero;
            for (int ch = 0; ch < 8; ch++)
                s = O.ScaledChunk(s, Vector256.Load(u + 256 * b + 32 * ch), Vector256.Load(x.Codes + 256 * b + 32 * ch),
                    Vector256.Create(Vector128.Create((short)scales[16 * b + 2 * ch]), Vector128.Create((short)scales[16 * b + 2 * ch + 1])));
            Totals(s, Avx2.MultiplyAddAdjacent(Vector256.Load(e + 16 * b), Vector256.Load(x.GroupSums + 16 * b)), out int i, out int g);
            acc = Step<F>(acc, i, g, x.Scales[b], d[b], f[b]);
        }
        return acc;
    }

    // ---------------------------------------------------------------------------------------------------------------
    // 32-value formats. The unpacked row is read as: codes[K] | d[K/32] | m[K/32].

    /// <summary>acc + per lane of 4: a block's codes (raw from the weights) x its activation codes; biased for signed codes on VNNI.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<int> RawLanes<L, O>(Vector256<int> acc, Vector256<byte> codes, Vector256<sbyte> x) where L : struct, ILegacyQuant where O : struct, IOps =>
        L.Signed ? O.SignedLanes(acc, codes.AsSByte(), x) : O.UnsignedLanes(acc, codes, x);

    /// <summary><see cref="RawLanes{L, O}"/> for codes as <see cref="UnpackLegacy{L, O}"/> stores them (biased already where O is).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<int> UnpackedLanes<L, O>(Vector256<int> acc, Vector256<byte> codes, Vector256<sbyte> x) where L : struct, ILegacyQuant where O : struct, IOps =>
        L.Signed && !O.Biased ? O.SignedLanes(acc, codes.AsSByte(), x) : O.UnsignedLanes(acc, codes, x);

    /// <summary>Whether a block's sum needs the row's block offset added (signed codes multiplied biased).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static bool Offset<L, O>() where L : struct, ILegacyQuant where O : struct, IOps => L.Signed && O.Biased;

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static float FusedLegacy<L, O>(byte* row, int k, in Activation x) where L : struct, ILegacyQuant where O : struct, IOps
    {
        int n = k / 32;
        long bytes = L.BlockBytes;
        // The activation's pointers in locals: read through the `in` struct, the JIT reloaded them every block.
        sbyte* codes = x.Codes;
        float* scales = x.Scales, sums = x.Sums;
        int* offsets = x.BlockOffsets;
        float acc = 0, mins = 0;
        for (int b = 0; b < n; b++)
        {
            byte* w = row + b * bytes;
            L.Header(w, out float d, out float m);
            int i = Vector256.Sum(RawLanes<L, O>(Vector256<int>.Zero, L.Codes(w), Vector256.Load(codes + 32 * b)));
            if (Offset<L, O>()) i += offsets[b];
            acc = MathF.FusedMultiplyAdd(d * scales[b], i, acc);
            if (!L.Signed) mins += m * sums[b];
        }
        return acc + mins;
    }

    /// <summary>
    /// <see cref="FusedLegacy{L, O}"/> for two consecutive weight rows (decode), block by block: the two rows' block sums
    /// reduced together into lanes 0 and 1 of one vector, whose float steps then run lane by lane (lane r for row r: the
    /// one-row kernel's operations per lane, so the same bits, without moving sums through scalar registers).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void FusedLegacy2<L, O>(byte* row, long rowBytes, int k, in Activation x, float* y) where L : struct, ILegacyQuant where O : struct, IOps
    {
        int n = k / 32;
        long bytes = L.BlockBytes;
        sbyte* codes = x.Codes;
        float* scales = x.Scales, sums = x.Sums;
        int* offsets = x.BlockOffsets;
        Vector128<float> acc = default, mins = default;
        for (int b = 0; b < n; b++)
        {
            byte* w0 = row + b * bytes, w1 = w0 + rowBytes;
            L.Header(w0, out float d0, out float m0);
            L.Header(w1, out float d1, out float m1);
            var xb = Vector256.Load(codes + 32 * b);
            var s0 = RawLanes<L, O>(Vector256<int>.Zero, L.Codes(w0), xb);
            var s1 = RawLanes<L, O>(Vector256<int>.Zero, L.Codes(w1), xb);
            var t = Avx2.UnpackLow(s0, s1) + Avx2.UnpackHigh(s0, s1); // per half: [s0 0+2, s1 0+2, s0 1+3, s1 1+3]
            t += Avx2.Shuffle(t, 0b01_00_11_10);                     // per half: [S0, S1, S0, S1]
            var q = t.GetLower() + t.GetUpper();
            if (Offset<L, O>()) q += Vector128.Create(offsets[b]);
            acc = Fma.MultiplyAdd(Vector128.Create(d0, d1, 0f, 0f) * Vector128.Create(scales[b]), Sse2.ConvertToVector128Single(q), acc);
            if (!L.Signed) mins += Vector128.Create(m0, m1, 0f, 0f) * Vector128.Create(sums[b]);
        }
        acc += mins;
        y[0] = acc.ToScalar();
        y[1] = acc.GetElement(1);
    }

    /// <summary>Unpacks a row as the batched kernel of O reads it: codes (signed ones biased by 128 where O multiplies them so), d, m.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void UnpackLegacy<L, O>(byte* row, int k, byte* u) where L : struct, ILegacyQuant where O : struct, IOps
    {
        int n = k / 32;
        long bytes = L.BlockBytes;
        float* d = (float*)(u + k), m = d + n;
        for (int b = 0; b < n; b++)
        {
            byte* w = row + b * bytes;
            L.Header(w, out d[b], out m[b]);
            var c = L.Codes(w);
            if (Offset<L, O>()) c ^= Vector256.Create((byte)0x80);
            c.Store(u + 32 * b);
        }
    }

    /// <summary>
    /// Two weight rows (unpacked, or Q8_0 rows as stored) against one or two groups of <see cref="TileRows"/> activation rows (Q8Rows' tile: codes
    /// interleaved by 4 bytes, lane r for row r): per block, each 4 weight codes broadcast and multiplied with the eight
    /// rows' 4 codes by one instruction, so the eight block sums come out in one vector with no reduction; the float step
    /// for the eight in one vector. Each broadcast feeds both groups and each activation load both weight rows (one group
    /// alone was bound by its loads: 28 for 16 multiplies a block), except signed codes on AVX2, whose activations are
    /// loaded per broadcast to leave registers for |w| (<see cref="QuadPair{L, O, P}"/>). Rows past <paramref name="live"/>
    /// are the tile's zero padding; their results are not stored.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void TileLegacy<L, O, P>(byte* u0, byte* u1, int k, in Activation g, in Activation h, float* y, int n, float bias0, float bias1, int live, bool two,
        ref LineFeed feed)
        where L : struct, ILegacyQuant where O : struct, IOps where P : struct, IGroups
    {
        var f = feed; // in registers for the loop (LineFeed's summary)
        int nb = k / 32;
        float* d0 = (float*)(u0 + k), m0 = d0 + nb, d1 = (float*)(u1 + k), m1 = d1 + nb;
        // In place (Q8_0): each block's codes 2 bytes on, its scale the fp16 before them; unpacked: codes 32 bytes a
        // block, then the rows' d and m as floats.
        long step = L.InPlace ? L.BlockBytes : 32;
        byte* c0 = L.InPlace ? u0 + 2 : u0, c1 = L.InPlace ? u1 + 2 : u1;
        // Every pointer in a local and bumped per block (read through the `in` structs and indexed, they cost the
        // loop a reload and an address computation per use).
        sbyte* xg = g.TileCodes, xh = P.Two ? h.TileCodes : g.TileCodes;
        int* og = g.TileOffsets, oh = h.TileOffsets;
        float* sg = g.TileScales, sh = h.TileScales, tg = g.TileSums, th = h.TileSums;
        Vector256<float> accG0 = default, accG1 = default, accH0 = default, accH1 = default;
        Vector256<float> minG0 = default, minG1 = default, minH0 = default, minH1 = default;
        for (int b = 0; b < nb; b++, c0 += step, c1 += step, xg += 256, xh += 256, og += 8, oh += 8, sg += 8, sh += 8, tg += 8, th += 8)
        {
            uint* w0 = (uint*)c0, w1 = (uint*)c1;
            f.Step();
            Vector256<int> g0 = Offset<L, O>() ? Vector256.Load(og) : Vector256<int>.Zero, g1 = g0;
            Vector256<int> h0 = Offset<L, O>() && P.Two ? Vector256.Load(oh) : Vector256<int>.Zero, h1 = h0;
            // The odd quads in chains of their own (integer sums: the same result in any order), so eight
            // multiply-add chains are in flight instead of four; the block's eight quads unrolled.
            Vector256<int> g0b = default, g1b = default, h0b = default, h1b = default;
            QuadPair<L, O, P>(ref g0, ref g1, ref h0, ref h1, ref g0b, ref g1b, ref h0b, ref h1b, w0, w1, xg, xh);
            QuadPair<L, O, P>(ref g0, ref g1, ref h0, ref h1, ref g0b, ref g1b, ref h0b, ref h1b, w0 + 2, w1 + 2, xg + 64, xh + 64);
            QuadPair<L, O, P>(ref g0, ref g1, ref h0, ref h1, ref g0b, ref g1b, ref h0b, ref h1b, w0 + 4, w1 + 4, xg + 128, xh + 128);
            QuadPair<L, O, P>(ref g0, ref g1, ref h0, ref h1, ref g0b, ref g1b, ref h0b, ref h1b, w0 + 6, w1 + 6, xg + 192, xh + 192);
            g0 += g0b;
            g1 += g1b;
            Vector256<float> e0 = Vector256.Create(L.InPlace ? GgmlFormats.Half(c0 - 2) : d0[b]), e1 = Vector256.Create(L.InPlace ? GgmlFormats.Half(c1 - 2) : d1[b]);
            var sa = Vector256.Load(sg);
            accG0 = Fma.MultiplyAdd(e0 * sa, Avx.ConvertToVector256Single(g0), accG0);
            accG1 = Fma.MultiplyAdd(e1 * sa, Avx.ConvertToVector256Single(g1), accG1);
            if (P.Two)
            {
                h0 += h0b;
                h1 += h1b;
                var sb = Vector256.Load(sh);
                accH0 = Fma.MultiplyAdd(e0 * sb, Avx.ConvertToVector256Single(h0), accH0);
                accH1 = Fma.MultiplyAdd(e1 * sb, Avx.ConvertToVector256Single(h1), accH1);
            }
            if (!L.Signed)
            {
                Vector256<float> f0 = Vector256.Create(m0[b]), f1 = Vector256.Create(m1[b]);
                var ta = Vector256.Load(tg);
                minG0 += f0 * ta;
                minG1 += f1 * ta;
                if (P.Two)
                {
                    var tb = Vector256.Load(th);
                    minH0 += f0 * tb;
                    minH1 += f1 * tb;
                }
            }
        }
        StoreTiles(accG0 + minG0, accG1 + minG1, accH0 + minH0, accH1 + minH1, bias0, bias1, y, n, P.Two ? 2 * TileRows : live, two);
        feed = f;
    }

    /// <summary>Quads q and q + 1 of a block (w0, w1 and the tiles' x at quad q) into the even and the odd chains of <see cref="TileLegacy{L, O, P}"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void QuadPair<L, O, P>(ref Vector256<int> g0, ref Vector256<int> g1, ref Vector256<int> h0, ref Vector256<int> h1,
        ref Vector256<int> g0b, ref Vector256<int> g1b, ref Vector256<int> h0b, ref Vector256<int> h1b, uint* w0, uint* w1, sbyte* xg, sbyte* xh)
        where L : struct, ILegacyQuant where O : struct, IOps where P : struct, IGroups
    {
        if (L.Signed && !O.Biased)
        {
            // Signed codes on AVX2 (|w| x (x with w's sign)): each broadcast's |w| once for both groups, one broadcast at
            // a time (the JIT computed it per use and ran out of registers).
            SignedQuad<P>(ref g0, ref h0, Vector256.Create(*w0).AsSByte(), xg, xh);
            SignedQuad<P>(ref g1, ref h1, Vector256.Create(*w1).AsSByte(), xg, xh);
            SignedQuad<P>(ref g0b, ref h0b, Vector256.Create(w0[1]).AsSByte(), xg + 32, xh + 32);
            SignedQuad<P>(ref g1b, ref h1b, Vector256.Create(w1[1]).AsSByte(), xg + 32, xh + 32);
            return;
        }
        var xa = Vector256.Load(xg);
        var xc = Vector256.Load(xg + 32);
        var wa = Broadcast<L, O>(w0);
        var wb = Broadcast<L, O>(w1);
        var wc = Broadcast<L, O>(w0 + 1);
        var wd = Broadcast<L, O>(w1 + 1);
        g0 = UnpackedLanes<L, O>(g0, wa, xa);
        g1 = UnpackedLanes<L, O>(g1, wb, xa);
        g0b = UnpackedLanes<L, O>(g0b, wc, xc);
        g1b = UnpackedLanes<L, O>(g1b, wd, xc);
        if (P.Two)
        {
            var xb = Vector256.Load(xh);
            var xd = Vector256.Load(xh + 32);
            h0 = UnpackedLanes<L, O>(h0, wa, xb);
            h1 = UnpackedLanes<L, O>(h1, wb, xb);
            h0b = UnpackedLanes<L, O>(h0b, wc, xd);
            h1b = UnpackedLanes<L, O>(h1b, wd, xd);
        }
    }

    /// <summary>g += the signed quad w (in every lane) x the group's codes at xg, h += w x the codes at xh (AVX2, vpmaddubsw on |w|).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void SignedQuad<P>(ref Vector256<int> g, ref Vector256<int> h, Vector256<sbyte> w, sbyte* xg, sbyte* xh) where P : struct, IGroups
    {
        var a = Avx2.Abs(w);
        g = Avx2Ops.SignedLanes(g, a, w, Vector256.Load(xg));
        if (P.Two) h = Avx2Ops.SignedLanes(h, a, w, Vector256.Load(xh));
    }

    /// <summary>A quad of codes in every lane: as unpacked, or read in place and biased here where the ops multiply biased codes (as UnpackLegacy stores them).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<byte> Broadcast<L, O>(uint* quad) where L : struct, ILegacyQuant where O : struct, IOps =>
        L.InPlace && Offset<L, O>() ? Vector256.Create(*quad).AsByte() ^ Vector256.Create((byte)0x80) : Vector256.Create(*quad).AsByte();

    /// <summary>
    /// A tile kernel's results: lanes of g0 / g1 (weight rows 0 / 1, activation rows 0-7) and h0 / h1 (rows 8-15), plus
    /// the weight rows' biases, stored for the first <paramref name="rows"/> activation rows (weight row 1 only if
    /// <paramref name="two"/>).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void StoreTiles(Vector256<float> g0, Vector256<float> g1, Vector256<float> h0, Vector256<float> h1, float bias0, float bias1,
        float* y, int n, int rows, bool two)
    {
        float* r = stackalloc float[32];
        (g0 + Vector256.Create(bias0)).Store(r);
        (g1 + Vector256.Create(bias1)).Store(r + 8);
        (h0 + Vector256.Create(bias0)).Store(r + 16);
        (h1 + Vector256.Create(bias1)).Store(r + 24);
        for (int i = 0; i < rows; i++)
        {
            int from = i < 8 ? i : 8 + i; // rows 8-15 are h's, 16 floats on
            y[(long)i * n] = r[from];
            if (two) y[(long)i * n + 1] = r[from + 8];
        }
    }

    /// <summary>One unpacked row (as <see cref="UnpackLegacy{L, O}"/> stores it) against one activation row: the reference form of the batched kernel.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static float TileLegacy1<L, O>(byte* u, int k, in Activation x) where L : struct, ILegacyQuant where O : struct, IOps
    {
        int nb = k / 32;
        float* d = (float*)(u + k), m = d + nb;
        float acc = 0, mins = 0;
        for (int b = 0; b < nb; b++)
        {
            int i = Vector256.Sum(UnpackedLanes<L, O>(Vector256<int>.Zero, Vector256.Load(u + 32 * b), Vector256.Load(x.Codes + 32 * b)));
            if (Offset<L, O>()) i += x.BlockOffsets[b];
            acc = MathF.FusedMultiplyAdd(d[b] * x.Scales[b], i, acc);
            if (!L.Signed) mins += m[b] * x.Sums[b];
        }
        return acc + mins;
    }

    // ---------------------------------------------------------------------------------------------------------------
    // The same values lane by lane, in plain integers: the reference the vector paths are tested against, and the path
    // where AVX2 is absent.

    private static bool HasMin(TensorDType type) => type is TensorDType.Q2_K or TensorDType.Q4_K or TensorDType.Q5_K;

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static float KQuantScalar(TensorDType type, byte* u, int k, in Activation x)
    {
        int n = k / 256;
        var parts = new KRow(u, k);
        int* scales = parts.Scales;
        short* e = parts.E;
        float* d = parts.D, f = parts.F;
        float acc = 0;
        for (int b = 0; b < n; b++)
        {
            int i = 0, g = 0;
            for (int v = 0; v < 256; v++)
            {
                int at = 256 * b + v;
                i += scales[16 * b + v / 16] * u[at] * x.Codes[at];
            }
            for (int grp = 0; grp < 16; grp++) g += e[16 * b + grp] * x.GroupSums[16 * b + grp];
            float dx = x.Scales[b];
            if (HasMin(type))
            {
                acc = MathF.FusedMultiplyAdd(dx * d[b], i, acc);
                acc = MathF.FusedMultiplyAdd(dx * -f[b], g, acc);
            }
            else acc = MathF.FusedMultiplyAdd(dx * d[b], i - g, acc);
        }
        return acc;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static float LegacyScalar(TensorDType type, byte* u, int k, in Activation x)
    {
        bool signed = type is TensorDType.Q4_0 or TensorDType.Q5_0 or TensorDType.Q8_0;
        int n = k / 32;
        float* d = (float*)(u + k), m = d + n;
        float acc = 0, mins = 0;
        for (int b = 0; b < n; b++)
        {
            int s = 0;
            for (int i = 32 * b; i < 32 * b + 32; i++) s += (signed ? ((sbyte*)u)[i] : u[i]) * x.Codes[i];
            acc = MathF.FusedMultiplyAdd(d[b] * x.Scales[b], s, acc);
            if (!signed) mins += m[b] * x.Sums[b];
        }
        return acc + mins;
    }
}
