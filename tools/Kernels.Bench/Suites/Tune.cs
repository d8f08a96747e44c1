// kernels-bench tune: a device check's results -> the GPU's kernel tuning table (issue 16, item 6). Reads kernels.json
// (timings of every kernel variant on the benchmark shapes) and verify*.json (which kernels passed), and for each
// choice the CUDA backend has (Backends/Cuda/KernelTuning.cs) takes the new variant only where every verify case of it
// passed and it is faster: by the geometric mean of its time ratios over the shared shapes (at least 3 % faster), and
// for cuBLASLt from the smallest GEMM row count at and above which it wins on every measured M. Writes
// <out>/<gpu name>.json; commit it under kernels/tuning/ and the runtime embeds it.
using System.CommandLine;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using Kernels.Runtime.Backends.Cuda;

namespace Kernels.Bench;

internal static class Tune
{
    /// <summary>A variant must be at least this much faster (geometric mean of time ratios) to be chosen.</summary>
    public const double Margin = 0.97;

    public static Command CreateCommand()
    {
        var results = new Option<string>("--results") { Required = true, Description = "A device check's output folder (kernels.json, verify.json, verify-local-nvcc.json)" };
        var output = new Option<string>("--out") { DefaultValueFactory = _ => Path.Combine("kernels", "tuning"), Description = "Folder for the table (<gpu name>.json)" };
        var cmd = new Command("tune", "Kernel variant choices for this GPU from a device check's timings and verification: writes the tuning table the CUDA backend embeds");
        cmd.Options.Add(results);
        cmd.Options.Add(output);
        cmd.SetAction(p => Run(p.GetValue(results)!, p.GetValue(output)!));
        return cmd;
    }

    public static int Run(string resultsDirectory, string outputDirectory)
    {
        string kernelsPath = Path.Combine(resultsDirectory, "kernels.json");
        if (!File.Exists(kernelsPath))
        {
            Console.Error.WriteLine($"--results: {kernelsPath} does not exist (run kernels-bench kernels first)");
            return 2;
        }
        var doc = JsonNode.Parse(File.ReadAllText(kernelsPath))!;
        string? device = doc["deviceName"]?.GetValue<string>();
        if (string.IsNullOrWhiteSpace(device))
        {
            Console.Error.WriteLine($"{kernelsPath}: no deviceName (written by kernels-bench kernels since the tuning tables exist; rerun it)");
            return 2;
        }
        var records = (doc["results"] as JsonArray ?? []).Where(r => r != null)
            .Select(r => (Kernel: r!["Kernel"]!.GetValue<string>(), Shape: r["Shape"]!.GetValue<string>(), Us: r["Microseconds"]!.GetValue<double>())).ToList();
        var failing = new HashSet<string>();
        int verifyFiles = 0;
        foreach (string name in new[] { "verify.json", "verify-local-nvcc.json" })
        {
            string path = Path.Combine(resultsDirectory, name);
            if (!File.Exists(path)) continue;
            verifyFiles++;
            foreach (var r in JsonNode.Parse(File.ReadAllText(path))!["results"] as JsonArray ?? [])
                if (r?["Pass"]?.GetValue<bool>() != true && r?["Kernel"]?.GetValue<string>() is { } k) failing.Add(k);
        }
        if (verifyFiles == 0)
        {
            Console.Error.WriteLine($"--results: {resultsDirectory} has no verify.json: a variant is chosen only once verified");
            return 2;
        }
        var table = Decide(device, records, failing);
        Directory.CreateDirectory(outputDirectory);
        string outPath = Path.Combine(outputDirectory, KernelTuning.FileName(device));
        File.WriteAllText(outPath, table.ToJson() + "\n");
        Console.WriteLine($"{device}: decode attention {(table.TiledDecodeAttention ? "tiled" : "CUDA-core")}, sampler {(table.RadixSampling ? "radix" : "bisection")}, " +
                          $"cuBLASLt from {(table.CublasLtMinRows == int.MaxValue ? "never" : table.CublasLtMinRows + " rows")}, " +
                          $"prefill and shared-prefix attention {(table.TensorCoreAttention ? $"tensor-core ({table.AttentionTileKeys}-key tiles)" : "CUDA-core")}, " +
                          $"W4A8 decode GEMM {(table.W4A8SplitK ? "split-K" : "two-stage")}" +
                          $"\n{table.Evidence}\nwrote {outPath}");
        return 0;
    }

    /// <summary>The choices from timing records (kernel, shape, microseconds) and the kernels with a failing verify case.</summary>
    internal static KernelTuning Decide(string device, IReadOnlyList<(string Kernel, string Shape, double Us)> records, ISet<string> failing)
    {
        var evidence = new List<string>();
        bool Verified(string prefix, string what)
        {
            var bad = failing.Where(k => k.StartsWith(prefix, StringComparison.Ordinal)).ToArray();
            if (bad.Length > 0) evidence.Add($"{what}: not chosen, verify failed for {string.Join(", ", bad)}");
            return bad.Length == 0;
        }
        // Geometric mean of new / old over the shapes both were timed on.
        (double Ratio, int Shapes) Compare(Func<string, bool> oldKernel, string newKernel, Func<string, bool>? shapeFilter = null)
        {
            var old = records.Where(r => oldKernel(r.Kernel) && (shapeFilter?.Invoke(r.Shape) ?? true)).GroupBy(r => r.Shape).ToDictionary(g => g.Key, g => g.First().Us);
            var pairs = records.Where(r => r.Kernel == newKernel && old.ContainsKey(r.Shape) && (shapeFilter?.Invoke(r.Shape) ?? true) && r.Us > 0 && old[r.Shape] > 0)
                .Select(r => Math.Log(r.Us / old[r.Shape])).ToArray();
            return pairs.Length == 0 ? (double.NaN, 0) : (Math.Exp(pairs.Average()), pairs.Length);
        }
        bool Choose(string what, (double Ratio, int Shapes) c, bool verified)
        {
            if (c.Shapes == 0)
            {
                evidence.Add($"{what}: not timed");
                return false;
            }
            evidence.Add($"{what}: new / old time {c.Ratio:F2} (geometric mean over {c.Shapes} shapes)");
            return verified && c.Ratio <= Margin;
        }

        bool tiled = Choose("decode attention tiled / CUDA-core", Compare(k => k == "paged_decode_attention_hd128_f16", "paged_decode_attention_tiled_hd128_f16"),
            Verified("paged_decode_attention_tiled_", "tiled decode attention"));
        bool radix = Choose("sampler radix / bisection", Compare(k => k == "sample_tokens_f32", "sample_tokens_radix_f32"),
            Verified("sample_tokens_radix_", "radix sampler"));

        int minRows = int.MaxValue;
        // The path's feeders: convert_f32_to_*, and the norm and SwiGLU that write the GEMMs' 16-bit inputs themselves.
        bool ltVerified = Verified("cublaslt_gemm_", "cuBLASLt GEMMs") & Verified("convert_f32_to_", "cuBLASLt GEMMs' input conversion") &
                          Verified("rms_norm_f32_to_", "cuBLASLt GEMMs' 16-bit inputs") & Verified("rms_norm_f16_to_", "cuBLASLt GEMMs' 16-bit inputs") &
                          Verified("rms_norm_bf16_to_", "cuBLASLt GEMMs' 16-bit inputs") & Verified("swiglu_fused_f32_to_", "cuBLASLt GEMMs' 16-bit inputs");
        var rowCounts = records.Where(r => r.Kernel == "cublaslt_gemm_f16").Select(r => Rows(r.Shape)).Where(m => m > 0).Distinct().Order().ToArray();
        var byRows = new List<(int M, double Ratio)>();
        foreach (int m in rowCounts)
        {
            var c = Compare(k => k.StartsWith("dense_gemm", StringComparison.Ordinal) || k.StartsWith("dense_gemv", StringComparison.Ordinal), "cublaslt_gemm_f16",
                shape => Rows(shape) == m);
            if (c.Shapes > 0) byRows.Add((m, c.Ratio));
        }
        if (byRows.Count > 0)
        {
            evidence.Add("GEMMs cuBLASLt / ours by rows: " + string.Join(", ", byRows.Select(x => $"M={x.M} {x.Ratio:F2}")));
            if (ltVerified)
                for (int i = byRows.Count - 1; i >= 0 && byRows[i].Ratio <= Margin; i--) minRows = byRows[i].M; // wins from here up
        }
        else evidence.Add("GEMMs cuBLASLt / ours: not timed");

        // Tensor-core attention: the faster tile of paged_attention_mma against the CUDA-core prefill kernel, prefill shapes.
        bool mmaVerified = Verified("paged_attention_mma_", "tensor-core attention") & Verified("attention_merge_slots_", "tensor-core attention's merge");
        var tiles = OpsLaunchPlans.MmaAttentionTileKeys
            .Select(k => (Keys: k, C: Compare(x => x == "paged_prefill_attention_hd128_f16", OpsLaunchPlans.MmaAttentionKernel("f16", 128, k))))
            .Where(x => x.C.Shapes > 0).OrderBy(x => x.C.Ratio).ToArray();
        int tileKeys = tiles.Length > 0 ? tiles[0].Keys : 64;
        bool mma = Choose($"prefill attention tensor-core ({tileKeys}-key tiles) / CUDA-core", tiles.Length > 0 ? tiles[0].C : (double.NaN, 0), mmaVerified);
        // W4A8 at M <= 16: the split-K kernel against the two-stage one on the same shapes.
        bool splitK = Choose("W4A8 decode GEMM split-K / two-stage",
            Compare(x => x is "w4a8_gemm_group_m16" or "w4a8_gemm_channel_m16", "w4a8_gemm_group_splitk"),
            Verified("w4a8_gemm_group_splitk", "W4A8 split-K") & Verified("w4a8_gemm_channel_splitk", "W4A8 split-K") & Verified("w4a8_splitk_reduce", "W4A8 split-K"));
        // The fused decode GEMVs: dense_gemv's tile code in fewer launches, the same bits; kept unless verify fails for one.
        bool fusedGemv = Verified("dense_gemv_qkv_", "fused GEMVs") & Verified("dense_gemv_swiglu_", "fused GEMVs") & Verified("dense_gemv_residual_", "fused GEMVs");
        bool fusedRope = Verified("rope_kv_append_", "RoPE fused with kv_append");
        return new KernelTuning(device, tiled, radix, minRows, string.Join("; ", evidence))
        {
            TensorCoreAttention = mma, AttentionTileKeys = tileKeys, W4A8SplitK = splitK, FusedGemv = fusedGemv, FusedRopeAppend = fusedRope,
        };
    }

    private static int Rows(string shape) => Regex.Match(shape, @"\bM=(\d+)") is { Success: true } m ? int.Parse(m.Groups[1].Value) : 0;
}
