// `kernels generate`: batched generation of several prompts with n samples each, streamed, with a throughput summary.
using System.CommandLine;
using System.Diagnostics;
using Kernels.Runtime.Engine;

namespace Kernels.Cli.Commands;

public static class GenerateCommand
{
    /// <summary>Used when no --prompt is given: the built-in batched demo.</summary>
    public static readonly string[] DefaultPrompts =
    [
        "Once upon a time",
        "The capital of France is",
        "def fibonacci(n):",
        "A short poem about the sea:",
    ];

    public static Command Create(CliIo io)
    {
        var model = new ModelOptions();
        var prompt = new Option<string[]>("--prompt", "-p") { Description = "Prompt text; repeat for several prompts (default: four built-in prompts)", AllowMultipleArgumentsPerToken = false };
        var n = new Option<int>("--n") { Description = "Samples per prompt", DefaultValueFactory = _ => 1 };
        var maxTokens = new Option<int>("--max-tokens") { Description = "Most new tokens per sample", DefaultValueFactory = _ => 128 };
        var temperature = new Option<float>("--temperature") { Description = "0 = greedy", DefaultValueFactory = _ => 0f };
        var topK = new Option<int>("--top-k") { Description = "Keep the K most likely tokens (0 = off)" };
        var topP = new Option<float>("--top-p") { Description = "Nucleus sampling mass (1 = off)", DefaultValueFactory = _ => 1f };
        var minP = new Option<float>("--min-p") { Description = "Drop tokens below P times the top probability (0 = off)" };
        var repetition = new Option<float>("--repetition-penalty") { Description = "Penalty for tokens already seen (1 = off)", DefaultValueFactory = _ => 1f };
        var seed = new Option<ulong?>("--seed") { Description = "Seed: same seed, same output whatever the batch" };
        var stop = new Option<string[]>("--stop") { Description = "Stop string; repeat for several" };
        var ignoreEos = new Option<bool>("--ignore-eos") { Description = "Keep generating past end-of-sequence (benchmarks)" };
        var promptsFile = new Option<string?>("--prompts") { Description = "JSON lines file, one {\"prompt\": ...} per line (optional per-line n, max_tokens, temperature, top_p, seed, stop)" };
        var logprobs = new Option<int?>("--logprobs") { Description = "After each sample, every generated token's log-probability and the N most likely alternatives (0-20)" };
        var sharing = new Option<string>("--prefix-sharing") { Description = "Share the KV blocks and attention of common prompt prefixes (Hydragen)", DefaultValueFactory = _ => "on" };
        sharing.AcceptOnlyFromAmong("on", "off");

        var command = new Command("generate", "Generate continuations of one or more prompts, streaming the text");
        model.AddTo(command);
        foreach (var o in new Option[] { prompt, promptsFile, n, maxTokens, temperature, topK, topP, minP, repetition, seed, stop, ignoreEos, logprobs, sharing })
            command.Options.Add(o);
        command.SetAction(parse =>
        {
            var sampling = new SamplingOptions
            {
                Temperature = parse.GetValue(temperature),
                TopK = parse.GetValue(topK),
                TopP = parse.GetValue(topP),
                MinP = parse.GetValue(minP),
                RepetitionPenalty = parse.GetValue(repetition),
                Seed = parse.GetValue(seed),
            };
            var defaults = new GenerationRequest
            {
                N = parse.GetValue(n),
                MaxNewTokens = parse.GetValue(maxTokens),
                Sampling = sampling,
                Stop = parse.GetValue(stop) ?? [],
                IgnoreEos = parse.GetValue(ignoreEos),
                Logprobs = parse.GetValue(logprobs),
            };
            GenerationRequest[] requests;
            if (parse.GetValue(promptsFile) is { } file)
            {
                if (parse.GetValue(prompt) is { Length: > 0 }) throw new CliUsageException("--prompts: give either --prompt or --prompts, not both");
                requests = PromptsFile.Read(file, defaults);
            }
            else
            {
                var given = parse.GetValue(prompt) is { Length: > 0 } p ? p : DefaultPrompts;
                requests = given.Select(text => defaults with { Prompt = text }).ToArray();
            }
            var prompts = requests.Select(r => r.Prompt!).ToArray();

            using var loaded = model.Load(parse, io);
            using var backend = model.CreateBackend(loaded, parse, io);
            var generator = new Generator(backend, loaded.Tokenizer, new GeneratorOptions { PrefixSharing = parse.GetValue(sharing) != "off" });
            foreach (var r in requests)
            {
                try
                {
                    generator.PromptIds(r); // report bad requests before any work
                }
                catch (RequestValidationException e) when (e.Argument == nameof(GenerationRequest.Logprobs))
                {
                    throw new CliUsageException($"--logprobs: {e.Reason}");
                }
            }
            return Run(generator, loaded.Tokenizer, requests, prompts, io);
        });
        return command;
    }

    private static int Run(Generator generator, Kernels.Runtime.Tokenization.ITextTokenizer tokenizer, GenerationRequest[] requests, string[] prompts, CliIo io)
    {
        var scores = new Dictionary<(int, int), List<TokenLogprobs>>();
        int sequences = requests.Sum(r => r.N);
        bool stream = sequences == 1;
        int promptTokens = requests.Sum(r => generator.PromptIds(r).Length);
        var clock = Stopwatch.StartNew();
        double? firstToken = null;
        int generated = 0;
        var texts = new Dictionary<(int, int), System.Text.StringBuilder>();
        var finishes = new Dictionary<(int, int), FinishReason>();
        if (stream) io.Out.Write(prompts[0]);
        foreach (var e in generator.Run(requests))
        {
            firstToken ??= clock.Elapsed.TotalSeconds;
            if (e.Token != null) generated++;
            if (stream)
            {
                io.Out.Write(e.Text);
                io.Out.Flush();
            }
            else
            {
                var key = (e.Request, e.Sample);
                if (!texts.TryGetValue(key, out var sb)) texts[key] = sb = new();
                sb.Append(e.Text);
            }
            if (e.Logprobs is { } lp)
            {
                if (!scores.TryGetValue((e.Request, e.Sample), out var list)) scores[(e.Request, e.Sample)] = list = new();
                list.Add(lp);
            }
            if (e.Finish is FinishReason f) finishes[(e.Request, e.Sample)] = f;
        }
        double seconds = clock.Elapsed.TotalSeconds;
        if (stream) io.Out.WriteLine();
        else
        {
            foreach (var ((r, s), sb) in texts.OrderBy(kv => kv.Key))
            {
                io.Out.WriteLine($"--- prompt {r}, sample {s} ({Describe(finishes[(r, s)])})");
                io.Out.WriteLine(prompts[r] + sb);
            }
        }
        foreach (var ((r, s), list) in scores.OrderBy(kv => kv.Key))
        {
            io.Out.WriteLine($"--- logprobs of prompt {r}, sample {s}: token, log-probability, then the most likely alternatives");
            foreach (var t in list)
                io.Out.WriteLine($"{Quote(tokenizer, t.Token)} {t.Logprob:F4}" + (t.Top.Count > 0 ? "   " + string.Join("  ", t.Top.Select(a => $"{Quote(tokenizer, a.Token)} {a.Logprob:F4}")) : ""));
        }
        double decodeSeconds = seconds - (firstToken ?? 0);
        var pool = generator.KvPool;
        io.Error.WriteLine($"kv cache: {pool.Prefixes.CachedBlocks} cached prefix blocks of {pool.BlockSize} tokens; {pool.Capacity - pool.FreeBlocks} of {pool.Capacity} blocks held at the end");
        io.Error.WriteLine($"summary: {requests.Length} prompt(s) x n -> {sequences} sequence(s); {promptTokens} prompt tokens, {generated} generated in {seconds:F2} s; " +
                           $"first token after {firstToken ?? 0:F2} s; {generated / Math.Max(seconds, 1e-9):F1} tokens/s overall, " +
                           $"{Math.Max(generated - sequences, 0) / Math.Max(decodeSeconds, 1e-9):F1} tokens/s while decoding");
        return 0;
    }

    /// <summary>A token as its id and its text, escaped and quoted (control tokens have no text).</summary>
    private static string Quote(Kernels.Runtime.Tokenization.ITextTokenizer tokenizer, int id) =>
        $"{id}:{System.Text.Json.JsonSerializer.Serialize(System.Text.Encoding.UTF8.GetString(tokenizer.TokenBytes(id)))}";

    private static string Describe(FinishReason f) => f switch
    {
        FinishReason.EndOfSequence => "end of sequence",
        FinishReason.Stop => "stop string",
        FinishReason.Length => "length",
        FinishReason.Cancelled => "cancelled",
        _ => f.ToString(),
    };
}
