// `kernels-bench throughput`: offline batch generation, vLLM-style (all requests at once, the engine schedules them):
// requests/s and tokens/s on random lengths and on shared-prefix workloads, with prefix sharing on and off.
using System.Diagnostics;
using System.Text.Json;
using Kernels.Runtime.Backends.Cpu;
using Kernels.Runtime.Engine;
using Kernels.Runtime.Models;

namespace Kernels.Bench;

public static class Throughput
{
    public enum Workload
    {
        /// <summary>Independent prompts of random lengths (input and output uniform in [L/2, 3L/2]).</summary>
        Random,
        /// <summary>One shared system prompt of P tokens, then a unique question per request.</summary>
        SystemPrompt,
        /// <summary>A shared system prompt, one of four few-shot headers, then a unique question (a 3-level tree).</summary>
        FewShot,
        /// <summary>Prompts with n samples each.</summary>
        Samples,
    }

    private sealed record Result(string Workload, bool PrefixSharing, int Requests, int Sequences, long PromptTokens, long OutputTokens,
        double Seconds, double RequestsPerSecond, double TotalTokensPerSecond, double OutputTokensPerSecond);

    public static int Run(string modelName, string workloads, int requests, int inputLength, int outputLength, int prefixLength, int samples, string sharing, string? jsonPath)
    {
        using var model = ModelLoader.Load(modelName);
        var kinds = workloads.Split(',').Select(w => Enum.Parse<Workload>(w.Replace("-", ""), ignoreCase: true)).ToArray();
        bool[] modes = sharing switch { "on" => [true], "off" => [false], _ => [true, false] };
        Console.WriteLine($"# offline throughput, {modelName} ({model.Config.ParameterCount / 1e6:F1}M parameters), CPU backend, {Environment.ProcessorCount} cores, {DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC");
        Console.WriteLine($"# {requests} requests submitted at once; input ~{inputLength} tokens, output ~{outputLength} tokens (EOS ignored), shared prefix {prefixLength}, n {samples} for 'samples'; random token ids, seed 1");
        Console.WriteLine();
        Console.WriteLine("| workload | prefix sharing | sequences | prompt tokens | output tokens | s | requests/s | total tok/s | output tok/s |");
        Console.WriteLine("|---|---|---:|---:|---:|---:|---:|---:|---:|");
        var results = new List<Result>();
        using (var warm = new CpuBackend(model)) // JIT and thread pool warm-up, outside every timing
            new Generator(warm, model.Tokenizer).Generate([new GenerationRequest { PromptIds = [1, 5, 9, 11], MaxNewTokens = 4, IgnoreEos = true, N = 2 }]);
        foreach (var kind in kinds)
        {
            var reqs = Build(kind, requests, inputLength, outputLength, prefixLength, samples, model.Config.VocabSize, model.Config.MaxPositions);
            foreach (bool on in modes)
            {
                // A fresh backend per run: nothing cached from the previous mode.
                using var backend = new CpuBackend(model);
                var generator = new Generator(backend, model.Tokenizer, new GeneratorOptions { PrefixSharing = on });
                var clock = Stopwatch.StartNew();
                var outcome = generator.Generate(reqs);
                double s = clock.Elapsed.TotalSeconds;
                long prompt = reqs.Sum(r => (long)r.PromptIds!.Count), output = outcome.Sum(r => (long)r.Tokens.Count);
                var result = new Result(kind.ToString(), on, reqs.Length, outcome.Count, prompt, output, s, reqs.Length / s, (prompt + output) / s, output / s);
                results.Add(result);
                Console.WriteLine($"| {kind} | {(on ? "on" : "off")} | {result.Sequences} | {prompt} | {output} | {s:F2} | {result.RequestsPerSecond:F2} | {result.TotalTokensPerSecond:F0} | {result.OutputTokensPerSecond:F0} |");
            }
        }
        if (jsonPath != null)
            File.WriteAllText(jsonPath, JsonSerializer.Serialize(new { model = modelName, requests, inputLength, outputLength, prefixLength, samples, results },
                new JsonSerializerOptions { WriteIndented = true }));
        return 0;
    }

    private static GenerationRequest[] Build(Workload kind, int count, int input, int output, int prefix, int samples, int vocab, int context)
    {
        var rng = new Random(1);
        int[] Tokens(int n) => Enumerable.Range(0, n).Select(_ => rng.Next(3, vocab)).ToArray();
        int Around(int n) => Math.Max(1, rng.Next(n / 2, n * 3 / 2 + 1));
        var system = Tokens(prefix);
        var headers = Enumerable.Range(0, 4).Select(_ => Tokens(prefix / 2)).ToArray();
        var list = new List<GenerationRequest>();
        for (int i = 0; i < count; i++)
        {
            int[] prompt = kind switch
            {
                Workload.Random => Tokens(Around(input)),
                Workload.SystemPrompt => [1, .. system, .. Tokens(Around(input))],
                Workload.FewShot => [1, .. system, .. headers[i % 4], .. Tokens(Around(input))],
                _ => [1, .. Tokens(Around(input))],
            };
            int maxNew = Math.Min(Around(output), context - prompt.Length - 1);
            if (maxNew < 1) throw new ArgumentException($"prompts of {prompt.Length} tokens leave no room in the context of {context}");
            list.Add(new GenerationRequest { PromptIds = prompt, MaxNewTokens = maxNew, IgnoreEos = true, N = kind == Workload.Samples ? samples : 1 });
        }
        return list.ToArray();
    }
}
