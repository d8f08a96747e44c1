// sample_tokens_radix_f32's cuts, written out in C# step for step (the kernel cannot run here): 8-bit radix digits
// over the probabilities' bits with count or fixed-point mass histograms, then the tie cut-off in index order. Checked
// against Sampler.Keep (the CPU sampler, Hugging Face's filters) on rows full of ties, where the cuts fall inside runs
// of equal probabilities.
using Kernels.Runtime.Backends;
using Kernels.Runtime.Engine;

namespace Kernels.Tests.Backends.Cuda;

public class RadixSamplerModelTests
{
    private const double MassScale = 1099511627776.0; // 2^40, as kMassScale

    private static ulong FixedMass(float p) => (ulong)((double)p * MassScale);

    /// <summary>radix_select: the largest key u with weight(kept keys >= u) >= need; the weight above it; the ties at it.</summary>
    private static (uint Key, ulong Above, int Ties) RadixSelect(float[] p, ulong need, Func<int, bool> kept, Func<float, ulong> weight)
    {
        uint prefix = 0, mask = 0;
        ulong above = 0;
        int ties = 0;
        for (int shift = 24; shift >= 0; shift -= 8)
        {
            var w = new ulong[256];
            var c = new int[256];
            for (int i = 0; i < p.Length; i++)
            {
                if (!kept(i)) continue;
                uint key = BitConverter.SingleToUInt32Bits(p[i]);
                if ((key & mask) != prefix) continue;
                uint b = (key >> shift) & 0xFF;
                w[b] += weight(p[i]);
                if (shift == 0) c[b]++;
            }
            ulong run = 0;
            int d = 0;
            for (int b = 255; b >= 0; b--)
            {
                if (above + run + w[b] >= need) { d = b; break; }
                run += w[b];
            }
            prefix |= (uint)d << shift;
            mask |= 0xFFu << shift;
            above += run;
            ties = c[d];
        }
        return (prefix, above, ties);
    }

    /// <summary>tie_cutoff_scan: the smallest c such that need kept tokens with p == value have index &lt; c.</summary>
    private static int TieCutoff(float[] p, float value, int need, Func<int, bool> kept)
    {
        int running = 0;
        for (int i = 0; i < p.Length; i++)
            if (p[i] == value && kept(i) && ++running == need) return i + 1;
        return p.Length;
    }

    /// <summary>The kernel's kept set (kept2) for probabilities p (the most likely exactly 1).</summary>
    private static List<int> KernelKept(float[] p, int topK, float topP, float minP)
    {
        float kValue = -1f, pValue = -1f;
        int kIndex = 0, pIndex = 0;
        bool Kept0(int i) => p[i] > 0f;
        bool Kept1(int i) => Kept0(i) && (p[i] > kValue || (p[i] == kValue && i < kIndex));
        if (topK > 0 && Enumerable.Range(0, p.Length).Count(Kept0) > topK)
        {
            var cut = RadixSelect(p, (ulong)topK, Kept0, _ => 1UL);
            float kv = BitConverter.UInt32BitsToSingle(cut.Key);
            kIndex = TieCutoff(p, kv, topK - (int)cut.Above, Kept0);
            kValue = kv;
        }
        if (topP < 1f)
        {
            ulong mass = 0;
            for (int i = 0; i < p.Length; i++) if (Kept1(i)) mass += FixedMass(p[i]);
            ulong need = Math.Max(1UL, (ulong)Math.Ceiling((double)topP * mass));
            var cut = RadixSelect(p, need, Kept1, FixedMass);
            float pv = BitConverter.UInt32BitsToSingle(cut.Key);
            ulong per = FixedMass(pv);
            int take = cut.Ties;
            if (per > 0 && cut.Above < need) take = (int)Math.Min((ulong)cut.Ties, (need - cut.Above + per - 1) / per);
            take = Math.Max(take, 1);
            if (cut.Ties > 0)
            {
                pIndex = TieCutoff(p, pv, take, Kept1);
                pValue = pv;
            }
        }
        return Enumerable.Range(0, p.Length).Where(i => Kept1(i) && (p[i] > pValue || (p[i] == pValue && i < pIndex)) && p[i] >= minP).ToList();
    }

    [Test]
    public void RadixCutsKeepWhatTheCpuSamplerKeepsOnRowsFullOfTies()
    {
        var rng = new Random(11);
        int compared = 0, cutInsideTies = 0;
        for (int trial = 0; trial < 400; trial++)
        {
            int n = rng.Next(2, 3000);
            float grid = new[] { 0.25f, 0.5f, 1f, 0.01f }[rng.Next(4)]; // coarse grids: long runs of equal probabilities
            var logits = Enumerable.Range(0, n).Select(_ => MathF.Round((float)(rng.NextDouble() * 12 - 6) / grid) * grid).ToArray();
            if (rng.Next(5) == 0) logits[rng.Next(n)] = float.NegativeInfinity;
            float t = new[] { 0.5f, 1f, 1.7f }[rng.Next(3)];
            float max = logits.Max();
            var p = logits.Select(l => MathF.Exp((l - max) * (1f / t))).ToArray(); // the kernel's prob(i) and the CPU's
            var options = new SamplingOptions
            {
                Temperature = t,
                TopK = rng.Next(3) == 0 ? 0 : rng.Next(1, 200),
                TopP = rng.Next(3) == 0 ? 1f : (float)rng.NextDouble() * 0.98f + 0.01f,
                MinP = rng.Next(4) == 0 ? 0.05f : 0f,
            };
            var cpu = Sampler.Keep(p, options.Choice(null, 0));
            var kernel = KernelKept(p, options.TopK, options.TopP, options.MinP);
            // Skip rows whose top-p boundary is within rounding of the target (fp64 walk vs fixed-point masses).
            var sorted = Enumerable.Range(0, n).Where(i => p[i] > 0).OrderByDescending(i => p[i]).ThenBy(i => i).ToArray();
            int k = options.TopK > 0 ? Math.Min(options.TopK, sorted.Length) : sorted.Length;
            double keptMass = sorted.Take(k).Sum(i => (double)p[i]), acc = 0;
            bool nearBoundary = false;
            for (int j = 0; j < k && options.TopP < 1f; j++)
            {
                acc += p[sorted[j]];
                if (Math.Abs(acc - options.TopP * keptMass) < 1e-9 * keptMass) nearBoundary = true;
            }
            if (nearBoundary) continue;
            Assert.That(kernel, Is.EqualTo(cpu), $"trial {trial}: n={n} grid={grid} T={t} top-k={options.TopK} top-p={options.TopP} min-p={options.MinP}");
            compared++;
            if (k < sorted.Length && p[sorted[k - 1]] == p[sorted[k]]) cutInsideTies++;
        }
        TestContext.Out.WriteLine($"{compared} rows compared, {cutInsideTies} with the top-k cut inside a run of ties");
        Assert.That(compared, Is.GreaterThan(350));
        Assert.That(cutInsideTies, Is.GreaterThan(50), "the tie cut-offs are exercised");
    }
}
