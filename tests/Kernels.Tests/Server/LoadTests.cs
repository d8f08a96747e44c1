// Bounded load: 32 concurrent clients send 500 short requests (all four kinds: completions/chat x JSON/SSE); every
// one must come back complete. Latency (TTFT, TPOT) is printed, never asserted: this machine is shared.
using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net;
using System.Text.Json.Nodes;

namespace Kernels.Tests.Server;

[CancelAfter(180_000)]
public class LoadTests
{
    private const int Clients = 32;
    private const int Requests = 500;
    private const int MaxTokens = 8;

    [Test]
    public async Task ConcurrentClientsLoseNothing()
    {
        await using var server = await TestServer.StartAsync();
        long finishedBefore = server.Engine.Metrics.RequestsFinished;
        int next = -1;
        var failures = new ConcurrentBag<string>();
        var completed = new ConcurrentBag<int>();
        var watch = Stopwatch.StartNew();

        async Task Client()
        {
            int i;
            while ((i = Interlocked.Increment(ref next)) < Requests)
            {
                try
                {
                    string? problem = await OneRequest(server, i);
                    if (problem == null) completed.Add(i);
                    else failures.Add($"request {i}: {problem}");
                }
                catch (Exception e)
                {
                    failures.Add($"request {i}: {e.GetType().Name}: {e.Message}");
                }
            }
        }
        await Task.WhenAll(Enumerable.Range(0, Clients).Select(_ => Task.Run(Client)));
        watch.Stop();

        Assert.That(failures, Is.Empty);
        Assert.That(completed.Distinct().Count(), Is.EqualTo(Requests), "every request answered once");
        Assert.That(server.Engine.Metrics.RequestsFinished - finishedBefore, Is.EqualTo(Requests));
        Assert.That(server.Engine.Metrics.RequestsCancelled, Is.EqualTo(0));
        var m = server.Engine.Metrics;
        TestContext.Out.WriteLine($"{Requests} requests from {Clients} clients in {watch.Elapsed.TotalSeconds:F1} s; " +
            $"mean TTFT {m.TimeToFirstToken.Sum / Math.Max(1, m.TimeToFirstToken.Count) * 1000:F1} ms, mean TPOT {m.TimePerOutputToken.Sum / Math.Max(1, m.TimePerOutputToken.Count) * 1000:F2} ms (not asserted)");
    }

    /// <summary>Sends request <paramref name="i"/> and returns null when its response is complete, else what is wrong.</summary>
    private static async Task<string?> OneRequest(TestServer server, int i)
    {
        bool chat = i % 2 == 1, stream = i % 4 >= 2;
        string path = chat ? "/v1/chat/completions" : "/v1/completions";
        object body = chat
            ? new { messages = new[] { new { role = "user", content = $"Question number {i}?" } }, max_tokens = MaxTokens, temperature = 0.7, seed = i, stream }
            : new { prompt = $"Prompt number {i}:", max_tokens = MaxTokens, temperature = 0.7, seed = i, ignore_eos = true, stream };
        using var request = new HttpRequestMessage(HttpMethod.Post, path) { Content = TestServer.Content(body) };
        using var response = await server.Client.SendAsync(request, HttpCompletionOption.ResponseHeadersRead);
        string text = await response.Content.ReadAsStringAsync();
        if (response.StatusCode != HttpStatusCode.OK) return $"{(int)response.StatusCode} {text}";

        string? finish;
        if (stream)
        {
            if (!text.EndsWith("data: [DONE]\n\n")) return "the stream did not end with [DONE]";
            var chunks = text.Split("\n\n", StringSplitOptions.RemoveEmptyEntries)[..^1].Select(e => JsonNode.Parse(e["data: ".Length..])!).ToList();
            if (chunks.Any(c => c["error"] != null)) return "error chunk: " + text;
            finish = chunks.Select(c => c["choices"]!.AsArray().FirstOrDefault()?["finish_reason"]?.GetValue<string>()).LastOrDefault(f => f != null);
        }
        else
        {
            var json = JsonNode.Parse(text)!;
            finish = json["choices"]![0]!["finish_reason"]?.GetValue<string>();
            int tokens = json["usage"]!["completion_tokens"]!.GetValue<int>();
            if (!chat && tokens != MaxTokens) return $"completion_tokens {tokens}, expected {MaxTokens}";
        }
        if (chat ? finish is not ("stop" or "length") : finish != "length") return $"finish_reason {finish ?? "missing"}";
        return null;
    }
}
