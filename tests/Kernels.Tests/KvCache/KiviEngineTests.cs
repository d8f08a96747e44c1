// The KIVI cache in the engine: batch and sharing invariance for kivi2, capacity at a fixed budget, fp16's accuracy.
using Kernels.Runtime.Backends;
using Kernels.Runtime.Backends.Cpu;
using Kernels.Runtime.Engine;
using Kernels.Runtime.KvCache;
using Kernels.Runtime.Models;
using Kernels.Runtime.Quantization;

namespace Kernels.Tests.KvCache;

public unsafe class KiviEngineTests
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

    /// <remarks>
    /// The bound comes from the quantization step. A group of G values with range r = max - min gets the fp16 scale
    /// s = the smallest fp16 >= r / (2^B - 1) (so s &lt;= r / (2^B - 1) * (1 + 2^-10), one fp16 ulp up) and the fp32 zero
    /// z = min; each code is round((x - z) / s) in [0, 2^B - 1], so |x - (q s + z)| &lt;= s / 2, plus the fp32 rounding of
    /// the quotient and of q s + z (a few ulp of max(|x|, |z|) + 2^B s; 1e-6 (1 + |x| + r) covers it). Checked on layer 0
    /// of the engine's own cache after a 100-token prefill: its K/V rows come from the embeddings alone, so an fp16
    /// cache holds exactly the rows the KIVI cache quantized (in later layers they already differ by the quantized
    /// attention). The logits then move with the step: 4-bit codes have 15 steps over a range where 2-bit have 3, so to
    /// first order their logit error is 5x smaller; asserted with a 2.5x margin (less than half of kivi2's).
    /// </remarks>
    [Test]
    public void Kivi2LogitsAreCloseToFp32AndDifferFromThem()
    {
        using var model = ModelLoader.Load("synthetic:tiny");
        var ids = Enumerable.Range(0, 100).Select(i => 3 + i * 37 % 500).ToArray();
        var exact = Logits(model, KvCacheFormat.Fp32, ids, out _);
        var half = Logits(model, new KvCacheFormat { Kind = KvCacheKind.Fp16 }, ids, out var halfCache);
        var kivi = Logits(model, Kivi2, ids, out var kiviCache);
        var kivi4 = Logits(model, Kivi2 with { Kind = KvCacheKind.Kivi4 }, ids, out _);
        double Diff(float[] a) => a.Zip(exact).Max(t => Math.Abs(t.First - t.Second));
        TestContext.Out.WriteLine($"max |logit - fp32 cache's|: fp16 {Diff(half):E2}, kivi4 {Diff(kivi4):E2}, kivi2 {Diff(kivi):E2}");
        Assert.That(kivi.All(float.IsFinite));
        Assert.That(Diff(half), Is.LessThan(1e-2));
        Assert.That(Diff(kivi), Is.GreaterThan(Diff(half)), "2-bit keys must change the logits more than fp16 rounding");
        Assert.That(Diff(kivi4), Is.LessThan(Diff(kivi) / 2), "4-bit codes: a step 5x smaller than 2-bit's");

        // Layer 0, every compacted block (100 tokens, R 16: blocks ending at or before 84, 5 of 7), element by element.
        var (kv, seq) = kiviCache;
        var (fp16, fpSeq) = halfCache;
        int kvd = model.Config.KvDim, g = Kivi2.Group, compact = seq.Blocks.Count(kv.IsCompact);
        Assert.That(compact, Is.EqualTo(5));
        var keys = new float[g * kvd];
        var values = new float[g * kvd];
        double worst = 0;
        for (int b = 0; b < compact; b++)
        {
            var storage = (CpuKvStorage)kv.Storage;
            fixed (float* kp = keys) fixed (float* vp = values)
                Kivi.DequantizeBlock(storage.Codes(0, seq.Blocks[b]), storage.Scales(0, seq.Blocks[b]), storage.Mins(0, seq.Blocks[b]), kvd, g, Kivi2.Bits, kp, vp);
            var fpStorage = (CpuKvStorage)fp16.Storage;
            ushort* kh = fpStorage.KeyHalfPointer(0, fpSeq.Blocks[b]), vh = fpStorage.ValueHalfPointer(0, fpSeq.Blocks[b]);
            float Row(ushort* rows, int j, int c) => (float)BitConverter.UInt16BitsToHalf(rows[j * kvd + c]);
            // Keys: a group is one channel over the block's G tokens; values: G channels of one token.
            for (int c = 0; c < kvd; c++)
            {
                var xs = Enumerable.Range(0, g).Select(j => Row(kh, j, c)).ToArray();
                for (int j = 0; j < g; j++) worst = Math.Max(worst, Check(xs[j], keys[j * kvd + c], xs, $"block {b} key channel {c} token {j}"));
            }
            for (int j = 0; j < g; j++)
                for (int c0 = 0; c0 < kvd; c0 += g)
                {
                    var xs = Enumerable.Range(c0, g).Select(c => Row(vh, j, c)).ToArray();
                    for (int c = 0; c < g; c++) worst = Math.Max(worst, Check(xs[c], values[j * kvd + c0 + c], xs, $"block {b} value token {j} channel {c0 + c}"));
                }
        }
        TestContext.Out.WriteLine($"layer 0: the largest error is {worst:P1} of its bound");
        Assert.That(worst, Is.GreaterThan(0.5), "the half-step bound is reached, not a loose one");

        // |x - x^| against the half-step bound of x's group (the remarks above); returns the fraction of the bound used.
        static double Check(float x, float reconstructed, float[] group, string what)
        {
            float range = group.Max() - group.Min();
            double bound = range / 3.0 * (1 + Math.Pow(2, -10)) / 2 + 1e-6 * (1 + Math.Abs(x) + range);
            double error = Math.Abs(x - reconstructed);
            Assert.That(error, Is.LessThanOrEqualTo(bound), what);
            return error / bound;
        }
    }

    /// <summary>Logits of one prefill of <paramref name="ids"/>; the backend and its cache stay alive until the test ends.</summary>
    private float[] Logits(LoadedModel model, KvCacheFormat format, int[] ids, out (KvBlockPool Pool, KvSequence Seq) cache)
    {
        var backend = new CpuBackend(model, new CpuBackendOptions { KvCache = format });
        _owned.Add(backend);
        var seq = (KvSequence)backend.CreateCache();
        _owned.Add(seq);
        cache = (backend.KvPool, seq);
        return backend.Forward([new SequenceStep(seq, ids)])[0];
    }

    private readonly List<IDisposable> _owned = [];

    [TearDown]
    public void DisposeBackends()
    {
        for (int i = _owned.Count - 1; i >= 0; i--) _owned[i].Dispose(); // caches before their backends
        _owned.Clear();
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
