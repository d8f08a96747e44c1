// The launchers' validation and grid/block choice (OpsLaunchPlans), which runs before any driver call: no GPU needed.
// Grids are checked by the properties of LaunchProperties over swept shapes, against the mapping each kernel's header
// states, not against numbers copied from the planner.
using Kernels.Runtime.Backends.Cuda;
using static Kernels.Tests.Backends.Cuda.LaunchProperties;

namespace Kernels.Tests.Backends.Cuda;

public class OpsLaunchPlansTests
{
    private static void ThrowsFor(string argument, TestDelegate call)
    {
        var e = Assert.Catch<ArgumentException>(call)!;
        Assert.That(e.ParamName, Is.EqualTo(argument), e.Message);
    }

    // ---- embedding_gather -------------------------------------------------------------------------------------------

    [Test]
    public void EmbeddingGatherStridesOverEveryTokenRow()
    {
        // embedding_gather.cuh: one block per token row, grid-stride over rows (grid x), threads over the dim columns.
        foreach (int tokens in Counts(1))
            foreach (int dim in new[] { 1, 64, 4096 })
            {
                var p = OpsLaunchPlans.EmbeddingGather("embedding_gather_f16", (long)tokens * dim, 10L * dim, tokens, tokens, dim, 10)!.Value;
                Assert.That(p.Kernel, Is.EqualTo("embedding_gather_f16"));
                WithinLimits(p);
                Strides(p.GridX, tokens, MaxGridYZ, $"{tokens} tokens");
                Assert.That((p.GridY, p.GridZ), Is.EqualTo((1u, 1u)));
            }
    }

    [Test]
    public void EmbeddingGatherRejectsShortBuffersAndNegativeSizes()
    {
        ThrowsFor("output", () => OpsLaunchPlans.EmbeddingGather("k", 7 * 64 - 1, 1000 * 64, 7, 7, 64, 1000));
        ThrowsFor("table", () => OpsLaunchPlans.EmbeddingGather("k", 7 * 64, 999 * 64, 7, 7, 64, 1000));
        ThrowsFor("ids", () => OpsLaunchPlans.EmbeddingGather("k", 7 * 64, 1000 * 64, 6, 7, 64, 1000));
        ThrowsFor("numTokens", () => OpsLaunchPlans.EmbeddingGather("k", 0, 0, 0, -1, 64, 1000));
        ThrowsFor("dim", () => OpsLaunchPlans.EmbeddingGather("k", 0, 0, 0, 1, -64, 1000));
        ThrowsFor("vocab", () => OpsLaunchPlans.EmbeddingGather("k", 64, 0, 1, 1, 64, 0));
        ThrowsFor("output", () => OpsLaunchPlans.EmbeddingGather("k", long.MaxValue, long.MaxValue, 1 << 20, 1 << 20, 4096, 10));
    }

    [Test]
    public void EmptyInputsSkipTheLaunch()
    {
        Assert.Multiple(() =>
        {
            Assert.That(OpsLaunchPlans.EmbeddingGather("k", 0, 64, 0, 0, 64, 1), Is.Null);
            Assert.That(OpsLaunchPlans.RmsNorm("k", 0, 0, 64, 0, 64, 1e-5f), Is.Null);
            Assert.That(OpsLaunchPlans.Rope(0, 0, 0, 64, 0, 32, 8, 128), Is.Null);
            Assert.That(OpsLaunchPlans.SwiGlu(0, 0, 0, 5, 0), Is.Null);
            Assert.That(OpsLaunchPlans.SwiGluFused(0, 0, false, 0, 64), Is.Null);
            Assert.That(OpsLaunchPlans.ResidualAdd(0, 0, 0), Is.Null);
        });
    }

    // ---- rms_norm ---------------------------------------------------------------------------------------------------

    [Test]
    public void RmsNormStridesOverRowsWithABlockThatDependsOnlyOnDim()
    {
        // rms_norm.cuh: one block per row, grid-stride; block_reduce needs whole warps up to 1024. The block sets the
        // summation order, so it must not depend on how many rows a step has (batch invariance) and must be the one
        // rms_norm_quant_int8 takes for the same dim (W4A8's fused norm reduces the sum of squares identically).
        foreach (int dim in new[] { 1, 64, 4095, 4096, 8191, 8192, 14336, 65536 })
        {
            uint? block = null;
            foreach (int tokens in Counts(1).Where(t => (long)t * ((dim + 31) / 32 * 32) <= int.MaxValue))
            {
                var p = OpsLaunchPlans.RmsNorm("rms_norm_bf16", (long)tokens * dim, (long)tokens * dim, dim, tokens, dim, 1e-5f)!.Value;
                WithinLimits(p);
                Strides(p.GridX, tokens, MaxGridYZ, $"{tokens} rows of {dim}");
                block ??= p.BlockX;
                Assert.That(p.BlockX, Is.EqualTo(block), $"dim {dim}: the same block for {tokens} rows as for 1");
                int padded = (dim + 31) / 32 * 32;
                var fused = OpsLaunchPlans.RmsNormQuantInt8("rms_norm_quant_int8_bf16", (long)tokens * padded, tokens, tokens, (long)tokens * dim, dim, tokens, dim, padded, 1e-5f)!.Value;
                Assert.That(fused.BlockX, Is.EqualTo(p.BlockX), $"dim {dim}: rms_norm_quant_int8 reduces in rms_norm's order");
                var to16 = OpsLaunchPlans.RmsNormTo16("bf16", "f16", (long)tokens * dim, (long)tokens * dim, (long)tokens * dim, dim, tokens, dim, 1e-5f)!.Value;
                Assert.That((to16.Kernel, to16.GridX, to16.BlockX), Is.EqualTo(("rms_norm_bf16_to_f16", p.GridX, p.BlockX)),
                    $"dim {dim}: the norm with a 16-bit copy is rms_norm's launch (the same sums, the same bits)");
            }
        }
    }

    [TestCase(0f)]
    [TestCase(-1e-5f)]
    [TestCase(float.NaN)]
    [TestCase(float.PositiveInfinity)]
    public void RmsNormRejectsAnEpsThatIsNotPositive(float eps)
    {
        ThrowsFor("eps", () => OpsLaunchPlans.RmsNorm("k", 64, 64, 64, 1, 64, eps));
    }

    [Test]
    public void TheSixteenBitCopiesNeedTheirBuffersAndA16BitType()
    {
        ThrowsFor("y16", () => OpsLaunchPlans.RmsNormTo16("f32", "bf16", 128, 127, 128, 64, 2, 64, 1e-5f));
        ThrowsFor("y16", () => OpsLaunchPlans.RmsNormTo16("f32", "f32", 128, 128, 128, 64, 2, 64, 1e-5f));
        ThrowsFor("eps", () => OpsLaunchPlans.RmsNormTo16("f32", "f16", 128, 128, 128, 64, 2, 64, 0f));
        ThrowsFor("output16", () => OpsLaunchPlans.SwiGluFusedTo16("f16", 200, 199, 400, false, 2, 100));
        ThrowsFor("output16", () => OpsLaunchPlans.SwiGluFusedTo16("f32", 200, 200, 400, false, 2, 100));
        ThrowsFor("gateUp", () => OpsLaunchPlans.SwiGluFusedTo16("bf16", 200, 200, 399, false, 2, 100));
        var p = OpsLaunchPlans.SwiGluFusedTo16("bf16", 200, 200, 400, false, 2, 100)!.Value;
        Assert.That(p with { Kernel = "swiglu_fused_f32" }, Is.EqualTo(OpsLaunchPlans.SwiGluFused(200, 400, false, 2, 100)!.Value), "swiglu_fused_f32's grid");
        Assert.That(p.Kernel, Is.EqualTo("swiglu_fused_f32_to_bf16"));
        Assert.That(OpsLaunchPlans.SwiGluFusedTo16("f16", 0, 0, 0, false, 0, 100), Is.Null);
    }

    [Test]
    public void RmsNormRejectsShortBuffers()
    {
        ThrowsFor("y", () => OpsLaunchPlans.RmsNorm("k", 127, 128, 64, 2, 64, 1e-5f));
        ThrowsFor("x", () => OpsLaunchPlans.RmsNorm("k", 128, 127, 64, 2, 64, 1e-5f));
        ThrowsFor("weight", () => OpsLaunchPlans.RmsNorm("k", 128, 128, 63, 2, 64, 1e-5f));
    }

    // ---- rope -------------------------------------------------------------------------------------------------------

    [Test]
    public void RopeStridesOverEveryToken()
    {
        // rope.cuh: one block per token, grid-stride over tokens; threads over the head pairs.
        foreach (int tokens in Counts(1))
        {
            var p = OpsLaunchPlans.Rope((long)tokens * 32 * 128, (long)tokens * 8 * 128, tokens, 64, tokens, 32, 8, 128)!.Value;
            Assert.That(p.Kernel, Is.EqualTo("rope_f32"));
            WithinLimits(p);
            Strides(p.GridX, tokens, MaxGridYZ, $"{tokens} tokens");
        }
        Assert.That(OpsLaunchPlans.Rope(7 * 4 * 64, -1, 7, 32, 7, 4, 0, 64), Is.Not.Null, "k may be absent when there are no kv heads");
    }

    [TestCase(0)]
    [TestCase(127)]
    [TestCase(514)]
    public void RopeRejectsUnsupportedHeadDims(int headDim)
    {
        ThrowsFor("headDim", () => OpsLaunchPlans.Rope(1 << 20, 1 << 20, 1, 1024, 1, 1, 1, headDim));
    }

    [Test]
    public void RopeRejectsShortBuffersAndAMissingK()
    {
        ThrowsFor("q", () => OpsLaunchPlans.Rope(7 * 32 * 128 - 1, 7 * 8 * 128, 7, 64, 7, 32, 8, 128));
        ThrowsFor("k", () => OpsLaunchPlans.Rope(7 * 32 * 128, 7 * 8 * 128 - 1, 7, 64, 7, 32, 8, 128));
        ThrowsFor("k", () => OpsLaunchPlans.Rope(7 * 32 * 128, -1, 7, 64, 7, 32, 8, 128));
        ThrowsFor("positions", () => OpsLaunchPlans.Rope(7 * 32 * 128, 7 * 8 * 128, 6, 64, 7, 32, 8, 128));
        ThrowsFor("invFreq", () => OpsLaunchPlans.Rope(7 * 32 * 128, 7 * 8 * 128, 7, 63, 7, 32, 8, 128));
        ThrowsFor("numKvHeads", () => OpsLaunchPlans.Rope(0, 0, 0, 64, 0, 32, -8, 128));
    }

    /// <summary>rope_kv_append with every buffer as large as T tokens of 32/8 heads, d 128, 64 slots need (f16 cache, separate q, k, v).</summary>
    private static KernelLaunch? RopeKvAppend(int tokens, long q = -2, long k = -2, long v = -2, long kCache = -2, long slots = -2, int kvHeads = 8,
        int qStride = 32 * 128, int kvStride = -2)
    {
        int kvd = kvHeads * 128;
        kvStride = kvStride == -2 ? kvd : kvStride;
        long Rows(long stride, int width) => tokens == 0 ? 0 : (tokens - 1L) * stride + width;
        return OpsLaunchPlans.RopeKvAppend("f16", (long)tokens * 32 * 128, q == -2 ? Rows(qStride, 32 * 128) : q, k == -2 ? Rows(kvStride, kvd) : k,
            v == -2 ? Rows(kvStride, kvd) : v, qStride, kvStride, kCache == -2 ? 64L * kvd : kCache, 64L * kvd, tokens, 64, slots == -2 ? tokens : slots,
            tokens, 32, kvHeads, 128, 64);
    }

    [Test]
    public void RopeKvAppendStridesOverEveryTokenAsRopeDoes()
    {
        foreach (int tokens in Counts(1))
            foreach (int stride in new[] { 32 * 128, 48 * 128 }) // separate q, k, v; one q|k|v GEMM's rows
            {
                var p = RopeKvAppend(tokens, qStride: stride, kvStride: stride == 32 * 128 ? -2 : stride)!.Value;
                Assert.That(p.Kernel, Is.EqualTo("rope_kv_append_f16"));
                WithinLimits(p);
                Strides(p.GridX, tokens, MaxGridYZ, $"{tokens} tokens");
                Assert.That(p.BlockX % 32, Is.EqualTo(0u));
            }
        Assert.That(RopeKvAppend(0), Is.Null, "no tokens: no launch");
    }

    [Test]
    public void RopeKvAppendChecksWhatRopeAndKvAppendCheckAndTheStrides()
    {
        ThrowsFor("q", () => RopeKvAppend(7, q: 7 * 32 * 128 - 1));
        ThrowsFor("k", () => RopeKvAppend(7, k: 7 * 8 * 128 - 1));
        ThrowsFor("v", () => RopeKvAppend(7, v: 7 * 8 * 128 - 1));
        ThrowsFor("v", () => RopeKvAppend(7, v: 7 * 8 * 128, kvStride: 48 * 128)); // strided rows reach further than dense ones
        ThrowsFor("kCache", () => RopeKvAppend(7, kCache: 64 * 8 * 128 - 1));
        ThrowsFor("slots", () => RopeKvAppend(7, slots: 6));
        ThrowsFor("numKvHeads", () => RopeKvAppend(7, kvHeads: 0));
        ThrowsFor("qStride", () => RopeKvAppend(7, qStride: 32 * 128 - 1));
        ThrowsFor("kvStride", () => RopeKvAppend(7, k: 7 * 8 * 128, v: 7 * 8 * 128, kvStride: 8 * 128 - 1));
        ThrowsFor("headDim", () => OpsLaunchPlans.RopeKvAppend("f16", 1 << 20, 1 << 20, 1 << 20, 1 << 20, 1, 1, 1 << 20, 1 << 20, 1, 1024, 1, 1, 1, 1, 127, 1));
    }

    // ---- swiglu -----------------------------------------------------------------------------------------------------

    [Test]
    public void SwiGluGridTilesColumnsInXAndStridesOverTokensInY()
    {
        // swiglu.cuh: blockIdx.x covers columns, one element per thread (blockDim.x columns a block); blockIdx.y
        // grid-strides over rows.
        foreach (int tokens in new[] { 1, 7, 64, 65535, 70_000 })
            foreach (int inter in new[] { 1, 100, 255, 256, 257, 14336 })
            {
                long n = (long)tokens * inter;
                if (2 * n > int.MaxValue) continue;
                foreach (var p in new[] { OpsLaunchPlans.SwiGlu(n, n, n, tokens, inter)!.Value, OpsLaunchPlans.SwiGluFused(n, 2 * n, false, tokens, inter)!.Value })
                {
                    WithinLimits(p);
                    Tiles(p.GridX, inter, p.BlockX, $"{p.Kernel}: {inter} columns");
                    Strides(p.GridY, tokens, MaxGridYZ, $"{p.Kernel}: {tokens} rows");
                }
            }
    }

    [Test]
    public void SwiGluRejectsShortBuffersAndFusedInPlace()
    {
        ThrowsFor("output", () => OpsLaunchPlans.SwiGlu(99, 100, 100, 1, 100));
        ThrowsFor("gate", () => OpsLaunchPlans.SwiGlu(100, 99, 100, 1, 100));
        ThrowsFor("up", () => OpsLaunchPlans.SwiGlu(100, 100, 99, 1, 100));
        ThrowsFor("inter", () => OpsLaunchPlans.SwiGlu(100, 100, 100, 1, -100));
        ThrowsFor("gateUp", () => OpsLaunchPlans.SwiGluFused(100, 199, false, 1, 100));
        ThrowsFor("output", () => OpsLaunchPlans.SwiGluFused(200, 200, true, 1, 100));
    }

    // ---- residual_add -----------------------------------------------------------------------------------------------

    [TestCase(1)]
    [TestCase(3)]
    [TestCase(4)]
    [TestCase(1024)]
    [TestCase(1025)]
    [TestCase(64 * 4096)]
    [TestCase(int.MaxValue)]
    public void ResidualAddStridesOverFloat4Steps(int n)
    {
        // residual_add.cuh: each thread step adds 4 floats (the scalar tail aside), the whole grid strides over the
        // steps, so a block takes blockDim.x steps per pass: no block may start past the last step.
        var p = OpsLaunchPlans.ResidualAdd(n, n, n)!.Value;
        Assert.That(p.Kernel, Is.EqualTo("residual_add_f32"));
        WithinLimits(p);
        long steps = (n + 3L) / 4, blocksOfSteps = (steps + p.BlockX - 1) / p.BlockX;
        Strides(p.GridX, blocksOfSteps, MaxGridYZ, $"{steps} float4 steps in blocks of {p.BlockX}");
    }

    [Test]
    public void BiasAddCoversEveryColumnAndRow()
    {
        var p = OpsLaunchPlans.BiasAdd(70000L * 300, 300, 70000, 300)!.Value;
        Assert.That(p.Kernel, Is.EqualTo("bias_add_f32"));
        Assert.That(p.GridX * p.BlockX, Is.GreaterThanOrEqualTo(300u), "a thread per column");
        Assert.That(p.GridY, Is.EqualTo(65535u), "rows past the grid's y limit by grid stride");
        Assert.That(OpsLaunchPlans.BiasAdd(0, 300, 0, 300), Is.Null);
        Assert.Throws<ArgumentException>(() => OpsLaunchPlans.BiasAdd(10L * 300 - 1, 300, 10, 300));
        Assert.Throws<ArgumentException>(() => OpsLaunchPlans.BiasAdd(10L * 300, 299, 10, 300));
    }

    [Test]
    public void FusedGemvsCoverEveryFeatureOfEachMatrix()
    {
        // dense_gemv.cuh: a block per 4 output features and 4 x rows, 256 threads; q|k|v lays q's blocks, then k's, v's.
        var qkv = OpsLaunchPlans.DenseGemvQkv("f16", 4096, 1024, 1024, 4096, 4096L * 4096, 1024L * 4096, 1024L * 4096, -1, -1, -1, 1, 4096, 1024, 4096)!.Value;
        Assert.That((qkv.Kernel, qkv.GridX, qkv.GridY, qkv.BlockX), Is.EqualTo(("dense_gemv_qkv_f16", 1024u + 2 * 256u, 1u, 256u)));
        var odd = OpsLaunchPlans.DenseGemvQkv("bf16", 6L * 1001, 6L * 3, 6L * 3, 6L * 520, 1001L * 520, 3L * 520, 3L * 520, 1001, 3, 3, 6, 1001, 3, 520)!.Value;
        Assert.That((odd.GridX, odd.GridY), Is.EqualTo((251u + 2u, 2u)), "partial feature blocks and row groups round up");
        var swiglu = OpsLaunchPlans.DenseGemvSwiGlu("f16", 14336, 4096, 14336L * 4096, 14336L * 4096, 1, 14336, 4096)!.Value;
        Assert.That((swiglu.Kernel, swiglu.GridX), Is.EqualTo(("dense_gemv_swiglu_f16", 3584u)));
        var residual = OpsLaunchPlans.DenseGemvResidual("bf16", 4L * 4096, 4L * 14336, 4096L * 14336, 4, 4096, 14336)!.Value;
        Assert.That((residual.Kernel, residual.GridX, residual.GridY), Is.EqualTo(("dense_gemv_residual_bf16", 1024u, 1u)));
        Assert.That(OpsLaunchPlans.DenseGemvSwiGlu("f16", 0, 0, 14336L * 4096, 14336L * 4096, 0, 14336, 4096), Is.Null, "no rows: no launch");
        Assert.Throws<ArgumentException>(() => OpsLaunchPlans.DenseGemvQkv("f16", 4096, 1024, 1023, 4096, 4096L * 4096, 1024L * 4096, 1024L * 4096, -1, -1, -1, 1, 4096, 1024, 4096));
        Assert.Throws<ArgumentException>(() => OpsLaunchPlans.DenseGemvQkv("f16", 4096, 1024, 1024, 4096, 4096L * 4096, 1024L * 4096, 1024L * 4096, 4096, 1024, 1023, 1, 4096, 1024, 4096));
        Assert.Throws<ArgumentException>(() => OpsLaunchPlans.DenseGemvResidual("f16", 4096, 4095, 4096L * 4096, 1, 4096, 4096));
        Assert.Throws<ArgumentOutOfRangeException>(() => OpsLaunchPlans.DenseGemvSwiGlu("f16", 1, 1, 1, 1, 1, 1, 0));
    }
}
