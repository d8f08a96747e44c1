// W4A8 end to end: `kernels quantize --method w4a8` output loads as a model whose CPU logits stay close to the dense
// model's (synthetic, golden, stories260K perplexity), and a damaged quantized directory is a clear format error.
using Kernels.Runtime.Backends;
using Kernels.Runtime.Backends.Cpu;
using Kernels.Runtime.Calibration;
using Kernels.Runtime.Engine;
using Kernels.Runtime.Models;
using Kernels.Runtime.Numerics;
using Kernels.Runtime.Quantization;
using Kernels.Runtime.Quantization.W4A8;

namespace Kernels.Tests.Quantization;

public class W4A8ModelTests
{
    private static string TempDir() => Path.Combine(Path.GetTempPath(), $"kernels-w4a8-{Guid.NewGuid():N}");

    private static void Quantize(LoadedModel model, string dir, int? group)
    {
        var options = new QuantizeOptions { Method = W4A8Method.MethodName, GroupSize = group };
        HfModelWriter.Write(model, dir, QuantizationMethods.Find(W4A8Method.MethodName, "test").CreateQuantizer(options, model, new CpuCalibrationRunner()));
    }

    private static float[] Logits(LoadedModel model, int[] ids)
    {
        using var backend = new CpuBackend(model);
        using var cache = backend.CreateCache();
        return backend.Forward([new SequenceStep(cache, ids, AllLogits: true)])[0];
    }

    /// <summary>Max |quantized - dense| over all logits, relative to the dense logits' max magnitude (RMS ratio printed too).</summary>
    private static double RelativeLogitError(LoadedModel dense, LoadedModel quantized, int[] ids)
    {
        var a = Logits(dense, ids);
        var b = Logits(quantized, ids);
        Assert.That(b.All(float.IsFinite), Is.True, "finite logits");
        double maxDiff = a.Zip(b, (x, y) => Math.Abs(x - y)).Max(), scale = a.Max(Math.Abs);
        double rmsDiff = Math.Sqrt(a.Zip(b, (x, y) => (double)(x - y) * (x - y)).Average()), rms = Math.Sqrt(a.Average(x => (double)x * x));
        TestContext.Out.WriteLine($"max |dlogit| = {maxDiff:G4}, max |logit| = {scale:G4}, relative {maxDiff / scale:P2}; rms ratio {rmsDiff / rms:P2}");
        return maxDiff / scale;
    }

    // Tolerances rest on measurements, not on a derivation: the max |dlogit| / max |logit| each case prints, measured
    // on the 2-core dev box (Xeon, AVX-512) at issue 22's branch (noted per case; the integer GEMM is exact, so the
    // number depends only on the quantizer and the fp32 forward pass, not on the machine). What a bound must reject is
    // a broken kernel or layout: its logits are uncorrelated with the dense ones, and two uncorrelated logit vectors
    // of the same scale differ by about their max magnitude (100%) or more. Each bound sits between the two: under half
    // of that level and well above the measurement, so a quantizer change of a few points does not trip it. The golden and
    // synthetic models have random weights, the worst case for 4-bit per-channel rounding (16 levels over a random
    // row's range leave about 7-10% relative RMS error per layer, which the forward pass amplifies about 3x into the
    // logits' RMS).
    [TestCase("synthetic:tiny", null, "W4A8 per-channel", 0.25)] // measured 10.9% (rms ratio 8.9%)
    [TestCase("synthetic:tiny", 32, "W4A8 g32", 0.25)]            // measured 10.1% (rms ratio 10.6%)
    public void SyntheticModelQuantizedLogitsAreCloseToDense(string source, int? group, string expectedFormat, double tolerance)
    {
        using var dense = ModelLoader.Load(source);
        string dir = TempDir();
        try
        {
            Quantize(dense, dir, group);
            using var quantized = ModelLoader.Load(dir);
            Assert.That(quantized.Weights.Quantization?.Method, Is.EqualTo("w4a8"));
            Assert.That(quantized.Weights.Layers[0].Wq.Format, Is.EqualTo(expectedFormat));
            Assert.That(RelativeLogitError(dense, quantized, [1, 50, 60, 70, 80, 90]), Is.LessThan(tolerance));
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }

    /// <summary>The ~100M-parameter synthetic model, where every K (768, 2048) takes g128: about 25 s, so run on demand.</summary>
    [Test, Explicit("quantizes ~100M parameters (about 25 s); for the README's table")]
    public void SmallSyntheticModelG128LogitsAreCloseToDense()
    {
        using var dense = ModelLoader.Load("synthetic:small");
        string dir = TempDir();
        try
        {
            Quantize(dense, dir, null);
            using var quantized = ModelLoader.Load(dir);
            Assert.That(quantized.Weights.Layers.SelectMany(l => new[] { l.Wq, l.Wk, l.Down }).Select(w => w.Format), Is.All.EqualTo("W4A8 g128"));
            Assert.That(RelativeLogitError(dense, quantized, [1, 50, 60, 70, 80, 90, 1000, 20000]), Is.LessThan(0.4)); // measured 21.7%
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }

    [TestCase("tiny-llama-f32", 0.45)]  // measured 29.1% (rms ratio 23.7%)
    [TestCase("tiny-llama-bf16", 0.45)] // measured 26.1% (rms ratio 22.3%)
    [TestCase("tiny-qwen2-f16", 0.45)]  // measured 26.9% (rms ratio 26.5%)
    public void GoldenModelQuantizedPerChannelLogitsAreCloseToDense(string name, double tolerance)
    {
        using var dense = ModelLoader.Load(TestPaths.Golden(name));
        string dir = TempDir();
        try
        {
            Quantize(dense, dir, null); // K = 64 and 176: every layer per channel under the default g128
            using var quantized = ModelLoader.Load(dir);
            Assert.That(quantized.Weights.Layers.SelectMany(l => new[] { l.Wq, l.Down }).Select(w => w.Format), Is.All.EqualTo("W4A8 per-channel"));
            Assert.That(RelativeLogitError(dense, quantized, [1, 5, 9, 33, 2, 17, 100, 250]), Is.LessThan(tolerance));
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }

    /// <summary>
    /// Measured: dense 2.998, W4A8 per channel 3.201 (+6.8%) on story.txt; held to +-15%. Where that sits: SqueezeLLM's
    /// 4-bit variants cost +2.6..5.2% on the same text (README), a broken layer sends perplexity toward the vocabulary
    /// size (512), and W4A8 adds int8 activations to a 4-bit per-channel (coarser than SqueezeLLM's 16 centroids per
    /// row) weight rounding, so a few points above SqueezeLLM is expected and twice that is a regression to look at.
    /// </summary>
    [Test]
    public void Stories260KPerplexityIsWithin15PercentOfDense()
    {
        string text = File.ReadAllText(SharedData.Require("data/story.txt"));
        using var dense = ModelLoader.Load(SharedData.Require("models/stories260K/stories260K.bin"));
        string dir = TempDir();
        try
        {
            Quantize(dense, dir, null);
            using var quantized = ModelLoader.Load(dir);
            var ids = dense.Tokenizer.Encode(text, true);
            Assert.That(quantized.Tokenizer.Encode(text, true), Is.EqualTo(ids));
            double pplDense, pplQuantized;
            using (var backend = new CpuBackend(dense)) pplDense = Perplexity.Compute(backend, ids).Perplexity;
            using (var backend = new CpuBackend(quantized)) pplQuantized = Perplexity.Compute(backend, ids).Perplexity;
            TestContext.Out.WriteLine($"stories260K perplexity on story.txt ({ids.Length} tokens): dense {pplDense:F3}, w4a8 {pplQuantized:F3} ({pplQuantized / pplDense - 1:P1})");
            RelativeLogitError(dense, quantized, ids.Take(64).ToArray());
            Assert.That(pplQuantized / pplDense, Is.InRange(0.85, 1.15));
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }

    // ---------------------------------------------------------------------------------------------------------------
    // Damaged directories

    /// <summary>Rewrites the shard holding <paramref name="tensor"/> with that tensor dropped or given a new shape.</summary>
    private static void Damage(string dir, string tensor, long[]? newShape)
    {
        foreach (var path in Directory.GetFiles(dir, "*.safetensors"))
        {
            List<SafetensorsWriter.Tensor> tensors;
            IReadOnlyDictionary<string, string> metadata;
            using (var file = SafetensorsFile.Open(path))
            {
                if (!file.Entries.ContainsKey(tensor)) continue;
                metadata = file.Metadata;
                tensors = file.Entries.Values.OrderBy(e => e.Begin)
                    .Where(e => e.Name != tensor || newShape != null)
                    .Select(e => new SafetensorsWriter.Tensor(e.Name, e.DType, e.Name == tensor ? newShape! : e.Shape,
                        e.Name == tensor ? new byte[Enum.Parse<TensorDType>(e.DType).ByteCount(newShape!.Aggregate(1L, (a, b) => a * b))] : file.RawBytes(e.Name).ToArray()))
                    .ToList();
            }
            SafetensorsWriter.Write(path, tensors, metadata);
            string index = Path.Combine(dir, "model.safetensors.index.json");
            if (newShape is null && File.Exists(index))
            {
                var json = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(index))!;
                json["weight_map"]!.AsObject().Remove(tensor);
                File.WriteAllText(index, json.ToJsonString());
            }
            return;
        }
        Assert.Fail($"no shard holds {tensor}");
    }

    [TestCase("model.layers.1.mlp.down_proj.s1_zeros", null, "missing tensor 'model.layers.1.mlp.down_proj.s1_zeros'")]
    [TestCase("model.layers.0.self_attn.q_proj.qweight", new long[] { 64, 16 }, "tensor 'model.layers.0.self_attn.q_proj.qweight' has shape [64, 16], expected [64, 32]")]
    [TestCase("model.layers.0.mlp.up_proj.s1_scales", new long[] { 88 }, "tensor 'model.layers.0.mlp.up_proj.s1_scales' has shape [88], expected [176]")]
    public void DamagedQuantizedDirectoryIsAFormatErrorNamingTheDirectoryAndTensor(string tensor, long[]? shape, string expected)
    {
        using var dense = ModelLoader.Load("synthetic:tiny");
        string dir = TempDir();
        try
        {
            Quantize(dense, dir, null);
            Damage(dir, tensor, shape);
            var e = Assert.Throws<ModelFormatException>(() => ModelLoader.Load(dir));
            Assert.That(e!.Message, Does.Contain(expected).And.Contain(dir));
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }
}
