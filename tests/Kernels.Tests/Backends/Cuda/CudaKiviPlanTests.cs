// The CUDA backend's KIVI cache without a GPU: how the KV bytes divide into fp16 slots and compact records, the
// scratch it stages per query row, and which shapes it refuses. (Its end-to-end parity with the CPU backend runs under
// the CUDA emulation: EmulatedCudaBackendTests and kernels-bench e2e-emulated.)
using Kernels.Runtime.Backends.Cuda;
using Kernels.Runtime.KvCache;
using Kernels.Runtime.Models;
using Kernels.Runtime.Numerics;
using Kernels.Runtime.Quantization;

namespace Kernels.Tests.Backends.Cuda;

public class CudaKiviPlanTests
{
    private static readonly ModelConfig Llama8B = SyntheticModels.Shapes["llama3-8b"];

    private static KvCacheFormat Format(KvCacheKind kind, int group = 32, int window = 128) => new() { Kind = kind, Group = group, Window = window };

    [TestCase(KvCacheKind.Kivi2, 4.0)]
    [TestCase(KvCacheKind.Kivi4, 2.7)]
    public void AtTheModelsContextSlotsAndRecordsRunOutTogether(KvCacheKind kind, double atLeast)
    {
        var f = Format(kind);
        long kv = 60L << 30;
        var (slots, ids) = CudaMemoryPlan.KiviRegions(Llama8B, f, kv, 512, null);
        long slot = CudaMemoryPlan.KvBlockBytes(Llama8B, 32, TensorDType.F16), record = CudaMemoryPlan.KiviRecordBytesFor(Llama8B, f);
        Assert.That(slot, Is.EqualTo(2L * 32 * 32 * 1024 * 2), "G fp16 rows of keys and values, every layer");
        Assert.That(record, Is.EqualTo(32 * Kivi.BlockBytes(1024, 32, f.Bits)));
        Assert.That(slots * slot + ids * record, Is.LessThanOrEqualTo(kv));
        Assert.That(kv - (slots * slot + ids * record), Is.LessThan(slot + record), "the bytes are used");

        // Sequences of the full context (8192 tokens = 256 blocks): each holds W = 5 blocks in slots, 251 compact.
        int window = f.WindowBlocks, blocks = 8192 / 32;
        Assert.That(window, Is.EqualTo(5));
        double bySlots = (double)slots / window, byIds = (double)ids / (blocks - window);
        Assert.That(bySlots / byIds, Is.EqualTo(1.0).Within(0.02), $"{slots} slots, {ids} ids: neither region is left over");
        double fp16Sequences = (double)kv / (blocks * slot);
        Assert.That(Math.Min(bySlots, byIds) / fp16Sequences, Is.GreaterThanOrEqualTo(atLeast), "sequences in flight against an fp16 cache of the same bytes");
    }

    [Test]
    public void SlotsCoverAPrefillChunkAndAnExplicitShareIsHonoured()
    {
        var f = Format(KvCacheKind.Kivi2);
        long kv = 2L << 30, slot = CudaMemoryPlan.KvBlockBytes(Llama8B, 32, TensorDType.F16);
        var (slots, _) = CudaMemoryPlan.KiviRegions(Llama8B, f, kv, 512, null);
        Assert.That(slots, Is.GreaterThanOrEqualTo(2048 / 32 + 2 * 5), "a 2048-token prefill chunk and two windows, however small the share");
        var (half, ids) = CudaMemoryPlan.KiviRegions(Llama8B, f, kv, 512, 0.5);
        Assert.That(half * slot, Is.EqualTo(kv / 2).Within(slot));
        Assert.That(ids, Is.GreaterThan(0));
        Assert.Throws<ArgumentOutOfRangeException>(() => CudaMemoryPlan.KiviRegions(Llama8B, f, kv, 512, 1.0));
        // Too little for the floor: as many slots as fit with their records.
        var (few, fewIds) = CudaMemoryPlan.KiviRegions(Llama8B, f, 40L << 20, 512, null);
        Assert.That(few, Is.EqualTo((40L << 20) / (slot + CudaMemoryPlan.KiviRecordBytesFor(Llama8B, f))));
        Assert.That(fewIds, Is.GreaterThanOrEqualTo(few), "every full block holds an id");
        Assert.Throws<InvalidOperationException>(() => CudaMemoryPlan.KiviRegions(Llama8B, f, 1L << 20, 512, null));
    }

    [Test]
    public void ThePlanCountsIdsAndSlots()
    {
        var f = Format(KvCacheKind.Kivi2);
        var options = new CudaBackendOptions { Kivi = f, KvCacheBytes = 8L << 30, KvBlockSize = 16 }.Resolved();
        Assert.That(options.KvBlockSize, Is.EqualTo(32), "KIVI blocks are G tokens");
        var plan = CudaMemoryPlan.Compute(Llama8B, 16L << 30, 80L << 30, options);
        var (slots, ids) = CudaMemoryPlan.KiviRegions(Llama8B, f, 8L << 30, options.MaxTokensPerStep, null);
        Assert.That((plan.KvBlocks, plan.KiviSlots), Is.EqualTo((ids, slots)));
        Assert.That(plan.KvBytes, Is.EqualTo(slots * plan.KvBytesPerBlock + ids * plan.KiviRecordBytes));
        Assert.That(plan.ToString(), Does.Contain("KIVI blocks").And.Contain("fp16 slots"));
        var dense = CudaMemoryPlan.Compute(Llama8B, 16L << 30, 80L << 30, new CudaBackendOptions { KvCacheBytes = 8L << 30 });
        Assert.That(dense.KiviSlots, Is.Zero);
        Assert.That(plan.ScratchBytes, Is.GreaterThan(dense.ScratchBytes), "KIVI stages per-row tables and its partial results");
    }

    [Test]
    public void ScratchStagesAWindowTablePerQueryRow()
    {
        var layout = new ScratchLayout(Llama8B, 64, 32, Format(KvCacheKind.Kivi2));
        Assert.That(layout.KiviWindowWidth, Is.EqualTo(5), "a window of R = 128 tokens from a block boundary spans at most ceil(159 / 32) blocks");
        Assert.That((layout.WindowTables.Ints, layout.WindowLens.Ints, layout.NumCompact.Ints), Is.EqualTo((64L * 5, 64L, 64L)));
        Assert.That(layout.NumCompact.Offset + 64 * 4, Is.LessThanOrEqualTo(layout.BlockTables.Offset), "inside the one staged int copy, before the tables");
        Assert.That(layout.KiviCompactingCapacity, Is.GreaterThanOrEqualTo(2 * 64), "a step's own blocks and one tail per sequence");
        var dense = new ScratchLayout(Llama8B, 64, 32);
        Assert.That((dense.KiviWindowWidth, dense.WindowTables.Ints, dense.NumCompact.Ints), Is.EqualTo((0, 0L, 0L)));
    }

    [Test]
    public void UnsupportedKiviShapesAreNamed()
    {
        Assert.That(CudaBackend.WhyUnsupported(Llama8B, Format(KvCacheKind.Kivi2)), Is.Null);
        Assert.That(CudaBackend.WhyUnsupported(Llama8B, null), Is.Null);
        Assert.That(CudaBackend.WhyUnsupported(Llama8B, KvCacheFormat.Fp32), Is.Null, "fp32/fp16 formats are the CPU's; the GPU keeps its KvDType");
        Assert.That(CudaBackend.WhyUnsupported(SyntheticModels.Shapes["tiny"], Format(KvCacheKind.Kivi2, group: 32, window: 16)),
            Does.Contain("head_dim 16"));
        Assert.That(CudaBackend.WhyUnsupported(Llama8B, Format(KvCacheKind.Kivi4, window: 0)), Does.Contain("window of at least 1"));
        Assert.That(CudaBackend.WhyUnsupported(Llama8B, Format(KvCacheKind.Kivi2, group: 16)), Does.Contain("G in 32, 64, 128"));
        Assert.That(CudaBackend.WhyUnsupported(Llama8B, Format(KvCacheKind.Kivi2), TensorDType.BF16), Does.Contain("fp16"));
        Assert.That(CudaBackend.WhyUnsupported(Llama8B, Format(KvCacheKind.Kivi2, group: 24)), Does.Contain("multiple of 16"));
    }
}
