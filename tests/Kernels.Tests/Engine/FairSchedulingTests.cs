// The scheduler's fairness bound (see Scheduler's summary): a request whose samples fit its group's share gets its
// first token within ceil(P / ceil(B / G)) steps of arriving, however large another group's fan-out; and fairness
// changes no output (preempted work is recomputed exactly).
using Kernels.Runtime.Backends.Cpu;
using Kernels.Runtime.Engine;
using Kernels.Runtime.KvCache;
using Kernels.Runtime.Models;

namespace Kernels.Tests.Engine;

public class FairSchedulingTests
{
    private const int FanOutGroup = 1_000_000;

    private static int[] Prompt(Random rng, int length) => Enumerable.Range(0, length).Select(_ => rng.Next(3, 512)).ToArray();

    /// <summary>
    /// The attack of issue 21 scaled to the caps: one client's 16 prompts x n = 8 (128 sequences, 60-token prompts)
    /// against a step of at most 32 sequences and 64 prefill tokens. Then single requests from other clients arrive,
    /// one at a time and several at once; each must see its first token within the stated bound.
    /// </summary>
    [TestCase(1)]
    [TestCase(4)]
    public void ARequestWaitsBoundedStepsBehindAnotherClientsFanOut(int arrivingTogether)
    {
        const int budget = 64, maxSequences = 32, promptLength = 8;
        using var model = ModelLoader.Load("synthetic:tiny");
        using var backend = new CpuBackend(model);
        var scheduler = new Scheduler(backend, model.Tokenizer, new GeneratorOptions { PrefillTokenBudget = budget, MaxBatchSequences = maxSequences });
        var rng = new Random(5);
        for (int i = 0; i < 16; i++)
            scheduler.Submit(i, new GenerationRequest { PromptIds = Prompt(rng, 60), N = 8, MaxNewTokens = 200, IgnoreEos = true }, group: FanOutGroup);

        int fanOutTokens = 0, next = 100;
        for (int round = 0; round < 6; round++)
        {
            for (int warm = 0; warm < 3; warm++) fanOutTokens += scheduler.Step().Count(e => e.Token != null);
            var arrived = Enumerable.Range(next, arrivingTogether).ToList();
            foreach (int id in arrived)
                scheduler.Submit(id, new GenerationRequest { PromptIds = Prompt(rng, promptLength), MaxNewTokens = 4, IgnoreEos = true });
            next += arrivingTogether;
            // Groups with work now: the fan-out and the arrivals (earlier arrivals have finished their 4 tokens or not).
            int groups = 1 + arrivingTogether + (round > 0 ? arrivingTogether : 0);
            int bound = (int)Math.Ceiling(promptLength / Math.Ceiling((double)budget / groups));
            var waiting = new HashSet<int>(arrived);
            int steps = 0;
            while (waiting.Count > 0 && steps < 50)
            {
                steps++;
                foreach (var e in scheduler.Step())
                {
                    if (e.Token != null && waiting.Remove(e.Request)) { }
                    if (e.Token != null && e.Request < 16) fanOutTokens++;
                }
                Assert.That(steps <= bound || waiting.Count == 0, $"round {round}: {waiting.Count} request(s) still without a first token after {steps} steps; bound {bound}");
            }
            Assert.That(waiting, Is.Empty);
            TestContext.Out.WriteLine($"round {round}: first tokens after {steps} step(s), bound {bound}");
        }
        Assert.That(fanOutTokens, Is.GreaterThan(100), "the fan-out keeps moving too");
        scheduler.Clear();
    }

    /// <summary>A step never holds more sequences than MaxBatchSequences, however many are submitted.</summary>
    [Test]
    public void AStepHoldsAtMostMaxBatchSequences()
    {
        using var model = ModelLoader.Load("synthetic:tiny");
        using var backend = new CountingBackend(new CpuBackend(model));
        var scheduler = new Scheduler(backend, model.Tokenizer, new GeneratorOptions { MaxBatchSequences = 24 });
        var rng = new Random(3);
        for (int i = 0; i < 10; i++)
            scheduler.Submit(i, new GenerationRequest { PromptIds = Prompt(rng, 10), N = 8, MaxNewTokens = 6, IgnoreEos = true }, group: i % 3);
        int events = 0;
        while (scheduler.HasWork) events += scheduler.Step().Count(e => e.Finish != null);
        Assert.That(events, Is.EqualTo(80), "every sample finished");
        Assert.That(backend.MostSequences, Is.LessThanOrEqualTo(24));
        Assert.That(backend.MostSequences, Is.GreaterThanOrEqualTo(16), "and the step is used");
    }

    /// <summary>
    /// Over a KV pool too small for the fan-out and the newcomer together, the newcomer still gets its first token at
    /// once (the fan-out's newest request is preempted), and every output equals the output of the request run alone.
    /// </summary>
    [Test]
    public void PreemptingAFanOutForANewcomerChangesNoOutput()
    {
        using var model = ModelLoader.Load("synthetic:tiny");
        var config = model.Config;
        long blockBytes = 2L * config.NumLayers * 8 * config.KvDim * sizeof(float);
        using var backend = new CpuBackend(model, new CpuBackendOptions { KvBlockSize = 8, KvCacheBytes = 40 * blockBytes }); // 40 blocks
        var scheduler = new Scheduler(backend, model.Tokenizer, new GeneratorOptions { MaxBatchSequences = 16, PrefillTokenBudget = 256 });
        var rng = new Random(11);
        var fanOut = Enumerable.Range(0, 4).Select(_ => new GenerationRequest { PromptIds = Prompt(rng, 20), N = 4, MaxNewTokens = 40, IgnoreEos = true }).ToArray();
        for (int i = 0; i < fanOut.Length; i++) scheduler.Submit(i, fanOut[i], group: FanOutGroup);
        var tokens = new Dictionary<(int, int), List<int>>();
        void Collect(IEnumerable<GenerationEvent> events)
        {
            foreach (var e in events)
                if (e.Token is int t) (tokens.TryGetValue((e.Request, e.Sample), out var l) ? l : tokens[(e.Request, e.Sample)] = []).Add(t);
        }
        for (int s = 0; s < 12; s++) Collect(scheduler.Step());
        var newcomer = new GenerationRequest { PromptIds = Prompt(rng, 6), N = 2, MaxNewTokens = 30, IgnoreEos = true };
        scheduler.Submit(99, newcomer);
        var first = scheduler.Step();
        Collect(first);
        Assert.That(first.Count(e => e.Request == 99 && e.Token != null), Is.EqualTo(2), "both samples of the newcomer start in the step after it arrives");
        while (scheduler.HasWork) Collect(scheduler.Step());
        Assert.That(scheduler.Preemptions, Is.GreaterThan(0), "the pool was too small: the fan-out gave way");

        var alone = new Generator(backend, model.Tokenizer);
        for (int i = 0; i < fanOut.Length; i++)
        {
            var expected = alone.Generate([fanOut[i]]);
            for (int n = 0; n < 4; n++) Assert.That(tokens[(i, n)], Is.EqualTo(expected[n].Tokens), $"fan-out request {i} sample {n}");
        }
        var newcomerAlone = alone.Generate([newcomer]);
        for (int n = 0; n < 2; n++) Assert.That(tokens[(99, n)], Is.EqualTo(newcomerAlone[n].Tokens), $"newcomer sample {n}");
    }

    private sealed class CountingBackend(Kernels.Runtime.Backends.IBackend inner) : Kernels.Runtime.Backends.IBackend
    {
        public int MostSequences;
        public string Name => inner.Name;
        public ModelConfig Config => inner.Config;
        public Kernels.Runtime.KvCache.KvBlockPool KvPool => inner.KvPool;
        public Kernels.Runtime.KvCache.IKvCache CreateCache() => inner.CreateCache();
        public float[][] Forward(IReadOnlyList<Kernels.Runtime.Backends.SequenceStep> batch, Kernels.Runtime.Backends.AttentionPlan? attention = null)
        {
            MostSequences = Math.Max(MostSequences, batch.Count);
            return inner.Forward(batch, attention);
        }
        public void Dispose() => inner.Dispose();
    }
}
