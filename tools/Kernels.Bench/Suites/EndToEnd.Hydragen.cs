// Shared prefixes on the GPU (issue 17). kernels-bench e2e: parity of Hydragen levels through the tensor-core attention
// against the CPU backend with the same plan and against the GPU without levels (forked sequences that finish at
// different steps). kernels-bench shared-gpu: 8B fp16 decode of 64 sequences sharing a 4096-token prompt with 256-token
// suffixes, with the levels and without sharing (private copies of the prompt), against (weights + KV bytes read) /
// bandwidth; and the prefill of one 2048-token prompt with the tensor-core and the CUDA-core attention (PyTorch's is
// tools/torch_decode_baseline.py's prefill, same device check).
using System.Diagnostics;
using Kernels.Runtime.Backends;
using Kernels.Runtime.Backends.Cpu;
using Kernels.Runtime.Backends.Cuda;
using Kernels.Runtime.Engine;
using Kernels.Runtime.KvCache;
using Kernels.Runtime.Models;
using Kernels.Runtime.Numerics;

namespace Kernels.Bench;

internal static partial class EndToEnd
{
    private const int SharedPromptTokens = 70, SharedForks = 4, SharedSteps = 10;

    /// <summary>
    /// A 70-token prompt (4 full blocks of 16 and a partial one) prefilled once, forked 4 ways with 1, 5, 17 and 33
    /// own tokens, then greedy steps; fork i stops after 4 + 2i steps (the batch shrinks as n samples finish). The GPU
    /// runs are fed the CPU's tokens: every step's logits are compared with the CPU backend's under the same
    /// AttentionPlanner plan, and the GPU's choices, with levels and without (the per-sequence kernels), must be the
    /// CPU's except at near ties.
    /// </summary>
    /// <remarks>
    /// With options.Kivi both sides keep that KIVI cache (the CPU reads the levels, the GPU attends per sequence: its
    /// KIVI path has no levels), so forks share compacted prompt blocks and compact shared blocks while they decode.
    /// </remarks>
    private static ParityResult HydragenParity(string name, string? path, CudaBackendOptions options)
    {
        string Kv = options.Kivi?.ToString() ?? "F16";
        if (path == null || (!SyntheticModels.IsSynthetic(path) && !File.Exists(path) && !Directory.Exists(path)))
            return new ParityResult(name, Kv, "SKIP", double.NaN, LogitTolerance, false, [], [], "model files not found");
        try
        {
            using var model = ModelLoader.Load(path);
            if ((CudaBackend.WhyUnsupported(model) ?? CudaBackend.WhyUnsupported(model.Config, options.Kivi)) is { } why)
                return new ParityResult(name, Kv, "SKIP", double.NaN, LogitTolerance, false, [], [], why);
            using var cpu = new CpuBackend(model, options.Kivi is { } kivi ? new CpuBackendOptions { KvCache = kivi } : null);
            using var levels = new CudaBackend(model, options with { TensorCoreAttention = true });
            using var plain = new CudaBackend(model, options with { TensorCoreAttention = false });
            // A head dim the tensor-core kernel lacks (the golden models' 16, stories260K's 8) keeps the per-sequence kernels,
            // which honour the plan over each table: the comparison with the CPU's levels still holds.
            // The CPU runs free; both GPU runs are fed the CPU's tokens, so every step's logits come from the same inputs
            // and are compared, and each row's choice is compared with the CPU's (a different choice only at a near tie).
            var (cpuLogits, cpuTokens, cpuAt) = ForkedGreedy(cpu, model, plan: true);
            var (gpuLogits, gpuTokens, _) = ForkedGreedy(levels, model, plan: true, forced: cpuTokens);
            var (_, plainTokens, _) = ForkedGreedy(plain, model, plan: false, forced: cpuTokens);
            double max = 0, scale = 1;
            for (int i = 0; i < Math.Min(cpuLogits.Count, gpuLogits.Count); i++)
                for (int j = 0; j < cpuLogits[i].Length; j++)
                {
                    double d = Math.Abs(cpuLogits[i][j] - gpuLogits[i][j]);
                    if (!(d <= max)) max = double.IsNaN(d) ? double.PositiveInfinity : d;
                    scale = Math.Max(scale, Math.Abs(cpuLogits[i][j]));
                }
            double tolerance = (levels.WeightFormats.Contains("BF16", StringComparison.Ordinal) ? Bf16LogitTolerance : LogitTolerance)
                * (options.Kivi != null ? KiviToleranceFactor : 1);
            // Rows whose choice differs from the CPU's: (ties within the tolerance, others).
            (int Ties, int Others) Partings(int[] tokens)
            {
                int ties = 0, others = 0;
                for (int i = 0; i < Math.Min(tokens.Length, cpuTokens.Length); i++)
                {
                    if (tokens[i] == cpuTokens[i]) continue;
                    var row = cpuLogits[cpuAt[i].Step].AsSpan(cpuAt[i].Offset, model.Config.VocabSize);
                    if (row[cpuTokens[i]] - row[tokens[i]] <= tolerance * scale) ties++;
                    else others++;
                }
                return (ties, others + Math.Abs(tokens.Length - cpuTokens.Length));
            }
            var (gpuTies, gpuOthers) = Partings(gpuTokens);
            var (plainTies, plainOthers) = Partings(plainTokens);
            bool equal = gpuOthers == 0 && plainOthers == 0;
            string status = max <= tolerance * scale && equal ? "PASS" : "FAIL";
            return new ParityResult(name, Kv, status, max, tolerance, equal, cpuTokens, gpuTokens,
                $"levels vs CPU with the same plan, the GPU fed the CPU's tokens: {cpuLogits.Count} steps of logits; choices differing from the CPU's " +
                $"{gpuTies} at near ties, {gpuOthers} not; without levels {plainTies} at near ties, {plainOthers} not; " +
                levels.KernelChoices + "; " + levels.GraphStatus, scale);
        }
        catch (Exception e) when (e is Kernels.Interop.CudaException or InvalidOperationException or NotSupportedException or ArgumentException or ModelFormatException)
        {
            return new ParityResult(name, Kv, "FAIL", double.NaN, LogitTolerance, false, [], [], $"{e.GetType().Name}: {e.Message}");
        }
    }

    /// <summary>
    /// The forked greedy run of <see cref="HydragenParity"/>: every step's logits (concatenated over the batch), all
    /// chosen tokens in order, and for each the step and the offset in that step's logits of the row that chose it.
    /// With <paramref name="forced"/>, token i fed back is forced[i] whatever this run chose (teacher forcing).
    /// </summary>
    private static (List<float[]> Logits, int[] Tokens, List<(int Step, int Offset)> At) ForkedGreedy(IBackend backend, LoadedModel model, bool plan,
        int[]? forced = null)
    {
        int vocab = model.Config.VocabSize;
        var root = (KvSequence)backend.CreateCache();
        var forks = new List<KvSequence>();
        try
        {
            backend.Forward([new SequenceStep(root, Enumerable.Range(0, SharedPromptTokens).Select(i => (i * 37 + 5) % vocab).ToArray())]);
            var next = new int[SharedForks];
            var logits = new List<float[]>();
            var tokens = new List<int>();
            var at = new List<(int Step, int Offset)>();
            var own = new[] { 1, 5, 17, 33 };
            var batch = new List<SequenceStep>();
            for (int f = 0; f < SharedForks; f++)
            {
                forks.Add((KvSequence)root.Fork());
                batch.Add(new SequenceStep(forks[f], Enumerable.Range(0, own[f]).Select(i => (i * 53 + 7 * f + 3) % vocab).ToArray()));
            }
            for (int step = 0; batch.Count > 0; step++)
            {
                var output = backend.Forward(batch, plan ? AttentionPlanner.Build(batch) : null);
                logits.Add(output.SelectMany(o => o).ToArray());
                var live = new List<SequenceStep>();
                for (int i = 0, offset = 0; i < batch.Count; offset += output[i].Length, i++)
                {
                    int f = forks.IndexOf((KvSequence)batch[i].Cache);
                    int token = ArgMax(output[i].AsSpan(output[i].Length - vocab));
                    int fed = forced != null && tokens.Count < forced.Length ? forced[tokens.Count] : token; // forced: the other run's choice goes on
                    tokens.Add(token);
                    at.Add((step, offset + output[i].Length - vocab));
                    if (step < 4 + 2 * f) live.Add(new SequenceStep(forks[f], new[] { fed }));
                }
                batch = live;
            }
            return (logits, tokens.ToArray(), at);
        }
        finally
        {
            foreach (var f in forks) f.Dispose();
            root.Dispose();
        }
    }

    private sealed record SharedReport(string Device, double CopyBandwidthGBps, List<SharedPromptRow> SharedPrompt, List<PrefillRow> Prefill, string? Note);

    /// <summary>kernels-bench shared-gpu: the shared-prompt decode table, then the prefill rows; JSON after each. Exit 0, 1 on an error, 2 without CUDA.</summary>
    public static int RunShared(string? fatbinPath, string? jsonPath, int ordinal, bool quick)
    {
        if (GpuBench.Open(fatbinPath, ordinal) is not var (device, image)) return 2;
        using var owned = device;
        Console.WriteLine($"# device: {device}");
        var options = new CudaBackendOptions { Device = ordinal, KernelImage = image };
        double bw = GpuBench.CopyBandwidthGBps(device);
        var shared = new List<SharedPromptRow>();
        var prefills = new List<PrefillRow>();
        string? note = null;
        void Save()
        {
            if (jsonPath != null)
                File.WriteAllText(jsonPath, System.Text.Json.JsonSerializer.Serialize(new SharedReport(device.ToString(), bw, shared, prefills, note),
                    new System.Text.Json.JsonSerializerOptions { WriteIndented = true }));
        }
        int b = quick ? 16 : 64;
        Console.WriteLine($"\n## shared prompt on synthetic:llama3-8b: {b} sequences, a 4096-token prompt, 256 own tokens each; measured copy bandwidth {bw:F0} GB/s");
        try
        {
            SharedPrompt(options, bw, b, 4096, 256, quick ? 4 : 8, shared);
            Save();
            Console.WriteLine("\n## prefill of one 2048-token prompt");
            Prefill(options, prefills);
        }
        catch (Exception e) when (e is Kernels.Interop.CudaException or InvalidOperationException or NotSupportedException or KvCacheExhaustedException
                                      or Kernels.Interop.CublasException or DllNotFoundException or ArgumentException)
        {
            note = $"{e.GetType().Name}: {e.Message}";
            Console.WriteLine($"FAIL  {note}");
        }
        Save();
        return note == null ? 0 : 1;
    }

    private sealed record SharedPromptRow(string Case, int Batch, int Prompt, int Suffix, double StepMs, long BytesPerStep, double RooflineStepMs,
        double FractionOfRoofline, double SpeedupOverPrivate, string Kernels);
    private sealed record PrefillRow(string Kernels, int Tokens, double Ms, double TokensPerSecond, string Choices);

    /// <summary>
    /// 8B fp16: B sequences sharing a P-token prompt, each with S own tokens, decoding greedily on the device: with the
    /// AttentionPlanner levels (forks: the prompt's blocks held and read once) and without sharing (private copies, the
    /// per-sequence decode kernel).
    /// </summary>
    private static void SharedPrompt(CudaBackendOptions baseOptions, double bwGBps, int b, int p, int s, int steps, List<SharedPromptRow> rows)
    {
        const int Warmup = 2;
        using var model = SyntheticModels.Create("synthetic:llama3-8b");
        var config = model.Config;
        int bs = baseOptions.KvBlockSize;
        long blockBytes = CudaMemoryPlan.KvBlockBytes(config, bs, baseOptions.KvDType);
        long privateBlocks = (long)(b + 1) * ((p + s + Warmup + steps + bs - 1) / bs + 1);
        long weightBytes = model.Weights.All().Where(t => !ReferenceEquals(t, model.Weights.Embedding) || ReferenceEquals(t, model.Weights.LmHead)).Sum(t => t.ByteLength);
        using var backend = new CudaBackend(model, baseOptions with
        {
            KvCacheBytes = privateBlocks * blockBytes, MaxTokensPerStep = Math.Max(1024, b), TensorCoreAttention = true,
        });
        Console.WriteLine($"# {backend.KernelChoices}");
        var root = (KvSequence)backend.CreateCache();
        var ids = Enumerable.Range(0, p).Select(i => (i * 7919 + 11) % config.VocabSize).ToArray();
        backend.Forward([new SequenceStep(root, ids)]);
        double privateMs = double.NaN;
        foreach (bool shared in new[] { false, true })
        {
            var seqs = Enumerable.Range(0, b).Select(_ => shared ? (KvSequence)root.Fork() : root.Copy()).ToArray();
            try
            {
                backend.Forward(seqs.Select((q, i) => new SequenceStep(q, Enumerable.Range(0, s).Select(t => (t * 31 + i * 17 + 3) % config.VocabSize).ToArray())).ToArray());
                var next = Enumerable.Range(0, b).Select(i => (i * 13 + 1) % config.VocabSize).ToArray();
                double total = 0;
                long kvRead = 0;
                for (int step = 0; step < Warmup + steps; step++)
                {
                    var batch = seqs.Select((q, i) => new SequenceStep(q, new[] { next[i] }) { Choose = [TokenChoice.Greedy] }).ToArray();
                    var plan = shared ? AttentionPlanner.Build(batch) : null;
                    var timer = Stopwatch.StartNew();
                    var outputs = backend.Step(batch, plan);
                    if (step >= Warmup)
                    {
                        total += timer.Elapsed.TotalMilliseconds;
                        int sharedKeys = shared ? plan!.Levels.Sum(l => l.End - l.Start) : 0;
                        kvRead += (sharedKeys + seqs.Sum(q => (long)(q.Length + 1)) - (long)sharedKeys * b) * backend.KvBytesPerToken;
                    }
                    for (int i = 0; i < b; i++) next[i] = outputs[i].Tokens[0];
                }
                double stepMs = total / steps;
                long bytes = weightBytes + kvRead / steps;
                double roofMs = bytes / (bwGBps * 1e9) * 1e3;
                if (!shared) privateMs = stepMs;
                var row = new SharedPromptRow(shared ? "shared (Hydragen levels)" : "private copies (per sequence)", b, p, s, stepMs, bytes, roofMs, roofMs / stepMs,
                    shared ? privateMs / stepMs : 1, backend.KernelChoices);
                rows.Add(row);
                Console.WriteLine($"{row.Case,-30} B {b} P {p} S {s}: {stepMs,8:F2} ms/step  {bytes / 1e9,6:F2} GB/step  roofline {roofMs,7:F2} ms " +
                                  $"({row.FractionOfRoofline:P0})  {row.SpeedupOverPrivate:F2}x private");
            }
            finally
            {
                foreach (var q in seqs) q.Dispose();
            }
        }
        root.Dispose();
    }

    /// <summary>One 2048-token prompt's prefill (median of 3 after a warm-up) with the tensor-core and the CUDA-core attention.</summary>
    private static void Prefill(CudaBackendOptions baseOptions, List<PrefillRow> prefills)
    {
        const int Tokens = 2048;
        using var model = SyntheticModels.Create("synthetic:llama3-8b");
        int bs = baseOptions.KvBlockSize;
        long kvBytes = ((Tokens + bs - 1) / bs + 2) * CudaMemoryPlan.KvBlockBytes(model.Config, bs, baseOptions.KvDType);
        var prompt = Enumerable.Range(0, Tokens).Select(i => (i * 7919 + 11) % model.Config.VocabSize).ToArray();
        foreach (bool mma in new[] { true, false })
        {
            using var backend = new CudaBackend(model, baseOptions with { KvCacheBytes = kvBytes, MaxTokensPerStep = Tokens, TensorCoreAttention = mma });
            var times = new List<double>();
            for (int r = 0; r < 4; r++)
            {
                using var cache = backend.CreateCache();
                var timer = Stopwatch.StartNew();
                backend.Forward([new SequenceStep(cache, prompt)]);
                if (r > 0) times.Add(timer.Elapsed.TotalMilliseconds);
            }
            times.Sort();
            double ms = times[times.Count / 2];
            var row = new PrefillRow(mma ? "tensor-core attention" : "CUDA-core attention", Tokens, ms, Tokens / (ms / 1e3), backend.KernelChoices);
            prefills.Add(row);
            Console.WriteLine($"prefill {Tokens} tokens, {row.Kernels,-22}: {ms,8:F1} ms  {row.TokensPerSecond,9:F0} tok/s");
        }
    }
}
