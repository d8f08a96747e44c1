// The sampler's filters and penalties, with explicit coins (randomness is an argument).
using Kernels.Runtime.Backends;
using Kernels.Runtime.Engine;

namespace Kernels.Tests.Engine;

public class SamplerTests
{
    private static float[] Logits() => [1.0f, 3.0f, 2.0f, -1.0f, 2.5f];

    [Test]
    public void GreedyPicksTheLargestAndTiesGoToTheLowestId()
    {
        Assert.That(Sampler.Sample(Logits(), SamplingOptions.Greedy.Choice(null, 0.99)), Is.EqualTo(1));
        Assert.That(Sampler.Sample(new float[] { 0, 5, 5 }, SamplingOptions.Greedy.Choice(null, 0.5)), Is.EqualTo(1));
    }

    [Test]
    public void ArgMaxIsTheFirstLargestIgnoringNaNAtEveryLength()
    {
        var rng = new Random(7);
        foreach (int n in new[] { 1, 2, 7, 8, 9, 15, 16, 17, 33, 100, 32000 })
            for (int trial = 0; trial < 20; trial++)
            {
                // few distinct values, so ties are common; some NaN and -inf
                var v = Enumerable.Range(0, n).Select(_ => rng.Next(10) switch { 0 => float.NaN, 1 => float.NegativeInfinity, int x => (float)(x % 4) }).ToArray();
                int expected = 0;
                float best = float.NegativeInfinity;
                for (int i = 0; i < n; i++) if (v[i] > best) (best, expected) = (v[i], i);
                Assert.That(Sampler.ArgMax(v), Is.EqualTo(expected), $"n={n} trial {trial}");
            }
        Assert.That(Sampler.ArgMax(Enumerable.Repeat(float.NaN, 20).ToArray()), Is.EqualTo(0), "nothing above -inf");
        var late = new float[40];
        late[37] = 1f;
        Assert.That(Sampler.ArgMax(late), Is.EqualTo(37), "the maximum in the scalar tail");
    }

    [Test]
    public void TopKOfOneIsGreedyForEveryCoin()
    {
        var o = new SamplingOptions { Temperature = 1, TopK = 1 };
        foreach (double coin in new[] { 0.0, 0.3, 0.999999 }) Assert.That(Sampler.Sample(Logits(), o.Choice(null, coin)), Is.EqualTo(1));
    }

    [Test]
    public void CoinWalksTheDistributionInIdOrder()
    {
        // Without filters every token can come out; coin 0 gives the first id with mass, coin ~1 the last.
        var o = new SamplingOptions { Temperature = 1 };
        Assert.That(Sampler.Sample(Logits(), o.Choice(null, 0.0)), Is.EqualTo(0));
        Assert.That(Sampler.Sample(Logits(), o.Choice(null, 0.999999)), Is.EqualTo(4));
    }

    [Test]
    public void FilteredDrawsWalkTheKeptTokensInIdOrderAsTheGpuKernelDoes()
    {
        // top-k 2 of [2.5, 1, 3] keeps ids 2 (most likely) and 0; the walk goes 0 then 2, as sample_tokens_f32's does,
        // so a small coin gives id 0 and a coin past p(0) = e^-0.5 / (1 + e^-0.5) ~ 0.378 gives id 2.
        var o = new SamplingOptions { Temperature = 1, TopK = 2 };
        Assert.That(Sampler.Sample(new float[] { 2.5f, 1f, 3f }, o.Choice(null, 0.0)), Is.EqualTo(0));
        Assert.That(Sampler.Sample(new float[] { 2.5f, 1f, 3f }, o.Choice(null, 0.37)), Is.EqualTo(0));
        Assert.That(Sampler.Sample(new float[] { 2.5f, 1f, 3f }, o.Choice(null, 0.39)), Is.EqualTo(2));
        Assert.That(Sampler.Keep([MathF.Exp(-0.5f), MathF.Exp(-2f), 1f], o.Choice(null, 0)), Is.EqualTo(new[] { 0, 2 }));
    }

    [Test]
    public void TopPKeepsTheSmallestSetReachingP()
    {
        // softmax([1,3,2,-1,2.5]) ~ [.063,.464,.171,.009,.282]; p = 0.7 keeps ids 1 (.464) and 4 (.282).
        var o = new SamplingOptions { Temperature = 1, TopP = 0.7f };
        var seen = Enumerable.Range(0, 200).Select(i => Sampler.Sample(Logits(), o.Choice(null, i / 200.0))).ToHashSet();
        Assert.That(seen, Is.EquivalentTo(new[] { 1, 4 }));
    }

    [Test]
    public void MinPDropsTokensBelowAFractionOfTheTop()
    {
        // relative to the top (e^3): id 2 is e^-1 = .37, id 4 e^-.5 = .61, id 0 e^-2 = .135; min-p .3 keeps 1, 2, 4.
        var o = new SamplingOptions { Temperature = 1, MinP = 0.3f };
        var seen = Enumerable.Range(0, 200).Select(i => Sampler.Sample(Logits(), o.Choice(null, i / 200.0))).ToHashSet();
        Assert.That(seen, Is.EquivalentTo(new[] { 1, 2, 4 }));
    }

    [Test]
    public void FiltersRunInHuggingFacesOrder()
    {
        // Issue 22's case: probabilities [.5, .3, .1, .1]. top-p 0.6 alone keeps {0, 1}; min-p 0.25 alone keeps
        // {0, 1}; together (top-p first, then min-p over what it kept) still {0, 1}. min-p applied first would leave
        // {0, 1} with mass .8, of which top-p 0.6 keeps {0} only.
        var probs = new[] { 1f, 0.6f, 0.2f, 0.2f }; // relative to the top, as the sampler holds them
        Assert.That(Sampler.Keep(probs, (new SamplingOptions { Temperature = 1, TopP = 0.6f }).Choice(null, 0)), Is.EquivalentTo(new[] { 0, 1 }));
        Assert.That(Sampler.Keep(probs, (new SamplingOptions { Temperature = 1, MinP = 0.25f }).Choice(null, 0)), Is.EquivalentTo(new[] { 0, 1 }));
        Assert.That(Sampler.Keep(probs, (new SamplingOptions { Temperature = 1, TopP = 0.6f, MinP = 0.25f }).Choice(null, 0)), Is.EquivalentTo(new[] { 0, 1 }));
        // top-p is over what top-k left: top-k 2 leaves {0, 1} (mass .8); top-p 0.6 of that is .48, reached by 0 alone.
        // Over the whole distribution it would keep {0, 1}.
        Assert.That(Sampler.Keep(probs, (new SamplingOptions { Temperature = 1, TopK = 2, TopP = 0.6f }).Choice(null, 0)), Is.EquivalentTo(new[] { 0 }));
        var logits = probs.Select(p => MathF.Log(p)).ToArray();
        var seen = Enumerable.Range(0, 400).Select(i => Sampler.Sample(logits.ToArray(), (new SamplingOptions { Temperature = 1, TopP = 0.6f, MinP = 0.25f }).Choice(null, i / 400.0))).ToHashSet();
        Assert.That(seen, Is.EquivalentTo(new[] { 0, 1 }), "Sample draws from what Keep keeps");
    }

    /// <summary>
    /// Hugging Face's logits warpers, written from their definitions (transformers' TopKLogitsWarper,
    /// TopPLogitsWarper, MinPLogitsWarper, in generate's order) in double precision: the set of tokens left with a
    /// finite score.
    /// </summary>
    private static HashSet<int> HuggingFaceKept(double[] scores, int topK, double topP, double minP)
    {
        var s = (double[])scores.Clone();
        int n = s.Length;
        if (topK > 0 && topK < n)
        {
            double kth = s.OrderByDescending(v => v).ElementAt(topK - 1);
            for (int i = 0; i < n; i++) if (s[i] < kth) s[i] = double.NegativeInfinity;
        }
        if (topP < 1)
        {
            // sort ascending, cumulative softmax, remove where cumsum <= 1 - top_p, always keep the last (the top)
            var order = Enumerable.Range(0, n).OrderBy(i => s[i]).ToArray();
            var p = Softmax(order.Select(i => s[i]).ToArray());
            double cum = 0;
            for (int j = 0; j < n - 1; j++)
            {
                cum += p[j];
                if (cum <= 1 - topP) s[order[j]] = double.NegativeInfinity;
            }
        }
        if (minP > 0)
        {
            var p = Softmax(s);
            double top = p.Max();
            for (int i = 0; i < n; i++) if (p[i] < minP * top) s[i] = double.NegativeInfinity;
        }
        return Enumerable.Range(0, n).Where(i => !double.IsNegativeInfinity(s[i])).ToHashSet();
    }

    private static double[] Softmax(double[] s)
    {
        double max = s.Max();
        var e = s.Select(v => double.IsNegativeInfinity(v) ? 0 : Math.Exp(v - max)).ToArray();
        double sum = e.Sum();
        return e.Select(v => v / sum).ToArray();
    }

    [Test]
    public void KeptSetsMatchHuggingFacesWarpersOnCombinedFilters()
    {
        var rng = new Random(22);
        int compared = 0, differentFromMinPFirst = 0;
        for (int trial = 0; trial < 3000; trial++)
        {
            int n = rng.Next(2, 40);
            var logits = Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() * 6 - 3)).ToArray();
            float t = (float)(0.5 + rng.NextDouble());
            var o = new SamplingOptions
            {
                Temperature = t,
                TopK = rng.Next(3) == 0 ? 0 : rng.Next(1, n + 2),
                TopP = rng.Next(3) == 0 ? 1f : (float)(0.05 + 0.9 * rng.NextDouble()),
                MinP = rng.Next(3) == 0 ? 0f : (float)(0.3 * rng.NextDouble()),
            };
            float max = logits.Max();
            var probs = logits.Select(l => MathF.Exp((l - max) / t)).ToArray();
            var scores = logits.Select(l => (double)l / t).ToArray();
            // Skip draws within rounding of a filter's boundary (fp32 here, fp64 in the reference).
            var sorted = probs.OrderByDescending(p => p).ToArray();
            if (sorted.Distinct().Count() < n) continue;
            int k = o.TopK > 0 ? Math.Min(o.TopK, n) : n;
            double mass = sorted.Take(k).Sum(p => (double)p), run = 0;
            bool nearTopP = false;
            for (int j = 0; j < k && o.TopP < 1; j++) { run += sorted[j]; if (Math.Abs(run - o.TopP * mass) < 1e-5 * mass) nearTopP = true; }
            if (nearTopP || probs.Any(p => Math.Abs(p - o.MinP) < 1e-5)) continue;

            var ours = Sampler.Keep(probs, o.Choice(null, 0)).ToHashSet();
            var reference = HuggingFaceKept(scores, o.TopK, o.TopP, o.MinP);
            Assert.That(ours, Is.EquivalentTo(reference), $"trial {trial}: n={n} T={t} top-k={o.TopK} top-p={o.TopP} min-p={o.MinP}");
            compared++;
            // The old order (min-p first) would have given another set here: the test can tell the two apart.
            var minPFirst = Sampler.Keep(probs.Select(p => p >= o.MinP ? p : 0f).ToArray(), (o with { MinP = 0 }).Choice(null, 0)).ToHashSet();
            if (!minPFirst.SetEquals(reference)) differentFromMinPFirst++;
        }
        TestContext.Out.WriteLine($"{compared} of 3000 random cases compared (the rest within rounding of a boundary), {differentFromMinPFirst} of them where min-p first would differ");
        Assert.That(compared, Is.GreaterThan(2900), "enough random cases away from the boundaries");
        Assert.That(differentFromMinPFirst, Is.GreaterThan(100), "cases where the filters' order changes the kept set");
    }

    [Test]
    public void RepetitionPenaltyDividesPositiveAndMultipliesNegativeLogits()
    {
        var logits = Logits();
        var o = new SamplingOptions { RepetitionPenalty = 2f };
        int pick = Sampler.Sample(logits, o.Choice(new HashSet<int> { 1, 3 }, 0));
        Assert.That(logits[1], Is.EqualTo(1.5f));
        Assert.That(logits[3], Is.EqualTo(-2f));
        Assert.That(pick, Is.EqualTo(4));
    }

    [Test]
    public void HugeNegativeLogitsDoNotProduceNaN()
    {
        var logits = new float[] { -500f, -300f, -1000f };
        Assert.That(Sampler.Sample(logits, (new SamplingOptions { Temperature = 0.7f }).Choice(null, 0.5)), Is.EqualTo(1));
    }

    [Test]
    public void SameSeedSameStream()
    {
        var a = new SamplerRng(7, 2);
        var b = new SamplerRng(7, 2);
        var c = new SamplerRng(7, 3);
        var sa = Enumerable.Range(0, 5).Select(_ => a.NextDouble()).ToArray();
        Assert.That(Enumerable.Range(0, 5).Select(_ => b.NextDouble()), Is.EqualTo(sa));
        Assert.That(Enumerable.Range(0, 5).Select(_ => c.NextDouble()), Is.Not.EqualTo(sa));
        Assert.That(sa, Has.All.InRange(0.0, 1.0));
    }

    [TestCase(-1f, 1f, 0f, 1f, nameof(SamplingOptions.Temperature))]
    [TestCase(0f, 0f, 0f, 1f, nameof(SamplingOptions.TopP))]
    [TestCase(0f, 1f, 2f, 1f, nameof(SamplingOptions.MinP))]
    [TestCase(0f, 1f, 0f, 0f, nameof(SamplingOptions.RepetitionPenalty))]
    public void BadOptionsAreRejectedByName(float t, float p, float minP, float rep, string name)
    {
        var o = new SamplingOptions { Temperature = t, TopP = p, MinP = minP, RepetitionPenalty = rep };
        var e = Assert.Throws<RequestValidationException>(o.Validate);
        Assert.That(e!.Argument, Is.EqualTo(name));
    }
}
