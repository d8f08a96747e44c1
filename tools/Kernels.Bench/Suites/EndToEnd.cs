// kernels-bench e2e: the CUDA backend end to end on the GPU machine: logits parity with the CPU backend, a
// create/dispose leak check, and decode throughput on synthetic:llama3-8b against the bandwidth roofline.
// Exit codes: 0 every check passes (SKIPs included), 1 any FAIL, 2 CUDA or the kernels unavailable here.
using System.Diagnostics;
using System.Text.Json;
using Kernels.Interop;
using Kernels.Runtime.Backends;
using Kernels.Runtime.Backends.Cpu;
using Kernels.Runtime.Backends.Cuda;
using Kernels.Runtime.Models;
using Kernels.Runtime.Numerics;

namespace Kernels.Bench;

internal static partial class EndToEnd
{
    /// <summary>The issue's acceptance bound for fp16 math: max |logit diff| between the CUDA and CPU backends.</summary>
    private const double LogitTolerance = 2e-3;
    /// <summary>
    /// Models whose matrices stay BF16 on the GPU (values F16 cannot hold exactly): the tensor-core GEMM rounds x to
    /// bf16, whose unit roundoff is 8x f16's, so the fp16 bound is scaled by 8 (as verify's GEMM tolerances are).
    /// </summary>
    private const double Bf16LogitTolerance = 8 * LogitTolerance;
    /// <summary>
    /// W4A8 models: the int8 GEMM is bit-exact given the same int8 rows, but the rows come from the GPU's RMSNorm, whose
    /// sum of squares rounds differently, so a code can differ by one (a change of s_x s_w in that product); 10x the fp16 bound.
    /// </summary>
    private const double W4A8LogitTolerance = 10 * LogitTolerance;
    /// <summary>
    /// KIVI caches, as a factor on the model's own bound: the quantizer is bit-exact given the same fp16 rows, but the
    /// rows come from the GPU's projections (another summation order; bf16-rounded inputs for BF16 matrices), so an
    /// element within that difference of a code's rounding boundary moves by a whole quantization step s: a fraction
    /// ~delta/s of the elements by s, which raises the RMS error by ~sqrt(s/delta) over the same path unquantized.
    /// Measured on the emulation, synthetic:mini (BF16 matrices): fp16 KV 3.1e-3, KIVI with nothing quantized (R 480)
    /// 3.7e-3, kivi4 6.5e-3 (prefill quantized before a step or inside it alike), kivi2 1.2e-2 x max|logit|; the CPU's
    /// own kivi2/kivi4 vs fp16 difference there is 9e-2 / 1.8e-2. So 3x the model's bound.
    /// </summary>
    private const double KiviToleranceFactor = 3;
    private const int PromptTokens = 12, GreedyTokens = 16;
    private const long LeakToleranceBytes = 16L << 20;

    /// <summary>MaxAbsLogitDiff must be at most Tolerance x LogitScale (max |CPU logit| of the rows compared, at least 1), as verify judges kernels against max|ref|.</summary>
    private sealed record ParityResult(string Model, string KvDType, string Status, double MaxAbsLogitDiff, double Tolerance, bool GreedyEqual,
        int[] CpuTokens, int[] CudaTokens, string? Note, double LogitScale = 1);
    private sealed record LeakResult(int Iterations, long FreeBefore, long FreeAfter, long Difference, long Tolerance, bool Pass, string? Error);
    private sealed record ThroughputRow(int Batch, int Context, int Steps, double StepMs, double TokensPerSecond, long BytesPerStep,
        double RooflineStepMs, double FractionOfRoofline, double SpeedupOverBatch1, string Kernels = "default");
    /// <summary>A decode step through the engine (scheduler, staging, launches, choosing) against the GPU's time in it (CUDA events).</summary>
    private sealed record HostOverhead(int Batch, int Context, long Steps, double StepMs, double GpuMs, double HostMs, double HostFraction);
    private sealed record Report(string Device, string Fatbin, double CopyBandwidthGBps, List<ParityResult> Parity, LeakResult? Leak,
        string ThroughputModel, string? ThroughputNote, List<ThroughputRow> Throughput, HostOverhead? Host, bool Pass,
        List<KiviCapacityRow>? KiviCapacity = null);

    public static int Run(string? fatbinPath, string? jsonPath, int ordinal, bool quick)
    {
        if (GpuBench.Open(fatbinPath, ordinal) is not var (device, image)) return 2;
        using var owned = device;
        Console.WriteLine($"# device: {device}");
        var options = new CudaBackendOptions { Device = ordinal, KernelImage = image };
        bool pass = true;

        // ---- (a) parity ------------------------------------------------------------------------------------------
        var parity = new List<ParityResult>();
        var models = new List<(string Name, string? Path)>();
        string? golden = FindGolden();
        foreach (string g in new[] { "tiny-llama-f32", "tiny-llama-bf16", "tiny-qwen2-f16" })
            models.Add((g, golden == null ? null : Path.Combine(golden, g)));
        models.Add(("stories260K", HostInfo.FindShared("models/stories260K/stories260K.gguf")));
        models.Add(("synthetic:small", "synthetic:small"));
        models.Add(("synthetic:small w4a8", QuantizedModel("synthetic:small", Kernels.Runtime.Quantization.W4A8.W4A8Method.MethodName)));
        models.Add(("synthetic:tiny squeezellm", QuantizedModel("synthetic:tiny", Kernels.Runtime.Quantization.SqueezeLlm.SqueezeLlmMethod.MethodName)));
        if (golden != null) // W4A8 with q/k/v biases (Qwen2): bias_add_f32 after the int8 GEMM
            models.Add(("tiny-qwen2-f16 w4a8", QuantizedModel(Path.Combine(golden, "tiny-qwen2-f16"), Kernels.Runtime.Quantization.W4A8.W4A8Method.MethodName)));
        Console.WriteLine($"\n## parity: CUDA vs CPU logits (prompt {PromptTokens} tokens, all positions; then {GreedyTokens} greedy steps), tolerance {LogitTolerance} (f16 matrices), {Bf16LogitTolerance} (bf16 matrices) x max|logit| (at least 1)");
        foreach (var (name, path) in models)
        {
            // F16 KV with and without CUDA graphs for the decode steps (a graph failure then shows apart from a kernel's).
            // And the new paths (CudaBackendOptions.UseCublasLt, TiledDecodeAttention, RadixSampling, TensorCoreAttention for
            // the prompt, W4A8SplitK), graphs on.
            foreach (var (kvType, graphs, lt) in new[] { (TensorDType.F16, true, false), (TensorDType.F16, false, false), (TensorDType.F32, true, false), (TensorDType.F16, true, true) })
            {
                var r = Parity((graphs ? name : name + " nographs") + (lt ? " cublaslt+tiled" : ""), path,
                    options with
                    {
                        KvDType = kvType, KvCacheBytes = 256L << 20, MaxTokensPerStep = 64, UseCudaGraphs = graphs,
                        UseCublasLt = lt, TiledDecodeAttention = lt, RadixSampling = lt, // explicit either way: a tuning table does not move "default"
                        TensorCoreAttention = lt, W4A8SplitK = lt,
                    });
                parity.Add(r);
                if (r.Status == "FAIL") pass = false;
                Console.WriteLine($"{r.Status,-5} {r.Model,-27} KV {r.KvDType,-4} max|diff| {r.MaxAbsLogitDiff:E2} = {r.MaxAbsLogitDiff / r.LogitScale:E2} x max|logit| {r.LogitScale:F1} greedy {(r.GreedyEqual ? "equal" : "DIFFERENT")}{(r.Note != null ? $"  ({r.Note})" : "")}");
            }
        }

        // ---- (a'') KIVI: the same format on both sides, blocks compacted before steps and inside a prefill ------------
        Console.WriteLine($"\n## parity with a KIVI cache (G 32, R 16; CPU in the same format): prompt {KiviPromptTokens} tokens, {KiviGreedyTokens} greedy steps");
        foreach (var (name, path) in new[] { ("synthetic:mini", "synthetic:mini"), ("synthetic:small", "synthetic:small") })
            foreach (var (kind, rowsPerStep) in new[] { (Kernels.Runtime.KvCache.KvCacheKind.Kivi2, 32), (Kernels.Runtime.KvCache.KvCacheKind.Kivi4, 128) })
            {
                var kivi = new Kernels.Runtime.KvCache.KvCacheFormat { Kind = kind, Group = 32, Window = 16 };
                var r = Parity($"{name} {kivi}, {rowsPerStep}-row steps", path,
                    options with { Kivi = kivi, KvCacheBytes = 256L << 20, MaxTokensPerStep = rowsPerStep, TiledDecodeAttention = kind == Kernels.Runtime.KvCache.KvCacheKind.Kivi4 },
                    KiviPromptTokens, KiviGreedyTokens);
                parity.Add(r);
                if (r.Status == "FAIL") pass = false;
                Console.WriteLine($"{r.Status,-5} {r.Model,-40} max|diff| {r.MaxAbsLogitDiff:E2} = {r.MaxAbsLogitDiff / r.LogitScale:E2} x max|logit| {r.LogitScale:F1} greedy {(r.GreedyEqual ? "equal" : "DIFFERENT")}{(r.Note != null ? $"  ({r.Note})" : "")}");
            }

        // ---- (a') shared prefixes: Hydragen levels through the tensor-core attention (EndToEnd.Hydragen.cs) ----------
        Console.WriteLine($"\n## parity with shared prefixes: a {SharedPromptTokens}-token prompt forked {SharedForks} ways, finishing at different steps; " +
                          "GPU levels vs CPU with the same plan (logits) and vs the GPU without levels (tokens)");
        foreach (var (name, path) in models.Where(m => !m.Name.Contains(' ')).Append(("synthetic:mini", "synthetic:mini")))
        {
            var r = HydragenParity(name + " hydragen", path, options with { KvDType = TensorDType.F16, KvCacheBytes = 256L << 20, MaxTokensPerStep = 64 });
            parity.Add(r);
            if (r.Status == "FAIL") pass = false;
            Console.WriteLine($"{r.Status,-5} {r.Model,-27} max|diff| {r.MaxAbsLogitDiff:E2} = {r.MaxAbsLogitDiff / r.LogitScale:E2} x max|logit| {r.LogitScale:F1} greedy {(r.GreedyEqual ? "equal" : "DIFFERENT")}{(r.Note != null ? $"  ({r.Note})" : "")}");
        }

        // ---- (b) leak check --------------------------------------------------------------------------------------
        Console.WriteLine("\n## leak: create + one step + dispose a CudaBackend 20 times on synthetic:small");
        var leak = Leak(device, options with { KvCacheBytes = 256L << 20, MaxTokensPerStep = 64 }, quick ? 5 : 20);
        pass &= leak.Pass;
        Console.WriteLine($"{(leak.Pass ? "PASS" : "FAIL")}  free before {leak.FreeBefore:N0} B, after {leak.FreeAfter:N0} B, difference {leak.Difference:N0} B (tolerance {leak.Tolerance:N0}){(leak.Error != null ? $"  error: {leak.Error}" : "")}");

        // ---- (c) throughput --------------------------------------------------------------------------------------
        double bw = GpuBench.CopyBandwidthGBps(device);
        Console.WriteLine($"\n## decode throughput on synthetic:llama3-8b, context 1024; measured copy bandwidth {bw:F0} GB/s (read + write)");
        var rows = new List<ThroughputRow>();
        string? note = null;
        HostOverhead? host = null;
        List<KiviCapacityRow>? kiviRows = null;
        // Written now and again after each throughput table: a run cut short by its time limit keeps what it measured.
        void Save(bool final)
        {
            if (jsonPath == null) return;
            var partial = new Report(device.ToString(), fatbinPath ?? "embedded", bw, parity, leak, "synthetic:llama3-8b",
                final ? note : note ?? "partial: the throughput section had not finished", rows, host, pass, kiviRows);
            File.WriteAllText(jsonPath, JsonSerializer.Serialize(partial, new JsonSerializerOptions
            {
                WriteIndented = true,
                NumberHandling = System.Text.Json.Serialization.JsonNumberHandling.AllowNamedFloatingPointLiterals, // NaN of skipped rows
            }));
        }
        Save(false);
        try
        {
            Throughput(options, quick ? [1, 16] : [1, 16, 64, 256], quick ? 4 : 16, 1024, bw, rows, h => host = h, quick, () => Save(false));
        }
        catch (Exception e) when (e is CudaException or InvalidOperationException or NotSupportedException or Kernels.Runtime.KvCache.KvCacheExhaustedException
                                      or CublasException or DllNotFoundException)
        {
            note = $"{e.GetType().Name}: {e.Message}";
            Console.WriteLine($"FAIL  throughput: {note}");
            pass = false;
        }
        Save(false);

        // ---- (d) KIVI capacity: sequences in flight and tokens/s at one KV budget, 32K context (issue 18) -----------
        // After the fp16 decode tables: a run cut short by its time limit loses this section first.
        var (free, _) = device.GetMemoryInfo();
        long budget = Math.Min(32L << 30, (free - (24L << 30)) / (1L << 30) * (1L << 30)); // 8B fp16 weights + scratch beside it
        Console.WriteLine($"\n## KIVI capacity: synthetic:llama3-8b-32k, KV budget {budget / (double)(1L << 30):F0} GiB, context 32768, all sequences that fit decoding");
        try
        {
            if (budget < (8L << 30)) throw new InvalidOperationException($"{free / (double)(1L << 30):F1} GiB free: too little for the 8B weights and an 8 GiB KV budget");
            kiviRows = KiviCapacity(options, budget, 32768, quick ? 4 : 16, 256);
        }
        catch (Exception e) when (e is CudaException or InvalidOperationException or NotSupportedException or Kernels.Runtime.KvCache.KvCacheExhaustedException)
        {
            Console.WriteLine($"FAIL  KIVI capacity: {e.GetType().Name}: {e.Message}");
            pass = false;
        }
        Save(true);
        if (jsonPath != null) Console.WriteLine($"\nwrote {jsonPath}");
        Console.WriteLine(pass ? "e2e: PASS" : "e2e: FAIL");
        return pass ? 0 : 1;
    }

    private static string? FindGolden()
    {
        foreach (string start in new[] { AppContext.BaseDirectory, Directory.GetCurrentDirectory() })
            for (var dir = new DirectoryInfo(start); dir != null; dir = dir.Parent)
            {
                foreach (string c in new[] { Path.Combine(dir.FullName, "Golden"), Path.Combine(dir.FullName, "tests", "Kernels.Tests", "Golden") })
                    if (Directory.Exists(c)) return c;
            }
        return null;
    }

    // ---- parity -----------------------------------------------------------------------------------------------------

    /// <summary>
    /// The CUDA backend against the CPU backend on one model: logits of a prompt of <paramref name="promptTokens"/> and of
    /// <paramref name="greedyTokens"/> greedy steps, greedy texts, and the same greedy sampled on the device. A KIVI
    /// cache (options.Kivi) runs on both sides (the CPU in the same format).
    /// </summary>
    private static ParityResult Parity(string name, string? path, CudaBackendOptions options, int promptTokens = PromptTokens, int greedyTokens = GreedyTokens)
    {
        string kv = options.Kivi?.ToString() ?? options.KvDType.Name();
        if (path == null || (!SyntheticModels.IsSynthetic(path) && !File.Exists(path) && !Directory.Exists(path)))
            return new ParityResult(name, kv, "SKIP", double.NaN, LogitTolerance, false, [], [], "model files not found");
        try
        {
            using var model = ModelLoader.Load(path);
            if ((CudaBackend.WhyUnsupported(model) ?? CudaBackend.WhyUnsupported(model.Config, options.Kivi, options.KvDType)) is { } why)
                return new ParityResult(name, kv, "SKIP", double.NaN, LogitTolerance, false, [], [], why);
            var prompt = Enumerable.Range(0, promptTokens).Select(i => (i * 37 + 5) % model.Config.VocabSize).ToArray();
            using var cpu = new CpuBackend(model, options.Kivi is { } kivi ? new CpuBackendOptions { KvCache = kivi } : null);
            using var cuda = new CudaBackend(model, options);
            var (cpuLogits, cpuTokens) = Greedy(cpu, prompt, greedyTokens);
            var (cudaLogits, cudaTokens) = Greedy(cuda, prompt, greedyTokens);
            var deviceTokens = DeviceGreedy(cuda, prompt, greedyTokens);
            double max = 0, scale = 1;
            // Logits are compared while both continuations agree: call i saw token i - 1, so it is compared only when the
            // tokens before it are the same on both sides (after a divergence the inputs differ).
            int compared = 0;
            for (int i = 0; i < Math.Min(cpuLogits.Count, cudaLogits.Count); i++)
            {
                if (i > 0 && cpuTokens[i - 1] != cudaTokens[i - 1]) break;
                for (int j = 0; j < cpuLogits[i].Length; j++)
                {
                    double d = Math.Abs(cpuLogits[i][j] - cudaLogits[i][j]);
                    if (!(d <= max)) max = double.IsNaN(d) ? double.PositiveInfinity : d;
                    scale = Math.Max(scale, Math.Abs(cpuLogits[i][j]));
                }
                compared = i + 1;
            }
            bool deviceEqual = deviceTokens.SequenceEqual(cudaTokens);
            double tolerance = (model.Weights.Layers[0].Wq is Kernels.Runtime.Quantization.W4A8.W4A8Linear ? W4A8LogitTolerance
                : cuda.WeightFormats.Contains("BF16", StringComparison.Ordinal) ? Bf16LogitTolerance : LogitTolerance)
                * (options.Kivi is { IsKivi: true } ? KiviToleranceFactor : 1);
            // Greedy texts agree, or part at a near tie: at the first differing step the CPU's own logits of the two
            // tokens are within the logit tolerance (a difference of rounding may pick either; after it the texts differ).
            int step = Enumerable.Range(0, greedyTokens).FirstOrDefault(i => cpuTokens[i] != cudaTokens[i], -1);
            string? tie = null;
            if (step >= 0 && step < cpuLogits.Count)
            {
                var row = cpuLogits[step].AsSpan(cpuLogits[step].Length - model.Config.VocabSize);
                double margin = row[cpuTokens[step]] - row[cudaTokens[step]];
                if (margin <= tolerance * scale) tie = $"greedy parts at step {step} on a near tie (CPU logits of the two tokens {margin:E2} apart, within the tolerance)";
            }
            bool equal = (step < 0 || tie != null) && deviceEqual;
            string status = max <= tolerance * scale && equal ? "PASS" : "FAIL";
            string sampled = (deviceEqual ? "greedy sampled on the device: the same tokens"
                : $"greedy sampled on the device DIFFERS: {string.Join(' ', deviceTokens)}") + (tie != null ? "; " + tie : "") +
                $"; logits compared over {compared} calls";
            if (status == "FAIL")
            {
                // Where it starts: max |diff| per prompt position (the first call's rows), then per decode step.
                int vocab = model.Config.VocabSize;
                var perRow = Enumerable.Range(0, cpuLogits[0].Length / vocab).Select(r =>
                    Enumerable.Range(0, vocab).Max(j => Math.Abs(cpuLogits[0][r * vocab + j] - cudaLogits[0][r * vocab + j])));
                var perStep = Enumerable.Range(1, Math.Max(0, compared - 1)).Select(i =>
                    Enumerable.Range(0, vocab).Max(j => Math.Abs(cpuLogits[i][j] - cudaLogits[i][j])));
                sampled += $"; max|diff| by prompt position: {string.Join(' ', perRow.Select(d => d.ToString("E1")))}; by decode step: " +
                           string.Join(' ', perStep.Select(d => d.ToString("E1")));
            }
            return new ParityResult(name, kv, status, max, tolerance, equal, cpuTokens, cudaTokens, $"{cuda.WeightFormats}; {cuda.GraphStatus}; {sampled}", scale);
        }
        catch (Exception e) when (e is CudaException or InvalidOperationException or NotSupportedException or ArgumentException or ModelFormatException
                                       or CublasException or DllNotFoundException)
        {
            return new ParityResult(name, kv, "FAIL", double.NaN, LogitTolerance, false, [], [], $"{e.GetType().Name}: {e.Message}");
        }
    }

    /// <summary>A synthetic model quantized by <paramref name="method"/> (its defaults) into a temporary directory, once per machine.</summary>
    private static string? QuantizedModel(string model, string method)
    {
        if (!SyntheticModels.IsSynthetic(model) && !Directory.Exists(model) && !File.Exists(model)) return null;
        string dir = Path.Combine(Path.GetTempPath(), $"kernels-e2e-{Path.GetFileName(model.TrimEnd('/')).Replace(':', '-')}-{method}");
        if (File.Exists(Path.Combine(dir, "config.json"))) return dir;
        try
        {
            using var dense = SyntheticModels.IsSynthetic(model) ? SyntheticModels.Create(model) : ModelLoader.Load(model);
            var quantization = Kernels.Runtime.Quantization.QuantizationMethods.Find(method, "e2e");
            var options = new Kernels.Runtime.Quantization.QuantizeOptions { Method = method };
            HfModelWriter.Write(dense, dir, quantization.CreateQuantizer(options, dense, new Kernels.Runtime.Calibration.CpuCalibrationRunner()));
            return dir;
        }
        catch (Exception e) when (e is IOException or InvalidOperationException or NotSupportedException)
        {
            Console.WriteLine($"# {model} {method} not made: {e.Message}");
            return null;
        }
    }

    /// <summary>Prefill with every position's logits, then greedy steps: the logits of each call and the chosen tokens.</summary>
    private static (List<float[]> Logits, int[] Tokens) Greedy(IBackend backend, int[] prompt, int greedyTokens = GreedyTokens)
    {
        using var cache = backend.CreateCache();
        var logits = new List<float[]>();
        var tokens = new int[greedyTokens];
        var last = backend.Forward([new SequenceStep(cache, prompt, AllLogits: true)])[0];
        logits.Add(last);
        int vocab = backend.Config.VocabSize;
        var row = last.AsSpan(last.Length - vocab);
        for (int i = 0; i < greedyTokens; i++)
        {
            tokens[i] = ArgMax(row);
            if (i == greedyTokens - 1) break;
            var next = backend.Forward([new SequenceStep(cache, new[] { tokens[i] })])[0];
            logits.Add(next);
            row = next;
        }
        return (logits, tokens);
    }

    /// <summary>The same greedy continuation through IBackend.Step: the tokens are chosen by sample_tokens_f32 on the device.</summary>
    private static int[] DeviceGreedy(IBackend backend, int[] prompt, int greedyTokens = GreedyTokens)
    {
        using var cache = backend.CreateCache();
        var tokens = new int[greedyTokens];
        var step = new SequenceStep(cache, prompt) { Choose = [TokenChoice.Greedy] };
        for (int i = 0; i < greedyTokens; i++)
        {
            tokens[i] = backend.Step([step])[0].Tokens[0];
            step = new SequenceStep(cache, new[] { tokens[i] }) { Choose = [TokenChoice.Greedy] };
        }
        return tokens;
    }

    private static int ArgMax(ReadOnlySpan<float> row)
    {
        int best = 0;
        for (int i = 1; i < row.Length; i++) if (row[i] > row[best]) best = i;
        return best;
    }

    // ---- leak -------------------------------------------------------------------------------------------------------

    private static LeakResult Leak(CudaDevice device, CudaBackendOptions options, int iterations)
    {
        using var model = SyntheticModels.Create("synthetic:small");
        try
        {
            // One warm-up instance first: the module's first load and the driver's lazy pools are not a leak.
            RunOnce(model, options);
            device.Synchronize();
            long before = device.GetMemoryInfo().Free;
            for (int i = 0; i < iterations; i++) RunOnce(model, options);
            GC.Collect();
            GC.WaitForPendingFinalizers();
            device.Synchronize();
            long after = device.GetMemoryInfo().Free;
            long diff = before - after;
            return new LeakResult(iterations, before, after, diff, LeakToleranceBytes, diff <= LeakToleranceBytes, null);
        }
        catch (Exception e) when (e is CudaException or InvalidOperationException or NotSupportedException)
        {
            return new LeakResult(iterations, 0, 0, 0, LeakToleranceBytes, false, $"{e.GetType().Name}: {e.Message}");
        }
    }

    private static void RunOnce(LoadedModel model, CudaBackendOptions options)
    {
        using var backend = new CudaBackend(model, options);
        using var cache = backend.CreateCache();
        backend.Forward([new SequenceStep(cache, new[] { 1, 2, 3, 4 })]);
    }

    // ---- throughput -------------------------------------------------------------------------------------------------

    /// <summary>
    /// The decode table with the default kernels, then with the new paths (cuBLASLt GEMMs and tiled decode attention:
    /// CudaBackendOptions.UseCublasLt, TiledDecodeAttention); the host's share of a step is measured with the first. A
    /// failure of the new paths propagates after the first rows are in.
    /// </summary>
    private static void Throughput(CudaBackendOptions baseOptions, int[] batches, int steps, int context, double bwGBps, List<ThroughputRow> rows,
        Action<HostOverhead> host, bool quick, Action tableDone)
    {
        const int Warmup = 3;
        int maxBatch = batches.Max();
        var started = Stopwatch.StartNew();
        using var model = SyntheticModels.Create("synthetic:llama3-8b");
        Console.WriteLine($"# model generated in {started.Elapsed.TotalSeconds:F1} s");
        var config = model.Config;
        int bs = baseOptions.KvBlockSize;
        int blocksPerSeq = (context + Warmup + steps + bs - 1) / bs + 1;
        long kvBytes = (maxBatch + 1L) * blocksPerSeq * CudaMemoryPlan.KvBlockBytes(config, bs, baseOptions.KvDType);
        foreach (bool lt in new[] { false, true })
        {
            started.Restart();
            using var backend = new CudaBackend(model, baseOptions with
            {
                KvCacheBytes = kvBytes, MaxTokensPerStep = Math.Max(256, maxBatch), UseCublasLt = lt, TiledDecodeAttention = lt, RadixSampling = lt,
            });
            string kernels = lt ? "cuBLASLt + tiled attention" : "default";
            Console.WriteLine($"# kernels: {kernels}; backend ready in {started.Elapsed.TotalSeconds:F1} s: {backend}");
            DecodeTable(backend, model, batches, steps, context, bwGBps, rows, kernels);
            if (!lt) host(EngineHostOverhead(backend, model, context, steps));
            tableDone();
        }

        // The quantized formats at the same shape (issue 18's tables: W4A8 vs fp16 at every batch, SqueezeLLM at batch
        // 1), random but valid stored tensors (SyntheticQuantizedModels), the default kernels otherwise.
        var quantized = new (string Label, Func<LoadedModel> Make, int[] Batches, bool SplitK)[]
        {
            ("W4A8 g128 weights", () => Kernels.Runtime.Quantization.SyntheticQuantizedModels.W4A8("synthetic:llama3-8b"), quick ? [1] : batches, false),
            ("W4A8 g128, split-K GEMM", () => Kernels.Runtime.Quantization.SyntheticQuantizedModels.W4A8("synthetic:llama3-8b"), quick ? [1] : [1, 16], true),
            ("SqueezeLLM 4-bit weights", () => Kernels.Runtime.Quantization.SyntheticQuantizedModels.SqueezeLlm("synthetic:llama3-8b", 4), [1], false),
            ("SqueezeLLM 3-bit weights", () => Kernels.Runtime.Quantization.SyntheticQuantizedModels.SqueezeLlm("synthetic:llama3-8b", 3), [1], false),
        };
        if (quick) quantized = quantized[..2]; // a first look: W4A8 at batch 1 only, both decode GEMMs
        foreach (var (label, make, qBatches, splitK) in quantized)
        {
            started.Restart();
            using var qModel = make();
            using var backend = new CudaBackend(qModel, baseOptions with
            {
                KvCacheBytes = kvBytes, MaxTokensPerStep = Math.Max(256, maxBatch), UseCublasLt = false, TiledDecodeAttention = false, RadixSampling = false,
                W4A8SplitK = splitK,
            });
            Console.WriteLine($"# {label}: model and backend ready in {started.Elapsed.TotalSeconds:F1} s: {backend}");
            DecodeTable(backend, qModel, qBatches, steps, context, bwGBps, rows, label);
            tableDone();
        }
    }

    private static void DecodeTable(CudaBackend backend, LoadedModel model, int[] batches, int steps, int context, double bwGBps, List<ThroughputRow> rows, string gemm)
    {
        const int Warmup = 3;

        using var prompt = Prompt(backend, context);

        // Bytes one decode step must move: every matrix once (the embedding gathers only B rows) plus each sequence's keys and values.
        long weightBytes = model.Weights.All().Where(t => !ReferenceEquals(t, model.Weights.Embedding) || ReferenceEquals(t, model.Weights.LmHead)).Sum(t => t.ByteLength);
        double batch1 = 0;
        foreach (int b in batches)
        {
            using var batch = new DecodeBatch(backend, prompt, b);
            var seqs = batch.Sequences;
            for (int w = 0; w < Warmup; w++) batch.Step();
            long kvRead = 0;
            var timer = Stopwatch.StartNew();
            for (int i = 0; i < steps; i++)
            {
                kvRead += seqs.Sum(q => (long)(q.Length + 1)) * backend.KvBytesPerToken;
                batch.Step();
            }
            double stepMs = timer.Elapsed.TotalMilliseconds / steps;
            long bytes = weightBytes + kvRead / steps;
            double rooflineMs = bytes / (bwGBps * 1e9) * 1e3;
            double tps = b / (stepMs / 1e3);
            if (b == 1) batch1 = tps;
            var row = new ThroughputRow(b, context, steps, stepMs, tps, bytes, rooflineMs, rooflineMs / stepMs, batch1 > 0 ? tps / batch1 : double.NaN, gemm);
            rows.Add(row);
            Console.WriteLine($"{gemm,-26} batch {b,4}: {stepMs,8:F2} ms/step  {tps,9:F1} tok/s  {bytes / 1e9,6:F2} GB/step  roofline {rooflineMs,7:F2} ms  " +
                              $"{row.FractionOfRoofline:P0} of roofline  {row.SpeedupOverBatch1:F1}x batch 1");
        }
        Console.WriteLine($"# {backend.GraphStatus}");
    }

    /// <summary>
    /// One request at batch 1 through the engine's scheduler (the prompt prefilled, then greedy decode steps): wall time
    /// per step against the GPU's time per step; the difference is the host's share (issue 16: at most 5 %).
    /// </summary>
    private static HostOverhead EngineHostOverhead(CudaBackend backend, LoadedModel model, int context, int steps)
    {
        const int Warmup = 3;
        var generator = new Kernels.Runtime.Engine.Generator(backend, model.Tokenizer);
        var ids = Enumerable.Range(0, context).Select(i => (i * 7919 + 11) % backend.Config.VocabSize).ToArray();
        var request = new Kernels.Runtime.Engine.GenerationRequest { PromptIds = ids, MaxNewTokens = 1 + Warmup + steps, IgnoreEos = true };
        var timer = new Stopwatch();
        (long Steps, double GpuMilliseconds) start = default, end = default;
        int tokens = 0;
        foreach (var e in generator.Run([request]))
        {
            if (e.Token == null) continue;
            tokens++;
            if (tokens == 1 + Warmup)
            {
                start = backend.GpuTime;
                timer.Start();
            }
            else if (tokens == 1 + Warmup + steps)
            {
                timer.Stop();
                end = backend.GpuTime;
            }
        }
        long n = end.Steps - start.Steps;
        double stepMs = timer.Elapsed.TotalMilliseconds / steps, gpuMs = (end.GpuMilliseconds - start.GpuMilliseconds) / Math.Max(1, n);
        var result = new HostOverhead(1, context, n, stepMs, gpuMs, stepMs - gpuMs, (stepMs - gpuMs) / stepMs);
        Console.WriteLine($"engine, batch 1, context {context}: {stepMs:F3} ms/step, GPU {gpuMs:F3} ms of it, host {result.HostMs:F3} ms = {result.HostFraction:P1} " +
                          $"({n} steps; the target is <= 5 %)");
        return result;
    }

    /// <summary>A <paramref name="context"/>-token prompt prefilled once (its blocks are copied per sequence).</summary>
    private static Kernels.Runtime.KvCache.KvSequence Prompt(CudaBackend backend, int context)
    {
        var prompt = (Kernels.Runtime.KvCache.KvSequence)backend.CreateCache();
        var ids = Enumerable.Range(0, context).Select(i => (i * 7919 + 11) % backend.Config.VocabSize).ToArray();
        backend.Forward([new SequenceStep(prompt, ids)]);
        return prompt;
    }

    /// <summary>
    /// B sequences decoding greedily, each a private copy of the prompt's blocks (distinct memory, as B real sequences
    /// would read, so no KV read is served from L2 thanks to sharing): a step is what the engine runs, tokens chosen
    /// on the device and fed back.
    /// </summary>
    private sealed class DecodeBatch : IDisposable
    {
        private readonly IBackend _backend;
        private readonly SequenceStep[] _step;
        private readonly int[] _next;
        public readonly Kernels.Runtime.KvCache.KvSequence[] Sequences;

        /// <summary>Decodes the given sequences (owned from here: disposed with the batch).</summary>
        public DecodeBatch(IBackend backend, Kernels.Runtime.KvCache.KvSequence[] sequences)
        {
            _backend = backend;
            Sequences = sequences;
            _step = new SequenceStep[sequences.Length];
            _next = Enumerable.Range(0, sequences.Length).Select(s => (s * 31) % backend.Config.VocabSize).ToArray();
        }

        public DecodeBatch(IBackend backend, Kernels.Runtime.KvCache.KvSequence prompt, int b)
        {
            _backend = backend;
            Sequences = Enumerable.Range(0, b).Select(_ => prompt.Copy()).ToArray();
            _step = new SequenceStep[b];
            _next = Enumerable.Range(0, b).Select(s => (s * 31) % backend.Config.VocabSize).ToArray();
        }

        public void Step()
        {
            for (int s = 0; s < _step.Length; s++) _step[s] = new SequenceStep(Sequences[s], new[] { _next[s] }) { Choose = [TokenChoice.Greedy] };
            var outputs = _backend.Step(_step);
            for (int s = 0; s < _step.Length; s++) _next[s] = outputs[s].Tokens[0];
        }

        public void Dispose()
        {
            foreach (var s in Sequences) s.Dispose();
        }
    }

    // ---- one decode step for a profiler -----------------------------------------------------------------------------

    /// <summary>
    /// kernels-bench gpu-step: <paramref name="steps"/> decode steps of synthetic:llama3-8b at batch B and context C,
    /// without CUDA graphs (each kernel its own launch), bracketed by cuProfilerStart/Stop so that
    /// <c>ncu --profile-from-start off</c> records exactly those steps' kernels (the prompt's prefill and the warm-up
    /// step are outside). Prints each step's wall time. Exit 2 without CUDA.
    /// </summary>
    public static int ProfileSteps(string? fatbinPath, int ordinal, int b, int context, int steps)
    {
        if (GpuBench.Open(fatbinPath, ordinal) is not var (device, image)) return 2;
        using var owned = device;
        using var model = SyntheticModels.Create("synthetic:llama3-8b");
        var config = model.Config;
        var baseOptions = new CudaBackendOptions { Device = ordinal, KernelImage = image, UseCudaGraphs = false };
        int bs = baseOptions.KvBlockSize;
        long kvBytes = (b + 1L) * ((context + steps + 2 + bs - 1) / bs + 1) * CudaMemoryPlan.KvBlockBytes(config, bs, baseOptions.KvDType);
        using var backend = new CudaBackend(model, baseOptions with { KvCacheBytes = kvBytes, MaxTokensPerStep = Math.Max(256, b) });
        using var prompt = Prompt(backend, context);
        using var batch = new DecodeBatch(backend, prompt, b);
        batch.Step(); // warm-up: lazy module loads, first launches
        device.Synchronize();
        Cu.Check(CuApi.cuProfilerStart(), ordinal);
        for (int i = 0; i < steps; i++)
        {
            var timer = Stopwatch.StartNew();
            batch.Step();
            Console.WriteLine($"decode step {i}: batch {b}, context {context}: {timer.Elapsed.TotalMilliseconds:F2} ms (no graph)");
        }
        device.Synchronize();
        Cu.Check(CuApi.cuProfilerStop(), ordinal);
        return 0;
    }
}
