// Launch plans of the model kernels (dense_gemm, paged attention, attention_merge, sample_tokens) and the GPU sampler's
// RNG state: shape validation and grid choice run before any driver call, so no GPU is needed.
using Kernels.Runtime.Backends.Cuda;
using Kernels.Runtime.Engine;
using static Kernels.Tests.Backends.Cuda.LaunchProperties;

namespace Kernels.Tests.Backends.Cuda;

public class ModelLaunchPlansTests
{
    private static void ThrowsFor(string argument, TestDelegate call)
    {
        var e = Assert.Catch<ArgumentException>(call)!;
        Assert.That(e.ParamName, Is.EqualTo(argument), e.Message);
    }

    // ---- dense_gemm -------------------------------------------------------------------------------------------------

    /// <summary>
    /// Output tile (rows x features) of each dense entry and its block, from the kernels' headers: dense_gemv 4 x 4 with
    /// 256 threads (dense_gemv.cuh), dense_gemm_small_m BM 16 x BN 16 with 128, dense_gemm BM 64 x BN 128 with 256
    /// (dense_gemm.cuh).
    /// </summary>
    private static (int Rows, int Features, uint Threads) DenseTile(string kernel) =>
        kernel.StartsWith("dense_gemv_") ? (4, 4, 256u) : kernel.StartsWith("dense_gemm_small_m_") ? (16, 16, 128u) : (64, 128, 256u);

    [Test]
    public void GemmPicksTheGemvUpTo4RowsTheDecodeTileUpTo16AndThePrefillTileAboveAndTilesTheOutput()
    {
        foreach (var suffix in new[] { "f16", "bf16" })
            foreach (int m in new[] { 1, 3, 4, 5, 15, 16, 17, 63, 64, 65, 1000 })
                foreach (var (n, k) in new[] { (4096, 4096), (6145, 4096), (6144, 4096), (1001, 8), (1, 8), (129, 64), (64, 172) })
                {
                    var p = OpsLaunchPlans.DenseGemm(suffix, (long)m * n, (long)m * k, (long)n * k, -1, m, n, k)!.Value;
                    string expected = m <= 4 || k % 8 != 0 ? "dense_gemv" : m <= 16 ? "dense_gemm_small_m" : "dense_gemm";
                    Assert.That(p.Kernel, Is.EqualTo($"{expected}_{suffix}"), $"M {m}, K {k}: the gemv up to 4 rows or when K % 8 != 0, the decode tile up to 16");
                    WithinLimits(p);
                    var (rows, features, threads) = DenseTile(p.Kernel);
                    Assert.That(p.BlockX, Is.EqualTo(threads), p.Kernel);
                    Tiles(p.GridX, n, features, $"{p.Kernel}: {n} features");
                    Tiles(p.GridY, m, rows, $"{p.Kernel}: {m} rows");
                }
    }

    [TestCase(0)]
    [TestCase(-8)]
    public void GemmNeedsAPositiveK(int k)
    {
        ThrowsFor("k", () => OpsLaunchPlans.DenseGemm("f16", 1 << 20, 1 << 20, 1 << 20, -1, 1, 64, k));
    }

    [Test]
    public void KNotAMultipleOf8GoesToTheGemvForAnyRowCount()
    {
        // The tensor-core tiles copy W in 16-byte chunks; stories260K's FFN (K = 172) still runs, 4 rows per block row.
        var p = OpsLaunchPlans.DenseGemm("f16", 100L * 64, 100L * 172, 64L * 172, -1, 100, 64, 172)!.Value;
        Assert.That(p.Kernel, Is.EqualTo("dense_gemv_f16"));
        Tiles(p.GridX, 64, 4, "features");
        Tiles(p.GridY, 100, 4, "rows");
        Assert.That(OpsLaunchPlans.DenseGemmKernel("bf16", 100, 4096), Is.EqualTo("dense_gemm_bf16"));
        Assert.That(OpsLaunchPlans.DenseGemmKernel("bf16", 12, 4096), Is.EqualTo("dense_gemm_small_m_bf16"));
    }

    [Test]
    public void GemmRejectsShortBuffersAndSkipsEmptyOutputs()
    {
        ThrowsFor("y", () => OpsLaunchPlans.DenseGemm("f16", 2 * 64 - 1, 2 * 32, 64 * 32, -1, 2, 64, 32));
        ThrowsFor("x", () => OpsLaunchPlans.DenseGemm("f16", 2 * 64, 2 * 32 - 1, 64 * 32, -1, 2, 64, 32));
        ThrowsFor("w", () => OpsLaunchPlans.DenseGemm("f16", 2 * 64, 2 * 32, 64 * 32 - 1, -1, 2, 64, 32));
        ThrowsFor("bias", () => OpsLaunchPlans.DenseGemm("f16", 2 * 64, 2 * 32, 64 * 32, 63, 2, 64, 32));
        ThrowsFor("m", () => OpsLaunchPlans.DenseGemm("f16", 0, 0, 64 * 32, -1, -1, 64, 32));
        Assert.That(OpsLaunchPlans.DenseGemm("f16", 0, 0, 64 * 32, -1, 0, 64, 32), Is.Null);
        Assert.That(OpsLaunchPlans.DenseGemm("f16", 0, 32, 0, -1, 1, 0, 32), Is.Null);
    }

    // ---- paged decode attention -------------------------------------------------------------------------------------

    private static DecodeAttentionPlan? Decode(int seqs, int heads, int kvHeads, int d, int maxSeqLen, long workspace, int sms = 132,
        int blockSize = 16, int maxBlocks = 512, int numBlocks = 4096) =>
        OpsLaunchPlans.PagedDecodeAttention("f16", (long)seqs * heads * d, (long)seqs * heads, (long)seqs * heads * d,
            (long)numBlocks * blockSize * kvHeads * d, (long)numBlocks * blockSize * kvHeads * d, (long)seqs * maxBlocks, seqs, workspace,
            seqs, heads, kvHeads, d, blockSize, maxBlocks, numBlocks, maxSeqLen, sms);

    [Test]
    public void TheTiledDecodeEntryTakesTheSamePlanWhereItExistsAndTheCudaCoreOneElsewhere()
    {
        // paged_decode_attention_tiled.cuh shares the contract: the same grid, block, splits and merge; only the entry differs.
        foreach (string suffix in new[] { "f32", "f16", "bf16" })
            foreach (int d in new[] { 32, 64, 128, 256 })
            {
                DecodeAttentionPlan Plan(bool tiled) => OpsLaunchPlans.PagedDecodeAttention(suffix, 4L * 32 * d, 4 * 32, 4L * 32 * d, 4096L * 16 * 8 * d,
                    4096L * 16 * 8 * d, 4 * 512, 4, 1L << 30, 4, 32, 8, d, 16, 512, 4096, 3000, 132, tiled)!.Value;
                var plain = Plan(false);
                var tiled = Plan(true);
                bool has = suffix != "f32" && d is 64 or 128;
                Assert.That(OpsLaunchPlans.TiledDecodeSupports(suffix, d), Is.EqualTo(has));
                Assert.That(tiled.Attention.Kernel, Is.EqualTo(has ? $"paged_decode_attention_tiled_hd{d}_{suffix}" : plain.Attention.Kernel), $"{suffix} d={d}");
                Assert.That(tiled with { Attention = tiled.Attention with { Kernel = plain.Attention.Kernel } }, Is.EqualTo(plain), $"{suffix} d={d}: the same launch otherwise");
            }
    }

    /// <summary>
    /// What any decode plan must satisfy (paged_decode_attention.cuh): the grid covers every (kv head, chunk of 4 query
    /// heads) and sequence once; split z takes keys [z * tps, (z + 1) * tps), the last one up to L_s, so the splits
    /// cover [0, L_s) exactly once for every L_s &lt;= maxSeqLen and none starts past maxSeqLen; at most
    /// DecodeMaxSplits, no more than ceil(maxSeqLen / DecodeMinTokensPerSplit), partials within the workspace; the merge
    /// launched exactly when there are partials, striding over every (sequence, head) row.
    /// </summary>
    private static DecodeAttentionPlan CheckDecode(int seqs, int heads, int kvHeads, int maxSeqLen, long workspace, int sms = 132)
    {
        var plan = Decode(seqs, heads, kvHeads, 128, maxSeqLen, workspace, sms)!.Value;
        var a = plan.Attention;
        string what = $"{seqs} seqs x {heads}/{kvHeads} heads, {maxSeqLen} keys, workspace {workspace}, {sms} SMs";
        WithinLimits(a);
        Assert.That(a.Kernel, Is.EqualTo("paged_decode_attention_hd128_f16"));
        Assert.That(a.BlockX, Is.EqualTo(128u), "4 warps");
        // One block per (kv head, chunk of query heads); GqaGroupsCoverEveryQueryHeadOnceInChunksOfAtMostFour checks the chunks.
        Tiles(a.GridX, kvHeads * (long)OpsLaunchPlans.DecodeHeadChunks(heads, kvHeads), 1, what + ": (kv head, chunk) pairs");
        Tiles(a.GridY, seqs, 1, what + ": sequences");
        Assert.That(a.GridZ, Is.EqualTo((uint)plan.NumSplits), what);
        Assert.That(plan.NumSplits, Is.InRange(1, OpsLaunchPlans.DecodeMaxSplits), what);
        Assert.That(plan.NumSplits, Is.LessThanOrEqualTo(Math.Max(1, (maxSeqLen + OpsLaunchPlans.DecodeMinTokensPerSplit - 1) / OpsLaunchPlans.DecodeMinTokensPerSplit)), what + ": a split has enough keys");
        int tps = plan.TokensPerSplit;
        foreach (int length in new[] { 0, 1, tps - 1, tps, tps + 1, maxSeqLen - 1, maxSeqLen }.Where(l => l >= 0 && l <= maxSeqLen))
        {
            var covered = new int[length];
            for (int z = 0; z < plan.NumSplits; z++)
            {
                int end = z == plan.NumSplits - 1 ? length : Math.Min(length, (z + 1) * plan.TokensPerSplit);
                for (int t = z * plan.TokensPerSplit; t < end; t++) covered[t]++;
            }
            Assert.That(covered, Is.All.EqualTo(1), $"{what}: every key of a {length}-key sequence in exactly one split");
        }
        if (plan.NumSplits > 1) Tiles((uint)plan.NumSplits, maxSeqLen, plan.TokensPerSplit, what + ": no empty split");
        if (plan.NumSplits > 1)
        {
            Assert.That(OpsLaunchPlans.DecodeWorkspaceFloats(seqs, heads, 128, plan.NumSplits), Is.LessThanOrEqualTo(workspace), what + ": partials fit");
            Assert.That(plan.Merge, Is.Not.Null, what);
            WithinLimits(plan.Merge!.Value);
            Strides(plan.Merge!.Value.GridX, (long)seqs * heads, MaxGridYZ, what + ": merge rows");
        }
        else Assert.That(plan.Merge, Is.Null, what + ": one split writes o and lse directly");
        return plan;
    }

    [Test]
    public void DecodeSplitsTheContextOnlyWhenSequencesTimesKvHeadsLeaveSmsIdle()
    {
        foreach (int seqs in new[] { 1, 2, 7, 64, 300 })
            foreach (var (heads, kvHeads) in new[] { (32, 8), (32, 32), (8, 1), (14, 2) })
                foreach (int len in new[] { 1, 100, 255, 256, 257, 4096, 5000, 8192 })
                    foreach (long workspace in new[] { -1L, OpsLaunchPlans.DecodeWorkspaceFloats(seqs, heads, 128, 4), 1L << 30 })
                    {
                        var plan = CheckDecode(seqs, heads, kvHeads, len, workspace);
                        long blocks = (long)plan.Attention.GridX * plan.Attention.GridY;
                        if (blocks >= 2 * 132) Assert.That(plan.NumSplits, Is.EqualTo(1), $"{blocks} blocks already give 132 SMs two each");
                    }
        // Where SMs would idle and nothing else limits it, the context is split (the reason the split exists).
        Assert.That(CheckDecode(1, 32, 8, 4096, 1L << 30).NumSplits, Is.GreaterThan(1), "one sequence, 8 kv heads, 4096 keys on 132 SMs");
        Assert.That(CheckDecode(1, 32, 8, 4096, -1).NumSplits, Is.EqualTo(1), "no workspace: one split");
        Assert.That(CheckDecode(1, 32, 8, 100, 1L << 30).NumSplits, Is.EqualTo(1), "short contexts stay whole");
    }

    [Test]
    public void DecodeRejectsUnsupportedShapes()
    {
        ThrowsFor("headDim", () => Decode(2, 32, 8, 96, 100, -1));
        ThrowsFor("numHeads", () => Decode(2, 36, 8, 128, 100, -1));
        ThrowsFor("numKvHeads", () => Decode(2, 32, 0, 128, 100, -1));
        ThrowsFor("blockSize", () => Decode(2, 32, 8, 128, 100, -1, blockSize: 0));
        ThrowsFor("kCache", () => OpsLaunchPlans.PagedDecodeAttention("f16", 2 * 32 * 128, 64, 2 * 32 * 128, 10, 1 << 30, 2 * 8, 2, -1,
            2, 32, 8, 128, 16, 8, 100, 100, 132));
        ThrowsFor("blockTables", () => OpsLaunchPlans.PagedDecodeAttention("f16", 2 * 32 * 128, 64, 2 * 32 * 128, 1 << 30, 1 << 30, 15, 2, -1,
            2, 32, 8, 128, 16, 8, 100, 100, 132));
        ThrowsFor("lse", () => OpsLaunchPlans.PagedDecodeAttention("f16", 2 * 32 * 128, 63, 2 * 32 * 128, 1 << 30, 1 << 30, 16, 2, -1,
            2, 32, 8, 128, 16, 8, 100, 100, 132));
        Assert.That(Decode(0, 32, 8, 128, 100, -1), Is.Null);
    }

    [TestCase(8)]
    [TestCase(16)]
    [TestCase(32)]
    [TestCase(64)]
    [TestCase(128)]
    [TestCase(256)]
    public void EveryHeadDimHasItsOwnEntry(int d)
    {
        Assert.That(Decode(2, 4, 2, d, 100, -1)!.Value.Attention.Kernel, Is.EqualTo($"paged_decode_attention_hd{d}_f16"));
        var p = OpsLaunchPlans.PagedPrefillAttention("f32", 1 << 20, 1 << 20, 1 << 20, 1 << 30, 1 << 30, 64, 1, 2,
            1, 10, 10, 4, 2, d, 16, 64, 10)!.Value;
        Assert.That(p.Kernel, Is.EqualTo($"paged_prefill_attention_hd{d}_f32"));
    }

    [TestCase(1)]
    [TestCase(3)]
    [TestCase(4)]
    [TestCase(5)]
    [TestCase(8)]
    [TestCase(16)]
    public void GqaGroupsCoverEveryQueryHeadOnceInChunksOfAtMostFour(int group)
    {
        // paged_decode_attention.cuh: block x handles query heads [c * 4, min(G, c * 4 + 4)) of kv head x / chunks.
        const int KvHeads = 2;
        var plan = Decode(3, group * KvHeads, KvHeads, 64, 100, -1)!.Value;
        int chunks = (int)plan.Attention.GridX / KvHeads;
        Assert.That(plan.Attention.GridX % KvHeads, Is.Zero);
        var covered = new int[group * KvHeads];
        for (int x = 0; x < plan.Attention.GridX; x++)
        {
            int kv = x / chunks, c = x % chunks;
            int first = c * OpsLaunchPlans.DecodeHeadsPerBlock, end = Math.Min(group, first + OpsLaunchPlans.DecodeHeadsPerBlock);
            Assert.That(end, Is.GreaterThan(first), $"block {x} has a query head");
            for (int h = first; h < end; h++) covered[kv * group + h]++;
        }
        Assert.That(covered, Is.All.EqualTo(1), "each query head in exactly one block, with its own kv head");
        Assert.That(OpsLaunchPlans.DecodeHeadsPerBlock, Is.EqualTo(4), "kDecodeMaxHeadsPerBlock in the kernel");
    }

    [Test]
    public void MergeAndPrefillPlans()
    {
        foreach (int rows in new[] { 1, 4, 65535, 65536 })
        {
            var merge = OpsLaunchPlans.AttentionMerge((long)rows * 128, rows, (long)rows * 3 * 128, rows * 3L, rows, 3, 128)!.Value;
            Assert.That(merge.Kernel, Is.EqualTo("attention_merge_f32"));
            WithinLimits(merge);
            Strides(merge.GridX, rows, MaxGridYZ, $"{rows} rows"); // one block per (o, lse) row, grid-stride
        }
        ThrowsFor("oPartial", () => OpsLaunchPlans.AttentionMerge(4 * 128, 4, 4 * 3 * 128 - 1, 12, 4, 3, 128));
        ThrowsFor("numSplits", () => OpsLaunchPlans.AttentionMerge(4 * 128, 4, 0, 0, 4, 0, 128));

        var p = OpsLaunchPlans.PagedPrefillAttention("bf16", 100L * 32 * 128, 100 * 32, 100L * 32 * 128, 1 << 30, 1 << 30, 3 * 64, 3, 4,
            3, 100, 70, 32, 8, 128, 16, 64, 1000)!.Value;
        // paged_prefill_attention.cuh: block (x, h, s) takes query rows [16 x, 16 x + 16) of sequence s (those past its
        // own n_s idle, so x must reach the longest), head h.
        Assert.That(p.Kernel, Is.EqualTo("paged_prefill_attention_hd128_bf16"));
        WithinLimits(p);
        Tiles(p.GridX, 70, 16, "query rows of the longest sequence");
        Tiles(p.GridY, 32, 1, "heads");
        Tiles(p.GridZ, 3, 1, "sequences");
        ThrowsFor("headDim", () => OpsLaunchPlans.PagedPrefillAttention("f16", 1 << 20, 1 << 20, 1 << 20, 1 << 30, 1 << 30, 64, 1, 2,
            1, 10, 10, 4, 4, 48, 16, 64, 10));
        ThrowsFor("qStarts", () => OpsLaunchPlans.PagedPrefillAttention("f16", 1 << 20, 1 << 20, 1 << 20, 1 << 30, 1 << 30, 64, 1, 1,
            1, 10, 10, 4, 4, 128, 16, 64, 10));
        ThrowsFor("maxQueryLen", () => OpsLaunchPlans.PagedPrefillAttention("f16", 1 << 20, 1 << 20, 1 << 20, 1 << 30, 1 << 30, 64, 1, 2,
            1, 10, 11, 4, 4, 128, 16, 64, 10));
    }

    // ---- sample_tokens ----------------------------------------------------------------------------------------------

    [Test]
    public void SamplingLaunchesOneBlockPerRow()
    {
        foreach (int rows in new[] { 1, 4, 65536 })
        {
            var p = OpsLaunchPlans.SampleTokens(rows, rows, rows * 1000L, rows, rows, rows, rows, rows, 1000, 1000)!.Value;
            Assert.That(p.Kernel, Is.EqualTo("sample_tokens_f32"));
            WithinLimits(p);
            Tiles(p.GridX, rows, 1, "rows"); // sample_tokens.cuh: one block per row, gridDim.x = rows
        }
        ThrowsFor("vocab", () => OpsLaunchPlans.SampleTokens(4, 4, 4, 4, 4, 4, 4, 4, 0, 0));
        ThrowsFor("stride", () => OpsLaunchPlans.SampleTokens(4, 4, 4000, 4, 4, 4, 4, 4, 1000, 999));
        ThrowsFor("coins", () => OpsLaunchPlans.SampleTokens(4, 3, 4000, 4, 4, 4, 4, 4, 1000, 1000));
        ThrowsFor("logits", () => OpsLaunchPlans.SampleTokens(4, 4, 3999, 4, 4, 4, 4, 4, 1000, 1000));
        // A stride past vocab (a tokenizer smaller than the LM head): the last row needs only its vocab candidates.
        Assert.That(OpsLaunchPlans.SampleTokens(4, 4, 3 * 1024 + 1000, 4, 4, 4, 4, 4, 1000, 1024), Is.Not.Null);
        ThrowsFor("logits", () => OpsLaunchPlans.SampleTokens(4, 4, 3 * 1024 + 999, 4, 4, 4, 4, 4, 1000, 1024));
        Assert.That(OpsLaunchPlans.SampleTokens(0, 0, 0, 0, 0, 0, 0, 0, 1000, 1000), Is.Null);
        Assert.That(OpsLaunchPlans.SampleTokens(4, 4, 4000, 4, 4, 4, 4, 4, 1000, 1000, radix: true)!.Value.Kernel, Is.EqualTo("sample_tokens_radix_f32"));
    }

    // ---- fused decode GEMVs with the norm folded in ------------------------------------------------------------------

    [Test]
    public void TheNormGemvsRunTheGridOfTheGemvsTheyExtendAndCheckTheNormWeight()
    {
        foreach (int m in new[] { 1, 3, 4 })
        {
            var qkv = OpsLaunchPlans.DenseGemvQkvNorm("bf16", m * 4096L, m * 1024L, m * 1024L, m * 4096L, 4096, 1e-5f, 4096L * 4096, 1024L * 4096, 1024L * 4096, -1, -1, -1,
                m, 4096, 1024, 4096)!.Value;
            var plain = OpsLaunchPlans.DenseGemvQkv("bf16", m * 4096L, m * 1024L, m * 1024L, m * 4096L, 4096L * 4096, 1024L * 4096, 1024L * 4096, -1, -1, -1, m, 4096, 1024, 4096)!.Value;
            Assert.That(qkv, Is.EqualTo(plain with { Kernel = "dense_gemv_qkv_norm_bf16" }));
            var swiglu = OpsLaunchPlans.DenseGemvSwiGluNorm("f16", m * 14336L, m * 4096L, 4096, 1e-6f, 14336L * 4096, 14336L * 4096, m, 14336, 4096)!.Value;
            Assert.That(swiglu, Is.EqualTo(OpsLaunchPlans.DenseGemvSwiGlu("f16", m * 14336L, m * 4096L, 14336L * 4096, 14336L * 4096, m, 14336, 4096)!.Value
                with { Kernel = "dense_gemv_swiglu_norm_f16" }));
        }
        ThrowsFor("g", () => OpsLaunchPlans.DenseGemvSwiGluNorm("f16", 14336, 4096, 4095, 1e-6f, 14336L * 4096, 14336L * 4096, 1, 14336, 4096));
        ThrowsFor("eps", () => OpsLaunchPlans.DenseGemvSwiGluNorm("f16", 14336, 4096, 4096, 0f, 14336L * 4096, 14336L * 4096, 1, 14336, 4096));
        ThrowsFor("g", () => OpsLaunchPlans.DenseGemvQkvNorm("f16", 4096, 1024, 1024, 4096, 100, 1e-5f, 4096L * 4096, 1024L * 4096, 1024L * 4096, -1, -1, -1, 1, 4096, 1024, 4096));
    }

    // ---- squeezellm_gemv ----------------------------------------------------------------------------------------------

    [Test]
    public void SqueezeGemvTakesAWarpPerOutputRowAndAtMostEightRows()
    {
        foreach (int bits in new[] { 3, 4 })
            foreach (var (m, n, k) in new[] { (1, 4096, 4096), (8, 28672, 4096), (3, 301, 1000), (1, 1, 1) })
            {
                long words = (k + 31L) / 32 * bits;
                var p = OpsLaunchPlans.SqueezeGemv(bits, (long)m * n, (long)m * k, n * words, n * (1L << bits), n + 1, m, n, k)!.Value;
                Assert.That(p.Kernel, Is.EqualTo($"squeezellm_gemv_b{bits}"));
                WithinLimits(p);
                Assert.That(p.BlockX, Is.EqualTo(128u), "4 warps");
                Tiles(p.GridX, n, 4, $"{n} output rows, a warp each");
            }
        ThrowsFor("m", () => OpsLaunchPlans.SqueezeGemv(4, 9 * 64, 9 * 64, 64 * 8, 64 * 16, 65, 9, 64, 64));
        ThrowsFor("bits", () => OpsLaunchPlans.SqueezeGemv(2, 64, 64, 64 * 8, 64 * 16, 65, 1, 64, 64));
        ThrowsFor("codes", () => OpsLaunchPlans.SqueezeGemv(3, 64, 64, 64 * 6 - 1, 64 * 8, 65, 1, 64, 64));
        ThrowsFor("rows", () => OpsLaunchPlans.SqueezeGemv(4, 64, 64, 64 * 8, 64 * 16, 64, 1, 64, 64));
        Assert.That(OpsLaunchPlans.SqueezeGemv(4, 0, 0, 64 * 8, 64 * 16, 65, 0, 64, 64), Is.Null);
    }
}
