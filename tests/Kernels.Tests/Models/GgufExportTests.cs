// GGUF written by us and read back: F32 is lossless (RoPE row order round-trips), F16 and Q8_0 stay close.
using Kernels.Runtime.Backends;
using Kernels.Runtime.Backends.Cpu;
using Kernels.Runtime.Engine;
using Kernels.Runtime.Models;
using Kernels.Runtime.Numerics;

namespace Kernels.Tests.Models;

public class GgufExportTests
{
    private static readonly int[] Ids = [1, 403, 407, 261, 378, 432, 383, 286, 261, 376];

    private static float[] Logits(LoadedModel model)
    {
        using var backend = new CpuBackend(model);
        using var cache = backend.CreateCache();
        return backend.Forward([new SequenceStep(cache, Ids, AllLogits: true)])[0];
    }

    private static string Export(LoadedModel model, TensorDType dtype)
    {
        string path = Path.Combine(Path.GetTempPath(), $"kernels-export-{Guid.NewGuid():N}.gguf");
        GgufExport.Write(model, path, dtype);
        return path;
    }

    // F32: exact. F16 weights: relative rounding 2^-11 per weight. Q8_0: 1/254 of each block's range.
    [TestCase(TensorDType.F32, 0f)]
    [TestCase(TensorDType.F16, 0.02f)]
    [TestCase(TensorDType.Q8_0, 0.3f)]
    public void StoriesExportedToGgufReloadsWithTheSameModel(TensorDType dtype, float tolerance)
    {
        using var original = ModelLoader.Load(SharedData.Require("models/stories260K/stories260K.bin"));
        string path = Export(original, dtype);
        try
        {
            using var exported = ModelLoader.Load(path);
            Assert.That(exported.Config with { EosTokenIds = [], RmsNormEps = 0, MaxPositions = 0 },
                Is.EqualTo(original.Config with { EosTokenIds = [], RmsNormEps = 0, MaxPositions = 0 }));
            Assert.That(((DenseLinear)exported.Weights.Layers[0].Wq).Weight.DType, Is.EqualTo(dtype), "q/k keep their stored dtype when their rows are reordered");
            Assert.That(((DenseLinear)exported.Weights.Layers[0].Gate).Weight.DType, Is.EqualTo(dtype), "gate rows of 64 are whole Q8_0 blocks");
            Assert.That(((DenseLinear)exported.Weights.Layers[0].Down).Weight.DType, Is.EqualTo(dtype == TensorDType.Q8_0 ? TensorDType.F16 : dtype),
                "down rows of 172 are not whole Q8_0 blocks: written as F16");
            var a = Logits(original);
            var b = Logits(exported);
            float maxDiff = a.Select((x, i) => Math.Abs(x - b[i])).Max();
            Assert.That(maxDiff, Is.LessThanOrEqualTo(tolerance));
            Assert.That(exported.Tokenizer.Encode("Lily and Tom went to the park.", true), Is.EqualTo(original.Tokenizer.Encode("Lily and Tom went to the park.", true)));
            using var backend = new CpuBackend(exported);
            var text = new Generator(backend, exported.Tokenizer).Generate([new GenerationRequest { PromptIds = [1], MaxNewTokens = 20 }])[0].Text;
            if (dtype != TensorDType.Q8_0) Assert.That(text, Does.StartWith("Once upon a time, there was a little girl named Lily"));
        }
        finally
        {
            File.Delete(path);
        }
    }
}
