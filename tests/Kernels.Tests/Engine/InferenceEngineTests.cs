// The engine under concurrent load: many requests over a KV pool too small for all of them, cancellation, dispose.
using Kernels.Runtime.Backends.Cpu;
using Kernels.Runtime.Engine;
using Kernels.Runtime.KvCache;
using Kernels.Runtime.Models;

namespace Kernels.Tests.Engine;

public class InferenceEngineTests
{
    private static long BlockBytes(ModelConfig c, int blockSize) => 2L * c.NumLayers * blockSize * c.KvDim * sizeof(float);

    [Test]
    public async Task TwoHundredConcurrentRequestsOverASmallPoolAllCompleteAsIfAlone()
    {
        var config = SyntheticModels.Shapes["tiny"];
        var options = new InferenceEngineOptions
        {
            Cpu = new CpuBackendOptions { KvBlockSize = 8, KvCacheBytes = 48 * BlockBytes(config, 8) }, // 48 blocks = 384 tokens
            Scheduling = new GeneratorOptions { PrefillTokenBudget = 64 },
        };
        using var engine = InferenceEngine.Create("synthetic:tiny", options);
        var rng = new Random(42);
        var requests = Enumerable.Range(0, 200).Select(i => new GenerationRequest
        {
            PromptIds = Enumerable.Range(0, rng.Next(4, 90)).Select(_ => rng.Next(3, 512)).ToArray(),
            MaxNewTokens = rng.Next(1, 60),
            IgnoreEos = true,
        }).ToArray();

        // Submitted concurrently from the thread pool.
        var tasks = requests.Select(r => Task.Run(async () =>
        {
            var tokens = new List<int>();
            FinishReason? finish = null;
            await foreach (var e in engine.GenerateAsync(r))
            {
                if (e.Token is int t) tokens.Add(t);
                finish ??= e.Finish;
            }
            return (tokens, finish);
        })).ToArray();
        var results = await Task.WhenAll(tasks);

        Assert.That(results.Select(r => r.finish), Has.All.EqualTo(FinishReason.Length), "every request completes");
        Assert.That(results.Select(r => r.tokens.Count), Is.EqualTo(requests.Select(r => r.MaxNewTokens)));
        Assert.That(engine.Metrics.Preemptions, Is.GreaterThan(0), "the pool is too small: some sequences were preempted and recomputed");
        Assert.That(engine.Metrics.RequestsFinished, Is.EqualTo(200));
        TestContext.Out.WriteLine($"preemptions: {engine.Metrics.Preemptions}");

        // One at a time, with plenty of memory: the same greedy tokens.
        using var model = ModelLoader.Load("synthetic:tiny");
        using var backend = new CpuBackend(model);
        var alone = new Generator(backend, model.Tokenizer);
        for (int i = 0; i < requests.Length; i++)
            Assert.That(results[i].tokens, Is.EqualTo(alone.Generate([requests[i]])[0].Tokens), $"request {i}");

        // Idle again: every block is free or only held by the prefix cache.
        Assert.That(engine.KvPool.FreeBlocks + engine.KvPool.Prefixes.Evictable(), Is.EqualTo(engine.KvPool.Capacity));
    }

    [Test]
    public async Task CancellationMidStreamFreesTheBlocks()
    {
        using var engine = InferenceEngine.Create("synthetic:tiny");
        using var cts = new CancellationTokenSource();
        var request = new GenerationRequest { Prompt = new string('x', 100), N = 3, MaxNewTokens = 400, IgnoreEos = true };
        int tokens = 0;
        var finishes = new List<FinishReason>();
        await foreach (var e in engine.GenerateAsync(request, cts.Token))
        {
            if (e.Token != null && ++tokens == 5) cts.Cancel();
            if (e.Finish is FinishReason f) finishes.Add(f);
        }
        Assert.That(finishes, Is.EqualTo(new[] { FinishReason.Cancelled, FinishReason.Cancelled, FinishReason.Cancelled }));
        Assert.That(tokens, Is.LessThan(3 * 400));
        var pool = engine.KvPool;
        Assert.That(pool.FreeBlocks + pool.Prefixes.Evictable(), Is.EqualTo(pool.Capacity), "pool back to full when idle");
        Assert.That(engine.Metrics.RequestsCancelled, Is.EqualTo(1));
    }

    [Test]
    public async Task StoppingToReadCancelsTheRequest()
    {
        using var engine = InferenceEngine.Create("synthetic:tiny");
        await foreach (var e in engine.GenerateAsync(new GenerationRequest { Prompt = "abc", MaxNewTokens = 300, IgnoreEos = true }))
            if (e.Token != null) break;
        // The engine frees the request at its next step.
        for (int i = 0; i < 100 && engine.Metrics.RequestsFinished == 0; i++) await Task.Delay(20);
        Assert.That(engine.Metrics.RequestsCancelled, Is.EqualTo(1));
        Assert.That(engine.KvPool.FreeBlocks + engine.KvPool.Prefixes.Evictable(), Is.EqualTo(engine.KvPool.Capacity));
    }

    [Test]
    public void BadRequestsAreRejectedInTheCallersThread()
    {
        using var engine = InferenceEngine.Create("synthetic:tiny");
        var e = Assert.Throws<RequestValidationException>(() => engine.GenerateAsync(new GenerationRequest { Prompt = new string('x', 600) }).GetAsyncEnumerator().MoveNextAsync().AsTask().GetAwaiter().GetResult());
        Assert.That(e!.Argument, Is.EqualTo(nameof(GenerationRequest.Prompt)));
    }

    [Test]
    public async Task DisposeEndsRunningRequestsAsCancelled()
    {
        var engine = InferenceEngine.Create("synthetic:tiny");
        var firstToken = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var reader = Task.Run(async () =>
        {
            var finishes = new List<FinishReason>();
            await foreach (var e in engine.GenerateAsync(new GenerationRequest { Prompt = "abc", MaxNewTokens = 450, IgnoreEos = true }))
            {
                if (e.Token != null) firstToken.TrySetResult(); // Dispose runs while ~449 tokens are still to come
                if (e.Finish is FinishReason f) finishes.Add(f);
            }
            return finishes;
        });
        await firstToken.Task.WaitAsync(TimeSpan.FromSeconds(30));
        engine.Dispose();
        var result = await reader.WaitAsync(TimeSpan.FromSeconds(30));
        Assert.That(result, Is.EqualTo(new[] { FinishReason.Cancelled }), "ended by Dispose, long before its 450 tokens");
    }
}

public class InferenceEngineFailureTests
{
    /// <summary>A CPU backend whose forward step fails once, on demand.</summary>
    private sealed class FlakyBackend(Kernels.Runtime.Backends.IBackend inner) : Kernels.Runtime.Backends.IBackend
    {
        public volatile bool FailNext;
        public string Name => inner.Name;
        public ModelConfig Config => inner.Config;
        public Kernels.Runtime.KvCache.KvBlockPool KvPool => inner.KvPool;
        public Kernels.Runtime.KvCache.IKvCache CreateCache() => inner.CreateCache();
        public float[][] Forward(IReadOnlyList<Kernels.Runtime.Backends.SequenceStep> batch, Kernels.Runtime.Backends.AttentionPlan? attention = null)
        {
            if (FailNext)
            {
                FailNext = false;
                throw new InvalidOperationException("simulated device error");
            }
            return inner.Forward(batch, attention);
        }
        public void Dispose() => inner.Dispose();
    }

    [Test]
    public async Task AFailedStepEndsTheRequestsInFlightAndTheEngineGoesOn()
    {
        var model = ModelLoader.Load("synthetic:tiny");
        var backend = new FlakyBackend(new CpuBackend(model)) { FailNext = true };
        using var engine = InferenceEngine.Create(model, backend);
        var request = new GenerationRequest { Prompt = "abc", MaxNewTokens = 5, IgnoreEos = true };
        var error = Assert.ThrowsAsync<InvalidOperationException>(async () =>
        {
            await foreach (var _ in engine.GenerateAsync(request)) { }
        });
        Assert.That(error!.Message, Does.Contain("simulated device error"));
        var tokens = 0;
        await foreach (var e in engine.GenerateAsync(request))
            if (e.Token != null) tokens++;
        Assert.That(tokens, Is.EqualTo(5), "the engine serves the next request");
        Assert.That(engine.KvPool.FreeBlocks + engine.KvPool.Prefixes.Evictable(), Is.EqualTo(engine.KvPool.Capacity));
    }
}
