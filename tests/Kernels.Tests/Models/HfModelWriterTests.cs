// A model written as a Hugging Face directory reloads as the same model: config, tensors (stored dtypes copied
// byte for byte, so logits are identical), tokenizer; quantized layers go through the method registry both ways.
using System.Text.Json.Nodes;
using Kernels.Runtime.Backends;
using Kernels.Runtime.Backends.Cpu;
using Kernels.Runtime.Calibration;
using Kernels.Runtime.Models;
using Kernels.Runtime.Numerics;
using Kernels.Runtime.Quantization;

namespace Kernels.Tests.Models;

public class HfModelWriterTests
{
    private static readonly int[] Ids = [1, 403, 407, 261, 378, 432, 383, 286, 261, 376];

    private static float[] Logits(LoadedModel model, int[] ids)
    {
        using var backend = new CpuBackend(model);
        using var cache = backend.CreateCache();
        return backend.Forward([new SequenceStep(cache, ids, AllLogits: true)])[0];
    }

    private static string TempDir() => Path.Combine(Path.GetTempPath(), $"kernels-hf-{Guid.NewGuid():N}");

    /// <summary>Same config and logits; same encoding of <paramref name="text"/> unless null (the golden models carry no tokenizer).</summary>
    private static void AssertSameModel(LoadedModel original, LoadedModel written, int[] ids, string? text)
    {
        Assert.That(written.Config, Is.EqualTo(original.Config with { }).Using<ModelConfig>(SameConfig));
        Assert.That(Logits(written, ids), Is.EqualTo(Logits(original, ids)), "tensors are copied in their stored dtype: logits identical");
        if (text is null) return;
        Assert.That(written.Tokenizer.Encode(text, true), Is.EqualTo(original.Tokenizer.Encode(text, true)));
        Assert.That(written.Tokenizer.EosIds, Is.EqualTo(original.Tokenizer.EosIds));
    }

    private static bool SameConfig(ModelConfig a, ModelConfig b) =>
        (a with { EosTokenIds = [] }) == (b with { EosTokenIds = [] }) && a.EosTokenIds.SequenceEqual(b.EosTokenIds);

    [Test]
    public void StoriesCheckpointWrittenAsHfDirectoryIsTheSameModel()
    {
        using var original = ModelLoader.Load(SharedData.Require("models/stories260K/stories260K.bin"));
        string dir = TempDir();
        try
        {
            HfModelWriter.Write(original, dir);
            using var written = ModelLoader.Load(dir);
            Assert.That(written.Format, Is.EqualTo(ModelFormat.HuggingFace));
            AssertSameModel(original, written, Ids, "Lily and Tom went to the park.");
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }

    [TestCase("tiny-llama-bf16")]
    [TestCase("tiny-qwen2-f16")]
    public void GoldenModelWrittenAgainIsTheSameModel(string name)
    {
        using var original = ModelLoader.Load(TestPaths.Golden(name));
        string dir = TempDir();
        try
        {
            HfModelWriter.Write(original, dir);
            Assert.That(Directory.GetFiles(dir, "*.safetensors"), Has.Length.EqualTo(original.Config.NumLayers + 1), "one shard per layer plus one");
            using var written = ModelLoader.Load(dir);
            AssertSameModel(original, written, [1, 5, 9, 33, 2, 17], null);
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }

    [Test]
    public void SyntheticModelWrittenAsHfDirectoryIsTheSameModel()
    {
        using var original = ModelLoader.Load("synthetic:tiny");
        string dir = TempDir();
        try
        {
            HfModelWriter.Write(original, dir);
            using var written = ModelLoader.Load(dir);
            AssertSameModel(original, written, [1, 50, 60, 70], "The quick brown fox.");
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }

    /// <summary>A per-row int8 format defined only here, to test the registry and writer, not a format to ship.</summary>
    private sealed class RowInt8Method : IQuantizationMethod
    {
        public string Name => "test-row-int8";

        public ILinearQuantizer CreateQuantizer(QuantizeOptions options, LoadedModel model, ICalibrationRunner calibration) => new Quantizer();

        public LinearWeight Load(string name, int outFeatures, int inFeatures, Func<string, WeightTensor?> lookup, QuantizationConfig config, string source)
        {
            Assert.That(config.RequireInt("bits", source), Is.EqualTo(8));
            var q = lookup(name + ".qweight") ?? throw new ModelFormatException(source, $"missing tensor '{name}.qweight'");
            var s = lookup(name + ".scales") ?? throw new ModelFormatException(source, $"missing tensor '{name}.scales'");
            return new RowInt8(name, q, s);
        }

        private sealed class Quantizer : ILinearQuantizer
        {
            public JsonObject Config => new() { ["quant_method"] = "test-row-int8", ["bits"] = 8 };

            public IReadOnlyList<SafetensorsWriter.Tensor> Quantize(DenseLinear weight)
            {
                int n = weight.OutFeatures, k = weight.InFeatures;
                var codes = new byte[n * k];
                var scales = new float[n];
                var row = new float[k];
                for (int r = 0; r < n; r++)
                {
                    weight.ReadRow(r, row);
                    scales[r] = Math.Max(row.Max(Math.Abs), 1e-12f) / 127f;
                    for (int c = 0; c < k; c++) codes[r * k + c] = (byte)(sbyte)Math.Round(row[c] / scales[r]);
                }
                var scaleBytes = new byte[n * 4];
                Buffer.BlockCopy(scales, 0, scaleBytes, 0, scaleBytes.Length);
                return [new(weight.Name + ".qweight", "I8", [n, k], codes), new(weight.Name + ".scales", "F32", [n], scaleBytes)];
            }
        }
    }

    private sealed class RowInt8(string name, WeightTensor q, WeightTensor s) : LinearWeight(name, q.Rows, q.Columns)
    {
        public override string Format => "test int8 rows";
        public override IEnumerable<WeightTensor> Tensors => [q, s];

        public override void ReadRow(int row, Span<float> destination)
        {
            q.ReadRow(row, destination);
            float scale = s.AsF32Span()[row];
            for (int c = 0; c < q.Columns; c++) destination[c] *= scale;
        }
    }

    [Test]
    public void QuantizedLayersAreWrittenThroughTheMethodAndLoadedBackThroughIt()
    {
        QuantizationMethods.Register(new RowInt8Method());
        using var original = ModelLoader.Load("synthetic:tiny");
        string dir = TempDir();
        try
        {
            var quantizer = QuantizationMethods.Find("test-row-int8", "test").CreateQuantizer(new QuantizeOptions { Method = "test-row-int8" }, original, new CpuCalibrationRunner());
            HfModelWriter.Write(original, dir, quantizer);
            using var written = ModelLoader.Load(dir);
            Assert.That(written.Weights.Quantization?.Method, Is.EqualTo("test-row-int8"));
            var layer = written.Weights.Layers[0];
            foreach (var (a, b) in new[] { (original.Weights.Layers[0].Wq, layer.Wq), (original.Weights.Layers[0].Down, layer.Down) })
            {
                Assert.That(b, Is.InstanceOf<RowInt8>());
                var x = new float[a.InFeatures];
                var y = new float[b.InFeatures];
                for (int r = 0; r < a.OutFeatures; r++)
                {
                    a.ReadRow(r, x);
                    b.ReadRow(r, y);
                    float step = x.Max(Math.Abs) / 127f;
                    for (int c = 0; c < x.Length; c++) Assert.That(y[c], Is.EqualTo(x[c]).Within(step * 0.5f + 1e-7f), $"{b.Name} [{r}, {c}]");
                }
            }
            Assert.Throws<ArgumentException>(() => HfModelWriter.Write(written, TempDir(), quantizer), "quantizing a quantized model is refused");
            var rewritten = TempDir();
            HfModelWriter.Write(written, rewritten);
            using (var again = ModelLoader.Load(rewritten))
                Assert.That(again.Weights.All().Select(t => t.ByteLength), Is.EqualTo(written.Weights.All().Select(t => t.ByteLength)), "a quantized model re-exports as stored");
            Directory.Delete(rewritten, true);
            Assert.Throws<NotSupportedException>(() => Linear.Multiply(new float[layer.Wq.InFeatures], 1, layer.Wq, new float[layer.Wq.OutFeatures]),
                "a format without a CPU kernel fails loudly");
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }

    [Test]
    public void UnknownQuantizationMethodIsAClearError()
    {
        using var original = ModelLoader.Load("synthetic:tiny");
        string dir = TempDir();
        try
        {
            HfModelWriter.Write(original, dir);
            var config = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "config.json")))!.AsObject();
            config["quantization_config"] = new JsonObject { ["quant_method"] = "gptq-nonexistent" };
            File.WriteAllText(Path.Combine(dir, "config.json"), config.ToJsonString());
            var e = Assert.Throws<ModelFormatException>(() => ModelLoader.Load(dir));
            Assert.That(e!.Message, Does.Contain("unknown quantization method 'gptq-nonexistent'").And.Contain(dir));
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }
}
