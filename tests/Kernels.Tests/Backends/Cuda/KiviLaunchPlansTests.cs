// Launch plans of the KIVI kernels (kivi_quantize_block_f32, kivi_decode_attention_f32, kivi_merge_partials_f32):
// shape validation and grids as kernels/ops/kivi.cuh states them; no GPU needed.
using Kernels.Runtime.Backends.Cuda;
using Kernels.Runtime.Quantization;
using static Kernels.Tests.Backends.Cuda.LaunchProperties;

namespace Kernels.Tests.Backends.Cuda;

public class KiviLaunchPlansTests
{
    private static void ThrowsFor(string argument, TestDelegate call)
    {
        var e = Assert.Catch<ArgumentException>(call)!;
        Assert.That(e.ParamName, Is.EqualTo(argument), e.Message);
    }

    // Llama-3-8B: 32/8 heads, d 128, kvd 1024; G 32; a pool of 100 ids.
    private const int Kvd = 1024, G = 32, Ids = 100, Heads = 32, KvHeads = 8, D = 128;

    private static (long Codes, long Scales, long Mins) Pool(int bits, int ids = Ids, int kvd = Kvd, int group = G) =>
        ((long)ids * Kivi.CodeWords(kvd, group, bits), 2L * ids * kvd, 2L * ids * kvd);

    private static KernelLaunch? Quantize(int bits, int numBlocks, int group = G, int kvd = Kvd, long trimKeys = 0, long trimIds = 0, long trimCodes = 0)
    {
        var (c, s, m) = Pool(bits, Ids, kvd, group);
        long rows = (long)numBlocks * group * kvd;
        return OpsLaunchPlans.KiviQuantizeBlock(c - trimCodes, s, m, rows - trimKeys, rows, numBlocks - trimIds, numBlocks, Ids, kvd, group, bits);
    }

    [TestCase(2)]
    [TestCase(4)]
    public void QuantizeRunsOneCtaPerKvBlock(int bits)
    {
        // kivi.cuh: CTA b quantizes block_ids[b], one thread per packed word of codes (any block size).
        foreach (int blocks in new[] { 1, 16, 99, 100 })
        {
            var p = Quantize(bits, blocks)!.Value;
            Assert.That(p.Kernel, Is.EqualTo("kivi_quantize_block_f32"));
            WithinLimits(p);
            Tiles(p.GridX, blocks, 1, $"{blocks} KV blocks");
            Assert.That((p.GridY, p.GridZ), Is.EqualTo((1u, 1u)));
        }
        Assert.That(Quantize(bits, 0), Is.Null, "no block: no launch");
    }

    [Test]
    public void QuantizeChecksBitsGroupAndBuffers()
    {
        ThrowsFor("bits", () => Quantize(3, 4));
        ThrowsFor("group", () => Quantize(2, 4, group: 24));
        ThrowsFor("kvDim", () => Quantize(2, 4, group: 48, kvd: 1000));
        ThrowsFor("keys", () => Quantize(2, 4, trimKeys: 1));
        ThrowsFor("blockIds", () => Quantize(2, 4, trimIds: 1));
        ThrowsFor("codes", () => Quantize(4, 4, trimCodes: 1));
        var (c, s, m) = Pool(2);
        ThrowsFor("scales", () => OpsLaunchPlans.KiviQuantizeBlock(c, s - 1, m, 1L << 20, 1L << 20, 1, 1, Ids, Kvd, G, 2));
        ThrowsFor("mins", () => OpsLaunchPlans.KiviQuantizeBlock(c, s, m - 1, 1L << 20, 1L << 20, 1, 1, Ids, Kvd, G, 2));
        ThrowsFor("numIds", () => OpsLaunchPlans.KiviQuantizeBlock(0, 0, 0, 1L << 20, 1L << 20, 1, 1, 0, Kvd, G, 2));
    }

    [Test]
    public void QuantizeFromPagedSlotsChecksTheSlotsNotTheBlockCount()
    {
        // With sources, keys and values are the paged slots [sourceBlocks, G, kvd]: 3 blocks may come from 40 slots.
        var (c, s, m) = Pool(2);
        long slotRows = 40L * G * Kvd;
        var p = OpsLaunchPlans.KiviQuantizeBlock(c, s, m, slotRows, slotRows, 3, 3, Ids, Kvd, G, 2, sourcesLength: 3, sourceBlocks: 40)!.Value;
        Tiles(p.GridX, 3, 1, "3 blocks");
        ThrowsFor("keys", () => OpsLaunchPlans.KiviQuantizeBlock(c, s, m, slotRows - 1, slotRows, 3, 3, Ids, Kvd, G, 2, sourcesLength: 3, sourceBlocks: 40));
        ThrowsFor("sources", () => OpsLaunchPlans.KiviQuantizeBlock(c, s, m, slotRows, slotRows, 3, 3, Ids, Kvd, G, 2, sourcesLength: 2, sourceBlocks: 40));
        ThrowsFor("sourceBlocks", () => OpsLaunchPlans.KiviQuantizeBlock(c, s, m, slotRows, slotRows, 3, 3, Ids, Kvd, G, 2, sourcesLength: 3, sourceBlocks: 0));
    }

    private static KernelLaunch? Decode(int bits, int seqs, int maxBlocks, int heads = Heads, int kvHeads = KvHeads, int d = D, int group = G,
        long trimO = 0, long trimLse = 0, long trimQ = 0, long trimTables = 0, long trimCompact = 0)
    {
        var (c, s, m) = Pool(bits, Ids, kvHeads * d, group);
        long splits = (long)seqs * heads * maxBlocks;
        return OpsLaunchPlans.KiviDecodeAttention(splits * d - trimO, splits - trimLse, (long)seqs * heads * d - trimQ, c, s, m,
            (long)seqs * maxBlocks - trimTables, seqs - trimCompact, seqs, maxBlocks, Ids, heads, kvHeads, d, group, bits);
    }

    [TestCase(2)]
    [TestCase(4)]
    public void DecodeRunsOneCtaOfGThreadsPerSequenceHeadAndKvBlock(int bits)
    {
        // kivi.cuh: CTA (s, h, b) scores block b of sequence s for query head h, one thread per token of the block
        // (so blockDim.x = G), writing split b of the partials that kivi_merge_partials folds.
        foreach (var (seqs, maxBlocks, heads, kvHeads, d, group) in new[] { (16, 128, Heads, KvHeads, D, G), (3, 5, 8, 2, 64, 64), (1, 1, 4, 4, 32, 128) })
        {
            var p = Decode(bits, seqs, maxBlocks, heads, kvHeads, d, group)!.Value;
            Assert.That(p.Kernel, Is.EqualTo("kivi_decode_attention_f32"));
            WithinLimits(p);
            Tiles(p.GridX, seqs, 1, "sequences");
            Tiles(p.GridY, heads, 1, "query heads");
            Tiles(p.GridZ, maxBlocks, 1, "KV blocks (splits)");
            Assert.That(p.BlockX, Is.EqualTo((uint)group), "one thread per token of a block");
        }
        Assert.That(Decode(bits, 0, 5), Is.Null, "no sequence: no launch");
    }

    [Test]
    public void DecodeChecksHeadsGroupAndBuffers()
    {
        ThrowsFor("heads", () => Decode(2, 2, 4, heads: 12, kvHeads: 8));
        ThrowsFor("kvHeads", () => Decode(2, 2, 4, kvHeads: 0));
        ThrowsFor("group", () => Decode(2, 2, 4, group: 16)); // a CPU-valid group, but not a whole warp
        ThrowsFor("group", () => Decode(2, 2, 4, kvHeads: 16, group: 2048)); // beyond KIVI_MAX_GROUP
        ThrowsFor("bits", () => Decode(8, 2, 4));
        ThrowsFor("maxBlocks", () => Decode(2, 2, 0));
        ThrowsFor("maxBlocks", () => Decode(2, 1, OpsLaunchPlans.MaxGridRows + 1, heads: 8, d: 8, kvHeads: 8));
        ThrowsFor("partialO", () => Decode(2, 2, 4, trimO: 1));
        ThrowsFor("partialLse", () => Decode(2, 2, 4, trimLse: 1));
        ThrowsFor("q", () => Decode(2, 2, 4, trimQ: 1));
        ThrowsFor("blockTables", () => Decode(2, 2, 4, trimTables: 1));
        ThrowsFor("numCompact", () => Decode(2, 2, 4, trimCompact: 1));
        var (c, s, m) = Pool(4);
        ThrowsFor("codes", () => OpsLaunchPlans.KiviDecodeAttention(1L << 20, 1L << 20, 1L << 20, c - 1, s, m, 8, 2, 2, 4, Ids, Heads, KvHeads, D, G, 4));
    }

    [Test]
    public void MergeRunsOneBlockPerSequenceAndHead()
    {
        // kivi.cuh: CTA (s, h) folds every split of row (s, h) into (o, lse), threads over head_dim.
        var p = OpsLaunchPlans.KiviMergePartials(16 * 32 * 128, 16 * 32, 16L * 32 * 7 * 128, 16 * 32 * 7, 16, 32, 7, 128)!.Value;
        Assert.That(p.Kernel, Is.EqualTo("kivi_merge_partials_f32"));
        WithinLimits(p);
        Tiles(p.GridX, 16, 1, "sequences");
        Tiles(p.GridY, 32, 1, "heads");
        Assert.That(OpsLaunchPlans.KiviMergePartials(0, 0, 0, 0, 0, 32, 7, 128), Is.Null);
        ThrowsFor("o", () => OpsLaunchPlans.KiviMergePartials(2 * 4 * 64 - 1, 8, 2 * 4 * 3 * 64, 24, 2, 4, 3, 64));
        ThrowsFor("lse", () => OpsLaunchPlans.KiviMergePartials(2 * 4 * 64, 7, 2 * 4 * 3 * 64, 24, 2, 4, 3, 64));
        ThrowsFor("partialO", () => OpsLaunchPlans.KiviMergePartials(2 * 4 * 64, 8, 2 * 4 * 3 * 64 - 1, 24, 2, 4, 3, 64));
        ThrowsFor("partialLse", () => OpsLaunchPlans.KiviMergePartials(2 * 4 * 64, 8, 2 * 4 * 3 * 64, 23, 2, 4, 3, 64));
        ThrowsFor("maxBlocks", () => OpsLaunchPlans.KiviMergePartials(2 * 4 * 64, 8, 2 * 4 * 3 * 64, 24, 2, 4, 0, 64));
    }

    [Test]
    public void PartialFloatsCoverOAndLse() =>
        Assert.That(OpsLauncher.KiviPartialFloats(16, 32, 128, 128), Is.EqualTo(16L * 32 * 128 * 129));

    // ---- kivi_decode_attention_split ----------------------------------------------------------------------------------

    private static OpsLaunchPlans.KiviSplitPlan? Split(int seqs, int maxBlocks, int maxCompact, int heads = 32, int kvHeads = 8, int d = 128, int group = 32,
        int bits = 2, long partialRows = 1L << 24, int target = 264)
    {
        int kvd = kvHeads * d, ids = seqs * maxBlocks + 1;
        var (c, s, m) = Pool(bits, ids, kvd, group);
        long rows = (long)seqs * heads;
        return OpsLaunchPlans.KiviDecodeAttentionSplit(partialRows * d, partialRows, rows * d, c, s, m, (long)seqs * maxBlocks, seqs, rows * d, rows, seqs, maxBlocks,
            maxCompact, ids, heads, kvHeads, d, group, bits, target);
    }

    [Test]
    public void TheSplitKernelFillsTheGpuWithSplitsOnTileBoundaries()
    {
        // B = 16, L = 32K, G = 32: 1024 blocks a sequence, 8 x 16 = 128 CTAs before splitting: 3 splits reach 264.
        var p = Split(16, 1024, 1024)!.Value;
        Assert.That(p.Attention.Kernel, Is.EqualTo("kivi_decode_attention_split_b2_hd128"));
        Assert.That((p.Attention.GridX, p.Attention.GridY, p.Attention.GridZ, p.Attention.BlockX), Is.EqualTo((8u, 16u, 3u, 128u)));
        Assert.That(p.BlocksPerSplit % (128 / 32), Is.Zero, "splits start on a 128-token tile");
        Assert.That((long)p.BlocksPerSplit * p.Splits, Is.GreaterThanOrEqualTo(1024));
        Assert.That((p.Merge.Kernel, p.Merge.GridX, p.Merge.GridY), Is.EqualTo(("kivi_merge_partials_f32", 16u, 32u)));
        // Partials for 2 splits only: 2 splits; no compact block yet: one (empty) split.
        Assert.That(Split(16, 1024, 1024, partialRows: 16L * 32 * 2)!.Value.Splits, Is.EqualTo(2));
        Assert.That(Split(4, 8, 0)!.Value.Splits, Is.EqualTo(1));
        Assert.That(Split(0, 8, 0), Is.Null);
    }

    [Test]
    public void ShapesTheSplitKernelLacksAreRefusedWithTheReason()
    {
        Assert.That(Assert.Catch<ArgumentException>(() => Split(2, 8, 8, group: 256))!.Message, Does.Contain("G in {32, 64, 128}"));
        Assert.That(Assert.Catch<ArgumentException>(() => Split(2, 8, 8, heads: 32, kvHeads: 2))!.Message, Does.Contain("up to 8 query heads"));
        Assert.That(Assert.Catch<ArgumentException>(() => Split(2, 8, 8, d: 96, heads: 8, kvHeads: 2))!.ParamName, Is.EqualTo("headDim"));
        Assert.That(Assert.Catch<ArgumentException>(() => Split(2, 8, 9))!.ParamName, Is.EqualTo("maxCompact"));
        Assert.That(Assert.Catch<ArgumentException>(() => Split(2, 8, 8, partialRows: 10))!.ParamName, Is.EqualTo("partialO"));
    }
}
