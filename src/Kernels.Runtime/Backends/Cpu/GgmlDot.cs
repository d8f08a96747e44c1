// Dot products of GGML block-quantized weight rows with int8 activation rows (Q8Rows), in integers the way the
// formats are meant to be used: a weight row is first unpacked (codes to bytes, packed scales to int16 lanes), then
// dotted with any number of activation rows; the unpacked row is what the batched matmul reuses across rows.
//
// The value every path computes (scalar, AVX2, AVX-VNNI: the same bits, and the same for one activation row or many):
//   legacy types (blocks of 32, activations Q8_0 / Q8_1), per block b and lane l = 0..7 (values 4l..4l+3):
//     s[b,l] = sum w_i x_i over the lane, exactly (w the signed code: q - 8, q - 16, q; Q4_1 / Q5_1: q)
//     acc[l] = fma(dw[b] * dx[b], (float)s[b,l], acc[l]) in block order;  m += mw[b] * sx[b] (Q4_1, Q5_1)
//     dot = Sum8(acc) + m
//   k-quants (super-blocks of 256, activations Q8_K), per super-block b:
//     I[b] = sum over its 256 values of sc_i c_i x_i, exactly (c the unsigned code, sc its group's integer scale)
//     E[b] = sum over the 16-value groups g of e_g * bsum_g (e = offset * sc for Q3_K / Q6_K, the minimum for
//            Q2_K / Q4_K / Q5_K), exactly
//     acc = fma(dx[b] * d[b], (float)I[b], acc);  acc = fma(dx[b] * -dmin[b], (float)E[b], acc)   (Q2_K, Q4_K, Q5_K)
//     acc = fma(dx[b] * d[b], (float)(I[b] - E[b]), acc)                                          (Q3_K, Q6_K)
//     dot = acc, in super-block order
// A super-block's integers are summed whole before the float step, so the batched kernel can finish a super-block for
// eight activation rows in one vector (one row per lane). The integer parts are what llama.cpp's kernels compute; the
// float parts differ from its per-lane accumulation by float rounding only.
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Kernels.Runtime.Numerics;

namespace Kernels.Runtime.Backends.Cpu;

internal static unsafe class GgmlDot
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
    //   k-quants: scales16 [K/32 chunks][16 x int16] | e16 [K/256][16 x int16] | d [K/256] f32 | f [K/256] f32
    //   legacy:   d [K/32] f32 | m [K/32] f32 (the block minimum of Q4_1 / Q5_1)

    /// <summary>Bytes of an unpacked row of <paramref name="k"/> values (a multiple of 64, so rows stay aligned).</summary>
    public static int UnpackedBytes(TensorDType type, int k) =>
        (type.BlockSize() == 256 ? k + k + k / 8 + k / 32 : k + k / 4) + 63 & ~63;

    /// <summary>
    /// Batched rows of the 32-value formats: weight rows unpacked together, then passed by the activation rows
    /// <see cref="GroupRows"/> at a time, so a group's codes and lane sums (as many bytes again) stay in L1 across the
    /// chunk instead of streaming from L2 for every weight row (Q8_0, 64 rows: 10-15 % less time on the AMD EPYC with
    /// AVX-512). One group (up to 16 rows) keeps the plain row loop, which measured faster there; the k-quant tile,
    /// whose activations are half the bytes, measured slower blocked and is not.
    /// </summary>
    public const int ChunkRows = 8;

    /// <summary>Activation rows per pass over an unpacked chunk (a multiple of the 4-row tile).</summary>
    public const int GroupRows = 16;

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
            short* scales = (short*)(destination + k), e = scales + k / 2;
            float* d = (float*)(e + 16 * n), f = d + n;
            for (int b = 0; b < n; b++)
            {
                byte* x = row + (long)b * bytes, c = destination + 256 * b;
                short* s = scales + 128 * b, eb = e + 16 * b;
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

    /// <summary>The scales of one 32-value chunk: lanes 0-7 (values 0-15) take <paramref name="first"/>, lanes 8-15 <paramref name="second"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void ChunkScales(short* s, int first, int second)
    {
        for (int i = 0; i < 8; i++) { s[i] = (short)first; s[i + 8] = (short)second; }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void UnpackQ2_K(byte* x, byte* c, short* s, short* e, out float d, out float f)
    {
        byte* scales = x, qs = x + 16;
        d = GgmlBlocks.Half(x + 80);
        f = GgmlBlocks.Half(x + 82);
        for (int u = 0; u < 8; u++)
        {
            int h = u / 4, shift = 2 * (u % 4), g = 8 * h + 2 * (u % 4);
            TwoBits(qs + 32 * h, shift, c + 32 * u);
            ChunkScales(s + 16 * u, scales[g] & 0xF, scales[g + 1] & 0xF);
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
    private static void UnpackQ3_K(byte* x, byte* c, short* s, short* e, out float d, out float f)
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
            ChunkScales(s + 16 * u, sc[g] - 32, sc[g + 1] - 32);
        }
        for (int g = 0; g < 16; g++) e[g] = (short)(4 * (sc[g] - 32));
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void UnpackQ45_K(byte* x, byte* c, short* s, short* e, out float d, out float f, bool five)
    {
        d = GgmlBlocks.Half(x);
        f = GgmlBlocks.Half(x + 2);
        byte* scales = x + 4, qh = x + 16, qs = x + (five ? 48 : 16);
        for (int g = 0; g < 8; g++)
        {
            GgmlBlocks.ScaleMinK4(g, scales, out int sc, out int mn);
            ChunkScales(s + 16 * g, sc, sc);
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
    private static void UnpackQ6_K(byte* x, byte* c, short* s, short* e, out float d, out float f)
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
                ChunkScales(s + 16 * (4 * h + j), sc[g], sc[g + 1]);
            }
        }
        for (int g = 0; g < 16; g++) e[g] = (short)(32 * sc[g]);
    }

    // ---------------------------------------------------------------------------------------------------------------
    // The matmul task: weight rows [start, end) against every activation row.

    /// <summary>
    /// y[t, j] = row j of the weights . activation row t (+ bias[j]) for j in [start, end) and every t: one activation
    /// row streams the weight rows through the fused kernels (two weight rows at a time for k-quants); more unpack each
    /// weight row once into <paramref name="buffer"/> (at least <see cref="UnpackedBytes"/> + 64 bytes) and dot it with
    /// eight activation rows at a time (k-quants; four for the 32-value types).
    /// </summary>
    public static void Multiply(TensorDType type, byte* weights, int k, int start, int end, Activation[] x, float* y, int n, float[]? bias, byte[] buffer)
    {
        var path = Best;
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
    /// One activation row of a <see cref="Q8Rows"/> (Sums, GroupSums and the tile pointers null where the format has
    /// none). TileScales and TileGroupSums point at the row's group of <see cref="TileRows"/> (Q8_K): per super-block,
    /// the group's scales [8] and its group sums as 8 pairs of 16-value groups [8][8 x 2].
    /// </summary>
    public readonly struct Activation(sbyte* codes, float* scales, float* sums, short* groupSums, int* laneSums, float* tileScales = null, short* tileGroupSums = null)
    {
        public readonly sbyte* Codes = codes;
        public readonly float* Scales = scales;
        public readonly float* Sums = sums;
        public readonly short* GroupSums = groupSums;
        public readonly int* LaneSums = laneSums;
        public readonly float* TileScales = tileScales;
        public readonly short* TileGroupSums = tileGroupSums;
    }

    /// <summary>Activation rows the batched k-quant kernel takes at once (its rows' scales and sums come transposed by Q8Rows).</summary>
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
            // The activation rows' code pointers, read by the tiles without going through the array of structs.
            nint[]? heap = x.Length > 1024 ? GC.AllocateUninitializedArray<nint>(x.Length, pinned: true) : null;
            nint* onStack = stackalloc nint[heap == null ? x.Length : 0];
            sbyte** codes = heap == null ? (sbyte**)onStack : (sbyte**)Unsafe.AsPointer(ref heap[0]);
            for (int t = 0; t < x.Length; t++) codes[t] = x[t].Codes;
            for (int j = start; j < end; j++)
            {
                FetchRow(j + 1);
                UnpackKQuant<F>(weights + j * rowBytes, k, u);
                int t = 0;
                for (; t + TileRows <= x.Length; t += TileRows)
                    TileKQuant8<F, O>(u, k, codes + t, x[t].TileScales, x[t].TileGroupSums, y + (long)t * n + j, n, Bias(j));
                if (x.Length - t >= 4)
                {
                    TileKQuant4<F, O>(u, k, codes + t, x[t].TileScales, x[t].TileGroupSums, y + (long)t * n + j, n, Bias(j));
                    t += 4;
                }
                for (; t < x.Length; t++) y[(long)t * n + j] = TileKQuant1<F, O>(u, k, x[t]) + Bias(j);
            }
            GC.KeepAlive(heap);
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
            if (x.Length <= GroupRows)
            {
                for (int j = start; j < end; j++)
                {
                    FetchRow(j + 1);
                    UnpackLegacy<L>(weights + j * rowBytes, k, u);
                    int t = 0;
                    for (; t + 4 <= x.Length; t += 4) TileLegacy<L, O>(u, k, x, t, y + (long)t * n + j, n, Bias(j));
                    for (; t < x.Length; t++) y[(long)t * n + j] = TileLegacy1<L, O>(u, k, x[t]) + Bias(j);
                }
                return;
            }
            int stride = UnpackedBytes(L.Type, k);
            for (int j0 = start; j0 < end; j0 += ChunkRows)
            {
                int j1 = Math.Min(end, j0 + ChunkRows);
                for (int j = j0; j < j1; j++)
                {
                    FetchRow(j + ChunkRows);
                    UnpackLegacy<L>(weights + j * rowBytes, k, u + (j - j0) * stride);
                }
                for (int t0 = 0; t0 < x.Length; t0 += GroupRows)
                {
                    int t1 = Math.Min(x.Length, t0 + GroupRows);
                    for (int j = j0; j < j1; j++)
                    {
                        byte* uj = u + (j - j0) * stride;
                        int t = t0;
                        for (; t + 4 <= t1; t += 4) TileLegacy<L, O>(uj, k, x, t, y + (long)t * n + j, n, Bias(j));
                        for (; t < t1; t++) y[(long)t * n + j] = TileLegacy1<L, O>(uj, k, x[t]) + Bias(j);
                    }
                }
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
        public float Legacy<L, O>() where L : struct, ILegacyQuant where O : struct, IOps => TileLegacy1<L, O>(unpacked, k, x);
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
        public bool Legacy<L, O>() where L : struct, ILegacyQuant where O : struct, IOps { UnpackLegacy<L>(row, k, destination); return true; }
    }

    /// <summary>The integer steps that differ between instruction sets (the JIT specializes per struct).</summary>
    private interface IOps
    {
        /// <summary>acc + the int16 scales times the pairwise sums of codes x activations (k-quant chunk).</summary>
        static abstract Vector256<int> ScaledChunk(Vector256<int> acc, Vector256<byte> codes, Vector256<sbyte> x, Vector256<short> scales);
        /// <summary>Per lane of 4: sum of signed codes x activations; <paramref name="offset"/> is -128 x the lane sums of x.</summary>
        static abstract Vector256<int> SignedBlock(Vector256<sbyte> w, Vector256<sbyte> x, int* offset);
        /// <summary>Per lane of 4: sum of unsigned codes x activations.</summary>
        static abstract Vector256<int> UnsignedBlock(Vector256<byte> c, Vector256<sbyte> x);
        /// <summary>acc + the pairwise products of int16 lanes a x b, summed in pairs (vpmaddwd).</summary>
        static abstract Vector256<int> PairProducts(Vector256<int> acc, Vector256<short> a, Vector256<short> b);
    }

    private readonly struct Avx2Ops : IOps
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<int> ScaledChunk(Vector256<int> acc, Vector256<byte> codes, Vector256<sbyte> x, Vector256<short> scales) =>
            Avx2.Add(acc, Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(codes, x), scales));

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<int> SignedBlock(Vector256<sbyte> w, Vector256<sbyte> x, int* offset) =>
            Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(Avx2.Abs(w), Avx2.Sign(x, w)), Vector256.Create((short)1));

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<int> UnsignedBlock(Vector256<byte> c, Vector256<sbyte> x) =>
            Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(c, x), Vector256.Create((short)1));

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<int> PairProducts(Vector256<int> acc, Vector256<short> a, Vector256<short> b) => Avx2.Add(acc, Avx2.MultiplyAddAdjacent(a, b));
    }

    private readonly struct VnniOps : IOps
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<int> ScaledChunk(Vector256<int> acc, Vector256<byte> codes, Vector256<sbyte> x, Vector256<short> scales) =>
            AvxVnni.MultiplyWideningAndAdd(acc, Avx2.MultiplyAddAdjacent(codes, x), scales);

        /// <summary>(w + 128) x, summed by vpdpbusd onto -128 x (sum of x): exactly w x.</summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<int> SignedBlock(Vector256<sbyte> w, Vector256<sbyte> x, int* offset) =>
            AvxVnni.MultiplyWideningAndAdd(Vector256.Load(offset), w.AsByte() ^ Vector256.Create((byte)0x80), x);

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<int> UnsignedBlock(Vector256<byte> c, Vector256<sbyte> x) =>
            AvxVnni.MultiplyWideningAndAdd(Vector256<int>.Zero, c, x);

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<int> PairProducts(Vector256<int> acc, Vector256<short> a, Vector256<short> b) => AvxVnni.MultiplyWideningAndAdd(acc, a, b);
    }

    // ---------------------------------------------------------------------------------------------------------------
    // k-quants. The unpacked super-block is read as: codes[256] | chunk scales [8][16] | e[16] | d | f.

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

    /// <summary>Eight vectors to the vector of their lane sums (exact integers), lane r from <c>v_r</c>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<int> LaneSums8(Vector256<int> v0, Vector256<int> v1, Vector256<int> v2, Vector256<int> v3,
        Vector256<int> v4, Vector256<int> v5, Vector256<int> v6, Vector256<int> v7)
    {
        var u0 = Avx2.HorizontalAdd(Avx2.HorizontalAdd(v0, v1), Avx2.HorizontalAdd(v2, v3)); // rows 0-3, low | high halves
        var u1 = Avx2.HorizontalAdd(Avx2.HorizontalAdd(v4, v5), Avx2.HorizontalAdd(v6, v7));
        return Avx2.Permute2x128(u0, u1, 0x20) + Avx2.Permute2x128(u0, u1, 0x31);
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
        short* scales = (short*)(u + k), e = scales + k / 2;
        float* d = (float*)(e + 16 * n), f = d + n;
        for (int b = 0; b < n; b++)
        {
            byte* w = row + b * bytes, c = u + 256 * b;
            short* sc = scales + 128 * b;
            F.Header(w, out d[b], out float dmin, out var s, out var eb);
            f[b] = F.HasMin ? dmin : d[b];
            eb.Store(e + 16 * b);
            // Unrolled so each chunk index is a constant: the decoders' shuffle masks and shifts fold (a chunk index in a
            // loop variable made the JIT build a 32-byte shuffle mask lane by lane, half the time of a 16-row matmul).
            F.Codes(w, 0).Store(c); F.ChunkScales(s, 0).Store(sc);
            F.Codes(w, 1).Store(c + 32); F.ChunkScales(s, 1).Store(sc + 16);
            F.Codes(w, 2).Store(c + 64); F.ChunkScales(s, 2).Store(sc + 32);
            F.Codes(w, 3).Store(c + 96); F.ChunkScales(s, 3).Store(sc + 48);
            F.Codes(w, 4).Store(c + 128); F.ChunkScales(s, 4).Store(sc + 64);
            F.Codes(w, 5).Store(c + 160); F.ChunkScales(s, 5).Store(sc + 80);
            F.Codes(w, 6).Store(c + 192); F.ChunkScales(s, 6).Store(sc + 96);
            F.Codes(w, 7).Store(c + 224); F.ChunkScales(s, 7).Store(sc + 112);
        }
    }

    /// <summary>
    /// One unpacked row against the eight activation rows of a tile (t a multiple of <see cref="TileRows"/>): each weight
    /// chunk loaded once for the eight; eight independent integer chains, so the loop is bound by the multiply ports
    /// rather than by one chain's latency; the super-block's float step done for the eight rows in one vector (their
    /// I by a transposing reduction, their E from the transposed group sums).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void TileKQuant8<F, O>(byte* u, int k, sbyte** codes, float* dx, short* sums, float* y, int n, float bias) where F : struct, IKQuant where O : struct, IOps
    {
        int nb = k / 256;
        short* scales = (short*)(u + k), e = scales + k / 2;
        float* d = (float*)(e + 16 * nb), f = d + nb;
        // The rows' pointers as locals (read through memory, the JIT reloads them every chunk).
        sbyte* c0 = codes[0], c1 = codes[1], c2 = codes[2], c3 = codes[3], c4 = codes[4], c5 = codes[5], c6 = codes[6], c7 = codes[7];
        var acc = Vector256<float>.Zero;
        for (int b = 0; b < nb; b++)
        {
            Vector256<int> s0 = default, s1 = default, s2 = default, s3 = default, s4 = default, s5 = default, s6 = default, s7 = default;
            byte* c = u + 256 * b;
            short* sc = scales + 128 * b;
            int at = 256 * b;
            for (int ch = 0; ch < 8; ch++)
            {
                var w = Vector256.Load(c + 32 * ch);
                var m = Vector256.Load(sc + 16 * ch);
                int o = at + 32 * ch;
                s0 = O.ScaledChunk(s0, w, Vector256.Load(c0 + o), m);
                s1 = O.ScaledChunk(s1, w, Vector256.Load(c1 + o), m);
                s2 = O.ScaledChunk(s2, w, Vector256.Load(c2 + o), m);
                s3 = O.ScaledChunk(s3, w, Vector256.Load(c3 + o), m);
                s4 = O.ScaledChunk(s4, w, Vector256.Load(c4 + o), m);
                s5 = O.ScaledChunk(s5, w, Vector256.Load(c5 + o), m);
                s6 = O.ScaledChunk(s6, w, Vector256.Load(c6 + o), m);
                s7 = O.ScaledChunk(s7, w, Vector256.Load(c7 + o), m);
            }
            var i = LaneSums8(s0, s1, s2, s3, s4, s5, s6, s7);
            acc = Step8<F>(acc, i, TileGroupTerm<O>(e + 16 * b, sums + 128 * b), Vector256.Load(dx + 8 * b), d[b], f[b]);
        }
        float* results = stackalloc float[8];
        (acc + Vector256.Create(bias)).Store(results);
        for (int r = 0; r < 8; r++) y[(long)r * n] = results[r];
    }

    /// <summary>
    /// <see cref="TileKQuant8"/> for the first four rows of a tile (a batch's last, partial tile): four chains, the float
    /// step in lanes 0-3 (lanes 4-7 carry nothing used).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void TileKQuant4<F, O>(byte* u, int k, sbyte** codes, float* dx, short* sums, float* y, int n, float bias) where F : struct, IKQuant where O : struct, IOps
    {
        int nb = k / 256;
        short* scales = (short*)(u + k), e = scales + k / 2;
        float* d = (float*)(e + 16 * nb), f = d + nb;
        sbyte* c0 = codes[0], c1 = codes[1], c2 = codes[2], c3 = codes[3];
        var acc = Vector256<float>.Zero;
        for (int b = 0; b < nb; b++)
        {
            Vector256<int> s0 = default, s1 = default, s2 = default, s3 = default;
            byte* c = u + 256 * b;
            short* sc = scales + 128 * b;
            int at = 256 * b;
            for (int ch = 0; ch < 8; ch++)
            {
                var w = Vector256.Load(c + 32 * ch);
                var m = Vector256.Load(sc + 16 * ch);
                int o = at + 32 * ch;
                s0 = O.ScaledChunk(s0, w, Vector256.Load(c0 + o), m);
                s1 = O.ScaledChunk(s1, w, Vector256.Load(c1 + o), m);
                s2 = O.ScaledChunk(s2, w, Vector256.Load(c2 + o), m);
                s3 = O.ScaledChunk(s3, w, Vector256.Load(c3 + o), m);
            }
            var z = Vector256<int>.Zero;
            var i = LaneSums8(s0, s1, s2, s3, z, z, z, z);
            acc = Step8<F>(acc, i, TileGroupTerm<O>(e + 16 * b, sums + 128 * b), Vector256.Load(dx + 8 * b), d[b], f[b]);
        }
        float* results = stackalloc float[8];
        (acc + Vector256.Create(bias)).Store(results);
        for (int r = 0; r < 4; r++) y[(long)r * n] = results[r];
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static float TileKQuant1<F, O>(byte* u, int k, in Activation x) where F : struct, IKQuant where O : struct, IOps
    {
        int nb = k / 256;
        short* scales = (short*)(u + k), e = scales + k / 2;
        float* d = (float*)(e + 16 * nb), f = d + nb;
        float acc = 0;
        for (int b = 0; b < nb; b++)
        {
            var s = Vector256<int>.Zero;
            for (int ch = 0; ch < 8; ch++)
                s = O.ScaledChunk(s, Vector256.Load(u + 256 * b + 32 * ch), Vector256.Load(x.Codes + 256 * b + 32 * ch), Vector256.Load(scales + 128 * b + 16 * ch));
            Totals(s, Avx2.MultiplyAddAdjacent(Vector256.Load(e + 16 * b), Vector256.Load(x.GroupSums + 16 * b)), out int i, out int g);
            acc = Step<F>(acc, i, g, x.Scales[b], d[b], f[b]);
        }
        return acc;
    }

    // ---------------------------------------------------------------------------------------------------------------
    // 32-value formats. The unpacked row is read as: codes[K] | d[K/32] | m[K/32].

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<int> LegacyBlock<L, O>(Vector256<byte> codes, sbyte* x, int* laneSums) where L : struct, ILegacyQuant where O : struct, IOps =>
        L.Signed ? O.SignedBlock(codes.AsSByte(), Vector256.Load(x), laneSums) : O.UnsignedBlock(codes, Vector256.Load(x));

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static float FusedLegacy<L, O>(byte* row, int k, in Activation x) where L : struct, ILegacyQuant where O : struct, IOps
    {
        int n = k / 32;
        long bytes = L.BlockBytes;
        // The activation's pointers in locals: read through the `in` struct, the JIT reloaded them and kept the
        // accumulator on the stack every block.
        sbyte* codes = x.Codes;
        float* scales = x.Scales, sums = x.Sums;
        int* lanes = x.LaneSums;
        var acc = Vector256<float>.Zero;
        float mins = 0;
        for (int b = 0; b < n; b++)
        {
            byte* w = row + b * bytes;
            L.Header(w, out float d, out float m);
            var s = LegacyBlock<L, O>(L.Codes(w), codes + 32 * b, lanes + 8 * b);
            acc = Fma.MultiplyAdd(Vector256.Create(d * scales[b]), Avx.ConvertToVector256Single(s), acc);
            if (!L.Signed) mins += m * sums[b];
        }
        return Vector256.Sum(acc) + mins;
    }

    /// <summary>
    /// <see cref="FusedLegacy{L, O}"/> for two consecutive weight rows (decode), block by block: two independent
    /// accumulator chains, so a block's multiply-add waits on the other row's rather than on its own row's previous one.
    /// Each row's operations are the one-row kernel's, so the same bits.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void FusedLegacy2<L, O>(byte* row, long rowBytes, int k, in Activation x, float* y) where L : struct, ILegacyQuant where O : struct, IOps
    {
        int n = k / 32;
        long bytes = L.BlockBytes;
        sbyte* codes = x.Codes;
        float* scales = x.Scales, sums = x.Sums;
        int* lanes = x.LaneSums;
        Vector256<float> acc0 = default, acc1 = default;
        float mins0 = 0, mins1 = 0;
        for (int b = 0; b < n; b++)
        {
            byte* w0 = row + b * bytes, w1 = w0 + rowBytes;
            L.Header(w0, out float d0, out float m0);
            L.Header(w1, out float d1, out float m1);
            float dx = scales[b];
            var s0 = LegacyBlock<L, O>(L.Codes(w0), codes + 32 * b, lanes + 8 * b);
            var s1 = LegacyBlock<L, O>(L.Codes(w1), codes + 32 * b, lanes + 8 * b);
            acc0 = Fma.MultiplyAdd(Vector256.Create(d0 * dx), Avx.ConvertToVector256Single(s0), acc0);
            acc1 = Fma.MultiplyAdd(Vector256.Create(d1 * dx), Avx.ConvertToVector256Single(s1), acc1);
            if (!L.Signed)
            {
                mins0 += m0 * sums[b];
                mins1 += m1 * sums[b];
            }
        }
        y[0] = Vector256.Sum(acc0) + mins0;
        y[1] = Vector256.Sum(acc1) + mins1;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void UnpackLegacy<L>(byte* row, int k, byte* u) where L : struct, ILegacyQuant
    {
        int n = k / 32;
        long bytes = L.BlockBytes;
        float* d = (float*)(u + k), m = d + n;
        for (int b = 0; b < n; b++)
        {
            byte* w = row + b * bytes;
            L.Header(w, out d[b], out m[b]);
            L.Codes(w).Store(u + 32 * b);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void TileLegacy<L, O>(byte* u, int k, Activation[] x, int t, float* y, int n, float bias) where L : struct, ILegacyQuant where O : struct, IOps
    {
        int nb = k / 32;
        float* d = (float*)(u + k), m = d + nb;
        sbyte* c0 = x[t].Codes, c1 = x[t + 1].Codes, c2 = x[t + 2].Codes, c3 = x[t + 3].Codes;
        float* d0 = x[t].Scales, d1 = x[t + 1].Scales, d2 = x[t + 2].Scales, d3 = x[t + 3].Scales;
        int* l0 = x[t].LaneSums, l1 = x[t + 1].LaneSums, l2 = x[t + 2].LaneSums, l3 = x[t + 3].LaneSums;
        float* s0 = x[t].Sums, s1 = x[t + 1].Sums, s2 = x[t + 2].Sums, s3 = x[t + 3].Sums;
        Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default;
        float m0 = 0, m1 = 0, m2 = 0, m3 = 0;
        int b = 0;
        // Eight blocks at a time: their 4 x 8 scale products in four multiplies (the same fp32 products as one at a time),
        // each broadcast from its lane, instead of a scalar multiply and a broadcast per block and row.
        for (; b + 8 <= nb; b += 8)
        {
            var dw = Vector256.Load(d + b);
            Vector256<float> p0 = dw * Vector256.Load(d0 + b), p1 = dw * Vector256.Load(d1 + b), p2 = dw * Vector256.Load(d2 + b), p3 = dw * Vector256.Load(d3 + b);
            for (int i = 0; i < 8; i++)
            {
                int bi = b + i, o = 32 * bi;
                var lane = Vector256.Create(i);
                var w = Vector256.Load(u + o);
                a0 = Fma.MultiplyAdd(Avx2.PermuteVar8x32(p0, lane), Avx.ConvertToVector256Single(LegacyBlock<L, O>(w, c0 + o, l0 + 8 * bi)), a0);
                a1 = Fma.MultiplyAdd(Avx2.PermuteVar8x32(p1, lane), Avx.ConvertToVector256Single(LegacyBlock<L, O>(w, c1 + o, l1 + 8 * bi)), a1);
                a2 = Fma.MultiplyAdd(Avx2.PermuteVar8x32(p2, lane), Avx.ConvertToVector256Single(LegacyBlock<L, O>(w, c2 + o, l2 + 8 * bi)), a2);
                a3 = Fma.MultiplyAdd(Avx2.PermuteVar8x32(p3, lane), Avx.ConvertToVector256Single(LegacyBlock<L, O>(w, c3 + o, l3 + 8 * bi)), a3);
                if (!L.Signed)
                {
                    m0 += m[bi] * s0[bi];
                    m1 += m[bi] * s1[bi];
                    m2 += m[bi] * s2[bi];
                    m3 += m[bi] * s3[bi];
                }
            }
        }
        for (; b < nb; b++)
        {
            var w = Vector256.Load(u + 32 * b);
            int o = 32 * b;
            float db = d[b];
            a0 = Fma.MultiplyAdd(Vector256.Create(db * d0[b]), Avx.ConvertToVector256Single(LegacyBlock<L, O>(w, c0 + o, l0 + 8 * b)), a0);
            a1 = Fma.MultiplyAdd(Vector256.Create(db * d1[b]), Avx.ConvertToVector256Single(LegacyBlock<L, O>(w, c1 + o, l1 + 8 * b)), a1);
            a2 = Fma.MultiplyAdd(Vector256.Create(db * d2[b]), Avx.ConvertToVector256Single(LegacyBlock<L, O>(w, c2 + o, l2 + 8 * b)), a2);
            a3 = Fma.MultiplyAdd(Vector256.Create(db * d3[b]), Avx.ConvertToVector256Single(LegacyBlock<L, O>(w, c3 + o, l3 + 8 * b)), a3);
            if (!L.Signed)
            {
                m0 += m[b] * s0[b];
                m1 += m[b] * s1[b];
                m2 += m[b] * s2[b];
                m3 += m[b] * s3[b];
            }
        }
        y[0] = Vector256.Sum(a0) + m0 + bias;
        y[n] = Vector256.Sum(a1) + m1 + bias;
        y[2 * n] = Vector256.Sum(a2) + m2 + bias;
        y[3 * n] = Vector256.Sum(a3) + m3 + bias;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static float TileLegacy1<L, O>(byte* u, int k, in Activation x) where L : struct, ILegacyQuant where O : struct, IOps
    {
        int nb = k / 32;
        float* d = (float*)(u + k), m = d + nb;
        var a = Vector256<float>.Zero;
        float mins = 0;
        for (int b = 0; b < nb; b++)
        {
            a = Fma.MultiplyAdd(Vector256.Create(d[b] * x.Scales[b]), Avx.ConvertToVector256Single(LegacyBlock<L, O>(Vector256.Load(u + 32 * b), x.Codes + 32 * b, x.LaneSums + 8 * b)), a);
            if (!L.Signed) mins += m[b] * x.Sums[b];
        }
        return Vector256.Sum(a) + mins;
    }

    // ---------------------------------------------------------------------------------------------------------------
    // The same values lane by lane, in plain integers: the reference the vector paths are tested against, and the path
    // where AVX2 is absent.

    private static bool HasMin(TensorDType type) => type is TensorDType.Q2_K or TensorDType.Q4_K or TensorDType.Q5_K;

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static float KQuantScalar(TensorDType type, byte* u, int k, in Activation x)
    {
        int n = k / 256;
        short* scales = (short*)(u + k), e = scales + k / 2;
        float* d = (float*)(e + 16 * n), f = d + n;
        float acc = 0;
        for (int b = 0; b < n; b++)
        {
            int i = 0, g = 0;
            for (int v = 0; v < 256; v++)
            {
                int at = 256 * b + v;
                i += scales[128 * b + 16 * (v / 32) + (v % 32) / 2] * u[at] * x.Codes[at];
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
        Span<float> acc = stackalloc float[8];
        acc.Clear();
        float mins = 0;
        for (int b = 0; b < n; b++)
        {
            float dd = d[b] * x.Scales[b];
            for (int l = 0; l < 8; l++)
            {
                int s = 0;
                for (int i = 4 * l; i < 4 * l + 4; i++) s += (signed ? ((sbyte*)u)[32 * b + i] : u[32 * b + i]) * x.Codes[32 * b + i];
                acc[l] = MathF.FusedMultiplyAdd(dd, s, acc[l]);
            }
            if (!signed) mins += m[b] * x.Sums[b];
        }
        return Sum8(acc) + mins;
    }

    /// <summary>The 8 lanes summed in Vector256.Sum's order.</summary>
    private static float Sum8(ReadOnlySpan<float> a) => Vector256.Sum(Vector256.Create(a));
}
