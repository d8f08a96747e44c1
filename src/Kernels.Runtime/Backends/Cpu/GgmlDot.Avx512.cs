// The batched k-quant tile on AVX-512: both groups of eight activation rows in the lanes of one 512-bit vector.
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Kernels.Runtime.Backends.Cpu;

internal static unsafe partial class GgmlDot
{
    /// <summary>
    /// Whether the batched k-quant kernel multiplies sixteen activation rows at once in 512-bit registers
    /// (<see cref="TileKQuantWide{F}"/>): where the dense matmuls take their AVX-512 path (<see cref="MatMul.Wide"/>,
    /// which tests switch to compare the two).
    /// </summary>
    private static bool WideTiles => MatMul.Wide;

    /// <summary>
    /// <see cref="TileKQuantPair{F, O}"/> on AVX-512: lanes 0-7 of a 512-bit vector are group g's rows and
    /// lanes 8-15 group h's, so each broadcast weight quad advances all sixteen rows in one vpmaddubsw (.NET has no
    /// 512-bit vpdpbusd; on a 2-core Zen 5 a C probe of this loop ran 1.5-2x the 256-bit vpdpbusd tile's multiply-adds
    /// per second). Products of quads are paired in int16 lanes and summed four at a time (Q4_K, Q5_K: codes &lt;= 31,
    /// 4 x 2 x 31 x 128 &lt; 2^15) or two at a time (the 16-value group formats: codes &lt;= 63, 2 x 2 x 63 x 128 &lt; 2^15),
    /// then scaled and widened by one vpmaddwd with the group's int16 scale, so no lane saturates and I is the 256-bit
    /// tile's exact integer. The float step (<see cref="Step16{F}"/>, <see cref="GroupTerm16"/>) does the 256-bit tile's
    /// operations in sixteen lanes: the same bits (tested). In-process A/B against the 256-bit tile (VNNI) on the 2-core
    /// Zen 5, 2 threads, Q4_K_M weights: 16 rows 8-17 % less time (gate 0.153 -> 0.136 ms, LM head 2.08 -> 1.77), 64 rows
    /// 10-16 %.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void TileKQuantWide<F>(byte* u0, byte* u1, int k, in Activation g, in Activation h, float* y, int n, float bias0, float bias1, bool two,
        ref LineFeed feed)
        where F : struct, IKQuant
    {
        var f = feed; // in registers for the loop (LineFeed's summary)
        int nb = k / 256;
        KRow r0 = new(u0, k), r1 = new(u1, k);
        int* sc0 = r0.Scales, sc1 = r1.Scales;
        short* e0 = r0.E, e1 = r1.E;
        float* d0 = r0.D, f0 = r0.F, d1 = r1.D, f1 = r1.F;
        Vector512<float> acc0 = default, acc1 = default;
        // Running pointers (the chunk's weight quads, activation quads and scales), not products of the chunk index.
        uint* w0 = (uint*)u0, w1 = (uint*)u1;
        sbyte* xa = g.TileCodes, xb = h.TileCodes;
        short* s0 = (short*)sc0, s1 = (short*)sc1;
        for (int b = 0; b < nb; b++)
        {
            Vector512<int> i0 = default, i1 = default;
            for (int ch = 0; ch < 8; ch++, w0 += 8, w1 += 8, xa += 256, xb += 256, s0 += 4, s1 += 4)
            {
                f.Step();
                var x0 = Rows16(xa, xb, 0);
                var x1 = Rows16(xa, xb, 1);
                var x2 = Rows16(xa, xb, 2);
                var x3 = Rows16(xa, xb, 3);
                if (F.ChunkScale)
                {
                    // One scale for the chunk's 32 values: eight quads in two int16 sums of four, one vpmaddwd each.
                    var p0 = Quads(w0, x0, x1, x2, x3);
                    var p1 = Quads(w1, x0, x1, x2, x3);
                    x0 = Rows16(xa, xb, 4);
                    x1 = Rows16(xa, xb, 5);
                    x2 = Rows16(xa, xb, 6);
                    x3 = Rows16(xa, xb, 7);
                    var q0 = Quads(w0 + 4, x0, x1, x2, x3);
                    var q1 = Quads(w1 + 4, x0, x1, x2, x3);
                    var t0 = Vector512.Create(*s0);
                    var t1 = Vector512.Create(*s1);
                    i0 += Avx512BW.MultiplyAddAdjacent(p0, t0) + Avx512BW.MultiplyAddAdjacent(q0, t0);
                    i1 += Avx512BW.MultiplyAddAdjacent(p1, t1) + Avx512BW.MultiplyAddAdjacent(q1, t1);
                    continue;
                }
                // A scale per 16 values: each group's four quads in two int16 sums of two.
                i0 = Group(i0, w0, x0, x1, x2, x3, s0);
                i1 = Group(i1, w1, x0, x1, x2, x3, s1);
                x0 = Rows16(xa, xb, 4);
                x1 = Rows16(xa, xb, 5);
                x2 = Rows16(xa, xb, 6);
                x3 = Rows16(xa, xb, 7);
                i0 = Group(i0, w0 + 4, x0, x1, x2, x3, s0 + 2);
                i1 = Group(i1, w1 + 4, x0, x1, x2, x3, s1 + 2);
            }
            // The float step for the sixteen rows at once: E from the weight row's group terms against both groups' sums.
            var dx = Rows16((sbyte*)(g.TileScales + 8 * b), (sbyte*)(h.TileScales + 8 * b), 0).AsSingle();
            acc0 = Step16<F>(acc0, i0, GroupTerm16(e0 + 16 * b, g.TileGroupSums + 128 * b, h.TileGroupSums + 128 * b), dx, d0[b], f0[b]);
            acc1 = Step16<F>(acc1, i1, GroupTerm16(e1 + 16 * b, g.TileGroupSums + 128 * b, h.TileGroupSums + 128 * b), dx, d1[b], f1[b]);
        }
        StoreTiles(acc0.GetLower(), acc1.GetLower(), acc0.GetUpper(), acc1.GetUpper(), bias0, bias1, y, n, 2 * TileRows, two);
        feed = f;
    }

    /// <summary>
    /// 32 bytes at <paramref name="xa"/> + 32 <paramref name="q"/> in the low half, as many at <paramref name="xb"/> in the
    /// high half: a chunk's quad q for sixteen rows (group g's eight rows' 4 bytes each, then group h's), or their scales
    /// or group sums: a load and an insert from memory. (Vector512.Create of two halves inserts both into the register's
    /// old value. Avx512F.BroadcastVector256ToVector512 for the low half is wrong code in .NET 10.0.12: the JIT encodes
    /// vbroadcasti64x4's displacement as if the operand were 16 bytes, so [p + 0x20] reads p + 0x40; the batch test
    /// caught it.)
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<sbyte> Rows16(sbyte* xa, sbyte* xb, int q) =>
        Avx512F.InsertVector256(Vector256.Load(xa + 32 * q).ToVector512(), Vector256.Load(xb + 32 * q), 1);

    /// <summary>Four broadcast weight quads times the rows' quads, paired by vpmaddubsw and summed in int16 lanes.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<short> Quads(uint* w, Vector512<sbyte> x0, Vector512<sbyte> x1, Vector512<sbyte> x2, Vector512<sbyte> x3) =>
        Avx512BW.MultiplyAddAdjacent(Vector512.Create(w[0]).AsByte(), x0) + Avx512BW.MultiplyAddAdjacent(Vector512.Create(w[1]).AsByte(), x1)
        + (Avx512BW.MultiplyAddAdjacent(Vector512.Create(w[2]).AsByte(), x2) + Avx512BW.MultiplyAddAdjacent(Vector512.Create(w[3]).AsByte(), x3));

    /// <summary>acc + one 16-value group (four quads) times its int16 scale: two pairs of quads, each scaled and widened by vpmaddwd.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<int> Group(Vector512<int> acc, uint* w, Vector512<sbyte> x0, Vector512<sbyte> x1, Vector512<sbyte> x2, Vector512<sbyte> x3, short* scale)
    {
        var s = Vector512.Create(*scale);
        var a = Avx512BW.MultiplyAddAdjacent(Vector512.Create(w[0]).AsByte(), x0) + Avx512BW.MultiplyAddAdjacent(Vector512.Create(w[1]).AsByte(), x1);
        var c = Avx512BW.MultiplyAddAdjacent(Vector512.Create(w[2]).AsByte(), x2) + Avx512BW.MultiplyAddAdjacent(Vector512.Create(w[3]).AsByte(), x3);
        return acc + Avx512BW.MultiplyAddAdjacent(a, s) + Avx512BW.MultiplyAddAdjacent(c, s);
    }

    /// <summary><see cref="Step8{F}"/> for sixteen rows (the same operations in every lane, so the same bits).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> Step16<F>(Vector512<float> acc, Vector512<int> i, Vector512<int> e, Vector512<float> dx, float d, float f) where F : struct, IKQuant
    {
        if (!F.HasMin) return Avx512F.FusedMultiplyAdd(dx * Vector512.Create(d), Avx512F.ConvertToVector512Single(i - e), acc);
        acc = Avx512F.FusedMultiplyAdd(dx * Vector512.Create(d), Avx512F.ConvertToVector512Single(i), acc);
        return Avx512F.FusedMultiplyAdd(dx * Vector512.Create(-f), Avx512F.ConvertToVector512Single(e), acc);
    }

    /// <summary><see cref="TileGroupTerm{O}"/> for the sixteen rows of two groups (g's group sums in lanes 0-7, h's in 8-15), exactly.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<int> GroupTerm16(short* e, short* gSums, short* hSums)
    {
        int* ep = (int*)e;
        sbyte* a = (sbyte*)gSums, c = (sbyte*)hSums;
        var p = Avx512BW.MultiplyAddAdjacent(Vector512.Create(ep[0]).AsInt16(), Rows16(a, c, 0).AsInt16());
        var q = Avx512BW.MultiplyAddAdjacent(Vector512.Create(ep[1]).AsInt16(), Rows16(a, c, 1).AsInt16());
        p += Avx512BW.MultiplyAddAdjacent(Vector512.Create(ep[2]).AsInt16(), Rows16(a, c, 2).AsInt16());
        q += Avx512BW.MultiplyAddAdjacent(Vector512.Create(ep[3]).AsInt16(), Rows16(a, c, 3).AsInt16());
        p += Avx512BW.MultiplyAddAdjacent(Vector512.Create(ep[4]).AsInt16(), Rows16(a, c, 4).AsInt16());
        q += Avx512BW.MultiplyAddAdjacent(Vector512.Create(ep[5]).AsInt16(), Rows16(a, c, 5).AsInt16());
        p += Avx512BW.MultiplyAddAdjacent(Vector512.Create(ep[6]).AsInt16(), Rows16(a, c, 6).AsInt16());
        q += Avx512BW.MultiplyAddAdjacent(Vector512.Create(ep[7]).AsInt16(), Rows16(a, c, 7).AsInt16());
        return p + q;
    }
}
