// The launchers' validation and grid/block choice (OpsLaunchPlans), which runs before any driver call: no GPU needed.
using Kernels.Runtime.Backends.Cuda;

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
    public void EmbeddingGatherLaunchesOneBlockPerTokenCappedAt65535()
    {
        var p = OpsLaunchPlans.EmbeddingGather("embedding_gather_f16", 7 * 64, 1000 * 64, 7, 7, 64, 1000)!.Value;
        Assert.That(p, Is.EqualTo(new KernelLaunch("embedding_gather_f16", 7, 1, 256)));
        var big = OpsLaunchPlans.EmbeddingGather("embedding_gather_f32", 100_000L * 8, 8, 100_000, 100_000, 8, 1)!.Value;
        Assert.That(big.GridX, Is.EqualTo(65535u));
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
    public void RmsNormBlockIsAFixedFunctionOfDim()
    {
        Assert.That(OpsLaunchPlans.RmsNorm("rms_norm_bf16", 64 * 4096, 64 * 4096, 4096, 64, 4096, 1e-5f)!.Value,
            Is.EqualTo(new KernelLaunch("rms_norm_bf16", 64, 1, 256)));
        Assert.That(OpsLaunchPlans.RmsNorm("rms_norm_f32", 8192, 8192, 8192, 1, 8192, 1e-5f)!.Value.BlockX, Is.EqualTo(1024u));
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
    public void RmsNormRejectsShortBuffers()
    {
        ThrowsFor("y", () => OpsLaunchPlans.RmsNorm("k", 127, 128, 64, 2, 64, 1e-5f));
        ThrowsFor("x", () => OpsLaunchPlans.RmsNorm("k", 128, 127, 64, 2, 64, 1e-5f));
        ThrowsFor("weight", () => OpsLaunchPlans.RmsNorm("k", 128, 128, 63, 2, 64, 1e-5f));
    }

    // ---- rope -------------------------------------------------------------------------------------------------------

    [Test]
    public void RopeLaunchesOneBlockOf128PerToken()
    {
        Assert.That(OpsLaunchPlans.Rope(7 * 32 * 128, 7 * 8 * 128, 7, 64, 7, 32, 8, 128)!.Value, Is.EqualTo(new KernelLaunch("rope_f32", 7, 1, 128)));
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

    // ---- swiglu -----------------------------------------------------------------------------------------------------

    [Test]
    public void SwiGluGridCoversColumnsInXAndTokensInY()
    {
        Assert.That(OpsLaunchPlans.SwiGlu(64 * 14336, 64 * 14336, 64 * 14336, 64, 14336)!.Value,
            Is.EqualTo(new KernelLaunch("swiglu_f32", 56, 64, 256)));
        Assert.That(OpsLaunchPlans.SwiGluFused(7 * 100, 7 * 200, false, 7, 100)!.Value,
            Is.EqualTo(new KernelLaunch("swiglu_fused_f32", 1, 7, 256)));
        Assert.That(OpsLaunchPlans.SwiGlu(70_000L * 64, 70_000L * 64, 70_000L * 64, 70_000, 64)!.Value.GridY, Is.EqualTo(65535u));
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

    [TestCase(1, 1u)]
    [TestCase(1024, 1u)]
    [TestCase(1025, 2u)]
    [TestCase(64 * 4096, 256u)]
    [TestCase(int.MaxValue, 65535u)]
    public void ResidualAddGridCountsFloat4Steps(int n, uint grid)
    {
        Assert.That(OpsLaunchPlans.ResidualAdd(n, n, n)!.Value, Is.EqualTo(new KernelLaunch("residual_add_f32", grid, 1, 256)));
    }

    [Test]
    public void ResidualAddRejectsShortBuffers()
    {
        ThrowsFor("x", () => OpsLaunchPlans.ResidualAdd(9, 10, 10));
        ThrowsFor("y", () => OpsLaunchPlans.ResidualAdd(10, 9, 10));
        ThrowsFor("n", () => OpsLaunchPlans.ResidualAdd(10, 10, -1));
    }
}
