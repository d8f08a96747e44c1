// `kernels-bench kivi`: what the KIVI KV cache costs in accuracy and buys in capacity, fp32 vs fp16 vs kivi4 vs kivi2.
// Accuracy: perplexity of a text and greedy agreement with fp32 over N tokens, per model. Capacity: at one fixed KV
// budget, the most sequences decoding at once and the end-to-end tokens/s of an offline batch.
using System.Diagnostics;
using System.Text.Json;
using Kernels.Runtime.Backends.Cpu;
using Kernels.Runtime.Engine;
using Kernels.Runtime.KvCache;
using Kernels.Runtime.Models;
using Kernels.Runtime.Tokenization;

namespace Kernels.Bench;

public static class KiviBench
{
    private sealed record AccuracyResult(string Model, string Format, double Perplexity, int PerplexityTokens, int GreedyTokens, int FirstDivergence, double Agreement);

    private sealed record CapacityResult(string Format, long BudgetBytes, int MostDecoding, long Preemptions, long OutputTokens, double Seconds, double OutputTokensPerSecond);

    private static KvCacheFormat[] Formats(int group, int window) =>
    [
        KvCacheFormat.Fp32,
        new() { Kind = KvCacheKind.Fp16 },
        new() { Kind = KvCacheKind.Kivi4, Group = group, Window = window },
        new() { Kind = KvCacheKind.Kivi2, Group = group, Window = window },
    ];

    public static int Run(string models, string textPath, string? tokenizerPath, int greedyTokens, int group, int window,
        string capacityModel, long budgetBytes, int requests, int promptTokens, int outputTokens, string? jsonPath)
    {
        var accuracy = new List<AccuracyResult>();
        Console.WriteLine($"# KIVI KV cache, CPU backend, {Environment.ProcessorCount} cores, {DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC; KIVI G={group}, R={window}");
        Console.WriteLine($"# accuracy: perplexity of {textPath} (one window); greedy continuation of its first 16 tokens for {greedyTokens} tokens (EOS ignored),");
        Console.WriteLine("#   agreement = share of the positions whose token equals fp32's; first divergence = index of the first differing token");
        Console.WriteLine();
        Console.WriteLine("| model | KV cache | perplexity | greedy tokens equal to fp32 | first divergence |");
        Console.WriteLine("|---|---|---:|---:|---:|");
        string text = File.ReadAllText(textPath);
        foreach (string name in models.Split(',', StringSplitOptions.RemoveEmptyEntries))
        {
            using var model = ModelLoader.Load(name, new ModelLoadOptions { TokenizerPath = tokenizerPath });
            var ids = model.Tokenizer.Encode(text, model.Tokenizer.AddBosByDefault);
            var prompt = ids.Take(16).ToArray();
            int greedy = Math.Min(greedyTokens, model.Config.MaxPositions - prompt.Length);
            IReadOnlyList<int>? reference = null;
            foreach (var format in Formats(group, window))
            {
                using var backend = new CpuBackend(model, new CpuBackendOptions { KvCache = format });
                var ppl = Perplexity.Compute(backend, ids);
                var tokens = new Generator(backend, model.Tokenizer).Generate([new GenerationRequest { PromptIds = prompt, MaxNewTokens = greedy, IgnoreEos = true }])[0].Tokens;
                reference ??= tokens;
                int equal = tokens.Zip(reference).Count(t => t.First == t.Second);
                int first = tokens.Zip(reference).TakeWhile(t => t.First == t.Second).Count();
                var r = new AccuracyResult(Path.GetFileName(name.TrimEnd('/')), format.ToString(), ppl.Perplexity, ppl.Tokens, tokens.Count, first, (double)equal / tokens.Count);
                accuracy.Add(r);
                Console.WriteLine($"| {r.Model} | {r.Format} | {r.Perplexity:F4} | {equal}/{tokens.Count} ({100 * r.Agreement:F1}%) | {(first == tokens.Count ? "none" : first.ToString())} |");
            }
        }

        var capacity = new List<CapacityResult>();
        Console.WriteLine();
        Console.WriteLine($"# capacity: {capacityModel}, KV budget {budgetBytes / 1e6:F2} MB, {requests} requests of {promptTokens} random prompt tokens + {outputTokens} new (EOS ignored),");
        Console.WriteLine("#   all submitted at once, prefill budget 1024 tokens a step, prefix sharing off; 'most decoding' = the largest decode batch the memory allowed");
        Console.WriteLine();
        Console.WriteLine("| KV cache | most decoding at once | vs fp32 | vs fp16 | preempted | output tokens | s | output tok/s |");
        Console.WriteLine("|---|---:|---:|---:|---:|---:|---:|---:|");
        using (var model = ModelLoader.Load(capacityModel))
        {
            var rng = new Random(1);
            if (promptTokens + outputTokens > model.Config.MaxPositions)
            {
                Console.Error.WriteLine($"error: --input-len {promptTokens} + --output-len {outputTokens} exceed {capacityModel}'s context of {model.Config.MaxPositions} tokens");
                return 2;
            }
            var reqs = Enumerable.Range(0, requests).Select(_ => new GenerationRequest
            {
                PromptIds = Enumerable.Range(0, promptTokens).Select(_ => rng.Next(3, model.Config.VocabSize)).ToArray(),
                MaxNewTokens = outputTokens,
                IgnoreEos = true,
            }).ToArray();
            foreach (var format in Formats(group, window))
            {
                using var backend = new CpuBackend(model, new CpuBackendOptions { KvCache = format, KvCacheBytes = budgetBytes });
                var scheduler = new Scheduler(backend, model.Tokenizer, new GeneratorOptions { PrefillTokenBudget = 1024, PrefixSharing = false });
                for (int i = 0; i < reqs.Length; i++) scheduler.Submit(i, reqs[i]);
                int most = 0;
                long output = 0;
                var clock = Stopwatch.StartNew();
                while (scheduler.HasWork)
                {
                    output += scheduler.Step().Count(e => e.Token != null);
                    most = Math.Max(most, scheduler.DecodingSequences);
                }
                double s = clock.Elapsed.TotalSeconds;
                var r = new CapacityResult(format.ToString(), budgetBytes, most, scheduler.Preemptions, output, s, output / s);
                capacity.Add(r);
                Console.WriteLine($"| {r.Format} | {most} | {(double)most / capacity[0].MostDecoding:F2}x | {(capacity.Count > 1 ? $"{(double)most / capacity[1].MostDecoding:F2}x" : "-")} | " +
                                  $"{r.Preemptions} | {output} | {s:F2} | {r.OutputTokensPerSecond:F0} |");
            }
        }
        if (jsonPath != null)
            File.WriteAllText(jsonPath, JsonSerializer.Serialize(new { group, window, textPath, greedyTokens, capacityModel, budgetBytes, requests, promptTokens, outputTokens, accuracy, capacity },
                new JsonSerializerOptions { WriteIndented = true }));
        return 0;
    }
}
