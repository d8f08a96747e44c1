// Launch plans of the model kernels (dense_gemm, paged attention, attention_merge, sample_tokens) and the GPU sampler's
// RNG state: shape validation and grid choice run before any driver call, so no GPU is needed.
using Kernels.Runtime.Backends.Cuda;
using Kernels.Runtime.Engine;

namespace Kernels.Tests.Backends.Cuda;

public class ModelLaunchPlansTests
{
    private static void ThrowsFor(string argument, TestDelegate call)
    {
        var e = Assert.Catch<ArgumentException>(call)!;
        Assert.That(e.ParamName, Is.EqualTo(argument), e.Message);
    }

    // ---- dense_gemm -------------------------------------------------------------------------------------------------

    [Test]
    public void GemmPicksTheGemvUpTo4RowsTheDecodeTileUpTo16AndThePrefillTileAbove()
    {
        Assert.That(OpsLaunchPlans.DenseGemm("f16", 4096, 4096, 4096L * 4096, -1, 1, 4096, 4096),
            Is.EqualTo(new KernelLaunch("dense_gemv_f16", 1024, 1, 256)));
        Assert.That(OpsLaunchPlans.DenseGemm("bf16", 4 * 6145, 4 * 4096, 6145L * 4096, 6145, 4, 6145, 4096),
            Is.EqualTo(new KernelLaunch("dense_gemv_bf16", 1537, 1, 256)), "features round up to 4 per block");
        Assert.That(OpsLaunchPlans.DenseGemm("f16", 16 * 4096, 16 * 4096, 4096L * 4096, -1, 16, 4096, 4096),
            Is.EqualTo(new KernelLaunch("dense_gemm_small_m_f16", 256, 1, 128)));
        Assert.That(OpsLaunchPlans.DenseGemm("bf16", 17 * 6144, 17 * 4096, 6144L * 4096, 6144, 17, 6144, 4096),
            Is.EqualTo(new KernelLaunch("dense_gemm_bf16", 48, 1, 256)));
        Assert.That(OpsLaunchPlans.DenseGemm("f16", 1000L * 1001, 1000L * 8, 1001L * 8, -1, 1000, 1001, 8),
            Is.EqualTo(new KernelLaunch("dense_gemm_f16", 8, 16, 256)), "edges round up");
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
        Assert.That(OpsLaunchPlans.DenseGemm("f16", 100L * 64, 100L * 172, 64L * 172, -1, 100, 64, 172),
            Is.EqualTo(new KernelLaunch("dense_gemv_f16", 16, 25, 256)));
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
    public void DecodeSplitsTheContextOnlyWhenSequencesTimesKvHeadsLeaveSmsIdle()
    {
        var big = Decode(64, 32, 8, 128, 4096, 1L << 30)!.Value;
        Assert.That(big.NumSplits, Is.EqualTo(1), "512 blocks already fill 132 SMs");
        Assert.That(big.Merge, Is.Null);
        Assert.That(big.Attention, Is.EqualTo(new KernelLaunch("paged_decode_attention_hd128_f16", 8, 64, 128, 1)));

        var one = Decode(1, 32, 8, 128, 4096, 1L << 30)!.Value;
        Assert.That(one.NumSplits, Is.EqualTo(16), "4096 keys / 256 per split caps the 33 wanted");
        Assert.That(one.TokensPerSplit * one.NumSplits, Is.GreaterThanOrEqualTo(4096));
        Assert.That(one.Attention.GridZ, Is.EqualTo(16u));
        Assert.That(one.Merge, Is.EqualTo(new KernelLaunch("attention_merge_f32", 32, 1, 128)));

        Assert.That(Decode(1, 32, 8, 128, 4096, -1)!.Value.NumSplits, Is.EqualTo(1), "no workspace: one split");
        Assert.That(Decode(1, 32, 8, 128, 4096, OpsLaunchPlans.DecodeWorkspaceFloats(1, 32, 128, 4))!.Value.NumSplits, Is.EqualTo(4),
            "as many splits as the workspace holds");
        Assert.That(Decode(1, 32, 8, 128, 100, 1L << 30)!.Value.NumSplits, Is.EqualTo(1), "short contexts stay whole");
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

    [TestCase(1, 1)]
    [TestCase(4, 1)]
    [TestCase(5, 2)]
    [TestCase(8, 2)]
    [TestCase(16, 4)]
    public void GqaGroupsTakeOneDecodeBlockPerFourQueryHeads(int group, int chunks)
    {
        Assert.That(OpsLaunchPlans.DecodeHeadChunks(group * 2, 2), Is.EqualTo(chunks));
        var plan = Decode(3, group * 2, 2, 64, 100, -1)!.Value;
        Assert.That(plan.Attention, Is.EqualTo(new KernelLaunch($"paged_decode_attention_hd64_f16", (uint)(2 * chunks), 3, 128, 1)));
    }

    [Test]
    public void MergeAndPrefillPlans()
    {
        Assert.That(OpsLaunchPlans.AttentionMerge(4 * 128, 4, 4 * 3 * 128, 12, 4, 3, 128), Is.EqualTo(new KernelLaunch("attention_merge_f32", 4, 1, 128)));
        ThrowsFor("oPartial", () => OpsLaunchPlans.AttentionMerge(4 * 128, 4, 4 * 3 * 128 - 1, 12, 4, 3, 128));
        ThrowsFor("numSplits", () => OpsLaunchPlans.AttentionMerge(4 * 128, 4, 0, 0, 4, 0, 128));

        var p = OpsLaunchPlans.PagedPrefillAttention("bf16", 100L * 32 * 128, 100 * 32, 100L * 32 * 128, 1 << 30, 1 << 30, 3 * 64, 3, 4,
            3, 100, 70, 32, 8, 128, 16, 64, 1000)!.Value;
        Assert.That(p, Is.EqualTo(new KernelLaunch("paged_prefill_attention_hd128_bf16", 5, 32, 128, 3)));
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
        Assert.That(OpsLaunchPlans.SampleTokens(4, 4, 4 * 1000, 4, 4, 4, 4, 4, 1000), Is.EqualTo(new KernelLaunch("sample_tokens_f32", 4, 1, 512)));
        ThrowsFor("vocab", () => OpsLaunchPlans.SampleTokens(4, 4, 4, 4, 4, 4, 4, 4, 0));
        ThrowsFor("rngState", () => OpsLaunchPlans.SampleTokens(4, 3, 4000, 4, 4, 4, 4, 4, 1000));
        ThrowsFor("logits", () => OpsLaunchPlans.SampleTokens(4, 4, 3999, 4, 4, 4, 4, 4, 1000));
        Assert.That(OpsLaunchPlans.SampleTokens(0, 0, 0, 0, 0, 0, 0, 0, 1000), Is.Null);
    }

    [TestCase(0UL, 0UL)]
    [TestCase(42UL, 0UL)]
    [TestCase(42UL, 3UL)]
    [TestCase(ulong.MaxValue, 7UL)]
    public void GpuSamplerStateDrawsTheCoinsOfSamplerRng(ulong seed, ulong stream)
    {
        var cpu = new SamplerRng(seed, stream);
        ulong state = GpuSamplerState.Initial(seed, stream);
        for (int i = 0; i < 100; i++)
            Assert.That(GpuSamplerState.NextCoin(ref state), Is.EqualTo(cpu.NextDouble()), $"draw {i}");
    }

    [Test]
    public void TheSamplingKernelsSplitMixConstantsMatchTheCSharpTwin()
    {
        // sample_tokens.cuh's splitmix_coin must be the same function as GpuSamplerState.NextCoin (and SamplerRng).
        string source = File.ReadAllText(KernelAbiTests.RepoFile("kernels/ops/sample_tokens.cuh"));
        foreach (var constant in new[] { "0x9E3779B97F4A7C15ull", "0xBF58476D1CE4E5B9ull", "0x94D049BB133111EBull", "(z >> 11)", "9007199254740992.0" })
            Assert.That(source, Does.Contain(constant));
    }
}
