// /metrics under vLLM's names, scraped over HTTP while the engine is frozen inside a step, compared with what that step
// really holds: the sequences in the batch, the requests left waiting, the KV blocks those sequences reference.
using System.Globalization;
using Kernels.Bench;
using Kernels.Runtime.Backends;
using Kernels.Runtime.Backends.Cpu;
using Kernels.Runtime.Engine;
using Kernels.Runtime.KvCache;
using Kernels.Runtime.Models;
using Kernels.Server;
using Microsoft.Extensions.Logging;

namespace Kernels.Tests.Server;

[CancelAfter(120_000)]
public class VllmMetricsTests
{
    /// <summary>Stops inside each forward until the test lets it go, and records what the step holds at that moment.</summary>
    private sealed class SteppingBackend(IBackend inner) : IBackend
    {
        public readonly SemaphoreSlim Entered = new(0), Release = new(0);
        public volatile bool Paused = true;
        public int BatchSequences;
        public int ReferencedBlocks;
        public string Name => inner.Name;
        public ModelConfig Config => inner.Config;
        public KvBlockPool KvPool => inner.KvPool;
        public IKvCache CreateCache() => inner.CreateCache();
        public float[][] Forward(IReadOnlyList<SequenceStep> batch, AttentionPlan? attention = null)
        {
            if (Paused)
            {
                BatchSequences = batch.Count;
                // Blocks the running sequences hold (shared ones once); blocks only the prefix tree holds are not in use.
                ReferencedBlocks = batch.SelectMany(s => ((KvSequence)s.Cache).Blocks).Distinct().Count();
                Entered.Release();
                Release.Wait();
            }
            return inner.Forward(batch, attention);
        }
        public void Dispose() => inner.Dispose();
    }

    private sealed class Unfreeze(SteppingBackend stepping) : IDisposable
    {
        public void Dispose()
        {
            stepping.Paused = false;
            stepping.Release.Release(2);
        }
    }

    private static double Value(Dictionary<string, double> m, string name) =>
        m.TryGetValue(name, out var v) ? v : throw new AssertionException($"/metrics has no {name}");

    [Test]
    public async Task ScrapedUnderLoadMatchesTheEnginesState()
    {
        var model = ModelLoader.Load("synthetic:tiny");
        var stepping = new SteppingBackend(new CpuBackend(model, new CpuBackendOptions { KvCacheBytes = 24 * 8192 })); // 24 blocks of 16 tokens
        using var engine = InferenceEngine.Create(model, stepping);
        // Whatever happens below, the engine thread is let go before the engine is disposed (it waits for that thread).
        using var unfreeze = new Unfreeze(stepping);
        await using var app = ServerApp.Build(engine, new ServerOptions { Port = 0, MinimumLogLevel = LogLevel.Warning });
        await app.StartAsync();
        var address = ServerApp.BaseAddress(app);
        using var http = new HttpClient { BaseAddress = address, Timeout = TimeSpan.FromSeconds(60) };
        Assert.That(stepping.KvPool.Capacity, Is.EqualTo(24));

        // Six distinct prompts of ~120 tokens (one per byte), 40 new tokens each: the 24-block pool cannot run them all at once.
        var prompts = Enumerable.Range(0, 6).Select(i => $"{(char)('a' + i)}{i} " + string.Join(' ', Enumerable.Range(0, 30).Select(w => $"w{(i * 7 + w) % 50}"))).ToArray();
        var requests = prompts.Select(p => http.PostAsync("/v1/completions", TestServer.Content(new { prompt = p, max_tokens = 40, temperature = 0, ignore_eos = true }))).ToArray();

        await stepping.Entered.WaitAsync(); // step 1 runs whatever arrived first
        while (engine.Metrics.RequestsTotal < prompts.Length) await Task.Delay(5);
        stepping.Release.Release();
        await stepping.Entered.WaitAsync(); // step 2: every request is in the scheduler; the step is frozen before its forward

        var m = await RouteBench.ScrapeAsync(address);
        int running = stepping.BatchSequences; // n = 1 each: one sequence per running request
        // How many the scheduler admits by step 2 depends on when the HTTP requests reached it (1 to 5 seen); the test needs
        // requests both running and waiting, and the gauges equal to whatever the step holds.
        Assert.That(running, Is.InRange(1, prompts.Length - 1), $"requests both running and waiting at step 2 (the test needs both states): the step ran {running} sequences, {engine.Metrics.RequestsTotal} submitted");
        Assert.That(Value(m, "vllm:num_requests_running"), Is.EqualTo(running));
        Assert.That(Value(m, "vllm:num_requests_waiting"), Is.EqualTo(prompts.Length - running), "nothing has finished by step 2");
        Assert.That(Value(m, "vllm:kv_cache_usage_perc"), Is.EqualTo((double)stepping.ReferencedBlocks / 24).Within(1e-12));
        Assert.That(Value(m, "vllm:kv_cache_usage_perc"), Is.GreaterThan(0));

        stepping.Paused = false;
        stepping.Release.Release();
        foreach (var r in await Task.WhenAll(requests)) Assert.That((int)r.StatusCode, Is.EqualTo(200), await r.Content.ReadAsStringAsync());

        m = await RouteBench.ScrapeAsync(address);
        Assert.That(Value(m, "vllm:num_requests_running"), Is.EqualTo(0));
        Assert.That(Value(m, "vllm:num_requests_waiting"), Is.EqualTo(0));
        Assert.That(Value(m, "vllm:kv_cache_usage_perc"), Is.EqualTo(0), "cached prompts nobody uses count as free, as in vLLM");
        int promptTokens = prompts.Sum(p => engine.PromptIds(new GenerationRequest { Prompt = p, MaxNewTokens = 1 }).Length);
        Assert.That(Value(m, "vllm:prefix_cache_queries_total"), Is.EqualTo(promptTokens));
        Assert.That(Value(m, "vllm:prefix_cache_hits_total"), Is.EqualTo(0), "distinct prompts share no full block");
        Assert.That(Value(m, "vllm:generation_tokens_total"), Is.EqualTo(6 * 40));

        // The same prompt again finds what the prefix tree still holds of it (whole blocks, the last token always recomputed).
        // The engine is idle, so its tree holds still: take the prompt it holds most of (the pool evicted some).
        var (repeat, ids0, cached) = prompts.Select(p =>
        {
            var ids = engine.PromptIds(new GenerationRequest { Prompt = p, MaxNewTokens = 1 });
            return (p, ids, engine.KvPool.Prefixes.Match(ids, ids.Length - 1).Count * 16);
        }).MaxBy(x => x.Item3);
        Assert.That(cached, Is.GreaterThan(0));
        var again = await http.PostAsync("/v1/completions", TestServer.Content(new { prompt = repeat, max_tokens = 2, temperature = 0 }));
        Assert.That((int)again.StatusCode, Is.EqualTo(200));
        m = await RouteBench.ScrapeAsync(address);
        Assert.That(Value(m, "vllm:prefix_cache_hits_total"), Is.EqualTo(cached));
        Assert.That(Value(m, "vllm:prefix_cache_queries_total"), Is.EqualTo(promptTokens + ids0.Length));
        Assert.That(Value(m, "vllm:e2e_request_latency_seconds_count"), Is.EqualTo(7));
        Assert.That(Value(m, "vllm:time_to_first_token_seconds_count"), Is.EqualTo(7));
        Assert.That(Value(m, "vllm:inter_token_latency_seconds_count"), Is.EqualTo(6 * 39 + 1));
        Assert.That(Value(m, "vllm:request_success_total"), Is.EqualTo(7));
    }

    [Test]
    public async Task ExpositionUsesVllmNamesLabelsAndBuckets()
    {
        await using var server = await TestServer.StartAsync();
        var (response, _) = await server.PostAsync("/v1/completions", new { prompt = "Hello", max_tokens = 3 });
        Assert.That((int)response.StatusCode, Is.EqualTo(200));
        string text = await server.Client.GetStringAsync("/metrics");
        var lines = text.Split('\n');
        string labels = "model_name=\"synthetic:tiny\",engine=\"0\"";
        foreach (var gauge in new[] { "vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc" })
        {
            Assert.That(lines, Does.Contain($"# TYPE {gauge} gauge"));
            Assert.That(lines.Any(l => l.StartsWith($"{gauge}{{{labels}}} ", StringComparison.Ordinal)), gauge);
        }
        foreach (var counter in new[] { "vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total", "vllm:prompt_tokens_total", "vllm:generation_tokens_total" })
            Assert.That(lines, Does.Contain($"# TYPE {counter} counter"));
        Assert.That(lines, Does.Contain($"vllm:request_success_total{{{labels},finished_reason=\"length\"}} 1"));
        var info = lines.Single(l => l.StartsWith("vllm:cache_config_info{", StringComparison.Ordinal));
        Assert.That(info, Does.Contain("block_size=\"16\"").And.Contain($"num_gpu_blocks=\"{server.Engine.KvPool.Capacity}\"").And.EndWith(" 1.0"));

        // Bucket bounds as vLLM's loggers.py lists them (TTFT, inter-token latency, end to end).
        double[] Bounds(string name) => lines.Where(l => l.StartsWith(name + "_bucket{", StringComparison.Ordinal) && !l.Contains("+Inf"))
            .Select(l => double.Parse(l[(l.IndexOf("le=\"", StringComparison.Ordinal) + 4)..l.LastIndexOf('"')], CultureInfo.InvariantCulture)).ToArray();
        Assert.That(Bounds("vllm:time_to_first_token_seconds"), Is.EqualTo(new[] { 0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0 }));
        Assert.That(Bounds("vllm:inter_token_latency_seconds"), Is.EqualTo(new[] { 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0 }));
        Assert.That(Bounds("vllm:e2e_request_latency_seconds"), Is.EqualTo(new[] { 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0 }));
        Assert.That(lines, Does.Contain($"vllm:time_to_first_token_seconds_count{{{labels}}} 1"));
        Assert.That(lines, Does.Contain("# TYPE kernels_requests_total counter"), "our own names stay");
    }
}
