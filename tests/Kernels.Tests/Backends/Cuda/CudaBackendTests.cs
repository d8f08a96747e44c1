// CudaBackend: the memory plan, the support checks and the backend choice on the CPU; parity with the CPU backend
// when a GPU is present (ignored otherwise).
using Kernels.Interop;
using Kernels.Runtime.Backends;
using Kernels.Runtime.Backends.Cpu;
using Kernels.Runtime.Backends.Cuda;
using Kernels.Runtime.Models;
using Kernels.Runtime.Numerics;
using NUnit.Framework;

namespace Kernels.Tests.Backends.Cuda;

public class CudaBackendTests
{
    private static readonly ModelConfig Llama8B = SyntheticModels.Shapes["llama3-8b"];

    [Test]
    public void KvBlockBytesCountsBothTensorsOfEveryLayer()
    {
        // 2 (K, V) x 32 layers x 16 tokens x 1024 (8 kv heads x 128) x 2 bytes
        Assert.That(CudaMemoryPlan.KvBlockBytes(Llama8B, 16, TensorDType.F16), Is.EqualTo(2L * 32 * 16 * 1024 * 2));
        Assert.That(CudaMemoryPlan.KvBlockBytes(Llama8B, 16, TensorDType.F32), Is.EqualTo(2L * 32 * 16 * 1024 * 4));
        Assert.Throws<ArgumentOutOfRangeException>(() => CudaMemoryPlan.KvBlockBytes(Llama8B, 16, TensorDType.Q8_0));
    }

    /// <summary>
    /// A GGUF file of GGML block types runs on the CUDA backend dequantized to F16 on upload (the conversion reads rows
    /// through GgmlBlocks, tested against llama.cpp): no refusal, F16 targets for its matrices and its embedding.
    /// </summary>
    [Test]
    public unsafe void GgmlBlockMatricesAreUploadedAsF16()
    {
        Kernels.Tests.Numerics.GgmlNative.Require();
        var values = new float[4 * 256];
        for (int i = 0; i < values.Length; i++) values[i] = MathF.Sin(i) * 0.05f;
        foreach (var type in new[] { TensorDType.Q4_K, TensorDType.Q6_K, TensorDType.Q4_0, TensorDType.Q8_0 })
        {
            var bytes = Kernels.Tests.Numerics.GgmlNative.Quantize(type, values, 4, 256);
            fixed (byte* p = bytes)
            {
                var t = new WeightTensor("w", type, [4, 256], p);
                Assert.That(DeviceWeights.MatrixTarget(t), Is.EqualTo(TensorDType.F16), type.Name());
                Assert.That(DeviceWeights.VectorTarget(t), Is.EqualTo(TensorDType.F16), type.Name());
            }
        }
    }

    [Test]
    public void PlanGivesTheKvPoolItsFractionOfWhatIsLeft()
    {
        long free = 80L << 30, weights = 16L << 30;
        var options = new CudaBackendOptions { MaxTokensPerStep = 256 };
        var plan = CudaMemoryPlan.Compute(Llama8B, weights, free, options);
        long left = free - CudaMemoryPlan.Align(weights) - plan.ScratchBytes - options.ReserveBytes;
        Assert.That(plan.KvBlocks, Is.EqualTo((int)((long)(left * 0.9) / plan.KvBytesPerBlock)));
        Assert.That(plan.KvBytes, Is.EqualTo(plan.KvBlocks * plan.KvBytesPerBlock));
        Assert.That(plan.ScratchBytes, Is.GreaterThan(256L * 128256 * 4), "the scratch holds a logits row per token");
    }

    [Test]
    public void PlanHonoursAnExplicitKvSize()
    {
        var options = new CudaBackendOptions { KvCacheBytes = 1L << 30 };
        var plan = CudaMemoryPlan.Compute(Llama8B, 16L << 30, 80L << 30, options);
        Assert.That(plan.KvBlocks, Is.EqualTo((int)((1L << 30) / CudaMemoryPlan.KvBlockBytes(Llama8B, 16, TensorDType.F16))));
    }

    [Test]
    public void OutOfMemoryNamesTheSizes()
    {
        var e = Assert.Throws<InvalidOperationException>(() => CudaMemoryPlan.Compute(Llama8B, 16L << 30, 12L << 30, new CudaBackendOptions()));
        Assert.That(e!.Message, Does.Contain("out of memory").And.Contain("weights 16,384.0 MiB").And.Contain("free device memory 12,288.0 MiB"));
        var tooMuch = Assert.Throws<InvalidOperationException>(() =>
            CudaMemoryPlan.Compute(Llama8B, 16L << 30, 40L << 30, new CudaBackendOptions { KvCacheBytes = 64L << 30 }));
        Assert.That(tooMuch!.Message, Does.Contain("the KV cache asked for 65,536.0 MiB"));
    }

    [Test]
    public void BadOptionsNameTheOption()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => CudaMemoryPlan.Compute(Llama8B, 0, 80L << 30, new CudaBackendOptions { KvBlockSize = 0 }));
        Assert.Throws<ArgumentOutOfRangeException>(() => CudaMemoryPlan.Compute(Llama8B, 0, 80L << 30, new CudaBackendOptions { MaxTokensPerStep = 0 }));
        Assert.Throws<ArgumentOutOfRangeException>(() => CudaMemoryPlan.Compute(Llama8B, 0, 80L << 30, new CudaBackendOptions { KvMemoryFraction = 1.5 }));
    }

    [Test]
    public void ScratchSectionsAreAlignedAndDisjoint()
    {
        var layout = new ScratchLayout(Llama8B, 64, 16);
        var sections = new[] { layout.X, layout.Xn, layout.Q, layout.K, layout.V, layout.Attn, layout.Lse, layout.Proj, layout.Gate, layout.Up,
            layout.Selected, layout.SelectedNorm, layout.Logits, layout.Workspace, layout.Ids, layout.Positions, layout.Slots, layout.SeqLens,
            layout.QStarts, layout.BlockTables };
        for (int i = 0; i < sections.Length; i++)
        {
            Assert.That(sections[i].Item1 % CudaMemoryPlan.Alignment, Is.Zero);
            long end = sections[i].Item1 + sections[i].Item2 * 4;
            Assert.That(end, Is.LessThanOrEqualTo(i + 1 < sections.Length ? sections[i + 1].Item1 : layout.Bytes));
        }
        Assert.That(layout.MaxBlocksPerSeq, Is.EqualTo(8192 / 16));
        Assert.That(layout.BlockTables.Ints, Is.EqualTo(64L * 512));
    }

    [Test]
    public void UnsupportedModelsAreNamed()
    {
        using var tiny = SyntheticModels.Create("synthetic:tiny");
        Assert.That(CudaBackend.WhyUnsupported(tiny), Is.Null, "head_dim 16, the golden models' shape");
        using var small = SyntheticModels.Create("synthetic:small");
        Assert.That(CudaBackend.WhyUnsupported(small), Is.Null);
        var c = SyntheticModels.Shapes["tiny"];
        foreach (int d in new[] { 8, 16, 32, 64, 128, 256 })
            Assert.That(CudaBackend.WhyUnsupported(c with { HeadDim = d, NumHeads = 4, NumKvHeads = 2 }), Is.Null, $"head_dim {d}");
        Assert.That(CudaBackend.WhyUnsupported(c with { HeadDim = 96 }), Does.Contain("head_dim 96"));
        Assert.That(CudaBackend.WhyUnsupported(c with { NumHeads = 32, NumKvHeads = 2 }), Is.Null, "16 query heads per kv head: four decode blocks");
        // stories260K: head_dim 8, and an FFN width of 172 (not a multiple of 8): its down projection runs on dense_gemv.
        var stories = c with { HiddenSize = 64, NumHeads = 8, NumKvHeads = 4, HeadDim = 8, IntermediateSize = 172 };
        Assert.That(CudaBackend.WhyUnsupported(stories), Is.Null);
    }

    [Test]
    public void WithoutCudaAutoIsTheCpuAndCudaFailsClearly()
    {
        if (CudaDriverProbe.WhyUnavailable(out _, out _) == null) Assert.Ignore("a CUDA device is present: this test covers machines without one");
        using var model = SyntheticModels.Create("synthetic:tiny");
        var (backend, description) = BackendSelector.Create(model);
        using (backend)
        {
            Assert.That(backend, Is.InstanceOf<CpuBackend>());
            Assert.That(description, Does.StartWith("cpu (").And.Contain("CUDA unavailable"));
        }
        var e = Assert.Throws<BackendUnavailableException>(() => BackendSelector.Create(model, kind: BackendKind.Cuda));
        Assert.That(e!.Message, Does.StartWith("CUDA unavailable"));
        Assert.That(BackendSelector.Parse("CPU"), Is.EqualTo(BackendKind.Cpu));
        Assert.Throws<ArgumentException>(() => BackendSelector.Parse("tpu"));
    }

    [Test]
    public void SyntheticLlama3ShapeSharesLayerMemory()
    {
        var c = SyntheticModels.Shapes["llama3-8b"];
        Assert.That((c.HiddenSize, c.NumLayers, c.NumHeads, c.NumKvHeads, c.IntermediateSize, c.VocabSize), Is.EqualTo((4096, 32, 32, 8, 14336, 128256)));
        Assert.That(SyntheticModels.SharedLayerShapes, Does.Contain("llama3-8b"));
    }

    [Test]
    public void MatchesTheCpuBackendOnAGpu()
    {
        if (CudaDevice.WhyUnavailable(0) is { } why) Assert.Ignore($"no CUDA device: {why}");
        if (KernelImage.Load() == null) Assert.Ignore($"no kernels: {KernelImage.Describe()}");
        using var model = SyntheticModels.Create("synthetic:small");
        using var cpu = new CpuBackend(model);
        using var cuda = new CudaBackend(model, new CudaBackendOptions { KvCacheBytes = 64L << 20, MaxTokensPerStep = 8 });
        var prompt = Enumerable.Range(3, 11).ToArray(); // 11 tokens with 8 per step: the prompt runs as two internal steps
        using var a = cpu.CreateCache();
        using var b = cuda.CreateCache();
        var x = cpu.Forward([new SequenceStep(a, prompt, AllLogits: true)])[0];
        var y = cuda.Forward([new SequenceStep(b, prompt, AllLogits: true)])[0];
        Assert.That(y.Length, Is.EqualTo(x.Length));
        double max = x.Zip(y, (p, q) => (double)Math.Abs(p - q)).Max();
        Assert.That(max, Is.LessThanOrEqualTo(2e-3), "max |logit diff| CUDA vs CPU");
        Assert.That(b.Length, Is.EqualTo(prompt.Length));
    }

    [Test]
    public void DecodeGraphsReplayTheDirectLaunchesOnAGpu()
    {
        if (CudaDevice.WhyUnavailable(0) is { } why) Assert.Ignore($"no CUDA device: {why}");
        if (KernelImage.Load() == null) Assert.Ignore($"no kernels: {KernelImage.Describe()}");
        using var model = SyntheticModels.Create("synthetic:tiny");
        var options = new CudaBackendOptions { KvCacheBytes = 16L << 20, MaxTokensPerStep = 16 };
        using var direct = new CudaBackend(model, options with { UseCudaGraphs = false });
        using var graphs = new CudaBackend(model, options);
        Assert.That(direct.GraphStatus, Does.Contain("off (disabled by CudaBackendOptions.UseCudaGraphs)"));
        // Two sequences, a prompt each, then 40 decode steps: the table width crosses the 1, 2 and 4 block buckets.
        using var a0 = direct.CreateCache();
        using var a1 = direct.CreateCache();
        using var b0 = graphs.CreateCache();
        using var b1 = graphs.CreateCache();
        int[] p0 = [3, 4, 5, 6, 7], p1 = [9, 10, 11];
        direct.Forward([new SequenceStep(a0, p0), new SequenceStep(a1, p1)]);
        graphs.Forward([new SequenceStep(b0, p0), new SequenceStep(b1, p1)]);
        for (int step = 0; step < 40; step++)
        {
            int[] t0 = [20 + step % 50], t1 = [70 + step % 30];
            var x = direct.Forward([new SequenceStep(a0, t0), new SequenceStep(a1, t1)]);
            var y = graphs.Forward([new SequenceStep(b0, t0), new SequenceStep(b1, t1)]);
            for (int s = 0; s < 2; s++)
            {
                double max = x[s].Zip(y[s], (p, q) => (double)Math.Abs(p - q)).Max();
                Assert.That(max, Is.LessThanOrEqualTo(1e-4), $"step {step}, sequence {s}: graph vs direct launches");
            }
        }
        Assert.That(graphs.GraphStatus, Does.StartWith("CUDA graphs for decode: on"), graphs.GraphStatus);
        Assert.That(graphs.ToString(), Does.Contain("CUDA graphs for decode"));
    }
}
