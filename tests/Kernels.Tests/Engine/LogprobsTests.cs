// Log-probabilities of generated and prompt tokens: Sampler.Score against a double-precision log-softmax, the engine's
// logprobs against the logits of a teacher-forced forward pass, and asking for them changes no token.
using Kernels.Runtime.Backends;
using Kernels.Runtime.Backends.Cpu;
using Kernels.Runtime.Engine;
using Kernels.Runtime.KvCache;
using Kernels.Runtime.Models;

namespace Kernels.Tests.Engine;

public class LogprobsTests
{
    /// <summary>log-softmax in double, -inf for NaN and -inf logits.</summary>
    private static double[] LogSoftmax(ReadOnlySpan<float> row)
    {
        double max = double.NegativeInfinity;
        foreach (float l in row) if (l > max) max = l;
        double sum = 0;
        foreach (float l in row) if (l > float.NegativeInfinity) sum += Math.Exp(l - max);
        var result = new double[row.Length];
        for (int i = 0; i < row.Length; i++) result[i] = row[i] > float.NegativeInfinity ? row[i] - max - Math.Log(sum) : double.NegativeInfinity;
        return result;
    }

    [Test]
    public void ScoreIsTheLogSoftmaxWithTheMostLikelyFirstAndTiesToTheLowerId()
    {
        var rng = new Random(3);
        foreach (int n in new[] { 1, 5, 64, 1000, 32000 })
            for (int trial = 0; trial < 5; trial++)
            {
                // Few distinct values (ties), large offsets (the max must be subtracted), NaN and -inf.
                var row = Enumerable.Range(0, n).Select(_ => rng.Next(12) switch { 0 => float.NaN, 1 => float.NegativeInfinity, int x => 80f + x % 5 * 0.5f }).ToArray();
                if (row.All(v => !(v > float.NegativeInfinity))) row[0] = 1f;
                int token = rng.Next(n);
                var scored = Sampler.Score(row, token, 7);
                var reference = LogSoftmax(row);
                Assert.That(scored.Logprob, reference[token] == double.NegativeInfinity ? Is.EqualTo(float.NegativeInfinity) : Is.EqualTo(reference[token]).Within(1e-5),
                    $"n={n} trial {trial}");
                var expected = Enumerable.Range(0, n).Where(i => row[i] > float.NegativeInfinity).OrderByDescending(i => row[i]).ThenBy(i => i).Take(7).ToArray();
                Assert.That(scored.TopIds, Is.EqualTo(expected), $"n={n} trial {trial}: the most likely ids, ties to the lower id");
                for (int j = 0; j < expected.Length; j++) Assert.That(scored.TopLogprobs[j], Is.EqualTo(reference[expected[j]]).Within(1e-5));
            }
        var nothing = Sampler.Score(new[] { float.NegativeInfinity, float.NaN }, 1, 2);
        Assert.That(nothing.Logprob, Is.EqualTo(float.NegativeInfinity), "no token has probability");
        Assert.That(nothing.TopIds, Is.Empty);
        Assert.Throws<ArgumentOutOfRangeException>(() => Sampler.Score(new float[4], 4, 0));
    }

    /// <summary>Teacher-forced logits: row i predicts token i + 1 of prompt ++ generated.</summary>
    private static float[] AllLogits(LoadedModel model, IReadOnlyList<int> ids)
    {
        using var backend = new CpuBackend(model);
        using var cache = backend.CreateCache();
        return backend.Forward([new SequenceStep(cache, ids.ToArray(), AllLogits: true)])[0];
    }

    [Test]
    public void GeneratedTokensCarryTheirLogprobsAndTheSameTokensAsWithout()
    {
        using var model = ModelLoader.Load("synthetic:tiny");
        using var backend = new CpuBackend(model);
        var generator = new Generator(backend, model.Tokenizer);
        int vocab = Math.Min(model.Tokenizer.VocabSize, model.Config.VocabSize);
        foreach (var sampling in new[] { SamplingOptions.Greedy, new SamplingOptions { Temperature = 0.8f, TopK = 40, RepetitionPenalty = 1.3f, Seed = 5 } })
        {
            var plain = new GenerationRequest { Prompt = "Once upon a time", MaxNewTokens = 12, N = 2, Sampling = sampling, IgnoreEos = true };
            var without = generator.Generate([plain]);
            var with = generator.Generate([plain with { Logprobs = 4 }]);
            Assert.That(without.All(r => r.Logprobs == null), "not asked, not given");
            for (int n = 0; n < 2; n++)
            {
                Assert.That(with[n].Tokens, Is.EqualTo(without[n].Tokens), $"sample {n}: asking for logprobs changes no draw ({sampling})");
                Assert.That(with[n].Logprobs!.Select(l => l.Token), Is.EqualTo(with[n].Tokens));
                var logits = AllLogits(model, [.. with[n].PromptIds, .. with[n].Tokens]);
                int p = with[n].PromptIds.Count;
                for (int t = 0; t < with[n].Tokens.Count; t++)
                {
                    // The raw distribution: before the repetition penalty and the temperature.
                    var reference = LogSoftmax(logits.AsSpan((p - 1 + t) * model.Config.VocabSize, vocab));
                    var lp = with[n].Logprobs![t];
                    Assert.That(lp.Logprob, Is.EqualTo(reference[lp.Token]).Within(1e-4), $"sample {n} token {t}");
                    Assert.That(lp.Top, Has.Count.EqualTo(4));
                    Assert.That(lp.Top[0].Logprob, Is.EqualTo(reference.Max()).Within(1e-4));
                    Assert.That(lp.Top.Select(x => x.Logprob), Is.Ordered.Descending);
                    if (sampling.IsGreedy) Assert.That(lp.Top[0].Token, Is.EqualTo(lp.Token), "greedy picks the top token");
                }
            }
        }
    }

    [TestCase(false, 1000)]
    [TestCase(true, 1000)]
    [TestCase(true, 5)] // the prompt in chunks of 5: each chunk scores its rows, the last one its rows but one
    public void PromptLogprobsScoreEveryPromptTokenGivenThoseBeforeIt(bool sharing, int budget)
    {
        using var model = ModelLoader.Load("synthetic:tiny");
        using var backend = new CpuBackend(model, new CpuBackendOptions { KvBlockSize = 4 });
        var generator = new Generator(backend, model.Tokenizer, new GeneratorOptions { PrefixSharing = sharing, PrefillTokenBudget = budget });
        int vocab = Math.Min(model.Tokenizer.VocabSize, model.Config.VocabSize);
        var request = new GenerationRequest { Prompt = "The cat sat on the mat and looked at the dog", MaxNewTokens = 0, PromptLogprobs = 2 };
        // The same prompt twice, the second after the first is cached: a scored prompt is computed whole either way.
        var first = generator.Generate([request])[0];
        var second = generator.Generate([request with { MaxNewTokens = 3, N = 2 }]);
        var ids = first.PromptIds;
        var logits = AllLogits(model, ids);
        Assert.That(first.Tokens, Is.Empty);
        foreach (var result in new[] { first, second[0], second[1] })
        {
            var prompt = result.PromptLogprobs!;
            Assert.That(prompt, Has.Count.EqualTo(ids.Count));
            Assert.That(prompt[0], Is.Null, "the first token has nothing before it");
            for (int i = 1; i < ids.Count; i++)
            {
                var reference = LogSoftmax(logits.AsSpan((i - 1) * model.Config.VocabSize, vocab));
                Assert.That(prompt[i]!.Token, Is.EqualTo(ids[i]));
                Assert.That(prompt[i]!.Logprob, Is.EqualTo(reference[ids[i]]).Within(1e-4), $"prompt token {i}");
                Assert.That(prompt[i]!.Top, Has.Count.EqualTo(2));
            }
        }
        Assert.That(second[0].Logprobs, Is.Null, "prompt logprobs only were asked");
    }

    [Test]
    public void LogprobsOutsideTheirRangeAreRefusedByName()
    {
        using var model = ModelLoader.Load("synthetic:tiny");
        using var backend = new CpuBackend(model);
        var generator = new Generator(backend, model.Tokenizer);
        var e = Assert.Throws<RequestValidationException>(() => generator.Generate([new GenerationRequest { Prompt = "a", Logprobs = 21 }]));
        Assert.That(e!.Argument, Is.EqualTo(nameof(GenerationRequest.Logprobs)));
        e = Assert.Throws<RequestValidationException>(() => generator.Generate([new GenerationRequest { Prompt = "a", PromptLogprobs = -1 }]));
        Assert.That(e!.Argument, Is.EqualTo(nameof(GenerationRequest.PromptLogprobs)));
    }

    [Test]
    public void CpuStepChoosesAsTheHostChooserDoesOnForwardsLogits()
    {
        // The CPU backend chooses in place from its LM head's output; the default (any backend) copies the logits
        // out and chooses on the host. Two identical caches, one step each way: the same answers.
        using var model = ModelLoader.Load("synthetic:tiny");
        using var backend = new CpuBackend(model);
        var prompts = new[] { new[] { 1, 5, 9, 13 }, new[] { 1, 7 }, new[] { 1, 2, 3, 4, 5, 6 } };
        StepOutput[] Run(bool viaForward)
        {
            var batch = prompts.Select((p, i) => new SequenceStep(backend.CreateCache(), p, AllLogits: i == 2)
            {
                Choose = i == 1 ? [TokenChoice.Greedy with { Logprobs = 3 }, new TokenChoice { Temperature = 1f, Coin = 0.7, RepetitionPenalty = 2f, Seen = new HashSet<int> { 5 }, Logprobs = 0 }]
                    : [new TokenChoice { Temperature = 0.9f, TopP = 0.8f, Coin = 0.3 * i }],
                Score = i == 2 ? new TargetScoring(p.AsMemory(1), 2, 0) : null,
            }).ToArray();
            try
            {
                return viaForward ? TokenChooser.Choose(batch, backend.Forward(batch), model.Config.VocabSize) : backend.Step(batch);
            }
            finally
            {
                foreach (var b in batch) b.Cache.Dispose();
            }
        }
        var direct = Run(false);
        var copied = Run(true);
        for (int s = 0; s < prompts.Length; s++)
        {
            Assert.That(direct[s].Tokens, Is.EqualTo(copied[s].Tokens), $"sequence {s}");
            Assert.That(direct[s].Chosen.Select(c => c?.Logprob), Is.EqualTo(copied[s].Chosen.Select(c => c?.Logprob)), $"sequence {s}");
        }
        Assert.That(direct[1].Tokens, Has.Length.EqualTo(2));
        Assert.That(direct[2].Targets!.Select(t => t.Token), Is.EqualTo(prompts[2].Skip(1)));
        Assert.That(direct[2].Targets!.Select(t => t.Logprob), Is.EqualTo(copied[2].Targets!.Select(t => t.Logprob)));
    }
}
