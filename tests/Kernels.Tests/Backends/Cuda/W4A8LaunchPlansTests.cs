// Launch plans of W4A8 (w4a8_gemm_*, rms_norm_quant_int8_*): shape validation and grid choice, no GPU needed.
using Kernels.Runtime.Backends.Cuda;
using static Kernels.Tests.Backends.Cuda.LaunchProperties;

namespace Kernels.Tests.Backends.Cuda;

public class W4A8LaunchPlansTests
{
    private static void ThrowsFor(string argument, TestDelegate call, string? why = null)
    {
        var e = Assert.Catch<ArgumentException>(call, why ?? "")!;
        Assert.That(e.ParamName, Is.EqualTo(argument), why + ": " + e.Message);
    }

    /// <summary>A plan with every buffer exactly as large as the shape needs.</summary>
    private static KernelLaunch? Gemm(int m, int n, int k, int group, long? xSum = null)
    {
        int nPad = (n + 31) / 32 * 32, kPad = (k + 31) / 32 * 32;
        long table = group > 0 ? (long)(k / Math.Max(group, 1)) * nPad : n;
        return OpsLaunchPlans.W4A8Gemm((long)m * n, (long)m * kPad, m, xSum ?? m, (long)nPad * kPad / 2, n, group > 0 ? table : -1, table, m, n, k, group);
    }

    [Test]
    public void GemmTilesEveryOutputChannelAndRowWithThe16RowCtaUpTo16Rows()
    {
        // w4a8_gemm.cuh: a CTA of 4 warps (128 threads) computes 128 padded output channels (grid x) for CTA_M rows
        // (grid y), CTA_M = 16 in the _m16 entries and 64 in _m64; _group when the weights carry group scales.
        foreach (int m in new[] { 1, 5, 15, 16, 17, 63, 64, 65, 100, 4096 })
            foreach (var (n, k, group) in new[] { (28672, 4096, 128), (4096, 14336, 0), (6144, 4096, 128), (100, 176, 0), (160, 64, 32), (127, 64, 0), (129, 64, 0) })
            {
                var p = Gemm(m, n, k, group)!.Value;
                int ctaM = m <= 16 ? 16 : 64;
                Assert.That(p.Kernel, Is.EqualTo($"w4a8_gemm_{(group > 0 ? "group" : "channel")}_m{ctaM}"), $"M {m}, group {group}");
                WithinLimits(p);
                Assert.That(p.BlockX, Is.EqualTo(128u), "4 warps: the kernel's warp-to-channel map assumes it");
                Tiles(p.GridX, OpsLaunchPlans.W4A8Padded(n), OpsLaunchPlans.W4A8CtaN, $"{n} channels (padded to 32)");
                Tiles(p.GridY, m, ctaM, $"{m} rows");
            }
    }

    [Test]
    public void GemmSkipsEmptyLaunches()
    {
        Assert.That(Gemm(0, 4096, 4096, 128), Is.Null);
        Assert.That(Gemm(4, 0, 4096, 0), Is.Null);
    }

    [Test]
    public void GemmChecksKAndTheGroup()
    {
        ThrowsFor("k", () => Gemm(1, 64, 0, 0));
        ThrowsFor("k", () => Gemm(1, 64, OpsLaunchPlans.W4A8MaxK + 32, 0));
        ThrowsFor("groupSize", () => Gemm(1, 64, 4096, 100));
        ThrowsFor("groupSize", () => Gemm(1, 64, 4096 + 64, 128));
        ThrowsFor("groupSize", () => Gemm(1, 64, 4096, -32));
    }

    [Test]
    public void GemmChecksEveryBuffer()
    {
        // Per channel: m = 3, n = 40 (Npad 64), k = 200 (Kpad 224); per group below with K = 256, groups of 64.
        const int M = 3, N = 40, K = 200, NPad = 64, KPad = 224;
        KernelLaunch? Channel(long y = M * N, long xq = M * KPad, long xs = M, long xsum = M, long q = NPad * KPad / 2, long ws = N, long z = N) =>
            OpsLaunchPlans.W4A8Gemm(y, xq, xs, xsum, q, ws, -1, z, M, N, K, 0);
        Assert.That(Channel(), Is.Not.Null);
        ThrowsFor("y", () => Channel(y: M * N - 1));
        ThrowsFor("xq", () => Channel(xq: M * K), "xq rows are Kpad wide");
        ThrowsFor("xScale", () => Channel(xs: M - 1));
        ThrowsFor("xSum", () => Channel(xsum: M - 1));
        ThrowsFor("xSum", () => Channel(xsum: -1));
        ThrowsFor("qweight", () => Channel(q: NPad * KPad / 2 - 1));
        ThrowsFor("wScale", () => Channel(ws: N - 1));
        ThrowsFor("zeros", () => Channel(z: N - 1));

        const int G = 64, KG = 256, Groups = KG / G;
        KernelLaunch? Group(long s2 = Groups * NPad, long z = Groups * NPad, long xsum = -1) =>
            OpsLaunchPlans.W4A8Gemm(M * N, M * KG, M, xsum, NPad * KG / 2, N, s2, z, M, N, KG, G);
        Assert.That(Group(), Is.Not.Null, "per group the activation sums are optional");
        ThrowsFor("scales2", () => Group(s2: -1));
        ThrowsFor("scales2", () => Group(s2: Groups * N), "the tables are Npad wide");
        ThrowsFor("zeros", () => Group(z: Groups * NPad - 1));
        ThrowsFor("xSum", () => Group(xsum: M - 1));
    }

    [Test]
    public void GemmCapsTheRowGrid()
    {
        ThrowsFor("m", () => OpsLaunchPlans.W4A8Gemm(long.MaxValue, long.MaxValue, long.MaxValue, long.MaxValue, long.MaxValue, long.MaxValue, -1,
            long.MaxValue, 65536 * 64 + 1, 1, 32, 0));
    }

    [Test]
    public void KernelNamesFollowTheExports()
    {
        Assert.That(OpsLauncher.W4A8GemmKernel(16, 128), Is.EqualTo("w4a8_gemm_group_m16"));
        Assert.That(OpsLauncher.W4A8GemmKernel(17, 0), Is.EqualTo("w4a8_gemm_channel_m64"));
    }

    // ---- rms_norm_quant_int8 ----------------------------------------------------------------------------------------

    private static KernelLaunch? NormQuant(int t, int d, int dp, float eps = 1e-5f, long? xq = null, long? xs = null, long? xsum = null, long? x = null, long? w = null) =>
        OpsLaunchPlans.RmsNormQuantInt8("rms_norm_quant_int8_f16", xq ?? (long)t * dp, xs ?? t, xsum ?? t, x ?? (long)t * d, w ?? d, t, d, dp, eps);

    [Test]
    public void NormQuantStridesOverRows()
    {
        // rms_norm_quant.cuh: as rms_norm, one block per row, grid-stride (its block equals rms_norm's for the same
        // dim: OpsLaunchPlansTests.RmsNormStridesOverRowsWithABlockThatDependsOnlyOnDim).
        foreach (var (t, d, dp) in new[] { (7, 4096, 4096), (3, 14336, 14336), (100_000, 67, 96), (65535, 64, 64), (1, 1, 32) })
        {
            var p = NormQuant(t, d, dp)!.Value;
            Assert.That(p.Kernel, Is.EqualTo("rms_norm_quant_int8_f16"));
            WithinLimits(p);
            Strides(p.GridX, t, MaxGridYZ, $"{t} rows");
        }
        Assert.That(NormQuant(0, 64, 64), Is.Null);
    }

    [Test]
    public void NormQuantChecksItsArguments()
    {
        ThrowsFor("dimPadded", () => NormQuant(1, 67, 64));
        ThrowsFor("dimPadded", () => NormQuant(1, 67, 80));
        ThrowsFor("dim", () => NormQuant(1, OpsLaunchPlans.RmsNormQuantMaxDim + 1, 132032));
        ThrowsFor("dim", () => NormQuant(1, 0, 32));
        ThrowsFor("eps", () => NormQuant(1, 64, 64, eps: 0));
        ThrowsFor("xq", () => NormQuant(2, 67, 96, xq: 2 * 67));
        ThrowsFor("xScale", () => NormQuant(2, 64, 64, xs: 1));
        ThrowsFor("xSum", () => NormQuant(2, 64, 64, xsum: 1));
        ThrowsFor("x", () => NormQuant(2, 64, 64, x: 127));
        ThrowsFor("weight", () => NormQuant(2, 64, 64, w: 63));
    }

    [Test]
    public void QuantizeTakesTheNormQuantPlanForTheSameShape()
    {
        // quantize_int8_f32 shares rms_norm_quant_int8's quantization and must reduce its code sum the same way.
        foreach (var (t, d, dp) in new[] { (7, 4096, 4096), (3, 14336, 14336), (100_000, 67, 96), (1, 1, 32) })
        {
            var p = OpsLaunchPlans.QuantizeInt8((long)t * dp, t, t, (long)t * d, t, d, dp)!.Value;
            Assert.That(p.Kernel, Is.EqualTo("quantize_int8_f32"));
            Assert.That(p with { Kernel = "rms_norm_quant_int8_f16" }, Is.EqualTo(NormQuant(t, d, dp)!.Value));
        }
        ThrowsFor("dimPadded", () => OpsLaunchPlans.QuantizeInt8(64, 1, 1, 67, 1, 67, 64));
        ThrowsFor("x", () => OpsLaunchPlans.QuantizeInt8(128, 2, 2, 127, 2, 64, 64));
        Assert.That(OpsLaunchPlans.QuantizeInt8(0, 0, 0, 0, 0, 64, 64), Is.Null);
    }

    // ---- w4a8_gemm_*_splitk ------------------------------------------------------------------------------------------

    private static OpsLaunchPlans.W4A8SplitPlan? SplitK(int m, int n, int k, int group, long workspace, int target = 264)
    {
        int nPad = OpsLaunchPlans.W4A8Padded(n), kPad = OpsLaunchPlans.W4A8Padded(k);
        long table = group > 0 ? (long)(k / group) * nPad : n;
        return OpsLaunchPlans.W4A8GemmSplitK((long)m * n, (long)m * kPad, m, group > 0 ? -1 : m, (long)nPad * kPad / 2, n, group > 0 ? table : -1, table,
            workspace, m, n, k, group, target);
    }

    [TestCase(6144, 4096, 48, 6)]    // qkv: 48 CTAs, K split 6 ways (32 stages of 4 tiles, 6 each but the last) to pass 264
    [TestCase(4096, 14336, 32, 9)]   // down: 32 CTAs x 9 splits (112 stages, 13 each)
    [TestCase(28672, 4096, 224, 2)]  // gate_up: 224 CTAs already, two splits reach 264
    public void KIsSplitOnStageBoundariesUntilTheGridFillsTheGpu(int n, int k, int ctas, int splits)
    {
        var p = SplitK(1, n, k, 128, 1L << 30)!.Value;
        Assert.That((p.Gemm.GridX, p.Gemm.GridY, p.Splits), Is.EqualTo(((uint)ctas, (uint)splits, splits)));
        Assert.That(p.Gemm.Kernel, Is.EqualTo("w4a8_gemm_group_splitk"));
        Assert.That(p.TilesPerSplit % OpsLaunchPlans.W4A8SplitTilesPerStage, Is.Zero, "splits start on a pipeline stage");
        Assert.That((long)p.TilesPerSplit * (p.Splits - 1), Is.LessThan(k / 32), "no split is empty");
        Assert.That((long)p.TilesPerSplit * p.Splits, Is.GreaterThanOrEqualTo(k / 32), "the splits cover K");
        Assert.That(p.Reduce?.Kernel, Is.EqualTo("w4a8_splitk_reduce"));
        Assert.That(p.WorkspaceInts, Is.EqualTo((long)splits * n));
    }

    [Test]
    public void ASmallWorkspaceOrAShortKMeansFewerSplitsAndOneSplitNeedsNoReduce()
    {
        var tight = SplitK(16, 4096, 4096, 128, workspace: 2L * 16 * 4096)!.Value;
        Assert.That(tight.Splits, Is.LessThanOrEqualTo(2));
        var none = SplitK(16, 4096, 4096, 0, workspace: 0)!.Value;
        Assert.That((none.Splits, none.Reduce, none.WorkspaceInts), Is.EqualTo((1, (KernelLaunch?)null, 0L)));
        Assert.That(none.Gemm.Kernel, Is.EqualTo("w4a8_gemm_channel_splitk"));
        var shortK = SplitK(1, 4096, 96, 32, 1L << 30)!.Value; // 3 k tiles: one stage, one split
        Assert.That(shortK.Splits, Is.EqualTo(1));
        ThrowsFor("m", () => SplitK(17, 4096, 4096, 128, 1L << 30));
        Assert.That(SplitK(0, 4096, 4096, 128, 1L << 30), Is.Null);
    }
}
