// `kernels-bench peer`: side-by-side CPU comparison with llama.cpp (through LLamaSharp + LLamaSharp.Backend.Cpu) on
// the same GGUF file, same thread count: single-sequence prompt processing and generation (llama-bench's pp/tg), and
// 16 sequences decoding after one shared prompt (llama-batched-bench -pps: the prompt decoded once, its KV shared).
// Models are files or names that build them: small:F16 (synthetic:small exported by us), small:Q8_0, small:Q4_K_M
// (any llama.cpp file type, made from the F16 file by llama.cpp's own quantizer). --paths both runs everything a second
// time in a child process on the AVX2 path of both engines (ours: DOTNET_EnableAVX512=0, DOTNET_EnableAVXVNNI=0;
// llama.cpp: its avx2 build) after the native one.
using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Text.Json;
using Kernels.Runtime.Backends;
using Kernels.Runtime.Backends.Cpu;
using Kernels.Runtime.Engine;
using Kernels.Runtime.Models;
using Kernels.Runtime.Numerics;
using LLama;
using LLama.Common;
using LLama.Native;

namespace Kernels.Bench;

public static class Peer
{
    /// <summary>One workload's numbers, ours and llama.cpp's (medians over the repetitions).</summary>
    public sealed record Row(string Workload, double Ours, double LlamaCpp, double Ratio, string Unit, double[] OursRuns, double[] LlamaCppRuns);

    public sealed record ModelResult(string Model, string Path, double ParametersM, int VocabSize, int Prompt, int Generate, int Sequences,
        int Repetitions, int GreedyTokensCompared, int GreedyTokensMatching, List<Row> Rows, double OursSharedTotalS, double LlamaSharedTotalS,
        string InstructionPath = "", string OursPath = "", string LlamaPath = "");

    private sealed record Timing(double PrefillS, double DecodeS, int[] Tokens);

    /// <summary>What `peer` and `all` compare by default: stories260K and the 100M model as F16, Q8_0 and Q4_K_M.</summary>
    public const string DefaultModels = "stories260K,small:F16,small:Q8_0,small:Q4_K_M";

    /// <summary>Which instruction paths to compare: the best this CPU runs, AVX2 on both sides, or both in turn.</summary>
    public enum Paths { Native, Avx2, Both }

    public static int Run(string models, int prompt, int storiesPrompt, int generate, int sequences, int reps, int sharedReps, int llamaThreads, string? jsonPath,
        Paths paths = Paths.Native, string? cacheDirectory = null)
    {
        bool avx2 = paths == Paths.Avx2;
        LlamaCpp.Configure(avx2 ? AvxLevel.Avx2 : null);
        int threads = Environment.ProcessorCount;
        _llamaThreads = llamaThreads > 0 ? llamaThreads : threads;
        string date = DateTime.UtcNow.ToString("yyyy-MM-dd HH:mm 'UTC'");
        string ours = OursPath();
        if (avx2 && (MatMul.DensePath == "AVX-512" || GgmlDot.Best == GgmlDot.Path.AvxVnni))
            Console.WriteLine("# warning: --paths avx2 without DOTNET_EnableAVX512=0 DOTNET_EnableAVXVNNI=0: ours still runs " + ours);
        string pathName = avx2 ? "AVX2" : "native";
        Console.WriteLine($"# CPU peer comparison ({pathName} path): Kernels.Runtime CpuBackend vs llama.cpp (LLamaSharp 0.30.0, LLamaSharp.Backend.Cpu), {date}");
        Console.WriteLine($"# CPU: {HostInfo.CpuName()}; {threads} cores, {RuntimeInformation.ProcessArchitecture}; ours {threads} threads, llama.cpp {_llamaThreads}; {RuntimeInformation.FrameworkDescription}; " +
                          $"OMP_WAIT_POLICY={Environment.GetEnvironmentVariable("OMP_WAIT_POLICY") ?? "(unset)"}; load average {LoadAverage()}");
        Console.WriteLine($"# ours: {ours}");
        Console.WriteLine("# same GGUF file on both sides; prompt = random token ids (a fresh prompt per repetition, so no prefix-cache hits); greedy decoding");
        Console.WriteLine($"# single sequence: pp = P prompt tokens in one batch, tg = G one-token decode steps; median of {reps} repetitions after a warm-up");
        Console.WriteLine($"# {sequences} sequences: the prompt decoded once, its KV shared by all ({sequences} forks in ours, memory seq_cp in llama.cpp), " +
                          $"then G steps of {sequences} tokens; tok/s = {sequences} x G / decode time; median of {sharedReps}");
        Console.WriteLine("# timings are wall clock on a shared machine: other processes add noise, hence medians");
        var results = new List<ModelResult>();
        string cache = cacheDirectory ?? Path.Combine(Path.GetTempPath(), "kernels-peer-models");
        foreach (string spec in models.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            string? path = ResolveModel(spec, cache);
            if (path == null) { Console.WriteLine($"\n## {spec}: skipped, not found (a GGUF file, stories260K, or small:<F16|Q8_0|Q4_K_M|...>)"); continue; }
            int p = Path.GetFileName(path).Contains("stories", StringComparison.OrdinalIgnoreCase) ? storiesPrompt : prompt;
            var r = RunModel(Path.GetFileNameWithoutExtension(path), path, p, generate, sequences, reps, sharedReps, threads);
            results.Add(r with { InstructionPath = pathName, OursPath = ours, LlamaPath = $"{LlamaCpp.LoadedCpuLibrary()} ({LlamaCpp.SystemInfo()})" });
        }
        if (paths == Paths.Both) results.AddRange(RunAvx2Child(models, prompt, storiesPrompt, generate, sequences, reps, sharedReps, llamaThreads, cache));
        if (jsonPath != null)
        {
            var doc = new
            {
                date,
                machine = new { cores = threads, cpu = HostInfo.CpuName(), arch = RuntimeInformation.ProcessArchitecture.ToString(), avx2 = System.Runtime.Intrinsics.X86.Avx2.IsSupported,
                    avx512 = System.Runtime.Intrinsics.X86.Avx512F.IsSupported, runtime = RuntimeInformation.FrameworkDescription },
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

    /// <summary>Our instruction paths here: the dense matmul's and the GGML integer dot products'.</summary>
    private static string OursPath() => CpuBackend.InstructionPaths;

    /// <summary>
    /// The same comparison on the AVX2 path of both engines, in a child process (the runtime's instruction sets are fixed
    /// at start-up): ours with AVX-512 and AVX-VNNI disabled, llama.cpp's avx2 build.
    /// </summary>
    private static List<ModelResult> RunAvx2Child(string models, int prompt, int storiesPrompt, int generate, int sequences, int reps, int sharedReps, int llamaThreads, string cache)
    {
        string json = Path.Combine(Path.GetTempPath(), $"kernels-peer-avx2-{Environment.ProcessId}.json");
        var start = SelfProcess.StartInfo();
        foreach (var a in new[] { "peer", "--models", models, "--prompt", prompt.ToString(), "--stories-prompt", storiesPrompt.ToString(), "--generate", generate.ToString(),
                     "--sequences", sequences.ToString(), "--reps", reps.ToString(), "--shared-reps", sharedReps.ToString(), "--llama-threads", llamaThreads.ToString(),
                     "--paths", "avx2", "--cache", cache, "--json", json })
            start.ArgumentList.Add(a);
        start.Environment["DOTNET_EnableAVX512"] = "0";
        start.Environment["DOTNET_EnableAVXVNNI"] = "0";
        Console.WriteLine();
        Console.WriteLine("# ---- the same on the AVX2 path (child process: DOTNET_EnableAVX512=0 DOTNET_EnableAVXVNNI=0, llama.cpp avx2 build) ----");
        Console.Out.Flush();
        using var child = Process.Start(start)!;
        child.WaitForExit();
        if (child.ExitCode != 0 || !File.Exists(json)) throw new InvalidOperationException($"the AVX2 pass failed (exit {child.ExitCode})");
        var doc = JsonSerializer.Deserialize<JsonElement>(File.ReadAllText(json));
        File.Delete(json);
        return doc.GetProperty("results").Deserialize<List<ModelResult>>() ?? [];
    }

    /// <summary>
    /// A GGUF path for <paramref name="spec"/>: an existing file; "stories260K" (../shared); "small:F16" (synthetic:small
    /// exported by us into <paramref name="cache"/>); "small:TYPE" for any llama.cpp file type (Q8_0, Q4_K_M, ...: made
    /// from the F16 file by llama.cpp's quantizer). Null when it cannot be found or made.
    /// </summary>
    public static string? ResolveModel(string spec, string cache)
    {
        if (spec == "stories260K") return HostInfo.FindShared("models/stories260K/stories260K.gguf");
        if (File.Exists(spec)) return spec;
        int colon = spec.IndexOf(':');
        if (colon < 0 || spec[..colon] != "small") return null;
        string type = spec[(colon + 1)..].ToUpperInvariant();
        Directory.CreateDirectory(cache);
        string f16 = Path.Combine(cache, "small-f16.gguf");
        if (!File.Exists(f16))
        {
            using var model = ModelLoader.Load("synthetic:small");
            GgufExport.Write(model, f16 + ".tmp", TensorDType.F16);
            File.Move(f16 + ".tmp", f16);
        }
        if (type == "F16") return f16;
        string path = Path.Combine(cache, $"small-{type.ToLowerInvariant()}.gguf");
        if (!File.Exists(path))
        {
            LlamaCpp.Quantize(f16, path + ".tmp", type);
            File.Move(path + ".tmp", path);
        }
        return path;
    }

    private static ModelResult RunModel(string name, string path, int p, int g, int n, int reps, int sharedReps, int threads)
    {
        using var model = ModelLoader.Load(path);
        using var backend = new CpuBackend(model);
        int vocab = model.Config.VocabSize;
        long weightBytes = model.Weights.All().Sum(t => t.ByteLength);
        string types = string.Join(", ", model.Weights.All().Where(t => t.Shape.Length == 2).GroupBy(t => t.DType).Select(g => $"{g.Key.Name()} x {g.Count()}"));
        Console.WriteLine();
        Console.WriteLine($"## {name}: {model.Config.ParameterCount / 1e6:F1}M parameters, vocab {vocab}, {new FileInfo(path).Length / 1e6:F1} MB file ({types}), " +
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
            Console.WriteLine($"# llama.cpp native library: {LlamaCpp.LoadedCpuLibrary()}; threads {ctx1.GenerationThreads}/{ctx1.BatchThreads} (decode/batch); " +
                              $"flash attention {single.FlashAttention?.ToString() ?? "default (auto)"}; system info: {LlamaCpp.SystemInfo()}");
        }

        var rng = new Random(42);
        int[] Prompt() => Enumerable.Range(0, p).Select(_ => rng.Next(3, vocab)).ToArray();

        // Warm-up: JIT, thread pools, page faults on the weights, on both sides. Whole runs, twice, with pauses: the
        // code around the kernels (generator, scheduler) must be called often enough to leave the tiered JIT's first
        // tier, and the runtime promotes methods only once 100 ms pass without new first-tier code (with two shared
        // steps of warm-up, stories260K's 16-sequence rows rose 2x over their repetitions).
        for (int round = 0; round < 2; round++)
        {
            var warm = Prompt();
            OursSingle(backend, warm, g);
            LlamaSingle(ctx1, warm, g);
            OursShared(backend, model, warm, g, n);
            LlamaShared(ctxN, warm, g, n);
            Thread.Sleep(300);
        }

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
