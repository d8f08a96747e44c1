// `kernels-bench route`: replicas of a model on loopback behind `kernels route`, a shared-system-prompt workload from
// concurrent streaming clients: prefix-cache hit rate (from the replicas' vllm:prefix_cache_* metrics) and throughput,
// cache-aware vs round-robin routing, a single replica as the hit-rate reference; then one replica killed mid-run and
// restarted: what happened to every request, and whether the router readmitted it.
using System.Collections.Concurrent;
using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Kernels.Router;
using Kernels.Runtime.Backends.Cpu;
using Kernels.Runtime.Engine;
using Kernels.Runtime.Models;
using Kernels.Server;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.Logging;

namespace Kernels.Bench;

public static class RouteBench
{
    public sealed record Settings(string Model, int Replicas, int Prompts, int SystemTokens, int Requests, int Clients, int MaxTokens, int KvBlocks, int Seed);

    private sealed record Outcome(bool Completed, bool ErrorEvent, bool GotBytes, string? Failure, int Tokens);

    public sealed record PhaseResult(string Name, int Replicas, string Policy, double Seconds, double RequestsPerSecond, double TokensPerSecond,
        long PrefixQueries, long PrefixHits, int Completed, int ErrorEvents, int Lost, long Retries, long RouterStreamsBroken)
    {
        public double HitRate => PrefixQueries == 0 ? 0 : (double)PrefixHits / PrefixQueries;
    }

    public static async Task<int> Run(Settings s, string? jsonPath)
    {
        var workload = Workload(s);
        Console.WriteLine($"# route bench: {s.Model}, {s.Requests} streaming /v1/completions from {s.Clients} clients, {s.Prompts} system prompts of " +
                          $"{workload.SystemTokens} tokens + a unique question each, max_tokens {s.MaxTokens} (greedy, EOS ignored); " +
                          $"{s.Replicas} replicas with {s.KvBlocks} KV blocks of 16 tokens each, the single-replica reference with {s.KvBlocks * s.Replicas}");
        Console.WriteLine($"# machine: {Environment.ProcessorCount} cores; replicas, router and clients share this one process");
        var results = new List<PhaseResult>
        {
            await Phase("single replica (reference)", s, workload, 1, s.KvBlocks * s.Replicas, RoutingPolicyKind.RoundRobin, kill: false),
            await Phase("cache-aware", s, workload, s.Replicas, s.KvBlocks, RoutingPolicyKind.CacheAware, kill: false),
            await Phase("round-robin", s, workload, s.Replicas, s.KvBlocks, RoutingPolicyKind.RoundRobin, kill: false),
        };
        Console.WriteLine();
        Console.WriteLine("| routing | replicas | s | requests/s | tokens/s | prefix-cache hit rate |");
        Console.WriteLine("|---|---:|---:|---:|---:|---:|");
        foreach (var r in results)
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"| {r.Name} | {r.Replicas} | {r.Seconds:F2} | {r.RequestsPerSecond:F1} | {r.TokensPerSecond:F0} | {r.HitRate:P1} |"));
        var single = results[0];
        var aware = results[1];
        var rr = results[2];
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"cache-aware hit rate / single replica's: {aware.HitRate / single.HitRate:F3} (acceptance: >= 0.9); throughput cache-aware / round-robin: {aware.RequestsPerSecond / rr.RequestsPerSecond:F2}x (acceptance: > 1)"));

        var kill = await Phase("cache-aware, one replica killed and restarted", s, workload, s.Replicas, s.KvBlocks, RoutingPolicyKind.CacheAware, kill: true);
        results.Add(kill);

        if (jsonPath != null)
            await File.WriteAllTextAsync(jsonPath, JsonSerializer.Serialize(new { settings = s, system_tokens = workload.SystemTokens, phases = results }, new JsonSerializerOptions { WriteIndented = true }));
        bool ok = single.Completed == s.Requests && aware.Completed == s.Requests && rr.Completed == s.Requests && kill.Lost == 0;
        return ok ? 0 : 1;
    }

    private sealed record WorkloadSpec(string[] SystemPrompts, int SystemTokens, (int Prompt, string Text)[] Requests);

    /// <summary>Distinct system prompts of about <see cref="Settings.SystemTokens"/> tokens (words drawn from a seeded stream), and per request one of them plus a unique question.</summary>
    private static WorkloadSpec Workload(Settings s)
    {
        using var model = ModelLoader.Load(s.Model);
        var tokenizer = model.Tokenizer;
        var rng = new Random(s.Seed);
        string Word() => new(Enumerable.Range(0, rng.Next(2, 7)).Select(_ => (char)('a' + rng.Next(26))).ToArray());
        var prompts = new string[s.Prompts];
        int tokens = 0;
        for (int p = 0; p < s.Prompts; p++)
        {
            var text = new StringBuilder($"System prompt {p}. You are assistant number {p}.");
            while (tokenizer.Encode(text.ToString(), true).Length < s.SystemTokens) text.Append(' ').Append(Word());
            prompts[p] = text.ToString();
            tokens = Math.Max(tokens, tokenizer.Encode(prompts[p], true).Length);
        }
        var requests = Enumerable.Range(0, s.Requests)
            .Select(i => rng.Next(s.Prompts))
            .Select((p, i) => (p, $"{prompts[p]}\nQuestion {i}: {Word()} {Word()} {Word()}?\nAnswer:"))
            .ToArray();
        return new WorkloadSpec(prompts, tokens, requests);
    }

    private static async Task<PhaseResult> Phase(string name, Settings s, WorkloadSpec workload, int replicas, int kvBlocks, RoutingPolicyKind policy, bool kill)
    {
        Console.Error.WriteLine($"[route] {name}: starting {replicas} replica(s)");
        var hosts = new List<ReplicaHost>();
        for (int i = 0; i < replicas; i++) hosts.Add(await ReplicaHost.StartAsync(s.Model, kvBlocks));
        await using var router = RouterApp.Build(new RouterOptions
        {
            Workers = hosts.Select(h => h.Address).ToList(),
            Policy = policy,
            Port = 0,
            HealthInterval = TimeSpan.FromMilliseconds(250),
            MinimumLogLevel = LogLevel.Warning,
        });
        await router.StartAsync();
        using var http = new HttpClient { BaseAddress = router.BaseAddress, Timeout = TimeSpan.FromMinutes(10) };
        var outcomes = new Outcome[s.Requests];
        int next = -1, done = 0;
        var victim = hosts.Count > 1 ? hosts[1] : null;
        Task? chaos = null;
        long victimRequestsAtRestart = -1;
        string killReport = "";

        async Task Client()
        {
            int i;
            while ((i = Interlocked.Increment(ref next)) < s.Requests)
            {
                outcomes[i] = await OneRequest(http, workload.Requests[i].Text, s.MaxTokens);
                Interlocked.Increment(ref done);
            }
        }

        if (kill)
        {
            chaos = Task.Run(async () =>
            {
                while (Volatile.Read(ref done) < s.Requests / 3) await Task.Delay(5);
                int inFlight = router.Replicas.All.First(r => r.Address == victim!.Address).InFlight;
                await victim!.KillAsync();
                Console.Error.WriteLine($"[route] killed replica {victim.Address} after {Volatile.Read(ref done)} requests ({inFlight} in flight on it)");
                while (Volatile.Read(ref done) < 2 * s.Requests / 3) await Task.Delay(5);
                await victim.StartAgainAsync();
                var replica = router.Replicas.All.First(r => r.Address == victim.Address);
                var clock = Stopwatch.StartNew();
                while (!replica.Healthy && clock.Elapsed < TimeSpan.FromSeconds(30)) await Task.Delay(10);
                victimRequestsAtRestart = replica.Requests;
                killReport = $"restarted after {Volatile.Read(ref done)} requests; readmitted: {replica.Healthy} ({clock.ElapsedMilliseconds} ms after the restart)";
                Console.Error.WriteLine($"[route] {killReport}");
            });
        }
        var watch = Stopwatch.StartNew();
        await Task.WhenAll(Enumerable.Range(0, s.Clients).Select(_ => Task.Run(Client)));
        watch.Stop();
        if (chaos != null) await chaos;

        long queries = 0, hits = 0;
        foreach (var h in hosts.Where(h => h.App != null))
        {
            var m = await ScrapeAsync(h.Address);
            queries += (long)m.GetValueOrDefault("vllm:prefix_cache_queries_total");
            hits += (long)m.GetValueOrDefault("vllm:prefix_cache_hits_total");
        }
        int completed = outcomes.Count(o => o.Completed), errorEvents = outcomes.Count(o => o.ErrorEvent);
        int lost = outcomes.Count(o => !o.Completed && !o.ErrorEvent);
        int tokens = outcomes.Sum(o => o.Completed ? o.Tokens : 0);
        var result = new PhaseResult(name, replicas, policy == RoutingPolicyKind.CacheAware ? "cache_aware" : "round_robin", watch.Elapsed.TotalSeconds,
            completed / watch.Elapsed.TotalSeconds, tokens / watch.Elapsed.TotalSeconds, queries, hits, completed, errorEvents, lost,
            router.Metrics.Retries, router.Metrics.StreamsBroken);
        Console.Error.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"[route] {name}: {watch.Elapsed.TotalSeconds:F2} s, {completed} completed, hit rate {result.HitRate:P1}, per replica {string.Join(" / ", router.Replicas.All.Select(r => r.Requests))} requests"));
        if (kill)
        {
            var replica = router.Replicas.All.First(r => r.Address == victim!.Address);
            long afterReadmission = replica.Requests - victimRequestsAtRestart;
            // A prompt the router has never seen goes to the replica with the least cached text: the restarted one.
            var probe = await OneRequest(http, $"A fresh system prompt nobody sent before {Guid.NewGuid():N}. Question?", s.MaxTokens);
            Console.WriteLine();
            Console.WriteLine($"Kill test ({name}): {s.Requests} requests; {killReport}.");
            Console.WriteLine($"  completed: {completed}; streams ended by an error event (already running on the killed replica): {errorEvents} " +
                              $"(router counted {router.Metrics.StreamsBroken}); lost: {lost}; retried before a byte: {router.Metrics.Retries}.");
            Console.WriteLine($"  after readmission the restarted replica took {afterReadmission} of the run's requests (its old prompts live on the " +
                              $"other replicas now); a new prompt afterwards went to it: {replica.Requests - victimRequestsAtRestart - afterReadmission == 1}, {(probe.Completed ? "completed" : "FAILED " + probe.Failure)}.");
            foreach (var o in outcomes.Where(o => !o.Completed && !o.ErrorEvent).Take(5)) Console.WriteLine($"  lost: {o.Failure}");
        }
        foreach (var h in hosts) await h.DisposeAsync();
        return result;
    }

    /// <summary>One streaming completion: completed ([DONE], no error chunk), ended by an error event, or failed (with whether bytes had come).</summary>
    private static async Task<Outcome> OneRequest(HttpClient http, string prompt, int maxTokens)
    {
        var body = JsonSerializer.Serialize(new { prompt, max_tokens = maxTokens, temperature = 0, stream = true, ignore_eos = true, stream_options = new { include_usage = true } });
        bool gotBytes = false;
        try
        {
            using var request = new HttpRequestMessage(HttpMethod.Post, "/v1/completions") { Content = new StringContent(body, Encoding.UTF8, "application/json") };
            using var response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead);
            if (!response.IsSuccessStatusCode) return new(false, false, false, $"{(int)response.StatusCode} {await response.Content.ReadAsStringAsync()}", 0);
            using var reader = new StreamReader(await response.Content.ReadAsStreamAsync());
            int tokens = 0;
            bool error = false, doneSeen = false;
            while (await reader.ReadLineAsync() is { } line)
            {
                if (!line.StartsWith("data: ", StringComparison.Ordinal)) continue;
                gotBytes = true;
                if (line == "data: [DONE]") { doneSeen = true; continue; }
                var chunk = JsonNode.Parse(line["data: ".Length..]);
                if (chunk?["error"] != null) error = true;
                else if (chunk?["usage"]?["completion_tokens"] is { } used) tokens = used.GetValue<int>();
            }
            return new(doneSeen && !error, error, gotBytes, doneSeen ? null : "the stream ended without [DONE]", tokens);
        }
        catch (Exception e) when (e is HttpRequestException or IOException)
        {
            return new(false, false, gotBytes, e.Message, 0);
        }
    }

    /// <summary>The unlabelled-by-us value of each series of a replica's /metrics (labels dropped, values summed).</summary>
    public static async Task<Dictionary<string, double>> ScrapeAsync(Uri replica)
    {
        using var http = new HttpClient();
        string text = await http.GetStringAsync(new Uri(replica, "metrics"));
        var values = new Dictionary<string, double>();
        foreach (var line in text.Split('\n'))
        {
            if (line.Length == 0 || line[0] == '#') continue;
            int space = line.LastIndexOf(' ');
            string series = line[..space];
            int brace = series.IndexOf('{');
            string name = brace < 0 ? series : series[..brace];
            values[name] = values.GetValueOrDefault(name) + double.Parse(line[(space + 1)..], CultureInfo.InvariantCulture);
        }
        return values;
    }
}
