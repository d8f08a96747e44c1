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
    /// <see cref="TileKQuantPair{F, O}"/> on AVX-512, from <see cref="Q8Rows.Wide"/>: a 512-bit vector holds a group's
    /// eight rows' quad pair (quads 2p and 2p + 1, row r's at lanes 2r and 2r + 1), so each broadcast of eight weight
    /// codes advances one group's rows over two quads in one vpmaddubsw (.NET has no 512-bit vpdpbusd; on a 2-core Zen 5
    /// a C probe of such a loop ran 1.5-2x the 256-bit vpdpbusd tile's multiply-adds per second). Products are paired in
    /// int16 lanes and summed four vpmaddubsw at a time (Q4_K, Q5_K: codes &lt;= 31, 4 x 2 x 31 x 128 &lt; 2^15) or two
    /// (the 16-value group formats: codes &lt;= 63, 2 x 2 x 63 x 128 &lt; 2^15), then scaled and widened by one vpmaddwd
    /// with the group's int16 scale, so no lane saturates; at the super-block's end each row's two lanes are added and
    /// the two groups' rows gathered into one vector (<see cref="Rows16(Vector512{int}, Vector512{int})"/>), I being the
    /// 256-bit tile's exact integer. The float step (<see cref="Step16{F}"/>, <see cref="GroupTerm16"/>) does the 256-bit
    /// tile's operations in sixteen lanes: the same bits (tested). Nothing in the loop nest calls out while the
    /// accumulators live: every vector register is caller-saved on x64 Linux, so one call (a constant read through a
    /// property was one) made the JIT store all four accumulators every chunk. Measured on the 2-core Zen 5, 2 threads,
    /// Q4_K_M weights: against the 256-bit tile (VNNI) 16 rows 8-17 % less time, 64 rows 10-16 %; against the earlier form
    /// of this tile (a quad per broadcast, the two groups' 32-byte rows joined by a load and an insert), builds
    /// alternated, `gate` at 16 rows in cache 0.125-0.130 -> 0.098-0.101 ms and the 16-sequence decode step 13.4-13.8 ->
    /// 11.6-12.0 ms (docs/gguf.md).
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
        // Running pointers (the chunk's weight quad pairs, activation quad pairs and scales), not products of the chunk index.
        ulong* w0 = (ulong*)u0, w1 = (ulong*)u1;
        sbyte* xw = g.Wide; // Q8Rows.Wide: the codes, then the scales, then the group sums
        float* scales = (float*)(xw + Q8Rows.WideScales(k));
        short* sums = (short*)(xw + Q8Rows.WideGroupSums(k));
        short* s0 = (short*)sc0, s1 = (short*)sc1;
        for (int b = 0; b < nb; b++)
        {
            // Per weight row and group of eight activation rows: lane 2r + i holds row r's sums of the odd (i = 1) or
            // even quads, added together when the super-block is done.
            Vector512<int> g0 = default, h0 = default, g1 = default, h1 = default;
            for (int ch = 0; ch < 8; ch++, w0 += 4, w1 += 4, xw += 512, s0 += 4, s1 += 4)
            {
                f.Step();
                // Each broadcast carries two quads (8 codes), matching the activations' quad pairs.
                var a0 = Vector512.Create(w0[0]).AsByte();
                var a1 = Vector512.Create(w0[1]).AsByte();
                var a2 = Vector512.Create(w0[2]).AsByte();
                var a3 = Vector512.Create(w0[3]).AsByte();
                var c0 = Vector512.Create(w1[0]).AsByte();
                var c1 = Vector512.Create(w1[1]).AsByte();
                var c2 = Vector512.Create(w1[2]).AsByte();
                var c3 = Vector512.Create(w1[3]).AsByte();
                if (F.ChunkScale)
                {
                    // One scale for the chunk's 32 values: the eight quads in one int16 sum of four products a lane, one vpmaddwd.
                    var t0 = Vector512.Create(*s0);
                    var t1 = Vector512.Create(*s1);
                    g0 += Avx512BW.MultiplyAddAdjacent(QuadPairs(a0, a1, a2, a3, xw), t0);
                    g1 += Avx512BW.MultiplyAddAdjacent(QuadPairs(c0, c1, c2, c3, xw), t1);
                    h0 += Avx512BW.MultiplyAddAdjacent(QuadPairs(a0, a1, a2, a3, xw + 256), t0);
                    h1 += Avx512BW.MultiplyAddAdjacent(QuadPairs(c0, c1, c2, c3, xw + 256), t1);
                    continue;
                }
                // A scale per 16 values (quad pairs 0-1, then 2-3): two products a lane in each int16 sum of two.
                g0 = Group(g0, a0, a1, a2, a3, xw, s0);
                g1 = Group(g1, c0, c1, c2, c3, xw, s1);
                h0 = Group(h0, a0, a1, a2, a3, xw + 256, s0);
                h1 = Group(h1, c0, c1, c2, c3, xw + 256, s1);
            }
            // The float step for the sixteen rows at once: E from the weight row's group terms against both groups' sums.
            var dx = Vector512.Load(scales + 16 * b);
            acc0 = Step16<F>(acc0, Rows16(g0, h0), GroupTerm16(e0 + 16 * b, sums + 256 * b), dx, d0[b], f0[b]);
            acc1 = Step16<F>(acc1, Rows16(g1, h1), GroupTerm16(e1 + 16 * b, sums + 256 * b), dx, d1[b], f1[b]);
        }
        StoreTiles(acc0.GetLower(), acc1.GetLower(), acc0.GetUpper(), acc1.GetUpper(), bias0, bias1, y, n, 2 * TileRows, two);
        feed = f;
    }

    /// <summary>
    /// A group of eight rows' quad pairs at <paramref name="x"/> (64 bytes each, row r's two quads at 8r) times the
    /// four broadcast weight quad pairs, paired by vpmaddubsw and summed in int16 lanes.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<short> QuadPairs(Vector512<byte> a0, Vector512<byte> a1, Vector512<byte> a2, Vector512<byte> a3, sbyte* x) =>
        Avx512BW.MultiplyAddAdjacent(a0, Vector512.Load(x)) + Avx512BW.MultiplyAddAdjacent(a1, Vector512.Load(x + 64))
        + (Avx512BW.MultiplyAddAdjacent(a2, Vector512.Load(x + 128)) + Avx512BW.MultiplyAddAdjacent(a3, Vector512.Load(x + 192)));

    /// <summary>acc + a chunk's two 16-value groups (two quad pairs each) times their int16 scales, each scaled and widened by vpmaddwd.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<int> Group(Vector512<int> acc, Vector512<byte> a0, Vector512<byte> a1, Vector512<byte> a2, Vector512<byte> a3, sbyte* x, short* scale)
    {
        var p = Avx512BW.MultiplyAddAdjacent(a0, Vector512.Load(x)) + Avx512BW.MultiplyAddAdjacent(a1, Vector512.Load(x + 64));
        var q = Avx512BW.MultiplyAddAdjacent(a2, Vector512.Load(x + 128)) + Avx512BW.MultiplyAddAdjacent(a3, Vector512.Load(x + 192));
        return acc + Avx512BW.MultiplyAddAdjacent(p, Vector512.Create(scale[0])) + Avx512BW.MultiplyAddAdjacent(q, Vector512.Create(scale[2]));
    }

    /// <summary>Two groups' sums with lane 2r + i holding row r's odd or even quads as one vector of the sixteen rows' sums (g's rows in lanes 0-7).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<int> Rows16(Vector512<int> g, Vector512<int> h) =>
        Avx512F.PermuteVar16x32x2(g + Avx512F.Shuffle(g, 0xB1), Vector512.Create(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30), h + Avx512F.Shuffle(h, 0xB1));

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
    private static Vector512<int> GroupTerm16(short* e, short* sums)
    {
        int* ep = (int*)e;
        var p = Avx512BW.MultiplyAddAdjacent(Vector512.Create(ep[0]).AsInt16(), Vector512.Load(sums));
        var q = Avx512BW.MultiplyAddAdjacent(Vector512.Create(ep[1]).AsInt16(), Vector512.Load(sums + 32));
        p += Avx512BW.MultiplyAddAdjacent(Vector512.Create(ep[2]).AsInt16(), Vector512.Load(sums + 64));
        q += Avx512BW.MultiplyAddAdjacent(Vector512.Create(ep[3]).AsInt16(), Vector512.Load(sums + 96));
        p += Avx512BW.MultiplyAddAdjacent(Vector512.Create(ep[4]).AsInt16(), Vector512.Load(sums + 128));
        q += Avx512BW.MultiplyAddAdjacent(Vector512.Create(ep[5]).AsInt16(), Vector512.Load(sums + 160));
        p += Avx512BW.MultiplyAddAdjacent(Vector512.Create(ep[6]).AsInt16(), Vector512.Load(sums + 192));
        q += Avx512BW.MultiplyAddAdjacent(Vector512.Create(ep[7]).AsInt16(), Vector512.Load(sums + 224));
        return p + q;
    }
}
