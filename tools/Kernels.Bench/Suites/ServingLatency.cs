// `kernels-bench latency`: the HTTP server under load, in one process: concurrent streaming clients (or Poisson
// arrivals at a request rate) against /v1/completions, reporting TTFT and TPOT percentiles and throughput.
using System.Diagnostics;
using System.Text;
using System.Text.Json;
using Kernels.Runtime.Engine;
using Kernels.Server;
using Microsoft.Extensions.Logging;

namespace Kernels.Bench;

public static class ServingLatency
{
    private sealed record Sample(double TtftMs, double TpotMs, int Tokens, double TotalMs);

    public static async Task<int> Run(string model, int clients, int requests, int maxTokens, int promptWords, double? rate, string? jsonPath)
    {
        using var engine = InferenceEngine.Create(model);
        await using var app = ServerApp.Build(engine, new ServerOptions { Port = 0, MinimumLogLevel = LogLevel.Warning });
        await app.StartAsync();
        var baseAddress = ServerApp.BaseAddress(app);
        using var http = new HttpClient { BaseAddress = baseAddress, Timeout = TimeSpan.FromMinutes(10) };
        Console.WriteLine($"# serving latency, {model} on {engine.BackendDescription}");
        Console.WriteLine($"# {requests} streaming /v1/completions requests, {(rate is double r ? $"Poisson arrivals at {r} req/s" : $"{clients} concurrent clients")}, " +
                          $"~{promptWords}-word prompts, max_tokens {maxTokens}, temperature 0, ignore_eos");

        var samples = new Sample[requests];
        var rng = new Random(7);
        var clock = Stopwatch.StartNew();
        int next = -1;
        async Task One(int i)
        {
            string prompt = string.Join(' ', Enumerable.Range(0, promptWords).Select(w => $"word{(i * 31 + w) % 97}"));
            var body = JsonSerializer.Serialize(new { prompt, max_tokens = maxTokens, temperature = 0, stream = true, ignore_eos = true });
            long start = Stopwatch.GetTimestamp();
            using var request = new HttpRequestMessage(HttpMethod.Post, "/v1/completions") { Content = new StringContent(body, Encoding.UTF8, "application/json") };
            using var response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead);
            response.EnsureSuccessStatusCode();
            using var reader = new StreamReader(await response.Content.ReadAsStreamAsync());
            double first = -1, last = 0;
            int chunks = 0;
            while (await reader.ReadLineAsync() is { } line)
            {
                if (!line.StartsWith("data: ") || line == "data: [DONE]") continue;
                double t = Stopwatch.GetElapsedTime(start).TotalMilliseconds;
                if (first < 0) first = t;
                last = t;
                chunks++;
            }
            samples[i] = new Sample(first, chunks > 1 ? (last - first) / (chunks - 1) : 0, chunks, Stopwatch.GetElapsedTime(start).TotalMilliseconds);
        }

        if (rate is double perSecond)
        {
            var tasks = new List<Task>();
            double at = 0;
            for (int i = 0; i < requests; i++)
            {
                at += -Math.Log(1 - rng.NextDouble()) / perSecond * 1000;
                double wait = at - clock.Elapsed.TotalMilliseconds;
                if (wait > 0) await Task.Delay(TimeSpan.FromMilliseconds(wait));
                tasks.Add(One(i));
            }
            await Task.WhenAll(tasks);
        }
        else
        {
            await Task.WhenAll(Enumerable.Range(0, clients).Select(async _ =>
            {
                int i;
                while ((i = Interlocked.Increment(ref next)) < requests) await One(i);
            }));
        }
        double seconds = clock.Elapsed.TotalSeconds;

        static double P(IEnumerable<double> values, double q)
        {
            var sorted = values.OrderBy(x => x).ToArray();
            return sorted.Length == 0 ? 0 : sorted[Math.Min(sorted.Length - 1, (int)Math.Ceiling(q * sorted.Length) - 1)];
        }
        var ttft = samples.Select(s => s.TtftMs).ToArray();
        var tpot = samples.Where(s => s.Tokens > 1).Select(s => s.TpotMs).ToArray();
        int tokens = samples.Sum(s => s.Tokens);
        Console.WriteLine();
        Console.WriteLine("| metric | p50 | p90 | p99 |");
        Console.WriteLine("|---|---:|---:|---:|");
        Console.WriteLine($"| TTFT ms | {P(ttft, .5):F1} | {P(ttft, .9):F1} | {P(ttft, .99):F1} |");
        Console.WriteLine($"| TPOT ms | {P(tpot, .5):F2} | {P(tpot, .9):F2} | {P(tpot, .99):F2} |");
        Console.WriteLine();
        Console.WriteLine($"{requests / seconds:F1} requests/s, {tokens / seconds:F0} output tokens/s over {seconds:F1} s; engine preemptions {engine.Metrics.Preemptions}");
        if (jsonPath != null)
            await File.WriteAllTextAsync(jsonPath, JsonSerializer.Serialize(new
            {
                model, clients, requests, maxTokens, rate, seconds,
                ttftMs = new { p50 = P(ttft, .5), p90 = P(ttft, .9), p99 = P(ttft, .99) },
                tpotMs = new { p50 = P(tpot, .5), p90 = P(tpot, .9), p99 = P(tpot, .99) },
                requestsPerSecond = requests / seconds, outputTokensPerSecond = tokens / seconds,
            }, new JsonSerializerOptions { WriteIndented = true }));
        await app.StopAsync();
        return 0;
    }
}
