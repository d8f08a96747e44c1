// The register-blocked dot-product tile shared by the CPU matmul and attention: 4 rows of one operand against up to
// 3 rows of the other, 12 accumulators in registers (7 loads per 12 fused multiply-adds), in two passes: the low and
// the high 8 columns of every 16, folded at the end (the AVX-512 path's order).
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Kernels.Runtime.Backends.Cpu;

/// <summary>
/// Every AVX2 float dot product (matmul and attention, tile or one at a time) is summed in the AVX-512 path's order,
/// so the two paths give the same bits: over the first len &amp; ~15 columns two 8-lane accumulators, one for columns
/// 16m..16m+7 and one for 16m+8..16m+15, each in order (one 16-lane accumulator in halves), folded lane by lane
/// (<see cref="Fold"/>); one more 8-lane step when len % 16 is 8; then Vector256.Sum's reduction. Two accumulators
/// per dot also halve the chain of dependent multiply-adds a one-row (decode) dot waits on. A dot computed one at a
/// time the same way gives the same bits, so a result never depends on how rows were grouped into tiles. Rows in the
/// paired column order of F16 weights (DTypeConvert.FiniteHalfFields16: each 16-block as columns 0-3, 8-11, then
/// 4-7, 12-15) fold to the same lanes with one permute. Needs AVX2 and FMA.
/// </summary>
internal static unsafe class DotTile
{
    /// <summary>How a tile ends: its raw accumulator halves into carry (a later chunk of K follows), folded into carry
    /// (the caller adds a scalar tail), or summed into y.</summary>
    public enum Finish { Carry, Fold, Store }

    /// <summary>
    /// The two accumulators of a dot as the one 8-lane accumulator of the AVX-512 order (its 16 lanes folded low half
    /// plus high half): lane by lane, or for paired columns (<paramref name="paired"/>) the low 128 bits of each plus
    /// its high 128 bits.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Fold(Vector256<float> lo, Vector256<float> hi, bool paired) =>
        paired ? Avx.Permute2x128(lo, hi, 0x20) + Avx.Permute2x128(lo, hi, 0x31) : lo + hi;

    /// <summary>y0[c] = Sum(r_c) + bias[c] and y1[c] = Sum(s_c) + bias[c] for c = 0..3, in Vector256.Sum's order.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void SumPair(Vector256<float> r0, Vector256<float> r1, Vector256<float> r2, Vector256<float> r3,
        Vector256<float> s0, Vector256<float> s1, Vector256<float> s2, Vector256<float> s3, float* y0, float* y1, Vector128<float> bias)
    {
        var g0 = Avx.HorizontalAdd(Avx.HorizontalAdd(r0, r1), Avx.HorizontalAdd(r2, r3));
        var g1 = Avx.HorizontalAdd(Avx.HorizontalAdd(s0, s1), Avx.HorizontalAdd(s2, s3));
        var s = Avx.Permute2x128(g0, g1, 0x20) + Avx.Permute2x128(g0, g1, 0x31);
        (s.GetLower() + bias).Store(y0);
        (s.GetUpper() + bias).Store(y1);
    }

    /// <summary>A 16-lane accumulator folded to 8 lanes (low half + high half): how every AVX-512 dot ends before its 8-lane sum.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector256<float> Fold(Vector512<float> a) => a.GetLower() + a.GetUpper();

    /// <summary>y[c] = Sum(r_c) + bias[c] for c = 0..3, in Vector256.Sum's order.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void SumOne(Vector256<float> r0, Vector256<float> r1, Vector256<float> r2, Vector256<float> r3, float* y, Vector128<float> bias)
    {
        var g = Avx.HorizontalAdd(Avx.HorizontalAdd(r0, r1), Avx.HorizontalAdd(r2, r3));
        (g.GetLower() + g.GetUpper() + bias).Store(y);
    }

    /// <summary>
    /// 4 fp32 rows w_c (<paramref name="ws"/> floats apart) x <paramref name="group"/> (1..3) rows x0, x1, x2 over
    /// <paramref name="len"/> (a multiple of 8) columns, each dot in the order of the class summary: one pass over the
    /// low 8 columns of every 16, one over the high 8, each with the tile's 12 accumulators in registers (7 loads per
    /// 12 fused multiply-adds, the chunk in L1 for both), then the halves folded. The accumulators start from zero,
    /// or from carry (24 slots: the halves of dot (c, r) at c * 3 + r and 12 + c * 3 + r) with
    /// <paramref name="carryIn"/> (a later chunk of K); <paramref name="finish"/>: <see cref="Finish.Carry"/> (len a
    /// multiple of 16) leaves the halves in carry, <see cref="Finish.Fold"/> leaves each dot's folded 8 lanes (with the
    /// last 8-column step) at carry[c * 3 + r], <see cref="Finish.Store"/> writes y_r[c] = Sum + bias[c] (y_r: y0, y1,
    /// y2). <paramref name="paired"/>: the rows' columns are in the paired F16 order.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization), SkipLocalsInit]
    public static void Dots(float* w, int ws, float* x0, float* x1, float* x2, int group, int len, Vector256<float>* carry, bool carryIn, Finish finish,
        bool paired, float* y0, float* y1, float* y2, Vector128<float> bias)
    {
        if (carry == null && len >= 16)
        {
            // Room for the first pass's halves (a tile under 16 columns has none: attention with small heads).
            var local = stackalloc Vector256<float>[24];
            carry = local;
        }
        if (group == 1) Tile<One>(w, ws, x0, x1, x2, len, carry, carryIn, finish, paired, y0, y1, y2, bias);
        else if (group == 2) Tile<Two>(w, ws, x0, x1, x2, len, carry, carryIn, finish, paired, y0, y1, y2, bias);
        else Tile<Three>(w, ws, x0, x1, x2, len, carry, carryIn, finish, paired, y0, y1, y2, bias);
    }

    /// <summary>
    /// A <see cref="Dots"/> tile: the low 8 columns of every 16 (halves[0..12] after it, carried from there with
    /// <paramref name="load"/>), then the high 8, which finish in registers: carried (halves[12..]), or folded with
    /// the low halves, the 8-column step at len &amp; ~15 added, then left at halves[c * 3 + r] (<see cref="Finish.Fold"/>)
    /// or summed into y. Its own method, so the two loops get the registers to themselves.
    /// </summary>
    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    private static void Tile<G>(float* w, int ws, float* x0, float* x1, float* x2, int len, Vector256<float>* halves, bool load, Finish finish,
        bool paired, float* y0, float* y1, float* y2, Vector128<float> bias) where G : struct, IRowCount
    {
        float* w0 = w, w1 = w + ws, w2 = w + 2 * ws, w3 = w + 3 * ws;
        int len16 = len & ~15;
        bool anyHalves = load || len16 > 0 || finish == Finish.Carry;
        if (anyHalves) Pass<G>(w0, w1, w2, w3, x0, x1, x2, len16, 0, halves, load);
        Vector256<float>* acc = halves + 12;
        Vector256<float> a00 = default, a10 = default, a20 = default, a30 = default;
        Vector256<float> a01 = default, a11 = default, a21 = default, a31 = default;
        Vector256<float> a02 = default, a12 = default, a22 = default, a32 = default;
        if (load) Load<G>(acc, ref a00, ref a10, ref a20, ref a30, ref a01, ref a11, ref a21, ref a31, ref a02, ref a12, ref a22, ref a32);
        for (int i = 8; i < len16; i += 16)
            Step<G>(w0, w1, w2, w3, x0, x1, x2, i, ref a00, ref a10, ref a20, ref a30, ref a01, ref a11, ref a21, ref a31, ref a02, ref a12, ref a22, ref a32);
        if (finish == Finish.Carry)
        {
            Store<G>(acc, a00, a10, a20, a30, a01, a11, a21, a31, a02, a12, a22, a32);
            return;
        }
        if (anyHalves) // otherwise every half is +0 and so is each fold
        {
            a00 = Fold(halves[0], a00, paired); a10 = Fold(halves[3], a10, paired); a20 = Fold(halves[6], a20, paired); a30 = Fold(halves[9], a30, paired);
            if (G.Count >= 2) { a01 = Fold(halves[1], a01, paired); a11 = Fold(halves[4], a11, paired); a21 = Fold(halves[7], a21, paired); a31 = Fold(halves[10], a31, paired); }
            if (G.Count == 3) { a02 = Fold(halves[2], a02, paired); a12 = Fold(halves[5], a12, paired); a22 = Fold(halves[8], a22, paired); a32 = Fold(halves[11], a32, paired); }
        }
        if (len16 < len)
            Step<G>(w0, w1, w2, w3, x0, x1, x2, len16, ref a00, ref a10, ref a20, ref a30, ref a01, ref a11, ref a21, ref a31, ref a02, ref a12, ref a22, ref a32);
        if (finish == Finish.Fold)
        {
            Store<G>(halves, a00, a10, a20, a30, a01, a11, a21, a31, a02, a12, a22, a32);
            return;
        }
        if (G.Count == 1) SumOne(a00, a10, a20, a30, y0, bias);
        else SumPair(a00, a10, a20, a30, a01, a11, a21, a31, y0, y1, bias);
        if (G.Count == 3) SumOne(a02, a12, a22, a32, y2, bias);
    }

    /// <summary>acc[c][r] += w_c[i..i+8] * x_r[i..i+8] for the tile's 4 x G dots.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Step<G>(float* w0, float* w1, float* w2, float* w3, float* x0, float* x1, float* x2, int i,
        ref Vector256<float> a00, ref Vector256<float> a10, ref Vector256<float> a20, ref Vector256<float> a30,
        ref Vector256<float> a01, ref Vector256<float> a11, ref Vector256<float> a21, ref Vector256<float> a31,
        ref Vector256<float> a02, ref Vector256<float> a12, ref Vector256<float> a22, ref Vector256<float> a32) where G : struct, IRowCount
    {
        var v0 = Avx.LoadVector256(x0 + i);
        Vector256<float> v1 = G.Count >= 2 ? Avx.LoadVector256(x1 + i) : default, v2 = G.Count == 3 ? Avx.LoadVector256(x2 + i) : default;
        var c = Avx.LoadVector256(w0 + i); a00 = Fma.MultiplyAdd(c, v0, a00);
        if (G.Count >= 2) a01 = Fma.MultiplyAdd(c, v1, a01);
        if (G.Count == 3) a02 = Fma.MultiplyAdd(c, v2, a02);
        c = Avx.LoadVector256(w1 + i); a10 = Fma.MultiplyAdd(c, v0, a10);
        if (G.Count >= 2) a11 = Fma.MultiplyAdd(c, v1, a11);
        if (G.Count == 3) a12 = Fma.MultiplyAdd(c, v2, a12);
        c = Avx.LoadVector256(w2 + i); a20 = Fma.MultiplyAdd(c, v0, a20);
        if (G.Count >= 2) a21 = Fma.MultiplyAdd(c, v1, a21);
        if (G.Count == 3) a22 = Fma.MultiplyAdd(c, v2, a22);
        c = Avx.LoadVector256(w3 + i); a30 = Fma.MultiplyAdd(c, v0, a30);
        if (G.Count >= 2) a31 = Fma.MultiplyAdd(c, v1, a31);
        if (G.Count == 3) a32 = Fma.MultiplyAdd(c, v2, a32);
    }

    /// <summary>The tile's accumulators for its G x rows from acc[c * 3 + r].</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Load<G>(Vector256<float>* acc,
        ref Vector256<float> a00, ref Vector256<float> a10, ref Vector256<float> a20, ref Vector256<float> a30,
        ref Vector256<float> a01, ref Vector256<float> a11, ref Vector256<float> a21, ref Vector256<float> a31,
        ref Vector256<float> a02, ref Vector256<float> a12, ref Vector256<float> a22, ref Vector256<float> a32) where G : struct, IRowCount
    {
        a00 = acc[0]; a10 = acc[3]; a20 = acc[6]; a30 = acc[9];
        if (G.Count >= 2) { a01 = acc[1]; a11 = acc[4]; a21 = acc[7]; a31 = acc[10]; }
        if (G.Count == 3) { a02 = acc[2]; a12 = acc[5]; a22 = acc[8]; a32 = acc[11]; }
    }

    /// <summary>The tile's accumulators for its G x rows to acc[c * 3 + r].</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Store<G>(Vector256<float>* acc, Vector256<float> a00, Vector256<float> a10, Vector256<float> a20, Vector256<float> a30,
        Vector256<float> a01, Vector256<float> a11, Vector256<float> a21, Vector256<float> a31,
        Vector256<float> a02, Vector256<float> a12, Vector256<float> a22, Vector256<float> a32) where G : struct, IRowCount
    {
        acc[0] = a00; acc[3] = a10; acc[6] = a20; acc[9] = a30;
        if (G.Count >= 2) { acc[1] = a01; acc[4] = a11; acc[7] = a21; acc[10] = a31; }
        if (G.Count == 3) { acc[2] = a02; acc[5] = a12; acc[8] = a22; acc[11] = a32; }
    }

    private interface IRowCount { static abstract int Count { get; } }
    private readonly struct One : IRowCount { public static int Count => 1; }
    private readonly struct Two : IRowCount { public static int Count => 2; }
    private readonly struct Three : IRowCount { public static int Count => 3; }

    /// <summary>
    /// The first pass of a <see cref="Tile{G}"/>: columns offset..offset+7 of every 16 below len16, acc[c * 3 + r] +=
    /// w_c * x_r in order (from acc when <paramref name="load"/>, else from zero), the 12 accumulators in registers.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Pass<G>(float* w0, float* w1, float* w2, float* w3, float* x0, float* x1, float* x2, int len16, int offset, Vector256<float>* acc, bool load)
        where G : struct, IRowCount
    {
        Vector256<float> a00 = default, a10 = default, a20 = default, a30 = default;
        Vector256<float> a01 = default, a11 = default, a21 = default, a31 = default;
        Vector256<float> a02 = default, a12 = default, a22 = default, a32 = default;
        if (load) Load<G>(acc, ref a00, ref a10, ref a20, ref a30, ref a01, ref a11, ref a21, ref a31, ref a02, ref a12, ref a22, ref a32);
        for (int i = offset; i < len16; i += 16)
            Step<G>(w0, w1, w2, w3, x0, x1, x2, i, ref a00, ref a10, ref a20, ref a30, ref a01, ref a11, ref a21, ref a31, ref a02, ref a12, ref a22, ref a32);
        Store<G>(acc, a00, a10, a20, a30, a01, a11, a21, a31, a02, a12, a22, a32);
    }

    /// <summary>
    /// 6 fp32 rows w_c (<paramref name="ws"/> floats apart) x <paramref name="group"/> (1 or 2) rows x0, x1 over
    /// <paramref name="len"/> (a multiple of 8) columns from zero, then y_r[c] = Sum + bias[c] for c = 0..5
    /// (<paramref name="bias"/> null: none): the same dots as <see cref="Dots"/>, two passes of 12 accumulators with 2 x
    /// loads per 12 fused multiply-adds instead of 3 (x streams from L2 while the 6 rows sit in L1). Each step of 16 columns
    /// also steps <paramref name="feed"/> (the caller's next rows, on its own schedule).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization), SkipLocalsInit]
    public static void Dots6(float* w, int ws, float* x0, float* x1, int group, int len, bool paired, float* y0, float* y1, float* bias, ref LineFeed feed)
    {
        var low = stackalloc Vector256<float>[12]; // dot (c, r) at 2c + r
        if (group == 2) Tile6<Two>(w, ws, x0, x1, len, low, paired, y0, y1, bias, ref feed);
        else Tile6<One>(w, ws, x0, x1, len, low, paired, y0, y1, bias, ref feed);
    }

    /// <summary>The first pass of <see cref="Tile6{G}"/>: the low 8 columns of every 16 below len16, from zero, into acc[2c + r].</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Pass6<G>(float* w0, float* w1, float* w2, float* w3, float* w4, float* w5, float* x0, float* x1, int len16, Vector256<float>* acc,
        ref LineFeed feed) where G : struct, IRowCount
    {
        var a00 = Vector256<float>.Zero; var a10 = a00; var a20 = a00; var a30 = a00; var a40 = a00; var a50 = a00;
        var a01 = a00; var a11 = a00; var a21 = a00; var a31 = a00; var a41 = a00; var a51 = a00;
        for (int i = 0; i < len16; i += 16)
        {
            feed.Step();
            Step6<G>(w0, w1, w2, w3, w4, w5, x0, x1, i, ref a00, ref a10, ref a20, ref a30, ref a40, ref a50, ref a01, ref a11, ref a21, ref a31, ref a41, ref a51);
        }
        acc[0] = a00; acc[2] = a10; acc[4] = a20; acc[6] = a30; acc[8] = a40; acc[10] = a50;
        if (G.Count == 2) { acc[1] = a01; acc[3] = a11; acc[5] = a21; acc[7] = a31; acc[9] = a41; acc[11] = a51; }
    }

    /// <summary>
    /// A <see cref="Dots6"/> tile: the low 8 columns of every 16 into low[2c + r], then the high 8, folded with them,
    /// the 8-column step at len &amp; ~15 added and summed into y, in registers (one method: the loops get the registers).
    /// </summary>
    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    private static void Tile6<G>(float* w, int ws, float* x0, float* x1, int len, Vector256<float>* low, bool paired, float* y0, float* y1, float* bias,
        ref LineFeed feed)
        where G : struct, IRowCount
    {
        var f = feed; // in registers for the loop (LineFeed's summary)
        float* w0 = w, w1 = w + ws, w2 = w + 2 * ws, w3 = w + 3 * ws, w4 = w + 4 * ws, w5 = w + 5 * ws;
        int len16 = len & ~15;
        if (len16 > 0) Pass6<G>(w0, w1, w2, w3, w4, w5, x0, x1, len16, low, ref f);
        var a00 = Vector256<float>.Zero; var a10 = a00; var a20 = a00; var a30 = a00; var a40 = a00; var a50 = a00;
        var a01 = a00; var a11 = a00; var a21 = a00; var a31 = a00; var a41 = a00; var a51 = a00;
        for (int i = 8; i < len16; i += 16)
        {
            f.Step();
            Step6<G>(w0, w1, w2, w3, w4, w5, x0, x1, i, ref a00, ref a10, ref a20, ref a30, ref a40, ref a50, ref a01, ref a11, ref a21, ref a31, ref a41, ref a51);
        }
        if (len16 > 0) // otherwise every half is +0 and so is each fold
        {
            a00 = Fold(low[0], a00, paired); a10 = Fold(low[2], a10, paired); a20 = Fold(low[4], a20, paired);
            a30 = Fold(low[6], a30, paired); a40 = Fold(low[8], a40, paired); a50 = Fold(low[10], a50, paired);
            if (G.Count == 2)
            {
                a01 = Fold(low[1], a01, paired); a11 = Fold(low[3], a11, paired); a21 = Fold(low[5], a21, paired);
                a31 = Fold(low[7], a31, paired); a41 = Fold(low[9], a41, paired); a51 = Fold(low[11], a51, paired);
            }
        }
        if (len16 < len)
            Step6<G>(w0, w1, w2, w3, w4, w5, x0, x1, len16, ref a00, ref a10, ref a20, ref a30, ref a40, ref a50, ref a01, ref a11, ref a21, ref a31, ref a41, ref a51);
        var b0 = bias != null ? Vector128.Load(bias) : Vector128<float>.Zero;
        var b4 = bias != null ? Vector128.Create(bias[4], bias[5], 0f, 0f) : Vector128<float>.Zero;
        SumOne(a00, a10, a20, a30, y0, b0);
        Sum2(a40, a50, y0 + 4, b4);
        if (G.Count == 2)
        {
            SumOne(a01, a11, a21, a31, y1, b0);
            Sum2(a41, a51, y1 + 4, b4);
        }
        feed = f;
    }

    /// <summary>acc[c][r] += w_c[i..i+8] * x_r[i..i+8] for the 6 x G dots of <see cref="Dots6"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Step6<G>(float* w0, float* w1, float* w2, float* w3, float* w4, float* w5, float* x0, float* x1, int i,
        ref Vector256<float> a00, ref Vector256<float> a10, ref Vector256<float> a20, ref Vector256<float> a30, ref Vector256<float> a40, ref Vector256<float> a50,
        ref Vector256<float> a01, ref Vector256<float> a11, ref Vector256<float> a21, ref Vector256<float> a31, ref Vector256<float> a41, ref Vector256<float> a51)
        where G : struct, IRowCount
    {
        var v0 = Avx.LoadVector256(x0 + i);
        var v1 = G.Count == 2 ? Avx.LoadVector256(x1 + i) : default;
        var c = Avx.LoadVector256(w0 + i); a00 = Fma.MultiplyAdd(c, v0, a00); if (G.Count == 2) a01 = Fma.MultiplyAdd(c, v1, a01);
        c = Avx.LoadVector256(w1 + i); a10 = Fma.MultiplyAdd(c, v0, a10); if (G.Count == 2) a11 = Fma.MultiplyAdd(c, v1, a11);
        c = Avx.LoadVector256(w2 + i); a20 = Fma.MultiplyAdd(c, v0, a20); if (G.Count == 2) a21 = Fma.MultiplyAdd(c, v1, a21);
        c = Avx.LoadVector256(w3 + i); a30 = Fma.MultiplyAdd(c, v0, a30); if (G.Count == 2) a31 = Fma.MultiplyAdd(c, v1, a31);
        c = Avx.LoadVector256(w4 + i); a40 = Fma.MultiplyAdd(c, v0, a40); if (G.Count == 2) a41 = Fma.MultiplyAdd(c, v1, a41);
        c = Avx.LoadVector256(w5 + i); a50 = Fma.MultiplyAdd(c, v0, a50); if (G.Count == 2) a51 = Fma.MultiplyAdd(c, v1, a51);
    }

    /// <summary>y[c] = Sum(r_c) + bias[c] for c = 0, 1, in Vector256.Sum's order.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Sum2(Vector256<float> r0, Vector256<float> r1, float* y, Vector128<float> bias)
    {
        var g = Avx.HorizontalAdd(Avx.HorizontalAdd(r0, r1), Avx.HorizontalAdd(r0, r1));
        var s = g.GetLower() + g.GetUpper() + bias;
        y[0] = s.GetElement(0);
        y[1] = s.GetElement(1);
    }

    /// <summary>
    /// One dot product in the order of the class summary (x and w n floats, the vector part only: the caller adds a
    /// scalar tail past n &amp; ~7), columns in natural order: its folded 8 lanes, for Vector256.Sum.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Lanes(float* w, float* x, int n)
    {
        Vector256<float> a = default, b = default;
        int n16 = n & ~15, i = 0;
        for (; i < n16; i += 16)
        {
            a = Fma.MultiplyAdd(Avx.LoadVector256(w + i), Avx.LoadVector256(x + i), a);
            b = Fma.MultiplyAdd(Avx.LoadVector256(w + i + 8), Avx.LoadVector256(x + i + 8), b);
        }
        a += b;
        if (i + 8 <= n) a = Fma.MultiplyAdd(Avx.LoadVector256(w + i), Avx.LoadVector256(x + i), a);
        return a;
    }

    /// <summary>
    /// Rows taken by the next tile when <paramref name="remaining"/> are left: 3, but never a lone row after a group
    /// (4 left go as 2 + 2).
    /// </summary>
    public static int Rows(int remaining) => remaining == 4 ? 2 : Math.Min(3, remaining);
}
