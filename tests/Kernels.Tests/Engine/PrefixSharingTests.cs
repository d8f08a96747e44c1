// Hydragen on the CPU: outputs with prefix sharing equal those without it (logits 1e-5, greedy and seeded identical),
// for 3-level trees, unequal groups and samples that finish at different steps; shared prefixes are prefilled once.
using Kernels.Runtime.Backends;
using Kernels.Runtime.Backends.Cpu;
using Kernels.Runtime.Engine;
using Kernels.Runtime.KvCache;
using Kernels.Runtime.Models;

namespace Kernels.Tests.Engine;

public class PrefixSharingTests
{
    /// <summary>Counts the token rows every forward step computes (prefill work).</summary>
    private sealed class CountingBackend(IBackend inner) : IBackend
    {
        public long Rows;
        public int PlansWithLevels;
        public string Name => inner.Name;
        public ModelConfig Config => inner.Config;
        public KvBlockPool KvPool => inner.KvPool;
        public IKvCache CreateCache() => inner.CreateCache();
        public float[][] Forward(IReadOnlyList<SequenceStep> batch, AttentionPlan? attention = null)
        {
            Rows += batch.Sum(b => b.Tokens.Length);
            if (attention is { Levels.Count: > 0 }) PlansWithLevels++;
            return inner.Forward(batch, attention);
        }
        public void Dispose() => inner.Dispose();
    }

    private static int[] Tokens(int seed, int count) { var r = new Random(seed); return Enumerable.Range(0, count).Select(_ => r.Next(3, 512)).ToArray(); }

    [Test]
    public void ThreeLevelTreeStepMatchesPerSequenceAttention()
    {
        using var model = ModelLoader.Load("synthetic:tiny");
        using var backend = new CpuBackend(model, new CpuBackendOptions { KvBlockSize = 4 });
        // system (3 blocks) -> two few-shot headers (2 blocks each) -> 2 and 3 samples with their own tails.
        var system = backend.CreateCache();
        backend.Forward([new SequenceStep(system, Tokens(1, 12))]);
        var headers = new List<IKvCache>();
        for (int f = 0; f < 2; f++)
        {
            var h = system.Fork();
            backend.Forward([new SequenceStep(h, Tokens(10 + f, 8))]);
            headers.Add(h);
        }
        var leaves = new List<IKvCache>();
        int[] children = [2, 3];
        for (int f = 0; f < 2; f++)
            for (int c = 0; c < children[f]; c++)
            {
                var leaf = headers[f].Fork();
                backend.Forward([new SequenceStep(leaf, Tokens(100 + f * 10 + c, 3 + c))]); // unequal suffixes
                leaves.Add(leaf);
            }
        // One decode step (plus a 3-row chunk for one leaf), with and without the plan, from identical cache copies.
        List<SequenceStep> Step(List<IKvCache> caches) => caches.Select((c, i) => new SequenceStep(c, i == 1 ? Tokens(500, 3) : new[] { 7 + i }, AllLogits: true)).ToList();
        var copies = leaves.Select(l => l.Fork()).ToList();
        var batch = Step(leaves);
        var plan = AttentionPlanner.Build(batch);
        Assert.That(plan.Levels.Select(l => (l.Start, l.End, l.Sequences.Length)),
            Is.EquivalentTo(new[] { (0, 12, 5), (12, 20, 2), (12, 20, 3) }), "system prompt level, then one level per few-shot header");
        var shared = backend.Forward(batch, plan);
        var plain = backend.Forward(Step(copies));
        for (int s = 0; s < leaves.Count; s++)
        {
            float maxDiff = shared[s].Select((x, i) => Math.Abs(x - plain[s][i])).Max();
            Assert.That(maxDiff, Is.LessThan(1e-5f), $"sequence {s}");
        }
        foreach (var c in leaves.Concat(copies).Concat(headers).Append(system)) c.Dispose();
        Assert.That(backend.KvPool.FreeBlocks, Is.EqualTo(backend.KvPool.Capacity), "every block returned");
    }

    private static GenerationRequest[] TreeRequests(SamplingOptions sampling)
    {
        // A system prompt shared by all, two few-shot headers, unequal numbers of questions, n samples each,
        // different max lengths so samples finish at different steps.
        string system = "Once upon a time there was a little girl named Lily. She loved to play outside in the park with her friends. ";
        string[] headers = ["One day she saw a big red ball. ", "Every morning, Tom and his dog went to the shop to buy bread. "];
        var requests = new List<GenerationRequest>();
        int i = 0;
        foreach (var h in headers)
            foreach (var question in h.Length < 40 ? new[] { "She said", "Then" } : new[] { "Tom", "The dog", "Mom said" })
                requests.Add(new GenerationRequest { Prompt = system + h + question, N = 1 + i % 3, MaxNewTokens = 10 + 7 * (i++ % 4), Sampling = sampling });
        return requests.ToArray();
    }

    [TestCase(0f)]
    [TestCase(0.9f)]
    public void GenerationWithSharingEqualsGenerationWithout(float temperature)
    {
        string path = SharedData.Require("models/stories260K/stories260K.bin");
        var sampling = new SamplingOptions { Temperature = temperature, TopP = 0.95f, Seed = 11 };
        IReadOnlyList<GenerationResult> Run(bool sharing, out CountingBackend counted)
        {
            using var model = ModelLoader.Load(path);
            counted = new CountingBackend(new CpuBackend(model));
            using var backend = counted;
            return new Generator(backend, model.Tokenizer, new GeneratorOptions { PrefixSharing = sharing }).Generate(TreeRequests(sampling));
        }
        var on = Run(true, out var withSharing);
        var off = Run(false, out var without);
        Assert.That(on.Select(r => (r.Request, r.Sample, r.Tokens.Count)), Is.EqualTo(off.Select(r => (r.Request, r.Sample, r.Tokens.Count))));
        for (int i = 0; i < on.Count; i++)
        {
            Assert.That(on[i].Tokens, Is.EqualTo(off[i].Tokens), $"request {on[i].Request} sample {on[i].Sample}");
            Assert.That(on[i].Text, Is.EqualTo(off[i].Text));
        }
        Assert.That(withSharing.PlansWithLevels, Is.GreaterThan(0), "sharing must actually have been used");
        Assert.That(without.PlansWithLevels, Is.Zero);
        Assert.That(withSharing.Rows, Is.LessThan(without.Rows), "the shared system prompt was prefilled once");
    }

    [Test]
    public void CachedPrefixIsNotPrefilledAgain()
    {
        using var model = ModelLoader.Load(SharedData.Require("models/stories260K/stories260K.bin"));
        var backend = new CountingBackend(new CpuBackend(model));
        using var _ = backend;
        var generator = new Generator(backend, model.Tokenizer);
        string prefix = "Lily and Tom went to the park. They played with a ball and ran around the big tree until the sun went down. ";
        var first = generator.Generate([new GenerationRequest { Prompt = prefix + "Lily said", MaxNewTokens = 1 }])[0];
        long before = backend.Rows;
        var second = generator.Generate([new GenerationRequest { Prompt = prefix + "Tom was", MaxNewTokens = 1 }])[0];
        int bs = backend.KvPool.BlockSize;
        int shared = first.PromptIds.Zip(second.PromptIds).TakeWhile(p => p.First == p.Second).Count() / bs * bs;
        Assert.That(shared, Is.GreaterThan(0));
        Assert.That(backend.Rows - before, Is.EqualTo(second.PromptIds.Count - shared), "only the tokens after the cached blocks are computed");
    }

    [Test]
    public void SamplesOfOnePromptShareItsBlocks()
    {
        using var model = ModelLoader.Load("synthetic:tiny");
        using var backend = new CpuBackend(model, new CpuBackendOptions { KvBlockSize = 8 });
        var generator = new Generator(backend, model.Tokenizer);
        string prompt = new('a', 100); // 101 tokens with BOS: 12 full blocks + a partial one
        int peak = 0;
        foreach (var e in generator.Run([new GenerationRequest { Prompt = prompt, N = 16, MaxNewTokens = 4, IgnoreEos = true }]))
            peak = Math.Max(peak, backend.KvPool.Capacity - backend.KvPool.FreeBlocks);
        // Shared: 12 prompt blocks once, plus per sample its own tail block (16). Unshared would be 16 x 13 = 208.
        Assert.That(peak, Is.LessThanOrEqualTo(12 + 16 + 16));
    }

    [Test]
    public void RequestsWaitForKvMemoryAndAllComplete()
    {
        using var model = ModelLoader.Load("synthetic:tiny");
        // 24 blocks of 8 tokens: one request of 40 prompt + 24 new tokens needs 8 blocks; 10 such requests cannot all run at once.
        long blockBytes = 2L * model.Config.NumLayers * 8 * model.Config.KvDim * sizeof(float);
        using var backend = new CpuBackend(model, new CpuBackendOptions { KvBlockSize = 8, KvCacheBytes = 24 * blockBytes });
        var generator = new Generator(backend, model.Tokenizer);
        var requests = Enumerable.Range(0, 10).Select(i => new GenerationRequest { Prompt = new string((char)('a' + i), 39), MaxNewTokens = 24, IgnoreEos = true }).ToArray();
        var together = generator.Generate(requests);
        Assert.That(together, Has.Count.EqualTo(10));
        Assert.That(together.Select(r => r.Tokens.Count), Has.All.EqualTo(24));
        var alone = requests.Select(r => generator.Generate([r])[0].Tokens).ToArray();
        Assert.That(together.Select(r => r.Tokens), Is.EqualTo(alone));
        Assert.That(backend.KvPool.FreeBlocks + backend.KvPool.Prefixes.Evictable(), Is.EqualTo(backend.KvPool.Capacity));
    }
}
