// The sampler's filters and penalties, with explicit coins (randomness is an argument).
using Kernels.Runtime.Engine;

namespace Kernels.Tests.Engine;

public class SamplerTests
{
    private static float[] Logits() => [1.0f, 3.0f, 2.0f, -1.0f, 2.5f];

    [Test]
    public void GreedyPicksTheLargestAndTiesGoToTheLowestId()
    {
        Assert.That(Sampler.Sample(Logits(), SamplingOptions.Greedy, null, 0.99), Is.EqualTo(1));
        Assert.That(Sampler.Sample(new float[] { 0, 5, 5 }, SamplingOptions.Greedy, null, 0.5), Is.EqualTo(1));
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
        foreach (double coin in new[] { 0.0, 0.3, 0.999999 }) Assert.That(Sampler.Sample(Logits(), o, null, coin), Is.EqualTo(1));
    }

    [Test]
    public void CoinWalksTheDistributionInIdOrder()
    {
        // Without filters every token can come out; coin 0 gives the first id with mass, coin ~1 the last.
        var o = new SamplingOptions { Temperature = 1 };
        Assert.That(Sampler.Sample(Logits(), o, null, 0.0), Is.EqualTo(0));
        Assert.That(Sampler.Sample(Logits(), o, null, 0.999999), Is.EqualTo(4));
    }

    [Test]
    public void TopPKeepsTheSmallestSetReachingP()
    {
        // softmax([1,3,2,-1,2.5]) ~ [.063,.464,.171,.009,.282]; p = 0.7 keeps ids 1 (.464) and 4 (.282).
        var o = new SamplingOptions { Temperature = 1, TopP = 0.7f };
        var seen = Enumerable.Range(0, 200).Select(i => Sampler.Sample(Logits(), o, null, i / 200.0)).ToHashSet();
        Assert.That(seen, Is.EquivalentTo(new[] { 1, 4 }));
    }

    [Test]
    public void MinPDropsTokensBelowAFractionOfTheTop()
    {
        // relative to the top (e^3): id 2 is e^-1 = .37, id 4 e^-.5 = .61, id 0 e^-2 = .135; min-p .3 keeps 1, 2, 4.
        var o = new SamplingOptions { Temperature = 1, MinP = 0.3f };
        var seen = Enumerable.Range(0, 200).Select(i => Sampler.Sample(Logits(), o, null, i / 200.0)).ToHashSet();
        Assert.That(seen, Is.EquivalentTo(new[] { 1, 2, 4 }));
    }

    [Test]
    public void RepetitionPenaltyDividesPositiveAndMultipliesNegativeLogits()
    {
        var logits = Logits();
        var o = new SamplingOptions { RepetitionPenalty = 2f };
        int pick = Sampler.Sample(logits, o, new HashSet<int> { 1, 3 }, 0);
        Assert.That(logits[1], Is.EqualTo(1.5f));
        Assert.That(logits[3], Is.EqualTo(-2f));
        Assert.That(pick, Is.EqualTo(4));
    }

    [Test]
    public void HugeNegativeLogitsDoNotProduceNaN()
    {
        var logits = new float[] { -500f, -300f, -1000f };
        Assert.That(Sampler.Sample(logits, new SamplingOptions { Temperature = 0.7f }, null, 0.5), Is.EqualTo(1));
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

    [TestCase(-1f, 1f, 0f, 1f, "temperature")]
    [TestCase(0f, 0f, 0f, 1f, "top-p")]
    [TestCase(0f, 1f, 2f, 1f, "min-p")]
    [TestCase(0f, 1f, 0f, 0f, "repetition-penalty")]
    public void BadOptionsAreRejectedByName(float t, float p, float minP, float rep, string name)
    {
        var o = new SamplingOptions { Temperature = t, TopP = p, MinP = minP, RepetitionPenalty = rep };
        var e = Assert.Throws<RequestValidationException>(o.Validate);
        Assert.That(e!.Argument, Is.EqualTo(name));
    }
}
