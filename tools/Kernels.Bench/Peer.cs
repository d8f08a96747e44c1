// `kernels-bench peer`: side-by-side CPU comparison with llama.cpp (through LLamaSharp + LLamaSharp.Backend.Cpu) on
// the same GGUF file, same thread count: single-sequence prompt processing and generation (llama-bench's pp/tg), and
// 16 sequences decoding after one shared prompt (llama-batched-bench -pps: the prompt decoded once, its KV shared).
using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Text.Json;
using Kernels.Runtime.Backends;
using Kernels.Runtime.Backends.Cpu;
using Kernels.Runtime.Engine;
using Kernels.Runtime.Models;
using LLama;
using LLama.Common;
using LLama.Native;

namespace Kernels.Bench;

public static class Peer
{
    /// <summary>One workload's numbers, ours and llama.cpp's (medians over the repetitions).</summary>
    public sealed record Row(string Workload, double Ours, double LlamaCpp, double Ratio, string Unit, double[] OursRuns, double[] LlamaCppRuns);

    public sealed record ModelResult(string Model, string Path, double ParametersM, int VocabSize, int Prompt, int Generate, int Sequences,
        int Repetitions, int GreedyTokensCompared, int GreedyTokensMatching, List<Row> Rows, double OursSharedTotalS, double LlamaSharedTotalS);

    private sealed record Timing(double PrefillS, double DecodeS, int[] Tokens);

    public static int Run(string models, int prompt, int storiesPrompt, int generate, int sequences, int reps, int sharedReps, int llamaThreads, string? jsonPath)
    {
        NativeLibraryConfig.All.WithLogCallback((_, _) => { }); // llama.cpp logs every load to stderr otherwise
        int threads = Environment.ProcessorCount;
        _llamaThreads = llamaThreads > 0 ? llamaThreads : threads;
        string date = DateTime.UtcNow.ToString("yyyy-MM-dd HH:mm 'UTC'");
        Console.WriteLine($"# CPU peer comparison: Kernels.Runtime CpuBackend vs llama.cpp (LLamaSharp 0.30.0, LLamaSharp.Backend.Cpu), {date}");
        Console.WriteLine($"# machine: {threads} cores, {RuntimeInformation.ProcessArchitecture}, AVX2 {System.Runtime.Intrinsics.X86.Avx2.IsSupported}, " +
                          $"AVX-512F {System.Runtime.Intrinsics.X86.Avx512F.IsSupported}; ours {threads} threads, llama.cpp {_llamaThreads}; {RuntimeInformation.FrameworkDescription}; " +
                          $"OMP_WAIT_POLICY={Environment.GetEnvironmentVariable("OMP_WAIT_POLICY") ?? "(unset)"}; load average {LoadAverage()}");
        Console.WriteLine("# same GGUF file on both sides; prompt = random token ids (a fresh prompt per repetition, so no prefix-cache hits); greedy decoding");
        Console.WriteLine($"# single sequence: pp = P prompt tokens in one batch, tg = G one-token decode steps; median of {reps} repetitions after a warm-up");
        Console.WriteLine($"# {sequences} sequences: the prompt decoded once, its KV shared by all ({sequences} forks in ours, memory seq_cp in llama.cpp), " +
                          $"then G steps of {sequences} tokens; tok/s = {sequences} x G / decode time; median of {sharedReps}");
        Console.WriteLine("# timings are wall clock on a shared 2-core machine: other processes add noise, hence medians");
        var results = new List<ModelResult>();
        foreach (string spec in models.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            string path = spec;
            if (spec == "stories260K")
            {
                path = FindShared("models/stories260K/stories260K.gguf") ?? "";
                if (path == "") { Console.WriteLine("\n## stories260K: skipped, ../shared/models/stories260K/stories260K.gguf not found"); continue; }
            }
            else if (!File.Exists(path)) { Console.WriteLine($"\n## {spec}: skipped, file not found"); continue; }
            int p = Path.GetFileName(path).Contains("stories", StringComparison.OrdinalIgnoreCase) ? storiesPrompt : prompt;
            results.Add(RunModel(Path.GetFileNameWithoutExtension(path), path, p, generate, sequences, reps, sharedReps, threads));
        }
        if (jsonPath != null)
        {
            var doc = new
            {
                date,
                machine = new { cores = threads, arch = RuntimeInformation.ProcessArchitecture.ToString(), avx2 = System.Runtime.Intrinsics.X86.Avx2.IsSupported, runtime = RuntimeInformation.FrameworkDescription },
                peer = "llama.cpp via LLamaSharp 0.30.0 + LLamaSharp.Backend.Cpu",
                threads,
                llamaThreads = _llamaThreads,
                ompWaitPolicy = Environment.GetEnvironmentVariable("OMP_WAIT_POLICY"),
                results,
            };
            File.WriteAllText(jsonPath, JsonSerializer.Serialize(doc, new JsonSerializerOptions { WriteIndented = true }));
        }
        return 0;
    }

    internal static string? FindShared(string relative)
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir != null; dir = dir.Parent)
            foreach (string c in new[] { Path.Combine(dir.FullName, "shared", relative), Path.Combine(dir.FullName, "..", "shared", relative) })
                if (File.Exists(c)) return Path.GetFullPath(c);
        string cwd = Path.Combine("..", "shared", relative);
        return File.Exists(cwd) ? Path.GetFullPath(cwd) : null;
    }

    private static ModelResult RunModel(string name, string path, int p, int g, int n, int reps, int sharedReps, int threads)
    {
        using var model = ModelLoader.Load(path);
        using var backend = new CpuBackend(model);
        int vocab = model.Config.VocabSize;
        long weightBytes = model.Weights.All().Sum(t => t.ByteLength);
        Console.WriteLine();
        Console.WriteLine($"## {name}: {model.Config.ParameterCount / 1e6:F1}M parameters, vocab {vocab}, {new FileInfo(path).Length / 1e6:F1} MB file, " +
                          $"ours holds {weightBytes / 1e6:F1} MB of weights; P = {p}, G = {g}, {n} sequences");

        var single = new ModelParams(path) { ContextSize = (uint)(p + g + 16), BatchSize = (uint)Math.Max(p, 512), Threads = _llamaThreads, BatchThreads = _llamaThreads, GpuLayerCount = 0 };
        var shared = new ModelParams(path)
        {
            ContextSize = (uint)(p + n * (g + 1) + 64), BatchSize = (uint)Math.Max(p, 512), Threads = _llamaThreads, BatchThreads = _llamaThreads, GpuLayerCount = 0,
            SeqMax = (uint)n, KVUnified = true, // one cell pool: seq_cp tags the prompt's cells with every sequence, no copy
        };
        using var weights = LLamaWeights.LoadFromFile(single);
        if (weights.Vocab.Count != vocab) throw new InvalidOperationException($"vocab mismatch: ours {vocab}, llama.cpp {weights.Vocab.Count}");
        using var ctx1 = weights.CreateContext(single);
        using var ctxN = weights.CreateContext(shared);
        if (!_printedNative)
        {
            _printedNative = true;
            string lib = File.ReadLines("/proc/self/maps").Select(l => l.Split(' ', StringSplitOptions.RemoveEmptyEntries).LastOrDefault() ?? "")
                .FirstOrDefault(l => l.EndsWith("libggml-cpu.so", StringComparison.Ordinal)) ?? "?";
            Console.WriteLine($"# llama.cpp native library: {Path.GetRelativePath(AppContext.BaseDirectory, lib)}; threads {ctx1.GenerationThreads}/{ctx1.BatchThreads} (decode/batch); " +
                              $"flash attention {single.FlashAttention?.ToString() ?? "default (auto)"}; system info: {SystemInfo()}");
        }

        var rng = new Random(42);
        int[] Prompt() => Enumerable.Range(0, p).Select(_ => rng.Next(3, vocab)).ToArray();

        // Warm-up: JIT, thread pools, page faults on the weights, on both sides.
        var warm = Prompt();
        OursSingle(backend, warm, Math.Min(g, 4));
        LlamaSingle(ctx1, warm, Math.Min(g, 4));
        OursShared(backend, model, warm, Math.Min(g, 2), n);
        LlamaShared(ctxN, warm, Math.Min(g, 2), n);

        // Single sequence: the two sides alternate per repetition, on the same prompt.
        var ours1 = new List<Timing>(); var llama1 = new List<Timing>();
        for (int r = 0; r < reps; r++)
        {
            var ids = Prompt();
            ours1.Add(OursSingle(backend, ids, g));
            llama1.Add(LlamaSingle(ctx1, ids, g));
        }
        int compared = g, matching = 0;
        for (int i = 0; i < g && ours1[0].Tokens[i] == llama1[0].Tokens[i]; i++) matching++;

        var oursN = new List<Timing>(); var llamaN = new List<Timing>();
        for (int r = 0; r < sharedReps; r++)
        {
            var ids = Prompt();
            oursN.Add(OursShared(backend, model, ids, g, n));
            llamaN.Add(LlamaShared(ctxN, ids, g, n));
        }

        Row Make(string workload, IEnumerable<double> ours, IEnumerable<double> llama)
        {
            var o = ours.ToArray(); var l = llama.ToArray();
            double om = Median(o), lm = Median(l);
            return new Row(workload, om, lm, om / lm, "tok/s", o, l);
        }
        var rows = new List<Row>
        {
            Make($"pp{p} (1 sequence)", ours1.Select(t => p / t.PrefillS), llama1.Select(t => p / t.PrefillS)),
            Make($"tg{g} (1 sequence)", ours1.Select(t => g / t.DecodeS), llama1.Select(t => g / t.DecodeS)),
            Make($"pp{p} shared prompt ({n} sequences)", oursN.Select(t => p / t.PrefillS), llamaN.Select(t => p / t.PrefillS)),
            Make($"tg{g} x {n} sequences, shared prompt", oursN.Select(t => (double)n * g / t.DecodeS), llamaN.Select(t => (double)n * g / t.DecodeS)),
        };
        double oursTotal = Median(oursN.Select(t => t.PrefillS + t.DecodeS).ToArray()), llamaTotal = Median(llamaN.Select(t => t.PrefillS + t.DecodeS).ToArray());
        rows.Add(new Row($"{n} sequences end to end (pp{p} + {n} x tg{g}), tok/s", (double)n * g / oursTotal, (double)n * g / llamaTotal,
            llamaTotal / oursTotal, "tok/s", [], []));

        Console.WriteLine();
        Console.WriteLine($"(load average after the model's runs: {LoadAverage()})");
        Console.WriteLine("| workload | ours tok/s | llama.cpp tok/s | ratio (ours/llama.cpp) |");
        Console.WriteLine("|---|---:|---:|---:|");
        foreach (var row in rows) Console.WriteLine($"| {row.Workload} | {row.Ours:F1} | {row.LlamaCpp:F1} | {row.Ratio:F2}x |");
        Console.WriteLine();
        Console.WriteLine($"{n}-sequence total time (median): ours {oursTotal:F2} s, llama.cpp {llamaTotal:F2} s. " +
                          $"Single-sequence decode per token: ours {1e3 / rows[1].Ours:F1} ms, llama.cpp {1e3 / rows[1].LlamaCpp:F1} ms.");
        Console.WriteLine($"Greedy check (repetition 1): the first {matching} of {compared} generated tokens are identical on both sides.");
        Console.WriteLine($"Runs (tok/s): tg ours [{string.Join(", ", rows[1].OursRuns.Select(x => x.ToString("F1")))}], llama.cpp [{string.Join(", ", rows[1].LlamaCppRuns.Select(x => x.ToString("F1")))}]; " +
                          $"{n}-seq tg ours [{string.Join(", ", rows[3].OursRuns.Select(x => x.ToString("F1")))}], llama.cpp [{string.Join(", ", rows[3].LlamaCppRuns.Select(x => x.ToString("F1")))}]");
        return new ModelResult(name, path, model.Config.ParameterCount / 1e6, vocab, p, g, n, reps, compared, matching, rows, oursTotal, llamaTotal);
    }

    private static bool _printedNative;
    private static int _llamaThreads;

    private static string LoadAverage() => File.Exists("/proc/loadavg") ? string.Join(' ', File.ReadAllText("/proc/loadavg").Split(' ').Take(3)) : "?";

    private static string SystemInfo()
    {
        object info = typeof(NativeApi).GetMethod("llama_print_system_info")!.Invoke(null, null)!;
        return (info is IntPtr ptr ? Marshal.PtrToStringAnsi(ptr) : info.ToString())?.Trim() ?? "";
    }

    private static double Median(double[] xs)
    {
        var s = xs.OrderBy(x => x).ToArray();
        return s.Length % 2 == 1 ? s[s.Length / 2] : (s[s.Length / 2 - 1] + s[s.Length / 2]) / 2;
    }

    // ---------------------------------------------------------------------------------------------------------------
    // Ours

    /// <summary>Prefill the prompt in one forward, then g one-token decode steps (argmax of the logits).</summary>
    private static Timing OursSingle(CpuBackend backend, int[] prompt, int g)
    {
        using var cache = backend.CreateCache();
        var clock = Stopwatch.StartNew();
        var logits = backend.Forward([new SequenceStep(cache, prompt)]);
        int next = Sampler.ArgMax(logits[0]);
        double prefill = clock.Elapsed.TotalSeconds;
        var tokens = new int[g];
        clock.Restart();
        for (int i = 0; i < g; i++)
        {
            tokens[i] = next;
            logits = backend.Forward([new SequenceStep(cache, new[] { next })]);
            next = Sampler.ArgMax(logits[0]);
        }
        return new Timing(prefill, clock.Elapsed.TotalSeconds, tokens);
    }

    /// <summary>
    /// The engine's path: Generator, one request with N samples (prefix sharing on: the prompt is prefilled once and
    /// its KV blocks are shared by the forks), temperature 0, ignore EOS. The first step prefills and samples every
    /// sample's first token; each later step decodes one token per sample. MaxNewTokens = g + 1 gives g decode steps.
    /// </summary>
    private static Timing OursShared(CpuBackend backend, LoadedModel model, int[] prompt, int g, int n)
    {
        var generator = new Generator(backend, model.Tokenizer, new GeneratorOptions { PrefixSharing = true });
        var request = new GenerationRequest { PromptIds = prompt, N = n, MaxNewTokens = g + 1, IgnoreEos = true, Sampling = SamplingOptions.Greedy };
        var clock = Stopwatch.StartNew();
        double first = -1;
        int events = 0;
        foreach (var e in generator.Run([request]))
        {
            if (first < 0) first = clock.Elapsed.TotalSeconds;
            if (e.Token != null) events++;
        }
        double end = clock.Elapsed.TotalSeconds;
        if (events != n * (g + 1)) throw new InvalidOperationException($"expected {n * (g + 1)} tokens, got {events}");
        return new Timing(first, end - first, []);
    }

    // ---------------------------------------------------------------------------------------------------------------
    // llama.cpp

    private static void Check(DecodeResult r)
    {
        if (r != DecodeResult.Ok) throw new InvalidOperationException($"llama_decode failed: {r}");
    }

    /// <summary>llama-bench style: the prompt in one batch (logits of the last token only), then g one-token decodes.</summary>
    private static Timing LlamaSingle(LLamaContext ctx, int[] prompt, int g)
    {
        ctx.NativeHandle.MemoryClear(true);
        var batch = new LLamaBatch();
        for (int i = 0; i < prompt.Length; i++) batch.Add(prompt[i], i, LLamaSeqId.Zero, i == prompt.Length - 1);
        var clock = Stopwatch.StartNew();
        Check(ctx.Decode(batch));
        int next = Sampler.ArgMax(ctx.NativeHandle.GetLogitsIth(batch.TokenCount - 1));
        double prefill = clock.Elapsed.TotalSeconds;
        var tokens = new int[g];
        clock.Restart();
        for (int i = 0; i < g; i++)
        {
            tokens[i] = next;
            batch.Clear();
            batch.Add(next, prompt.Length + i, LLamaSeqId.Zero, true);
            Check(ctx.Decode(batch));
            next = Sampler.ArgMax(ctx.NativeHandle.GetLogitsIth(0));
        }
        return new Timing(prefill, clock.Elapsed.TotalSeconds, tokens);
    }

    /// <summary>
    /// llama-batched-bench -pps style: the prompt decoded once into sequence 0, memory seq_cp to sequences 1..n-1
    /// (unified KV: the cells are tagged, not copied), every sequence's first token from the prompt's logits, then g
    /// batched decodes of n tokens (one per sequence, positions P.., each with logits) and an argmax per sequence.
    /// Prefill time includes the seq_cp calls.
    /// </summary>
    private static Timing LlamaShared(LLamaContext ctx, int[] prompt, int g, int n)
    {
        ctx.NativeHandle.MemoryClear(true);
        var batch = new LLamaBatch();
        for (int i = 0; i < prompt.Length; i++) batch.Add(prompt[i], i, LLamaSeqId.Zero, i == prompt.Length - 1);
        var clock = Stopwatch.StartNew();
        Check(ctx.Decode(batch));
        int first = Sampler.ArgMax(ctx.NativeHandle.GetLogitsIth(batch.TokenCount - 1));
        for (int s = 1; s < n; s++) ctx.NativeHandle.MemorySequenceCopy(LLamaSeqId.Zero, (LLamaSeqId)s, -1, -1);
        double prefill = clock.Elapsed.TotalSeconds;
        var next = Enumerable.Repeat(first, n).ToArray();
        clock.Restart();
        for (int step = 0; step < g; step++)
        {
            batch.Clear();
            for (int s = 0; s < n; s++) batch.Add(next[s], prompt.Length + step, (LLamaSeqId)s, true);
            Check(ctx.Decode(batch));
            for (int s = 0; s < n; s++) next[s] = Sampler.ArgMax(ctx.NativeHandle.GetLogitsIth(s));
        }
        return new Timing(prefill, clock.Elapsed.TotalSeconds, []);
    }
}
