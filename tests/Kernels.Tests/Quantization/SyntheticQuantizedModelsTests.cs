// Synthetic W4A8 and SqueezeLLM models (random stored tensors, for GPU throughput at the 8B shape): they pass the
// formats' own validation when loaded, run on the CPU backend with finite logits, are accepted by the CUDA backend's
// support check, and in the layer-shared 8B shape keep one layer in host memory.
using Kernels.Runtime.Backends;
using Kernels.Runtime.Backends.Cpu;
using Kernels.Runtime.Backends.Cuda;
using Kernels.Runtime.Quantization;
using Kernels.Runtime.Quantization.SqueezeLlm;
using Kernels.Runtime.Quantization.W4A8;

namespace Kernels.Tests.Quantization;

public class SyntheticQuantizedModelsTests
{
    [TestCase("w4a8", 0)]
    [TestCase("w4a8", 32)]
    [TestCase("squeezellm", 3)]
    [TestCase("squeezellm", 4)]
    public void LoadRunAndAreAcceptedByTheCudaBackend(string method, int parameter)
    {
        using var model = method == "w4a8" ? SyntheticQuantizedModels.W4A8("synthetic:mini", parameter) : SyntheticQuantizedModels.SqueezeLlm("synthetic:mini", parameter);
        var wq = model.Weights.Layers[1].Wq;
        if (method == "w4a8") Assert.That(((W4A8Linear)wq).GroupSize, Is.EqualTo(parameter));
        else Assert.That(((SqueezeLlmLinear)wq).Bits, Is.EqualTo(parameter));
        Assert.That(model.Source, Does.Contain("random"));
        Assert.That(CudaBackend.WhyUnsupported(model), Is.Null);
        using var backend = new CpuBackend(model);
        using var cache = backend.CreateCache();
        var logits = backend.Forward([new SequenceStep(cache, new[] { 1, 5, 9 }, AllLogits: true)])[0];
        Assert.That(logits.All(float.IsFinite), "finite logits from random but valid tensors");
    }

    [Test]
    public unsafe void TheLayerShared8BShapeKeepsOneLayerInHostMemory()
    {
        using var model = SyntheticQuantizedModels.W4A8("synthetic:llama3-8b");
        var first = (W4A8Linear)model.Weights.Layers[0].Down;
        var last = (W4A8Linear)model.Weights.Layers[^1].Down;
        Assert.That(first.Name, Is.Not.EqualTo(last.Name));
        Assert.That((nint)last.Codes.Data, Is.EqualTo((nint)first.Codes.Data), "every layer reads layer 0's codes on the host");
        Assert.That((first.OutFeatures, first.InFeatures, first.GroupSize), Is.EqualTo((4096, 14336, 128)));
    }
}
