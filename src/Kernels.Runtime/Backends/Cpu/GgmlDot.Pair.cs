// The batched k-quant tile for two groups of activation rows in 256-bit registers (AVX2, AVX-VNNI), in quad order so
// its working set fits the 16 registers those instruction sets address.
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Kernels.Runtime.Backends.Cpu;

internal static unsafe partial class GgmlDot
{
    /// <summary>
    /// <see cref="TileKQuant{F, O}"/> for two groups of activation rows, quad by quad: each quad's two weight broadcasts
    /// and two activation loads feed the four (weight row x group) partial sums at once (<see cref="IOps.AddQuad"/>:
    /// int16 on AVX2, int32 with VNNI), and a partial is scaled into its int32 sum after four quads (Q4_K, Q5_K) or two
    /// (the 16-value group formats). Going combination by combination instead kept a chunk's eight broadcasts and eight
    /// loads live across the four, and on 16 registers the JIT spilled them and the accumulators (~20 stack moves a
    /// chunk); here at most 15 vectors are live. The partials are exact (AVX2: 4 x 2 x 31 x 128 and 2 x 2 x 63 x 128
    /// &lt; 2^15), so I and the bits are the one-group tile's. In-process A/B on the 2-core Zen 5 with AVX-512 off,
    /// 2 threads, against the combination order: AVX2 16 rows 17-21 % less time, 64 rows 17-33 %; AVX-VNNI 8-17 %.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void TileKQuantPair<F, O>(byte* u0, byte* u1, int k, in Activation g, in Activation h, float* y, int n, float bias0, float bias1, bool two,
        ref LineFeed feed)
        where F : struct, IKQuant where O : struct, IOps
    {
        var f = feed; // in registers for the loop (LineFeed's summary)
        int nb = k / 256;
        KRow r0 = new(u0, k), r1 = new(u1, k);
        int* sc0 = r0.Scales, sc1 = r1.Scales;
        short* e0 = r0.E, e1 = r1.E;
        float* d0 = r0.D, f0 = r0.F, d1 = r1.D, f1 = r1.F;
        uint* w0 = (uint*)u0, w1 = (uint*)u1;
        sbyte* xa = g.TileCodes, xb = h.TileCodes;
        short* s0 = (short*)sc0, s1 = (short*)sc1;
        Vector256<float> accG0 = default, accG1 = default, accH0 = default, accH1 = default;
        for (int b = 0; b < nb; b++)
        {
            Vector256<int> ig0 = default, ig1 = default, ih0 = default, ih1 = default;
            for (int ch = 0; ch < 8; ch++, w0 += 8, w1 += 8, xa += 256, xb += 256, s0 += 4, s1 += 4)
            {
                f.Step();
                if (F.ChunkScale)
                {
                    // One scale for the chunk: quads 0-3, then 4-7.
                    Quads<O>(ref ig0, ref ig1, ref ih0, ref ih1, w0, w1, xa, xb, 4, s0, s1);
                    Quads<O>(ref ig0, ref ig1, ref ih0, ref ih1, w0 + 4, w1 + 4, xa + 128, xb + 128, 4, s0, s1);
                    continue;
                }
                // A scale per 16 values (four quads), each group in two pairs.
                Quads<O>(ref ig0, ref ig1, ref ih0, ref ih1, w0, w1, xa, xb, 2, s0, s1);
                Quads<O>(ref ig0, ref ig1, ref ih0, ref ih1, w0 + 2, w1 + 2, xa + 64, xb + 64, 2, s0, s1);
                Quads<O>(ref ig0, ref ig1, ref ih0, ref ih1, w0 + 4, w1 + 4, xa + 128, xb + 128, 2, s0 + 2, s1 + 2);
                Quads<O>(ref ig0, ref ig1, ref ih0, ref ih1, w0 + 6, w1 + 6, xa + 192, xb + 192, 2, s0 + 2, s1 + 2);
            }
            var dxg = Vector256.Load(g.TileScales + 8 * b);
            accG0 = Step8<F>(accG0, ig0, TileGroupTerm<O>(e0 + 16 * b, g.TileGroupSums + 128 * b), dxg, d0[b], f0[b]);
            accG1 = Step8<F>(accG1, ig1, TileGroupTerm<O>(e1 + 16 * b, g.TileGroupSums + 128 * b), dxg, d1[b], f1[b]);
            var dxh = Vector256.Load(h.TileScales + 8 * b);
            accH0 = Step8<F>(accH0, ih0, TileGroupTerm<O>(e0 + 16 * b, h.TileGroupSums + 128 * b), dxh, d0[b], f0[b]);
            accH1 = Step8<F>(accH1, ih1, TileGroupTerm<O>(e1 + 16 * b, h.TileGroupSums + 128 * b), dxh, d1[b], f1[b]);
        }
        StoreTiles(accG0, accG1, accH0, accH1, bias0, bias1, y, n, 2 * TileRows, two);
        feed = f;
    }

    /// <summary>
    /// <paramref name="count"/> quads (2 or 4, a constant after inlining) of two weight rows against two groups: four
    /// partial sums (<see cref="IOps.AddQuad"/>), then each scaled by its row's scale into its int32 sum. Written out
    /// quad by quad: as a loop the JIT kept it a loop, with the first quad's start as a branch.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Quads<O>(ref Vector256<int> ig0, ref Vector256<int> ig1, ref Vector256<int> ih0, ref Vector256<int> ih1, uint* w0, uint* w1,
        sbyte* xa, sbyte* xb, int count, short* s0, short* s1) where O : struct, IOps
    {
        Vector256<int> pg0 = default, pg1 = default, ph0 = default, ph1 = default;
        Quad<O>(ref pg0, ref pg1, ref ph0, ref ph1, w0, w1, xa, xb, 0);
        Quad<O>(ref pg0, ref pg1, ref ph0, ref ph1, w0, w1, xa, xb, 1);
        if (count == 4)
        {
            Quad<O>(ref pg0, ref pg1, ref ph0, ref ph1, w0, w1, xa, xb, 2);
            Quad<O>(ref pg0, ref pg1, ref ph0, ref ph1, w0, w1, xa, xb, 3);
        }
        ig0 = O.ScalePartial(ig0, pg0, s0);
        ig1 = O.ScalePartial(ig1, pg1, s1);
        ih0 = O.ScalePartial(ih0, ph0, s0);
        ih1 = O.ScalePartial(ih1, ph1, s1);
    }

    /// <summary>Quad <paramref name="q"/>: two weight broadcasts, two activation loads, four partial sums advanced.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Quad<O>(ref Vector256<int> pg0, ref Vector256<int> pg1, ref Vector256<int> ph0, ref Vector256<int> ph1, uint* w0, uint* w1,
        sbyte* xa, sbyte* xb, int q) where O : struct, IOps
    {
        var a = Vector256.Create(w0[q]).AsByte();
        var c = Vector256.Create(w1[q]).AsByte();
        var x = Vector256.Load(xa + 32 * q);
        var z = Vector256.Load(xb + 32 * q);
        pg0 = O.AddQuad(pg0, a, x, q == 0);
        pg1 = O.AddQuad(pg1, c, x, q == 0);
        ph0 = O.AddQuad(ph0, a, z, q == 0);
        ph1 = O.AddQuad(ph1, c, z, q == 0);
    }
}
