// The KIVI cache in the engine: batch and sharing invariance for kivi2, capacity at a fixed budget, fp16's accuracy.
using Kernels.Runtime.Backends;
using Kernels.Runtime.Backends.Cpu;
using Kernels.Runtime.Engine;
using Kernels.Runtime.KvCache;
using Kernels.Runtime.Models;

namespace Kernels.Tests.KvCache;

public class KiviEngineTests
{
    /// <summary>G 16, R 16: short prompts already have quantized blocks.</summary>
    private static readonly KvCacheFormat Kivi2 = new() { Kind = KvCacheKind.Kivi2, Group = 16, Window = 16 };

    private static readonly string[] Prompts =
    [
        "Once upon a time there was a little girl who lived in a village near the forest",
        "The cat sat on the mat!",
        "Lily and Tom went to the park. They played on the swings and the slide until the sun went down",
        "Hello world",
        "She was very happy because the sun was shining and the birds were singing",
        "Tim had a red ball. He",
    ];

    /// <remarks>
    /// "Alone" runs on a fresh backend each: a cached prompt prefix whose blocks an earlier request already compacted
    /// would be read quantized inside the new request's window (the documented limit of sharing compacted prefixes).
    /// </remarks>
    [Test]
    public void Kivi2GreedyOutputsTogetherEqualOneAtATime()
    {
        using var model = ModelLoader.Load("synthetic:tiny");
        var options = new GeneratorOptions { PrefillTokenBudget = 24 };
        var requests = Prompts.Select(p => new GenerationRequest { Prompt = p, MaxNewTokens = 48, IgnoreEos = true }).ToArray();
        IReadOnlyList<GenerationResult> Run(params GenerationRequest[] batch)
        {
            using var backend = new CpuBackend(model, new CpuBackendOptions { KvCache = Kivi2 });
            return new Generator(backend, model.Tokenizer, options).Generate(batch);
        }
        var together = Run(requests);
        var alone = requests.Select(r => Run(r)[0]).ToArray();
        for (int i = 0; i < requests.Length; i++) Assert.That(together[i].Tokens, Is.EqualTo(alone[i].Tokens), $"prompt {i}");
    }

    [Test]
    public void Kivi2SeededSamplesAreTheSameWithAndWithoutPrefixSharing()
    {
        using var model = ModelLoader.Load("synthetic:tiny");
        var sampling = new SamplingOptions { Temperature = 1.0f, TopK = 50, Seed = 7 };
        var requests = Prompts.Take(3).Select(p => new GenerationRequest { Prompt = p, N = 3, MaxNewTokens = 40, Sampling = sampling, IgnoreEos = true }).ToArray();
        IReadOnlyList<GenerationResult> Run(bool sharing)
        {
            using var backend = new CpuBackend(model, new CpuBackendOptions { KvCache = Kivi2 });
            return new Generator(backend, model.Tokenizer, new GeneratorOptions { PrefixSharing = sharing }).Generate(requests);
        }
        var shared = Run(true);
        var copied = Run(false);
        for (int i = 0; i < shared.Count; i++) Assert.That(shared[i].Tokens, Is.EqualTo(copied[i].Tokens), $"result {i}");
    }

    [Test]
    public void Kivi2LogitsAreCloseToFp32AndDifferFromThem()
    {
        using var model = ModelLoader.Load("synthetic:tiny");
        var ids = Enumerable.Range(0, 100).Select(i => 3 + i * 37 % 500).ToArray();
        float[] Logits(KvCacheFormat f)
        {
            using var backend = new CpuBackend(model, new CpuBackendOptions { KvCache = f });
            using var cache = backend.CreateCache();
            return backend.Forward([new SequenceStep(cache, ids)])[0];
        }
        var exact = Logits(KvCacheFormat.Fp32);
        var half = Logits(new KvCacheFormat { Kind = KvCacheKind.Fp16 });
        var kivi = Logits(Kivi2);
        double Diff(float[] a) => a.Zip(exact).Max(t => Math.Abs(t.First - t.Second));
        Assert.That(Diff(half), Is.LessThan(1e-2));
        Assert.That(Diff(kivi), Is.GreaterThan(Diff(half)), "2-bit keys must change the logits more than fp16 rounding");
        Assert.That(kivi.All(float.IsFinite));
    }

    /// <summary>
    /// The most sequences decoding at once when 48 requests of 400 prompt + 96 new tokens run in one budget (prefills
    /// of 1024 tokens a step let far more start than memory holds, so memory is the limit).
    /// </summary>
    private static (int MostDecoding, int Finished) Capacity(LoadedModel model, KvCacheFormat format, long budget)
    {
        using var backend = new CpuBackend(model, new CpuBackendOptions { KvCache = format, KvCacheBytes = budget });
        var scheduler = new Scheduler(backend, model.Tokenizer, new GeneratorOptions { PrefillTokenBudget = 1024, PrefixSharing = false });
        var rng = new Random(3);
        for (int i = 0; i < 48; i++)
            scheduler.Submit(i, new GenerationRequest { PromptIds = Enumerable.Range(0, 400).Select(_ => rng.Next(3, 512)).ToArray(), MaxNewTokens = 96, IgnoreEos = true });
        int most = 0, finished = 0;
        while (scheduler.HasWork)
        {
            finished += scheduler.Step().Count(e => e.Finish != null);
            most = Math.Max(most, scheduler.DecodingSequences);
        }
        return (most, finished);
    }

    /// <remarks>R = 32 of 496 tokens: a settled sequence holds 2 fp16 blocks and 14 compact ones (5.6x less than fp32);
    /// with the default R = 128 it keeps 5 fp16 blocks and the bound is 3.6x at this length.</remarks>
    [Test]
    public void Kivi2AdmitsAtLeastFourTimesTheSequencesOfFp32AtTheSameBudget()
    {
        using var model = ModelLoader.Load("synthetic:tiny");
        long budget = 8L * 496 * 2 * model.Config.NumLayers * model.Config.KvDim * sizeof(float); // 8 fp32 sequences of 496 tokens
        var fp32 = Capacity(model, KvCacheFormat.Fp32, budget);
        var kivi2 = Capacity(model, new KvCacheFormat { Kind = KvCacheKind.Kivi2, Window = 32 }, budget);
        Assert.That(fp32.Finished, Is.EqualTo(48));
        Assert.That(kivi2.Finished, Is.EqualTo(48));
        Assert.That(fp32.MostDecoding, Is.InRange(6, 10)); // 8 at full length; some are shorter at any moment
        TestContext.Out.WriteLine($"most decoding at once: fp32 {fp32.MostDecoding}, kivi2 {kivi2.MostDecoding}");
        Assert.That(kivi2.MostDecoding, Is.GreaterThanOrEqualTo(4 * fp32.MostDecoding), $"fp32 {fp32.MostDecoding}, kivi2 {kivi2.MostDecoding}");
    }

    [Test]
    public void CompactBlocksGiveTheirBudgetBackAndThePoolEmptiesWhenIdle()
    {
        using var model = ModelLoader.Load("synthetic:tiny");
        using var backend = new CpuBackend(model, new CpuBackendOptions { KvCache = Kivi2 });
        var pool = backend.KvPool;
        int free = pool.FreeBlocks;
        using (var cache = (KvSequence)backend.CreateCache())
        {
            backend.Forward([new SequenceStep(cache, Enumerable.Range(3, 100).ToArray())]);
            // 100 tokens, R 16: blocks ending at or before 84 are compact (5 of 7).
            Assert.That(cache.Blocks.Count(pool.IsCompact), Is.EqualTo(5));
            var copy = cache.Copy();
            Assert.That(copy.Blocks.Count(pool.IsCompact), Is.EqualTo(5), "a copy keeps the compact form");
            copy.Dispose();
            Assert.Throws<InvalidOperationException>(() => cache.Truncate(40), "truncating into a quantized block");
            cache.Truncate(80);
        }
        Assert.That(pool.FreeBlocks, Is.EqualTo(free));
    }
}
