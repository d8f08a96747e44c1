// Several prompts as one engine submission (one group, one cancellation), and an engine stopping within a timeout
// while a step is still running.
using Kernels.Runtime.Backends;
using Kernels.Runtime.Backends.Cpu;
using Kernels.Runtime.Engine;
using Kernels.Runtime.KvCache;
using Kernels.Runtime.Models;

namespace Kernels.Tests.Engine;

public class EngineSubmissionTests
{
    [Test]
    public async Task SeveralPromptsStreamAsOneSubmissionNumberedByIndex()
    {
        using var engine = InferenceEngine.Create("synthetic:tiny");
        var requests = new[] { "abc", "xyz", "hello" }.Select(p => new GenerationRequest { Prompt = p, N = 2, MaxNewTokens = 5, IgnoreEos = true }).ToArray();
        var tokens = new Dictionary<(int, int), List<int>>();
        await foreach (var e in engine.GenerateManyAsync(requests))
            if (e.Token is int t) (tokens.TryGetValue((e.Request, e.Sample), out var l) ? l : tokens[(e.Request, e.Sample)] = []).Add(t);
        Assert.That(tokens.Keys.Order(), Is.EqualTo(new[] { (0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1) }));
        for (int i = 0; i < requests.Length; i++)
        {
            var alone = await engine.GenerateAsync([requests[i]]);
            Assert.That(tokens[(i, 0)], Is.EqualTo(alone[0].Tokens), $"prompt {i}");
        }
        Assert.That(engine.Metrics.RequestsFinished, Is.EqualTo(3 + 3), "each prompt counts as a request");
    }

    [Test]
    public async Task CancellingASubmissionCancelsEveryPrompt()
    {
        using var engine = InferenceEngine.Create("synthetic:tiny");
        var requests = Enumerable.Range(0, 4).Select(i => new GenerationRequest { PromptIds = [1, 5 + i, 9], N = 2, MaxNewTokens = 400, IgnoreEos = true }).ToArray();
        using var cts = new CancellationTokenSource();
        var finishes = new List<FinishReason>();
        int tokens = 0;
        await foreach (var e in engine.GenerateManyAsync(requests, cts.Token))
        {
            if (e.Token != null && ++tokens == 16) cts.Cancel();
            if (e.Finish is FinishReason f) finishes.Add(f);
        }
        Assert.That(finishes, Has.Count.EqualTo(8).And.All.EqualTo(FinishReason.Cancelled), "all 4 prompts x 2 samples end, none runs to 400 tokens");
        Assert.That(engine.Metrics.RequestsCancelled, Is.EqualTo(4));
        var deadline = DateTime.UtcNow.AddSeconds(10);
        while (engine.KvPool.FreeBlocks + engine.KvPool.Prefixes.Evictable() != engine.KvPool.Capacity && DateTime.UtcNow < deadline) await Task.Delay(10);
        Assert.That(engine.KvPool.FreeBlocks + engine.KvPool.Prefixes.Evictable(), Is.EqualTo(engine.KvPool.Capacity), "every block is back");
    }

    [Test]
    public async Task PromptsThatTogetherExceedTheKvPoolRunAsMemoryFreesUp()
    {
        var config = SyntheticModels.Shapes["tiny"];
        long blockBytes = 2L * config.NumLayers * 16 * config.KvDim * sizeof(float);
        using var engine = InferenceEngine.Create("synthetic:tiny", new InferenceEngineOptions { Cpu = new CpuBackendOptions { KvCacheBytes = 64 * blockBytes } });
        var one = new GenerationRequest { PromptIds = [1, 2, 3], N = 4, MaxNewTokens = 200, IgnoreEos = true }; // 4 x 13 of 64 blocks
        var results = await engine.GenerateAsync([one, one with { PromptIds = [1, 2, 4] }, one with { PromptIds = [1, 2, 5] }]);
        Assert.That(results, Has.Count.EqualTo(12));
        Assert.That(results.Select(r => r.Tokens.Count), Has.All.EqualTo(200), "every sample ran to its end, the prompts one after another");
    }

    /// <summary>A backend whose step blocks until released: a step far longer than any shutdown timeout.</summary>
    private sealed class StalledBackend(IBackend inner) : IBackend
    {
        public readonly ManualResetEventSlim Release = new(false);
        public readonly ManualResetEventSlim Entered = new(false);
        public volatile bool Stall;
        public volatile bool Disposed;
        public string Name => inner.Name;
        public ModelConfig Config => inner.Config;
        public KvBlockPool KvPool => inner.KvPool;
        public IKvCache CreateCache() => inner.CreateCache();
        public float[][] Forward(IReadOnlyList<SequenceStep> batch, AttentionPlan? attention = null)
        {
            if (Stall)
            {
                Entered.Set();
                Release.Wait();
            }
            return inner.Forward(batch, attention);
        }
        public void Dispose()
        {
            Disposed = true;
            inner.Dispose();
        }
    }

    [Test]
    public async Task ShutdownReturnsWithinItsTimeoutDuringALongStepAndTheLoopReleasesTheModelAfterIt()
    {
        var model = ModelLoader.Load("synthetic:tiny");
        var backend = new StalledBackend(new CpuBackend(model));
        var engine = InferenceEngine.Create(model, backend);
        var stream = Task.Run(async () =>
        {
            var finishes = new List<FinishReason>();
            await foreach (var e in engine.GenerateAsync(new GenerationRequest { Prompt = "abc", MaxNewTokens = 400, IgnoreEos = true }))
            {
                if (e.Token != null) backend.Stall = true;
                if (e.Finish is FinishReason f) finishes.Add(f);
            }
            return finishes;
        });
        Assert.That(backend.Entered.Wait(TimeSpan.FromSeconds(30)), "a step stalls");

        var clock = System.Diagnostics.Stopwatch.StartNew();
        bool stopped = engine.Shutdown(TimeSpan.FromMilliseconds(300));
        Assert.That(stopped, Is.False, "the step is still running");
        Assert.That(clock.Elapsed, Is.LessThan(TimeSpan.FromSeconds(5)), "Shutdown returned at its timeout, not after the step");
        Assert.That(backend.Disposed, Is.False, "nothing is freed under a running step");

        backend.Release.Set(); // the step ends: the loop stops, ends the request, releases the backend
        Assert.That(await stream.WaitAsync(TimeSpan.FromSeconds(30)), Is.EqualTo(new[] { FinishReason.Cancelled }));
        var deadline = DateTime.UtcNow.AddSeconds(10);
        while (!backend.Disposed && DateTime.UtcNow < deadline) await Task.Delay(10);
        Assert.That(backend.Disposed, Is.True, "the loop released the backend when its step ended");
        engine.Dispose(); // idempotent
    }
}
