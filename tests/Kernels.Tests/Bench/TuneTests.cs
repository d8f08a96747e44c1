// kernels-bench tune: the per-GPU kernel choices from a device check's timings and verification, and the table the
// CUDA backend reads back.
using System.Text.Json.Nodes;
using Kernels.Bench;
using Kernels.Runtime.Backends.Cuda;

namespace Kernels.Tests.Bench;

public class TuneTests
{
    private static List<(string Kernel, string Shape, double Us)> Timings(double tiledRatio, double radixRatio, params (int M, double Ratio)[] gemm)
    {
        var r = new List<(string, string, double)>();
        foreach (var shape in new[] { "B=1 L=1024", "B=16 L=4096", "B=64 L=4096" })
        {
            r.Add(("paged_decode_attention_hd128_f16", shape, 100));
            r.Add(("paged_decode_attention_tiled_hd128_f16", shape, 100 * tiledRatio));
        }
        foreach (var shape in new[] { "rows=1 greedy", "rows=64 T=0.8" })
        {
            r.Add(("sample_tokens_f32", shape, 50));
            r.Add(("sample_tokens_radix_f32", shape, 50 * radixRatio));
        }
        foreach (var (m, ratio) in gemm)
            foreach (var layer in new[] { "qkv", "down" })
            {
                string shape = $"{layer} M={m} N=4096 K=4096";
                r.Add((m <= 4 ? "dense_gemv_f16" : "dense_gemm_small_m_f16", shape, 40));
                r.Add(("cublaslt_gemm_f16", shape, 40 * ratio));
            }
        return r;
    }

    [Test]
    public void AVariantIsChosenWhereItIsVerifiedAndFasterAndCublasLtFromTheRowsWhereItKeepsWinning()
    {
        var t = Tune.Decide("NVIDIA H200", Timings(0.5, 1.2, (1, 1.2), (16, 0.8), (64, 0.5), (256, 0.6)), new HashSet<string>());
        Assert.That((t.TiledDecodeAttention, t.RadixSampling, t.CublasLtMinRows), Is.EqualTo((true, false, 16)));
        Assert.That(t.Evidence, Does.Contain("decode attention tiled / CUDA-core: new / old time 0.50").And.Contain("M=1 1.20").And.Contain("M=16 0.80"));

        // A loss in the middle: cuBLASLt only from the rows where it wins on every larger M.
        Assert.That(Tune.Decide("g", Timings(1, 1, (1, 0.9), (16, 0.8), (64, 1.1), (256, 0.5)), new HashSet<string>()).CublasLtMinRows, Is.EqualTo(256));
        // Within the 3 % margin: not worth a change.
        Assert.That(Tune.Decide("g", Timings(0.98, 0.98), new HashSet<string>()).TiledDecodeAttention, Is.False);
    }

    [Test]
    public void TheTensorCoreAttentionIsChosenWithItsFasterTileWhenVerifiedAndFasterThanTheCudaCorePrefill()
    {
        var r = Timings(1, 1);
        foreach (var shape in new[] { "B=1 N=L=512 heads 32/8 d=128", "B=8 N=L=512 heads 32/8 d=128" })
        {
            r.Add(("paged_prefill_attention_hd128_f16", shape, 1000));
            r.Add(("paged_attention_mma_hd128_k32_f16", shape, 60));
            r.Add(("paged_attention_mma_hd128_k64_f16", shape, 40));
        }
        var t = Tune.Decide("g", r, new HashSet<string>());
        Assert.That((t.TensorCoreAttention, t.AttentionTileKeys), Is.EqualTo((true, 64)));
        Assert.That(t.Evidence, Does.Contain("prefill attention tensor-core (64-key tiles) / CUDA-core: new / old time 0.04"));
        var failing = Tune.Decide("g", r, new HashSet<string> { "attention_merge_slots_f32" });
        Assert.That(failing.TensorCoreAttention, Is.False, "a failing merge case keeps the CUDA-core attention");
        Assert.That(Tune.Decide("g", Timings(1, 1), new HashSet<string>()).TensorCoreAttention, Is.False, "not timed: not chosen");
        Assert.That(() => KernelTuning.Parse("""{"device": "g", "cublasLtMinRows": 1, "attentionTileKeys": 48}""", "t.json"),
            Throws.TypeOf<InvalidDataException>().With.Message.Contains("attentionTileKeys"));
        var older = KernelTuning.Parse("""{"device": "g", "cublasLtMinRows": 1}""", "old.json");
        Assert.That((older.TensorCoreAttention, older.AttentionTileKeys), Is.EqualTo((false, 64)), "a table from before the switch: off");
    }

    [Test]
    public void TheSplitKW4A8GemmIsChosenWhenAllThreeOfItsKernelsVerifiedAndItIsFaster()
    {
        var r = Timings(1, 1);
        foreach (var shape in new[] { "qkv M=1 N=6144 K=4096 g128", "down M=16 N=4096 K=14336 g128" })
        {
            r.Add(("w4a8_gemm_group_m16", shape, 60));
            r.Add(("w4a8_gemm_group_splitk", shape, 20));
        }
        Assert.That(Tune.Decide("g", r, new HashSet<string>()).W4A8SplitK, Is.True);
        Assert.That(Tune.Decide("g", r, new HashSet<string> { "w4a8_splitk_reduce" }).W4A8SplitK, Is.False, "its reduce failed verify");
        Assert.That(Tune.Decide("g", Timings(1, 1), new HashSet<string>()).W4A8SplitK, Is.False, "not timed");
        Assert.That(KernelTuning.Parse("""{"device": "g", "cublasLtMinRows": 1}""", "old.json").W4A8SplitK, Is.False);
    }

    [Test]
    public void AFailedVerifyCaseKeepsTheVerifiedDefaultHoweverFast()
    {
        var failing = new HashSet<string> { "paged_decode_attention_tiled_hd64_bf16", "convert_f32_to_bf16" };
        var t = Tune.Decide("g", Timings(0.3, 0.3, (16, 0.5)), failing);
        Assert.That((t.TiledDecodeAttention, t.RadixSampling, t.CublasLtMinRows), Is.EqualTo((false, true, int.MaxValue)));
        Assert.That(t.Evidence, Does.Contain("verify failed for paged_decode_attention_tiled_hd64_bf16").And.Contain("convert_f32_to_bf16"));
        Assert.That(Tune.Decide("g", [], new HashSet<string>()).Evidence, Does.Contain("not timed"));
    }

    [Test]
    public void RunWritesTheTableTheBackendParsesAndRefusesResultsWithoutVerification()
    {
        string dir = Path.Combine(Path.GetTempPath(), $"kernels-tune-{Guid.NewGuid():N}");
        try
        {
            Directory.CreateDirectory(dir);
            var results = new JsonArray(Timings(0.5, 0.5, (64, 0.5)).Select(r => (JsonNode)new JsonObject { ["Kernel"] = r.Kernel, ["Shape"] = r.Shape, ["Microseconds"] = r.Us }).ToArray());
            File.WriteAllText(Path.Combine(dir, "kernels.json"), new JsonObject { ["deviceName"] = "NVIDIA H200", ["results"] = results }.ToJsonString());
            Assert.That(Tune.Run(dir, Path.Combine(dir, "out")), Is.EqualTo(2), "no verify.json: nothing is chosen unverified");
            File.WriteAllText(Path.Combine(dir, "verify.json"), """{"results": [{"Kernel": "sample_tokens_radix_f32", "Pass": true}]}""");
            Assert.That(Tune.Run(dir, Path.Combine(dir, "out")), Is.EqualTo(0));
            string path = Path.Combine(dir, "out", "nvidia-h200.json");
            var table = KernelTuning.Parse(File.ReadAllText(path), path);
            Assert.That((table.Device, table.TiledDecodeAttention, table.RadixSampling, table.CublasLtMinRows), Is.EqualTo(("NVIDIA H200", true, true, 64)));
            Assert.That(table.Source, Is.EqualTo(path));
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }

    [Test]
    public void ABadTableNamesItsFileAndAGpuWithoutOneRunsTheVerifiedDefaults()
    {
        Assert.That(() => KernelTuning.Parse("{}", "x.json"), Throws.TypeOf<InvalidDataException>().With.Message.Contains("x.json").And.Message.Contains("no device"));
        Assert.That(() => KernelTuning.Parse("""{"device": "g", "cublasLtMinRows": 0}""", "y.json"), Throws.TypeOf<InvalidDataException>().With.Message.Contains("y.json"));
        Assert.That(() => KernelTuning.Parse("not json", "z.json"), Throws.TypeOf<InvalidDataException>().With.Message.Contains("z.json"));
        var none = KernelTuning.For("Some GPU Nobody Measured");
        Assert.That((none.TiledDecodeAttention, none.RadixSampling, none.CublasLtMinRows), Is.EqualTo((false, false, int.MaxValue)));
        Assert.That(none.Source, Does.Contain("no tuning table for Some GPU Nobody Measured"));
        Assert.That(KernelTuning.FileName("NVIDIA H100 80GB HBM3"), Is.EqualTo("nvidia-h100-80gb-hbm3.json"));
    }
}
