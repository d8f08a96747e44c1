// W4A8 checkpoints on the CUDA backend, the part that needs no GPU: the support check accepts them (and still names
// what it cannot run), and the device weights place their codes, scales and zeros byte for byte with the int8
// activation scratch sized from the widest padded input.
using Kernels.Runtime.Backends.Cpu;
using Kernels.Runtime.Backends.Cuda;
using Kernels.Runtime.Calibration;
using Kernels.Runtime.Models;
using Kernels.Runtime.Numerics;
using Kernels.Runtime.Quantization;
using Kernels.Runtime.Quantization.SqueezeLlm;
using Kernels.Runtime.Quantization.W4A8;

namespace Kernels.Tests.Backends.Cuda;

public class W4A8DeviceWeightsTests
{
    /// <summary><paramref name="source"/> quantized by <paramref name="method"/> into a temporary directory, loaded for <paramref name="body"/>, then deleted.</summary>
    private static void WithQuantized(string source, string method, Action<LoadedModel> body)
    {
        string dir = Path.Combine(Path.GetTempPath(), $"kernels-{method}-cuda-{Guid.NewGuid():N}");
        try
        {
            using (var dense = ModelLoader.Load(source))
                HfModelWriter.Write(dense, dir, QuantizationMethods.Find(method, "test")
                    .CreateQuantizer(new QuantizeOptions { Method = method }, dense, new CpuCalibrationRunner()));
            using var model = ModelLoader.Load(dir);
            body(model);
        }
        finally
        {
            if (Directory.Exists(dir)) Directory.Delete(dir, true);
        }
    }

    [Test]
    public void W4A8LayersArePlacedAsStoredWithTheirActivationScratch() => WithQuantized("synthetic:tiny", W4A8Method.MethodName, model =>
    {
        Assert.That(CudaBackend.WhyUnsupported(model), Is.Null, "a bias-free W4A8 model runs on the CUDA backend");
        using var weights = DeviceWeights.Place(model);
        var c = model.Config;
        foreach (var (layer, placed) in model.Weights.Layers.Zip(weights.Layers))
            foreach (var (source, linear) in new[] { (layer.Wq, placed.Wq), (layer.Wo, placed.Wo), (layer.Down, placed.Down) })
            {
                var q = (W4A8Linear)source;
                var g = linear as GpuW4A8;
                Assert.That(g, Is.Not.Null, $"{source.Name} is placed as W4A8");
                Assert.That((g!.OutFeatures, g.InFeatures, g.GroupSize, g.PaddedIn), Is.EqualTo((q.OutFeatures, q.InFeatures, q.GroupSize, W4A8Layout.Padded(q.InFeatures))));
                Assert.That((g.Codes.DType, g.Scales.DType, g.Zeros.DType), Is.EqualTo((q.Codes.DType, TensorDType.F16, q.ZeroTensor!.DType)), "as stored");
                Assert.That(g.GroupScales == null, Is.EqualTo(q.GroupScaleTensor == null));
            }
        Assert.That(weights.Layers.All(l => l.GateUp == null && l.Qkv == null), Is.True, "no joined q|k|v or gate|up matrix for W4A8 layers");
        long w4a8Bytes = model.Weights.Layers.SelectMany(l => new[] { l.Wq, l.Wk, l.Wv, l.Wo, l.Gate, l.Up, l.Down }).Sum(l => l.Tensors.Sum(t => t.ByteLength));
        Assert.That(weights.ArenaBytes, Is.GreaterThan(w4a8Bytes));
        Assert.That(weights.MaxW4A8PaddedIn, Is.EqualTo(W4A8Layout.Padded(Math.Max(Math.Max(c.HiddenSize, c.QueryDim), c.IntermediateSize))));
        Assert.That(weights.W4A8ScratchBytes(64), Is.GreaterThanOrEqualTo(64L * (weights.MaxW4A8PaddedIn + 8)));
        Assert.That(weights.Formats, Does.Contain("I8").Or.Contain("U8"));

        using var dense = ModelLoader.Load("synthetic:tiny");
        using var denseWeights = DeviceWeights.Place(dense);
        Assert.That((denseWeights.MaxW4A8PaddedIn, denseWeights.W4A8ScratchBytes(64)), Is.EqualTo((0, 0L)), "no W4A8 layer, no scratch");
    });

    [Test]
    public void SqueezeLlmLayersArePlacedAsStored() => WithQuantized("synthetic:tiny", SqueezeLlmMethod.MethodName, model =>
    {
        Assert.That(CudaBackend.WhyUnsupported(model), Is.Null, "a bias-free SqueezeLLM model runs on the CUDA backend");
        using var weights = DeviceWeights.Place(model);
        foreach (var (layer, placed) in model.Weights.Layers.Zip(weights.Layers))
            foreach (var (source, linear) in new[] { (layer.Wk, placed.Wk), (layer.Gate, placed.Gate) })
            {
                var q = (SqueezeLlmLinear)source;
                var g = linear as GpuSqueeze;
                Assert.That(g, Is.Not.Null, $"{source.Name} is placed as SqueezeLLM");
                Assert.That((g!.Bits, g.OutFeatures, g.InFeatures), Is.EqualTo((q.Bits, q.OutFeatures, q.InFeatures)));
                Assert.That((g.Codes.DType, g.Table.DType, g.OutlierRows.DType, g.OutlierCols.DType, g.OutlierValues.DType),
                    Is.EqualTo((TensorDType.I32, TensorDType.F16, TensorDType.I32, TensorDType.I32, TensorDType.F32)), "as stored");
            }
        Assert.That(weights.MaxW4A8PaddedIn, Is.Zero);
    });

    [Test]
    public void QuantizedLayersWithABiasGetAnF32BiasOnTheDevice()
    {
        // Qwen2's q/k/v biases beside W4A8 projections: bias_add_f32 adds them after the GEMM, as the CPU does in fp32.
        string golden = TestPaths.Golden("tiny-qwen2-f16");
        if (!Directory.Exists(golden)) Assert.Ignore($"{golden} is absent (../shared/golden)");
        WithQuantized(golden, W4A8Method.MethodName, model =>
        {
            Assert.That(CudaBackend.WhyUnsupported(model), Is.Null, "a W4A8 Qwen2 model runs on the CUDA backend");
            using var weights = DeviceWeights.Place(model);
            foreach (var (layer, placed) in model.Weights.Layers.Zip(weights.Layers))
            {
                Assert.That(placed.Wq, Is.InstanceOf<GpuW4A8>());
                foreach (var (source, bias) in new[] { (layer.Bq, placed.Bq), (layer.Bk, placed.Bk), (layer.Bv, placed.Bv) })
                {
                    Assert.That(bias, Is.Not.Null, $"{source!.Name} is placed");
                    Assert.That((bias!.DType, bias.Elements), Is.EqualTo((TensorDType.F32, source.ElementCount)), "fp32, as the CPU adds it");
                }
            }
        });
    }
}
