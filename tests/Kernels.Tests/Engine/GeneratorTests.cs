// Generator edge cases: vocabulary padding rows, bad options, perplexity computed in pieces.
using Kernels.Runtime.Backends;
using Kernels.Runtime.Backends.Cpu;
using Kernels.Runtime.Engine;
using Kernels.Runtime.Models;
using Kernels.Runtime.Tokenization;

namespace Kernels.Tests.Engine;

public class GeneratorTests
{
    [Test]
    public void TokensBeyondTheTokenizerAreNeverSampled()
    {
        // Qwen2-style: the model has 512 rows of logits, the tokenizer knows only 300 ids.
        using var model = ModelLoader.Load("synthetic:tiny");
        using var backend = new CpuBackend(model);
        var generator = new Generator(backend, SyntheticVocabulary.Tokenizer(300));
        var results = generator.Generate([new GenerationRequest
        {
            Prompt = "abc", N = 4, MaxNewTokens = 64, IgnoreEos = true,
            Sampling = new SamplingOptions { Temperature = 5f, Seed = 3 },
        }]);
        Assert.That(results.SelectMany(r => r.Tokens), Has.All.LessThan(300));
        var e = Assert.Throws<RequestValidationException>(() => generator.PromptIds(new GenerationRequest { PromptIds = [1, 400] }));
        Assert.That(e!.Argument, Is.EqualTo(nameof(GenerationRequest.Prompt)));
    }

    [Test]
    public void ZeroPrefillBudgetIsRejected()
    {
        using var model = ModelLoader.Load("synthetic:tiny");
        using var backend = new CpuBackend(model);
        Assert.Throws<ArgumentOutOfRangeException>(() => new Generator(backend, model.Tokenizer, new GeneratorOptions { PrefillTokenBudget = 0 }));
    }

    [Test]
    public void MaxNewTokensZeroFinishesAtOnceWithLength()
    {
        using var model = ModelLoader.Load("synthetic:tiny");
        using var backend = new CpuBackend(model);
        var r = new Generator(backend, model.Tokenizer).Generate([new GenerationRequest { Prompt = "a", MaxNewTokens = 0 }])[0];
        Assert.That(r.Tokens, Is.Empty);
        Assert.That(r.Finish, Is.EqualTo(FinishReason.Length));
    }

    [Test]
    public void PerplexityInPiecesEqualsOneForwardOverTheWindow()
    {
        using var model = ModelLoader.Load("synthetic:tiny");
        using var backend = new CpuBackend(model);
        var rng = new Random(5);
        var ids = Enumerable.Range(0, 300).Select(_ => rng.Next(3, 512)).ToArray(); // > one 256-token piece
        var result = Perplexity.Compute(backend, ids);
        using var cache = backend.CreateCache();
        var logits = backend.Forward([new SequenceStep(cache, ids, AllLogits: true)])[0];
        double nll = 0;
        for (int t = 0; t + 1 < ids.Length; t++)
        {
            var row = logits.AsSpan(t * 512, 512);
            double max = double.NegativeInfinity, sum = 0;
            foreach (float v in row) max = Math.Max(max, v);
            foreach (float v in row) sum += Math.Exp(v - max);
            nll -= row[ids[t + 1]] - max - Math.Log(sum);
        }
        Assert.That(result.Tokens, Is.EqualTo(299));
        // Identical logits either way; only the order of the double sums differs.
        Assert.That(result.MeanNll, Is.EqualTo(nll / 299).Within(1e-7));
    }
}
