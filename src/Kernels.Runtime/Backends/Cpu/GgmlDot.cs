// Dot products of GGML block-quantized weight rows with int8 activation rows (Q8Rows), in integers the way the
// formats are meant to be used: a weight row is first unpacked (codes to bytes, packed scales to int16 lanes), then
// dotted with any number of activation rows; the unpacked row is what the batched matmul reuses across rows.
//
// The value every path computes (scalar, AVX2, AVX-VNNI: the same bits, and the same for one activation row or many):
//   legacy types (blocks of 32, activations Q8_0 / Q8_1), per block b and lane l = 0..7 (values 4l..4l+3):
//     s[b,l] = sum w_i x_i over the lane, exactly (w the signed code: q - 8, q - 16, q; Q4_1 / Q5_1: q)
//     acc[l] = fma(dw[b] * dx[b], (float)s[b,l], acc[l]) in block order;  m += mw[b] * sx[b] (Q4_1, Q5_1)
//     dot = Sum8(acc) + m
//   k-quants (super-blocks of 256, activations Q8_K), per super-block b and lane l (values 32u + 4l.. for u = 0..7):
//     I[b,l] = sum sc_i c_i x_i over the lane, exactly (c the unsigned code, sc its group's integer scale)
//     E[b]   = sum over the 16-value groups g of e_g * bsum_g (e = offset * sc for Q3_K / Q6_K, the minimum for
//              Q2_K / Q4_K / Q5_K), exactly
//     acc[l] = fma(dx[b] * d[b], (float)I[b,l], acc[l]);  t = fma(dx[b] * f[b], (float)E[b], t)   (f = d or dmin)
//     dot = Sum8(acc) - t
// Sum8 is Vector256.Sum's fixed order. The integer parts are what llama.cpp's kernels compute; the float parts follow
// its per-lane AVX2 accumulation, so results agree with it to float rounding.
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Kernels.Runtime.Models;
using Kernels.Runtime.Numerics;

namespace Kernels.Runtime.Backends.Cpu;

public static unsafe class GgmlDot
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
    /// row streams the weight rows through the fused kernels; more unpack each weight row once into
    /// <paramref name="buffer"/> (at least <see cref="UnpackedBytes"/> + 64 bytes) and dot it with four rows at a time.
    /// </summary>
    public static void Multiply(TensorDType type, byte* weights, int k, int start, int end, Activation[] x, float* y, int n, float[]? bias, byte[] buffer)
    {
        var path = Best;
        fixed (byte* b0 = buffer)
        {
            byte* u = (byte*)(((nint)b0 + 63) & ~(nint)63);
            var job = new Rows(weights, type.ByteCount(k), k, x, y, n, bias, u);
            if (path == Path.Scalar)
            {
                job.Scalar(type, start, end);
                return;
            }
            bool vnni = path == Path.AvxVnni;
            switch (type)
            {
                case TensorDType.Q2_K: if (vnni) job.KQuant<Q2K, VnniOps>(start, end); else job.KQuant<Q2K, Avx2Ops>(start, end); break;
                case TensorDType.Q3_K: if (vnni) job.KQuant<Q3K, VnniOps>(start, end); else job.KQuant<Q3K, Avx2Ops>(start, end); break;
                case TensorDType.Q4_K: if (vnni) job.KQuant<Q4K, VnniOps>(start, end); else job.KQuant<Q4K, Avx2Ops>(start, end); break;
                case TensorDType.Q5_K: if (vnni) job.KQuant<Q5K, VnniOps>(start, end); else job.KQuant<Q5K, Avx2Ops>(start, end); break;
                case TensorDType.Q6_K: if (vnni) job.KQuant<Q6K, VnniOps>(start, end); else job.KQuant<Q6K, Avx2Ops>(start, end); break;
                case TensorDType.Q4_0: if (vnni) job.Legacy<Q40, VnniOps>(start, end); else job.Legacy<Q40, Avx2Ops>(start, end); break;
                case TensorDType.Q4_1: if (vnni) job.Legacy<Q41, VnniOps>(start, end); else job.Legacy<Q41, Avx2Ops>(start, end); break;
                case TensorDType.Q5_0: if (vnni) job.Legacy<Q50, VnniOps>(start, end); else job.Legacy<Q50, Avx2Ops>(start, end); break;
                case TensorDType.Q5_1: if (vnni) job.Legacy<Q51, VnniOps>(start, end); else job.Legacy<Q51, Avx2Ops>(start, end); break;
                case TensorDType.Q8_0: if (vnni) job.Legacy<Q80, VnniOps>(start, end); else job.Legacy<Q80, Avx2Ops>(start, end); break;
                default: throw new ArgumentOutOfRangeException(nameof(type), type, "not a GGML block type");
            }
        }
    }

    /// <summary>One activation row of a <see cref="Q8Rows"/> (Sums and GroupSums null where the format has none).</summary>
    public readonly struct Activation(sbyte* codes, float* scales, float* sums, short* groupSums, int* laneSums)
    {
        public readonly sbyte* Codes = codes;
        public readonly float* Scales = scales;
        public readonly float* Sums = sums;
        public readonly short* GroupSums = groupSums;
        public readonly int* LaneSums = laneSums;
    }

    private readonly struct Rows(byte* weights, long rowBytes, int k, Activation[] x, float* y, int n, float[]? bias, byte* u)
    {
        private float Bias(int j) => bias != null ? bias[j] : 0f;

        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        public void KQuant<F, O>(int start, int end) where F : struct, IKQuant where O : struct, IOps
        {
            if (x.Length == 1)
            {
                var x0 = x[0];
                for (int j = start; j < end; j++) y[j] = FusedKQuant<F, O>(weights + j * rowBytes, k, x0) + Bias(j);
                return;
            }
            for (int j = start; j < end; j++)
            {
                UnpackKQuant<F>(weights + j * rowBytes, k, u);
                int t = 0;
                for (; t + 4 <= x.Length; t += 4) TileKQuant<F, O>(u, k, x, t, y + (long)t * n + j, n, Bias(j));
                for (; t < x.Length; t++) y[(long)t * n + j] = TileKQuant1<F, O>(u, k, x[t]) + Bias(j);
            }
        }

        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        public void Legacy<L, O>(int start, int end) where L : struct, ILegacyQuant where O : struct, IOps
        {
            if (x.Length == 1)
            {
                var x0 = x[0];
                for (int j = start; j < end; j++) y[j] = FusedLegacy<L, O>(weights + j * rowBytes, k, x0) + Bias(j);
                return;
            }
            for (int j = start; j < end; j++)
            {
                UnpackLegacy<L>(weights + j * rowBytes, k, u);
                int t = 0;
                for (; t + 4 <= x.Length; t += 4) TileLegacy<L, O>(u, k, x, t, y + (long)t * n + j, n, Bias(j));
                for (; t < x.Length; t++) y[(long)t * n + j] = TileLegacy1<L, O>(u, k, x[t]) + Bias(j);
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
        bool vnni = path == Path.AvxVnni;
        return type switch
        {
            TensorDType.Q2_K => vnni ? TileKQuant1<Q2K, VnniOps>(unpacked, k, x) : TileKQuant1<Q2K, Avx2Ops>(unpacked, k, x),
            TensorDType.Q3_K => vnni ? TileKQuant1<Q3K, VnniOps>(unpacked, k, x) : TileKQuant1<Q3K, Avx2Ops>(unpacked, k, x),
            TensorDType.Q4_K => vnni ? TileKQuant1<Q4K, VnniOps>(unpacked, k, x) : TileKQuant1<Q4K, Avx2Ops>(unpacked, k, x),
            TensorDType.Q5_K => vnni ? TileKQuant1<Q5K, VnniOps>(unpacked, k, x) : TileKQuant1<Q5K, Avx2Ops>(unpacked, k, x),
            TensorDType.Q6_K => vnni ? TileKQuant1<Q6K, VnniOps>(unpacked, k, x) : TileKQuant1<Q6K, Avx2Ops>(unpacked, k, x),
            TensorDType.Q4_0 => vnni ? TileLegacy1<Q40, VnniOps>(unpacked, k, x) : TileLegacy1<Q40, Avx2Ops>(unpacked, k, x),
            TensorDType.Q4_1 => vnni ? TileLegacy1<Q41, VnniOps>(unpacked, k, x) : TileLegacy1<Q41, Avx2Ops>(unpacked, k, x),
            TensorDType.Q5_0 => vnni ? TileLegacy1<Q50, VnniOps>(unpacked, k, x) : TileLegacy1<Q50, Avx2Ops>(unpacked, k, x),
            TensorDType.Q5_1 => vnni ? TileLegacy1<Q51, VnniOps>(unpacked, k, x) : TileLegacy1<Q51, Avx2Ops>(unpacked, k, x),
            TensorDType.Q8_0 => vnni ? TileLegacy1<Q80, VnniOps>(unpacked, k, x) : TileLegacy1<Q80, Avx2Ops>(unpacked, k, x),
            _ => throw new ArgumentOutOfRangeException(nameof(type), type, "not a GGML block type"),
        };
    }

    /// <summary>The dot product of raw weight row <paramref name="row"/> with one activation row, through the fused (decode) kernel of <paramref name="path"/>.</summary>
    public static float FusedDot(TensorDType type, byte* row, int k, in Activation x, Path path)
    {
        bool vnni = path == Path.AvxVnni;
        if (path == Path.Scalar) throw new ArgumentException("the scalar path has no fused kernel", nameof(path));
        return type switch
        {
            TensorDType.Q2_K => vnni ? FusedKQuant<Q2K, VnniOps>(row, k, x) : FusedKQuant<Q2K, Avx2Ops>(row, k, x),
            TensorDType.Q3_K => vnni ? FusedKQuant<Q3K, VnniOps>(row, k, x) : FusedKQuant<Q3K, Avx2Ops>(row, k, x),
            TensorDType.Q4_K => vnni ? FusedKQuant<Q4K, VnniOps>(row, k, x) : FusedKQuant<Q4K, Avx2Ops>(row, k, x),
            TensorDType.Q5_K => vnni ? FusedKQuant<Q5K, VnniOps>(row, k, x) : FusedKQuant<Q5K, Avx2Ops>(row, k, x),
            TensorDType.Q6_K => vnni ? FusedKQuant<Q6K, VnniOps>(row, k, x) : FusedKQuant<Q6K, Avx2Ops>(row, k, x),
            TensorDType.Q4_0 => vnni ? FusedLegacy<Q40, VnniOps>(row, k, x) : FusedLegacy<Q40, Avx2Ops>(row, k, x),
            TensorDType.Q4_1 => vnni ? FusedLegacy<Q41, VnniOps>(row, k, x) : FusedLegacy<Q41, Avx2Ops>(row, k, x),
            TensorDType.Q5_0 => vnni ? FusedLegacy<Q50, VnniOps>(row, k, x) : FusedLegacy<Q50, Avx2Ops>(row, k, x),
            TensorDType.Q5_1 => vnni ? FusedLegacy<Q51, VnniOps>(row, k, x) : FusedLegacy<Q51, Avx2Ops>(row, k, x),
            TensorDType.Q8_0 => vnni ? FusedLegacy<Q80, VnniOps>(row, k, x) : FusedLegacy<Q80, Avx2Ops>(row, k, x),
            _ => throw new ArgumentOutOfRangeException(nameof(type), type, "not a GGML block type"),
        };
    }

    /// <summary>Unpacks one weight row with the vector format decoders (what the batched kernels read; the same bytes as <see cref="Unpack"/>).</summary>
    public static void UnpackVector(TensorDType type, byte* row, int k, byte* destination)
    {
        switch (type)
        {
            case TensorDType.Q2_K: UnpackKQuant<Q2K>(row, k, destination); break;
            case TensorDType.Q3_K: UnpackKQuant<Q3K>(row, k, destination); break;
            case TensorDType.Q4_K: UnpackKQuant<Q4K>(row, k, destination); break;
            case TensorDType.Q5_K: UnpackKQuant<Q5K>(row, k, destination); break;
            case TensorDType.Q6_K: UnpackKQuant<Q6K>(row, k, destination); break;
            case TensorDType.Q4_0: UnpackLegacy<Q40>(row, k, destination); break;
            case TensorDType.Q4_1: UnpackLegacy<Q41>(row, k, destination); break;
            case TensorDType.Q5_0: UnpackLegacy<Q50>(row, k, destination); break;
            case TensorDType.Q5_1: UnpackLegacy<Q51>(row, k, destination); break;
            case TensorDType.Q8_0: UnpackLegacy<Q80>(row, k, destination); break;
            default: throw new ArgumentOutOfRangeException(nameof(type), type, "not a GGML block type");
        }
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
    }

    // ---------------------------------------------------------------------------------------------------------------
    // k-quants. The unpacked super-block is read as: codes[256] | chunk scales [8][16] | e[16] | d | f.

    /// <summary>The float step of one super-block: acc + its integer lanes times dx d, less its group term times dx dmin (or folded in).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> Finish<F>(Vector256<float> acc, Vector256<int> s, Vector256<short> e, short* groupSums, float dx, float d, float dmin) where F : struct, IKQuant
    {
        var g = Avx2.MultiplyAddAdjacent(e, Vector256.Load(groupSums));
        if (!F.HasMin) return Fma.MultiplyAdd(Vector256.Create(dx * d), Avx.ConvertToVector256Single(s - g), acc);
        acc = Fma.MultiplyAdd(Vector256.Create(dx * d), Avx.ConvertToVector256Single(s), acc);
        return Fma.MultiplyAdd(Vector256.Create(-(dx * dmin)), Avx.ConvertToVector256Single(g), acc);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static float FusedKQuant<F, O>(byte* row, int k, in Activation x) where F : struct, IKQuant where O : struct, IOps
    {
        int n = k / 256;
        long bytes = F.BlockBytes;
        sbyte* codes = x.Codes;
        float* xScales = x.Scales;
        short* groupSums = x.GroupSums;
        var acc = Vector256<float>.Zero;
        for (int b = 0; b < n; b++)
        {
            byte* w = row + b * bytes;
            F.Header(w, out float d, out float dmin, out var scales, out var e);
            sbyte* xc = codes + 256 * b;
            var s = O.ScaledChunk(Vector256<int>.Zero, F.Codes(w, 0), Vector256.Load(xc), F.ChunkScales(scales, 0));
            s = O.ScaledChunk(s, F.Codes(w, 1), Vector256.Load(xc + 32), F.ChunkScales(scales, 1));
            s = O.ScaledChunk(s, F.Codes(w, 2), Vector256.Load(xc + 64), F.ChunkScales(scales, 2));
            s = O.ScaledChunk(s, F.Codes(w, 3), Vector256.Load(xc + 96), F.ChunkScales(scales, 3));
            s = O.ScaledChunk(s, F.Codes(w, 4), Vector256.Load(xc + 128), F.ChunkScales(scales, 4));
            s = O.ScaledChunk(s, F.Codes(w, 5), Vector256.Load(xc + 160), F.ChunkScales(scales, 5));
            s = O.ScaledChunk(s, F.Codes(w, 6), Vector256.Load(xc + 192), F.ChunkScales(scales, 6));
            s = O.ScaledChunk(s, F.Codes(w, 7), Vector256.Load(xc + 224), F.ChunkScales(scales, 7));
            acc = Finish<F>(acc, s, e, groupSums + 16 * b, xScales[b], d, dmin);
        }
        return Vector256.Sum(acc);
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

    /// <summary>One unpacked row against activation rows t..t+3: each weight chunk loaded once for the four.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void TileKQuant<F, O>(byte* u, int k, Activation[] x, int t, float* y, int n, float bias) where F : struct, IKQuant where O : struct, IOps
    {
        int nb = k / 256;
        short* scales = (short*)(u + k), e = scales + k / 2;
        float* d = (float*)(e + 16 * nb), f = d + nb;
        // The four rows' pointers as locals (a 5-pointer struct is not kept in registers).
        sbyte* c0 = x[t].Codes, c1 = x[t + 1].Codes, c2 = x[t + 2].Codes, c3 = x[t + 3].Codes;
        float* d0 = x[t].Scales, d1 = x[t + 1].Scales, d2 = x[t + 2].Scales, d3 = x[t + 3].Scales;
        short* g0 = x[t].GroupSums, g1 = x[t + 1].GroupSums, g2 = x[t + 2].GroupSums, g3 = x[t + 3].GroupSums;
        Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default;
        for (int b = 0; b < nb; b++)
        {
            Vector256<int> s0 = default, s1 = default, s2 = default, s3 = default;
            byte* c = u + 256 * b;
            short* sc = scales + 128 * b;
            int at = 256 * b;
            for (int ch = 0; ch < 8; ch++)
            {
                var w = Vector256.Load(c + 32 * ch);
                var s = Vector256.Load(sc + 16 * ch);
                int o = at + 32 * ch;
                s0 = O.ScaledChunk(s0, w, Vector256.Load(c0 + o), s);
                s1 = O.ScaledChunk(s1, w, Vector256.Load(c1 + o), s);
                s2 = O.ScaledChunk(s2, w, Vector256.Load(c2 + o), s);
                s3 = O.ScaledChunk(s3, w, Vector256.Load(c3 + o), s);
            }
            var eb = Vector256.Load(e + 16 * b);
            float db = d[b], fb = f[b];
            a0 = Finish<F>(a0, s0, eb, g0 + 16 * b, d0[b], db, fb);
            a1 = Finish<F>(a1, s1, eb, g1 + 16 * b, d1[b], db, fb);
            a2 = Finish<F>(a2, s2, eb, g2 + 16 * b, d2[b], db, fb);
            a3 = Finish<F>(a3, s3, eb, g3 + 16 * b, d3[b], db, fb);
        }
        y[0] = Vector256.Sum(a0) + bias;
        y[n] = Vector256.Sum(a1) + bias;
        y[2 * n] = Vector256.Sum(a2) + bias;
        y[3 * n] = Vector256.Sum(a3) + bias;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static float TileKQuant1<F, O>(byte* u, int k, in Activation x) where F : struct, IKQuant where O : struct, IOps
    {
        int nb = k / 256;
        short* scales = (short*)(u + k), e = scales + k / 2;
        float* d = (float*)(e + 16 * nb), f = d + nb;
        var a = Vector256<float>.Zero;
        for (int b = 0; b < nb; b++)
        {
            var s = Vector256<int>.Zero;
            for (int ch = 0; ch < 8; ch++)
                s = O.ScaledChunk(s, Vector256.Load(u + 256 * b + 32 * ch), Vector256.Load(x.Codes + 256 * b + 32 * ch), Vector256.Load(scales + 128 * b + 16 * ch));
            a = Finish<F>(a, s, Vector256.Load(e + 16 * b), x.GroupSums + 16 * b, x.Scales[b], d[b], f[b]);
        }
        return Vector256.Sum(a);
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
        Span<float> acc = stackalloc float[8];
        acc.Clear();
        for (int b = 0; b < n; b++)
        {
            float dx = x.Scales[b], dd = dx * d[b];
            for (int l = 0; l < 8; l++)
            {
                int s = 0;
                for (int ch = 0; ch < 8; ch++)
                    for (int i = 4 * l; i < 4 * l + 4; i++)
                    {
                        int at = 256 * b + 32 * ch + i;
                        s += scales[128 * b + 16 * ch + i / 2] * u[at] * x.Codes[at];
                    }
                int g = e[16 * b + 2 * l] * x.GroupSums[16 * b + 2 * l] + e[16 * b + 2 * l + 1] * x.GroupSums[16 * b + 2 * l + 1];
                if (HasMin(type))
                {
                    acc[l] = MathF.FusedMultiplyAdd(dd, s, acc[l]);
                    acc[l] = MathF.FusedMultiplyAdd(-(dx * f[b]), g, acc[l]);
                }
                else acc[l] = MathF.FusedMultiplyAdd(dd, s - g, acc[l]);
            }
        }
        return Sum8(acc);
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
