// kernels-bench e2e-emulated: the CUDA backend end to end on the CPU emulation of the driver
// (tests/kernels-emu/driver: LD_LIBRARY_PATH pointing at its libcuda.so.1), on models small enough for it: logits and
// greedy parity with the CPU backend for each kernel path (the defaults; tensor-core attention, tiled decode, radix
// sampling; W4A8 with the split-K GEMM; SqueezeLLM), and the shared-prefix parity (Hydragen levels vs the CPU's plan). It checks
// the host side of the GPU engine (launch plans, argument order, scratch layout, work items, graphs) and the kernels
// as the emulation runs them, with no GPU; timings mean nothing here. Exit 0 all PASS, 1 any FAIL, 2 no (emulated)
// driver.
using Kernels.Interop;
using Kernels.Runtime.Backends.Cuda;
using Kernels.Runtime.Models;
using Kernels.Runtime.Numerics;

namespace Kernels.Bench;

internal static partial class EndToEnd
{
    /// <summary>The KIVI parity's prompt and greedy steps: long enough for blocks of 32 to leave a window of 16.</summary>
    private const int KiviPromptTokens = 70, KiviGreedyTokens = 20;

    public static int RunEmulated(string? only)
    {
        if (CudaDevice.WhyUnavailable(0) is { } why)
        {
            Console.WriteLine($"no CUDA driver: {why} (run with LD_LIBRARY_PATH at tests/kernels-emu/driver's libcuda.so.1)");
            return 2;
        }
        using (var device = CudaDevice.Open(0))
            Console.WriteLine($"# device: {device}");
        var options = new CudaBackendOptions
        {
            KvCacheBytes = 8L << 20, MaxTokensPerStep = 32, UseCublasLt = false, KvDType = TensorDType.F16,
        };
        var variants = new (string Name, CudaBackendOptions Options)[]
        {
            ("default kernels", options with { TiledDecodeAttention = false, RadixSampling = false, TensorCoreAttention = false, W4A8SplitK = false }),
            ("default kernels, split-K W4A8", options with { TiledDecodeAttention = false, RadixSampling = false, TensorCoreAttention = false, W4A8SplitK = true }),
            ("new kernels", options with { TiledDecodeAttention = true, RadixSampling = true, TensorCoreAttention = true, W4A8SplitK = true }),
            ("new kernels, no graphs", options with { TiledDecodeAttention = true, RadixSampling = true, TensorCoreAttention = true, W4A8SplitK = true, UseCudaGraphs = false }),
        };
        var models = new (string Name, string? Path)[]
        {
            ("synthetic:tiny", "synthetic:tiny"),
            ("synthetic:mini", "synthetic:mini"),
            ("synthetic:mini w4a8", QuantizedModel("synthetic:mini", Kernels.Runtime.Quantization.W4A8.W4A8Method.MethodName)),
            ("synthetic:tiny w4a8", QuantizedModel("synthetic:tiny", Kernels.Runtime.Quantization.W4A8.W4A8Method.MethodName)),
            ("synthetic:mini squeezellm", QuantizedModel("synthetic:mini", Kernels.Runtime.Quantization.SqueezeLlm.SqueezeLlmMethod.MethodName)),
        };
        // W4A8 with q/k/v biases (Qwen2): the golden tiny-qwen2-f16, quantized here (skipped without ../shared/golden).
        if (FindGolden() is { } golden && Directory.Exists(Path.Combine(golden, "tiny-qwen2-f16")))
            models = [.. models, ("tiny-qwen2-f16 w4a8", QuantizedModel(Path.Combine(golden, "tiny-qwen2-f16"), Kernels.Runtime.Quantization.W4A8.W4A8Method.MethodName))];
        bool pass = true;
        void Report(ParityResult r)
        {
            if (r.Status == "FAIL") pass = false;
            Console.WriteLine($"{r.Status,-5} {r.Model,-45} max|diff| {r.MaxAbsLogitDiff:E2} = {r.MaxAbsLogitDiff / r.LogitScale:E2} x max|logit| {r.LogitScale:F1} " +
                              $"greedy {(r.GreedyEqual ? "equal" : "DIFFERENT")}{(r.Note != null ? $"  ({r.Note})" : "")}");
        }
        foreach (var (model, path) in models)
            foreach (var (variant, o) in variants)
            {
                // The split-K switch changes nothing for a model without W4A8 layers (minutes per check here).
                if (variant.Contains("split-K", StringComparison.Ordinal) && !model.Contains("w4a8", StringComparison.Ordinal)) continue;
                string name = $"{model}, {variant}";
                if (only != null && !name.Contains(only, StringComparison.OrdinalIgnoreCase)) continue;
                Report(Parity(name, path, o));
            }
        // KIVI (G 32, R 16) on the one model whose shape its split kernel takes (head_dim 64), 70 prompt tokens and 20
        // greedy steps: blocks compact before a step (32-row steps; decode steps, as graphs) and inside one (a 128-row
        // prefill quantizes the blocks it writes); with R 480 nothing is quantized and every row reads its fp16 window.
        foreach (var (kind, rowsPerStep, window) in new[] { (Kernels.Runtime.KvCache.KvCacheKind.Kivi2, 32, 16), (Kernels.Runtime.KvCache.KvCacheKind.Kivi4, 128, 16), (Kernels.Runtime.KvCache.KvCacheKind.Kivi2, 32, 480) })
        {
            var kivi = new Kernels.Runtime.KvCache.KvCacheFormat { Kind = kind, Group = 32, Window = window };
            string name = $"synthetic:mini {kivi}, {rowsPerStep}-row steps";
            if (only != null && !name.Contains(only, StringComparison.OrdinalIgnoreCase)) continue;
            Report(Parity(name, "synthetic:mini", options with { Kivi = kivi, MaxTokensPerStep = rowsPerStep, TiledDecodeAttention = kind == Kernels.Runtime.KvCache.KvCacheKind.Kivi4 },
                KiviPromptTokens, KiviGreedyTokens));
        }
        {
            // Forks of a KIVI prompt (G 32, R 16), finishing at different steps, against the CPU in that format, 128-row
            // steps: the prompt's first block quantized inside its prefill, the shared second one by the forks' first
            // step (written before it), the longest fork's own third one before a decode step (a graph).
            var kivi = new Kernels.Runtime.KvCache.KvCacheFormat { Kind = Kernels.Runtime.KvCache.KvCacheKind.Kivi2, Group = 32, Window = 16 };
            string name = $"synthetic:mini {kivi} forks";
            if (only == null || name.Contains(only, StringComparison.OrdinalIgnoreCase))
                Report(HydragenParity(name, "synthetic:mini", options with { Kivi = kivi, MaxTokensPerStep = 128 }));
        }
        foreach (var (model, path) in models.Where(m => !m.Name.Contains(' ') && !m.Name.StartsWith("tiny-qwen2", StringComparison.Ordinal)))
        {
            string name = $"{model} hydragen";
            if (only != null && !name.Contains(only, StringComparison.OrdinalIgnoreCase)) continue;
            Report(HydragenParity(name, path, options));
        }
        // The KIVI capacity table's procedure (laid-out sequences, copies until the pool is full, all decoding) on
        // synthetic:mini: it runs, and KIVI holds more sequences than fp16 at one budget.
        if (only != null && "kivi capacity".Contains(only, StringComparison.OrdinalIgnoreCase))
        {
            var rows = KiviCapacity(options with { TiledDecodeAttention = false, RadixSampling = false, TensorCoreAttention = false }, 8L << 20, 448, 2, 32,
                "synthetic:mini");
            bool ok = rows.Count == 3 && rows.All(r => r.Sequences >= 1 && double.IsFinite(r.StepMs)) && rows[1].Sequences > rows[0].Sequences;
            pass &= ok;
            Console.WriteLine($"{(ok ? "PASS" : "FAIL")}  kivi capacity: sequences {string.Join(" / ", rows.Select(r => $"{r.Cache} {r.Sequences}"))}");
        }
        Console.WriteLine(pass ? "e2e-emulated: PASS" : "e2e-emulated: FAIL");
        return pass ? 0 : 1;
    }
}
