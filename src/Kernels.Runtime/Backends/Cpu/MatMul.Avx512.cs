// The dense matmul (F32, F16, BF16 weights) on AVX-512: 16-lane fused multiply-adds, register tiles of 4 weight rows x
// up to 4 x rows (16 accumulators of 32) or 6 (24, where one chunk covers K), F16 widened 16 at a time in integer registers.
using System.Buffers;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Kernels.Runtime.Models;
using Kernels.Runtime.Numerics;

namespace Kernels.Runtime.Backends.Cpu;

/// <summary>
/// The AVX-512 path sums every dot product in one fixed order, whatever the tile or the number of x rows: one 16-lane
/// accumulator over the first k &amp; ~15 columns in order, folded to 8 lanes (low half + high half), one more 8-lane
/// step when k % 16 >= 8, Vector256.Sum's reduction, then the scalar tail. The AVX2 path sums in the same order (its 16
/// lanes as two 8-lane halves, DotTile), so the two give the same bits (tested); each is batch invariant.
/// </summary>
internal static unsafe partial class MatMul
{
    /// <summary>
    /// Whether dense matmuls take the AVX-512 path: AVX-512F present and the runtime accelerating Vector512 (it does not
    /// where DOTNET_EnableAVX512=0, which forces the AVX2 path; .NET 10 ignores DOTNET_EnableAVX512F). Tests switch it to compare the two.
    /// </summary>
    internal static bool Wide { get; set; } = Avx512F.IsSupported && Avx512BW.IsSupported && Vector512.IsHardwareAccelerated && Fma.IsSupported && Avx2.IsSupported;

    /// <summary>The instruction path dense matmuls take here, for reports: "AVX-512", "AVX2" or "scalar".</summary>
    public static string DensePath => Wide ? "AVX-512" : Vectorized ? "AVX2" : "scalar";

    /// <summary>K columns per chunk of the wide tile: 4 weight rows of it (8 KiB as F16) stay in L1 while x rows pass.</summary>
    private const int WideChunkK = 1024;

    /// <summary>Whether <paramref name="w"/>'s rows are read by the wide kernels (the quantized ones have their own).</summary>
    private static bool WideDense(WeightTensor w) => Wide && w.DType is TensorDType.F32 or TensorDType.F16 or TensorDType.BF16;

    /// <summary>
    /// Whether the wide kernels read finite F16 weights as fields (<see cref="WideF16Fields"/>: 3 operations per 16
    /// halves instead of <see cref="WideF16"/>'s 9) against x prescaled by 2^112, when x allows. Off where a denormal
    /// operand costs a microcode assist (Intel: F16Subnormals.Needed), since a subnormal half's fields are a denormal
    /// fp32. The products are the same real numbers either way, so the same bits; tests switch it to compare.
    /// </summary>
    internal static bool HalfFields { get; set; } = !F16Subnormals.Needed;

    private static bool WideHalfFields(WeightTensor w) => HalfFields && WideDense(w) && w.DType == TensorDType.F16 && w.AllFinite;

    /// <summary>How a wide kernel reads 16 elements of a weight row as fp32 (8 and 1 at the ends, as IRowLoad).</summary>
    private interface IWideLoad : IRowLoad
    {
        static abstract Vector512<float> Load16(byte* row, int i);
    }

    /// <summary>
    /// Finite fp16 as exact fp32 values from integer operations only, so no denormal ever reaches the FPU: a normal
    /// half is rebiased (exponent + 112) in place, a subnormal one (|h| &lt; 2^-14) converted from its integer mantissa
    /// times 2^-24 under a mask. 9 operations per 16 halves; the data is read as stored (no flushed copy, no fix-ups).
    /// </summary>
    private readonly struct WideF16 : IWideLoad
    {
        public static int ElementBytes => 2;
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<float> Load16(byte* row, int i)
        {
            var h = Avx512F.ConvertToVector512Int32(Vector256.Load((ushort*)row + i));
            var magnitude = h & Vector512.Create(0x7FFF);
            var normal = Avx512F.ShiftLeftLogical(magnitude, 13) + Vector512.Create(112 << 23);
            var subnormal = Avx512F.ConvertToVector512Single(magnitude) * Vector512.Create(5.9604645e-8f); // 2^-24
            var value = Vector512.ConditionalSelect(Vector512.LessThan(magnitude, Vector512.Create(0x400)).AsSingle(), subnormal, normal.AsSingle());
            return (value.AsInt32() | Avx512F.ShiftLeftLogical(h & Vector512.Create(0x8000), 16)).AsSingle();
        }
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<float> Load(byte* row, int i)
        {
            var h = Avx2.ConvertToVector256Int32((ushort*)row + i);
            var magnitude = h & Vector256.Create(0x7FFF);
            var normal = Avx2.ShiftLeftLogical(magnitude, 13) + Vector256.Create(112 << 23);
            var subnormal = Avx.ConvertToVector256Single(magnitude) * Vector256.Create(5.9604645e-8f);
            var value = Vector256.ConditionalSelect(Vector256.LessThan(magnitude, Vector256.Create(0x400)).AsSingle(), subnormal, normal.AsSingle());
            return (value.AsInt32() | Avx2.ShiftLeftLogical(h & Vector256.Create(0x8000), 16)).AsSingle();
        }
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static float LoadScalar(byte* row, int i) => (float)((Half*)row)[i];
    }

    /// <summary>
    /// Finite fp16 as its fp32 fields: sign-extended, shifted into place, the sign copies above the exponent cleared, so
    /// a lane holds the half's value times 2^-112 (exact, a subnormal half as a denormal). x must carry the 2^112.
    /// </summary>
    private readonly struct WideF16Fields : IWideLoad
    {
        public static int ElementBytes => 2;
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<float> Load16(byte* row, int i) =>
            (Avx512F.ShiftLeftLogical(Avx512F.ConvertToVector512Int32(Vector256.Load((short*)row + i)), 13) & Vector512.Create(FieldsMask)).AsSingle();
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<float> Load(byte* row, int i) =>
            (Avx2.ShiftLeftLogical(Avx2.ConvertToVector256Int32((short*)row + i), 13) & Vector256.Create(FieldsMask)).AsSingle();
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static float LoadScalar(byte* row, int i) => BitConverter.Int32BitsToSingle((((short*)row)[i] << 13) & FieldsMask);
        private const int FieldsMask = unchecked((int)0x8FFFFFFF);
    }

    /// <summary>
    /// The end of every wide dot product: the 16-lane accumulator folded to 8 lanes, the 8-column step at k16 when
    /// there is one, Vector256.Sum, the scalar tail, the bias.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float WideFinish<L>(Vector512<float> acc, byte* row, float* x, int k, float bias) where L : IWideLoad
    {
        int k16 = k & ~15, k8 = k & ~7;
        var a = DotTile.Fold(acc);
        if (k8 > k16) a = Fma.MultiplyAdd(L.Load(row, k16), Vector256.Load(x + k16), a);
        float s = Vector256.Sum(a);
        for (int i = k8; i < k; i++) s += L.LoadScalar(row, i) * x[i];
        return s + bias;
    }

    /// <summary>One x row against weight rows [start, end): each row streamed front to back, a 64-byte line prefetched <see cref="DecodeLead"/> bytes ahead.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void WideDecode<L>(byte* data, float* x, int k, int start, int end, float* y, float[]? bias) where L : IWideLoad
    {
        long rowBytes = (long)k * L.ElementBytes;
        int k16 = k & ~15, line = 64 / L.ElementBytes;
        for (int b = 0; b < DecodeLead; b += 64) Sse.Prefetch0(data + start * rowBytes + b);
        for (int j = start; j < end; j++)
        {
            byte* row = data + j * rowBytes;
            var a0 = Vector512<float>.Zero;
            for (int i = 0; i < k16; i += 16)
            {
                if ((i & (line - 1)) == 0) Sse.Prefetch0(row + i * L.ElementBytes + DecodeLead);
                a0 = Avx512F.FusedMultiplyAdd(L.Load16(row, i), Vector512.Load(x + i), a0);
            }
            y[j] = WideFinish<L>(a0, row, x, k, bias != null ? bias[j] : 0f);
        }
    }

    /// <summary>
    /// Two or more x rows: the weights four rows at a time, read as stored and widened inside the tile (the F16 ones as
    /// fields when x is prescaled), K in chunks of <see cref="WideChunkK"/> that stay in L1 while every x row passes, 4 x
    /// rows per tile, or 6 (<see cref="WideTile6{L}"/>) where one chunk covers K: each widened weight vector then feeds
    /// six multiply-adds instead of four and a call's fixed costs (zeroing, folds, sums) are spread over 24 dots instead of
    /// 16 (builds alternated on the 2-core Zen 5, F16 in cache: `gate` and `q` 6-8 % less time at 16 and 64 rows, the LM
    /// head level at 16 and 10-20 % less at 64; the 16-sequence decode step 0-4 %, within this host's noise). Widening in
    /// the tile repeats it for every group of x rows, but those integer operations run beside the multiply-adds; a
    /// converted fp32 panel (the first design) cost a store and a load per 16 weights and a pass that the multiply-adds
    /// waited for: 16 rows 20-30 % slower, 64 rows 5-9 % (docs/gguf.md).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void WideBlocked<L>(byte* data, float* x, int rows, int k, int n, int start, int end, float* y, float[]? bias) where L : IWideLoad
    {
        long rowBytes = (long)k * L.ElementBytes;
        int k16 = k & ~15;
        int tiles = (rows + 3) / 4; // the carry's tiles of 4 x rows
        bool whole = (k & 15) == 0 && k16 > 0; // every dot ends in the tile: its sums are stored from registers
        long feedSteps = (long)TileCalls(rows, whole && k16 <= WideChunkK) * (k16 / 16); // a panel's tile steps
        var carryBuffer = ArrayPool<Vector512<float>>.Shared.Rent(Math.Max(1, tiles * 16));
        fixed (Vector512<float>* carry = carryBuffer)
        {
            int j = start;
            for (; j + 4 <= end; j += 4)
            {
                byte* w0 = data + j * rowBytes;
                // The next four rows' bytes, spread over the steps of the tiles below.
                var feed = j + 8 <= end ? new LineFeed(w0 + 4 * rowBytes, 4 * rowBytes, feedSteps) : LineFeed.None;
                var b4 = bias != null ? Vector128.Create(bias, j) : Vector128<float>.Zero;
                for (int kc = 0; kc < k16; kc += WideChunkK)
                {
                    int len = Math.Min(WideChunkK, k16 - kc);
                    bool store = whole && kc + len == k16;
                    for (int t = 0, g = 0; t < rows; g++)
                    {
                        // Six x rows a tile where one chunk ends every dot (24 accumulators: each widened weight vector
                        // feeds six multiply-adds instead of four, and a call's fixed costs are spread over 24 dots).
                        if (store && kc == 0 && SixRows(rows - t))
                        {
                            WideTile6<L>(w0, rowBytes, x + (long)t * k, k, len, ref feed, y + (long)t * n + j, n, b4);
                            t += 6;
                            continue;
                        }
                        WideTile<L>(w0 + (long)kc * L.ElementBytes, rowBytes, x + (long)t * k + kc, k, Math.Min(4, rows - t), len, carry + 16 * g, kc > 0, ref feed,
                            store ? y + (long)t * n + j : null, n, b4);
                        t += 4;
                    }
                }
                feed.Rest();
                if (whole) continue;
                for (int t = 0, g = 0; t < rows; t += 4, g++)
                    for (int r = 0; r < Math.Min(4, rows - t); r++)
                    {
                        Vector512<float>* a = carry + 16 * g + r;
                        for (int c = 0; c < 4; c++)
                            y[(long)(t + r) * n + j + c] = WideFinish<L>(k16 > 0 ? a[4 * c] : default, w0 + c * rowBytes, x + (long)(t + r) * k, k,
                                bias != null ? bias[j + c] : 0f);
                    }
            }
            for (; j < end; j++) // the last 1-3 rows of the range: streamed like decode, for every x row
                for (int t = 0; t < rows; t++) WideDecode<L>(data, x + (long)t * k, k, j, j + 1, y + (long)t * n, bias);
        }
        ArrayPool<Vector512<float>>.Shared.Return(carryBuffer);
    }

    /// <summary>
    /// 4 weight rows as stored (<paramref name="ws"/> bytes apart, widened 16 at a time by L) x <paramref name="group"/>
    /// (1..4) x rows (<paramref name="xs"/> floats apart) over <paramref name="len"/> (a multiple of 16) columns: acc[c][r] += w_c[i..i+16] * x_r[i..i+16] in
    /// order, 16 accumulators in registers, starting from <paramref name="carry"/>[4c + r] when <paramref name="carryIn"/>
    /// (a later chunk of K) and ending there, or, given <paramref name="y"/> (the chunk ends every dot: K a multiple of 16),
    /// folded and summed in registers into y[r * n + c] with <paramref name="bias"/>[c] (DotTile.SumOne, the order of
    /// <see cref="WideFinish{L}"/>). Storing from registers instead of through carry: 16 rows 15-25 % faster, 64 rows ~18 %.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void WideTile<L>(byte* w, long ws, float* x, int xs, int group, int len, Vector512<float>* carry, bool carryIn, ref LineFeed feed,
        float* y, long n, Vector128<float> bias) where L : IWideLoad
    {
        byte* w0 = w, w1 = w + ws, w2 = w + 2 * ws, w3 = w + 3 * ws;
        float* x0 = x, x1 = x + xs, x2 = x + 2 * xs, x3 = x + 3 * xs;
        var f = feed; // in registers for the loop (LineFeed's summary)
        Vector512<float> a00 = default, a01 = default, a02 = default, a03 = default, a10 = default, a11 = default, a12 = default, a13 = default;
        Vector512<float> a20 = default, a21 = default, a22 = default, a23 = default, a30 = default, a31 = default, a32 = default, a33 = default;
        if (carryIn)
        {
            a00 = carry[0]; a01 = carry[1]; a02 = carry[2]; a03 = carry[3];
            a10 = carry[4]; a11 = carry[5]; a12 = carry[6]; a13 = carry[7];
            a20 = carry[8]; a21 = carry[9]; a22 = carry[10]; a23 = carry[11];
            a30 = carry[12]; a31 = carry[13]; a32 = carry[14]; a33 = carry[15];
        }
        switch (group)
        {
            case 4:
                for (int i = 0; i < len; i += 16)
                {
                    f.Step();
                    var v0 = Vector512.Load(x0 + i); var v1 = Vector512.Load(x1 + i); var v2 = Vector512.Load(x2 + i); var v3 = Vector512.Load(x3 + i);
                    var c = L.Load16(w0, i);
                    a00 = Avx512F.FusedMultiplyAdd(c, v0, a00); a01 = Avx512F.FusedMultiplyAdd(c, v1, a01); a02 = Avx512F.FusedMultiplyAdd(c, v2, a02); a03 = Avx512F.FusedMultiplyAdd(c, v3, a03);
                    c = L.Load16(w1, i);
                    a10 = Avx512F.FusedMultiplyAdd(c, v0, a10); a11 = Avx512F.FusedMultiplyAdd(c, v1, a11); a12 = Avx512F.FusedMultiplyAdd(c, v2, a12); a13 = Avx512F.FusedMultiplyAdd(c, v3, a13);
                    c = L.Load16(w2, i);
                    a20 = Avx512F.FusedMultiplyAdd(c, v0, a20); a21 = Avx512F.FusedMultiplyAdd(c, v1, a21); a22 = Avx512F.FusedMultiplyAdd(c, v2, a22); a23 = Avx512F.FusedMultiplyAdd(c, v3, a23);
                    c = L.Load16(w3, i);
                    a30 = Avx512F.FusedMultiplyAdd(c, v0, a30); a31 = Avx512F.FusedMultiplyAdd(c, v1, a31); a32 = Avx512F.FusedMultiplyAdd(c, v2, a32); a33 = Avx512F.FusedMultiplyAdd(c, v3, a33);
                }
                break;
            case 3:
                for (int i = 0; i < len; i += 16)
                {
                    f.Step();
                    var v0 = Vector512.Load(x0 + i); var v1 = Vector512.Load(x1 + i); var v2 = Vector512.Load(x2 + i);
                    var c = L.Load16(w0, i); a00 = Avx512F.FusedMultiplyAdd(c, v0, a00); a01 = Avx512F.FusedMultiplyAdd(c, v1, a01); a02 = Avx512F.FusedMultiplyAdd(c, v2, a02);
                    c = L.Load16(w1, i); a10 = Avx512F.FusedMultiplyAdd(c, v0, a10); a11 = Avx512F.FusedMultiplyAdd(c, v1, a11); a12 = Avx512F.FusedMultiplyAdd(c, v2, a12);
                    c = L.Load16(w2, i); a20 = Avx512F.FusedMultiplyAdd(c, v0, a20); a21 = Avx512F.FusedMultiplyAdd(c, v1, a21); a22 = Avx512F.FusedMultiplyAdd(c, v2, a22);
                    c = L.Load16(w3, i); a30 = Avx512F.FusedMultiplyAdd(c, v0, a30); a31 = Avx512F.FusedMultiplyAdd(c, v1, a31); a32 = Avx512F.FusedMultiplyAdd(c, v2, a32);
                }
                break;
            case 2:
                for (int i = 0; i < len; i += 16)
                {
                    f.Step();
                    var v0 = Vector512.Load(x0 + i); var v1 = Vector512.Load(x1 + i);
                    var c = L.Load16(w0, i); a00 = Avx512F.FusedMultiplyAdd(c, v0, a00); a01 = Avx512F.FusedMultiplyAdd(c, v1, a01);
                    c = L.Load16(w1, i); a10 = Avx512F.FusedMultiplyAdd(c, v0, a10); a11 = Avx512F.FusedMultiplyAdd(c, v1, a11);
                    c = L.Load16(w2, i); a20 = Avx512F.FusedMultiplyAdd(c, v0, a20); a21 = Avx512F.FusedMultiplyAdd(c, v1, a21);
                    c = L.Load16(w3, i); a30 = Avx512F.FusedMultiplyAdd(c, v0, a30); a31 = Avx512F.FusedMultiplyAdd(c, v1, a31);
                }
                break;
            default:
                for (int i = 0; i < len; i += 16)
                {
                    f.Step();
                    var v0 = Vector512.Load(x0 + i);
                    a00 = Avx512F.FusedMultiplyAdd(L.Load16(w0, i), v0, a00);
                    a10 = Avx512F.FusedMultiplyAdd(L.Load16(w1, i), v0, a10);
                    a20 = Avx512F.FusedMultiplyAdd(L.Load16(w2, i), v0, a20);
                    a30 = Avx512F.FusedMultiplyAdd(L.Load16(w3, i), v0, a30);
                }
                break;
        }
        if (y != null)
        {
            DotTile.SumOne(DotTile.Fold(a00), DotTile.Fold(a10), DotTile.Fold(a20), DotTile.Fold(a30), y, bias);
            if (group > 1) DotTile.SumOne(DotTile.Fold(a01), DotTile.Fold(a11), DotTile.Fold(a21), DotTile.Fold(a31), y + n, bias);
            if (group > 2) DotTile.SumOne(DotTile.Fold(a02), DotTile.Fold(a12), DotTile.Fold(a22), DotTile.Fold(a32), y + 2 * n, bias);
            if (group > 3) DotTile.SumOne(DotTile.Fold(a03), DotTile.Fold(a13), DotTile.Fold(a23), DotTile.Fold(a33), y + 3 * n, bias);
            feed = f;
            return;
        }
        carry[0] = a00; carry[1] = a01; carry[2] = a02; carry[3] = a03;
        carry[4] = a10; carry[5] = a11; carry[6] = a12; carry[7] = a13;
        carry[8] = a20; carry[9] = a21; carry[10] = a22; carry[11] = a23;
        carry[12] = a30; carry[13] = a31; carry[14] = a32; carry[15] = a33;
        feed = f;
    }

    /// <summary>Whether the next tile takes six of the <paramref name="remaining"/> x rows: 6, or 10 and more (so no lone 1-3 rows follow).</summary>
    private static bool SixRows(int remaining) => remaining == 6 || remaining >= 10;

    /// <summary>Tiles <see cref="WideBlocked{L}"/> runs per chunk for <paramref name="rows"/> x rows (six-row ones where <paramref name="six"/>).</summary>
    private static int TileCalls(int rows, bool six)
    {
        int calls = 0;
        for (int t = 0; t < rows; calls++) t += six && SixRows(rows - t) ? 6 : 4;
        return calls;
    }

    /// <summary>
    /// <see cref="WideTile{L}"/> for six x rows over all of K in one chunk (<paramref name="len"/> = K &amp; ~15 &lt;=
    /// <see cref="WideChunkK"/>, K a multiple of 16): 24 accumulators, the four weight vectors widened once a step and
    /// each multiplied by the six x rows, every dot folded and summed into y in <see cref="WideFinish{L}"/>'s order.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void WideTile6<L>(byte* w, long ws, float* x, int xs, int len, ref LineFeed feed, float* y, long n, Vector128<float> bias) where L : IWideLoad
    {
        byte* w0 = w, w1 = w + ws, w2 = w + 2 * ws, w3 = w + 3 * ws;
        var f = feed; // in registers for the loop (LineFeed's summary)
        Vector512<float> a00 = default, a01 = default, a02 = default, a03 = default, a04 = default, a05 = default;
        Vector512<float> a10 = default, a11 = default, a12 = default, a13 = default, a14 = default, a15 = default;
        Vector512<float> a20 = default, a21 = default, a22 = default, a23 = default, a24 = default, a25 = default;
        Vector512<float> a30 = default, a31 = default, a32 = default, a33 = default, a34 = default, a35 = default;
        for (int i = 0; i < len; i += 16)
        {
            f.Step();
            var c0 = L.Load16(w0, i); var c1 = L.Load16(w1, i); var c2 = L.Load16(w2, i); var c3 = L.Load16(w3, i);
            float* xi = x + i;
            var v = Vector512.Load(xi);
            a00 = Avx512F.FusedMultiplyAdd(c0, v, a00); a10 = Avx512F.FusedMultiplyAdd(c1, v, a10); a20 = Avx512F.FusedMultiplyAdd(c2, v, a20); a30 = Avx512F.FusedMultiplyAdd(c3, v, a30);
            v = Vector512.Load(xi + xs);
            a01 = Avx512F.FusedMultiplyAdd(c0, v, a01); a11 = Avx512F.FusedMultiplyAdd(c1, v, a11); a21 = Avx512F.FusedMultiplyAdd(c2, v, a21); a31 = Avx512F.FusedMultiplyAdd(c3, v, a31);
            v = Vector512.Load(xi + 2 * xs);
            a02 = Avx512F.FusedMultiplyAdd(c0, v, a02); a12 = Avx512F.FusedMultiplyAdd(c1, v, a12); a22 = Avx512F.FusedMultiplyAdd(c2, v, a22); a32 = Avx512F.FusedMultiplyAdd(c3, v, a32);
            v = Vector512.Load(xi + 3 * xs);
            a03 = Avx512F.FusedMultiplyAdd(c0, v, a03); a13 = Avx512F.FusedMultiplyAdd(c1, v, a13); a23 = Avx512F.FusedMultiplyAdd(c2, v, a23); a33 = Avx512F.FusedMultiplyAdd(c3, v, a33);
            v = Vector512.Load(xi + 4 * xs);
            a04 = Avx512F.FusedMultiplyAdd(c0, v, a04); a14 = Avx512F.FusedMultiplyAdd(c1, v, a14); a24 = Avx512F.FusedMultiplyAdd(c2, v, a24); a34 = Avx512F.FusedMultiplyAdd(c3, v, a34);
            v = Vector512.Load(xi + 5 * xs);
            a05 = Avx512F.FusedMultiplyAdd(c0, v, a05); a15 = Avx512F.FusedMultiplyAdd(c1, v, a15); a25 = Avx512F.FusedMultiplyAdd(c2, v, a25); a35 = Avx512F.FusedMultiplyAdd(c3, v, a35);
        }
        DotTile.SumOne(DotTile.Fold(a00), DotTile.Fold(a10), DotTile.Fold(a20), DotTile.Fold(a30), y, bias);
        DotTile.SumOne(DotTile.Fold(a01), DotTile.Fold(a11), DotTile.Fold(a21), DotTile.Fold(a31), y + n, bias);
        DotTile.SumOne(DotTile.Fold(a02), DotTile.Fold(a12), DotTile.Fold(a22), DotTile.Fold(a32), y + 2 * n, bias);
        DotTile.SumOne(DotTile.Fold(a03), DotTile.Fold(a13), DotTile.Fold(a23), DotTile.Fold(a33), y + 3 * n, bias);
        DotTile.SumOne(DotTile.Fold(a04), DotTile.Fold(a14), DotTile.Fold(a24), DotTile.Fold(a34), y + 4 * n, bias);
        DotTile.SumOne(DotTile.Fold(a05), DotTile.Fold(a15), DotTile.Fold(a25), DotTile.Fold(a35), y + 5 * n, bias);
        feed = f;
    }

    /// <summary>The wide kernels for one job's rows [start, end): decode or blocked, with the row loader the dtype and x call for (x prescaled when <paramref name="halfFields"/>).</summary>
    private static void WideRows(WeightTensor w, byte* data, float* x, int rows, int k, int n, int start, int end, float* y, float[]? bias, bool halfFields)
    {
        bool one = rows == 1;
        switch (w.DType)
        {
            case TensorDType.F16 when halfFields:
                if (one) WideDecode<WideF16Fields>(data, x, k, start, end, y, bias); else WideBlocked<WideF16Fields>(data, x, rows, k, n, start, end, y, bias);
                break;
            case TensorDType.F32:
                if (one) WideDecode<F32Rows>(data, x, k, start, end, y, bias); else WideBlocked<F32Rows>(data, x, rows, k, n, start, end, y, bias);
                break;
            case TensorDType.BF16:
                if (one) WideDecode<Bf16Rows>(data, x, k, start, end, y, bias); else WideBlocked<Bf16Rows>(data, x, rows, k, n, start, end, y, bias);
                break;
            case TensorDType.F16 when !w.AllFinite:
                if (one) WideDecode<F16Rows>(data, x, k, start, end, y, bias); else WideBlocked<F16Rows>(data, x, rows, k, n, start, end, y, bias);
                break;
            case TensorDType.F16:
                if (one) WideDecode<WideF16>(data, x, k, start, end, y, bias); else WideBlocked<WideF16>(data, x, rows, k, n, start, end, y, bias);
                break;
            default:
                throw new ArgumentOutOfRangeException(nameof(w), w.DType, "not a dense dtype");
        }
    }
}
