// Shape checks and grids for the KIVI kernels (kernels/ops/kivi.cuh: kivi_quantize_block_f32, kivi_decode_attention_f32,
// kivi_merge_partials_f32). No driver calls: testable without a GPU. Layout: src/Kernels.Runtime/Quantization/Kivi.cs.
using Kernels.Runtime.Quantization;

namespace Kernels.Runtime.Backends.Cuda;

internal static partial class OpsLaunchPlans
{
    /// <summary>KIVI_MAX_GROUP in kernels/ops/kivi.cuh: the decode kernel's block is G threads and its weights G floats.</summary>
    internal const int KiviMaxGroup = 1024;
    internal const int KiviQuantizeThreads = 256, KiviMergeThreads = 128;

    /// <summary>
    /// The checks every KIVI kernel shares: bits 2 or 4; G a multiple of 32 / bits (whole words of key codes) and of
    /// 16 (the CPU format's rule); kvd a positive multiple of G (value groups are G channels).
    /// </summary>
    private static void CheckKiviLayout(int kvDim, int group, int bits)
    {
        if (bits is not (2 or 4)) throw new ArgumentOutOfRangeException("bits", bits, "KIVI codes are 2 or 4 bits");
        if (group < 16 || group % 16 != 0) throw new ArgumentOutOfRangeException("group", group, "the KIVI group must be a positive multiple of 16 (codes pack 32 bits at a time)");
        if (kvDim < 1 || kvDim % group != 0) throw new ArgumentOutOfRangeException("kvDim", kvDim, $"kv_heads * head_dim must be a positive multiple of the group {group}");
    }

    /// <summary>uint32 words, fp16 scales and fp32 mins a compact KIVI pool of <paramref name="numIds"/> block ids holds (one layer).</summary>
    private static void CheckKiviPool(long codesLength, long scalesLength, long minsLength, int numIds, int kvDim, int group, int bits)
    {
        NonNegative(numIds, "numIds");
        string shape = $"[numIds={numIds}, kvDim={kvDim}, group={group}, bits={bits}]";
        AtLeast(codesLength, (long)numIds * Kivi.CodeWords(kvDim, group, bits), "codes", shape);
        AtLeast(scalesLength, 2L * numIds * kvDim, "scales", shape);
        AtLeast(minsLength, 2L * numIds * kvDim, "mins", shape);
    }

    /// <summary>
    /// kivi_quantize_block_f32: keys, values fp16 [blocks, G, kvd] (<paramref name="sourceBlocks"/> of them, or
    /// numBlocks when there is no sources array: sourcesLength &lt; 0); block i is read from block sources[i] (or i) and
    /// written to compact id blockIds[i] of the pool. The ids' and sources' values are not checked here (they live on
    /// the device): each id must be in [0, numIds), each source in [0, sourceBlocks).
    /// </summary>
    public static KernelLaunch? KiviQuantizeBlock(long codesLength, long scalesLength, long minsLength, long keysLength, long valuesLength,
        long blockIdsLength, int numBlocks, int numIds, int kvDim, int group, int bits, long sourcesLength = -1, int sourceBlocks = 0)
    {
        CheckKiviLayout(kvDim, group, bits);
        NonNegative(numBlocks, "numBlocks");
        CheckKiviPool(codesLength, scalesLength, minsLength, numIds, kvDim, group, bits);
        int blocks = sourcesLength < 0 ? numBlocks : sourceBlocks;
        NonNegative(blocks, "sourceBlocks");
        long rows = Elements((long)blocks * group, kvDim, "keys");
        AtLeast(keysLength, rows, "keys", $"[{(sourcesLength < 0 ? "numBlocks" : "sourceBlocks")}={blocks}, group={group}, kvDim={kvDim}]");
        AtLeast(valuesLength, rows, "values", $"[{(sourcesLength < 0 ? "numBlocks" : "sourceBlocks")}={blocks}, group={group}, kvDim={kvDim}]");
        AtLeast(blockIdsLength, numBlocks, "blockIds", $"[numBlocks={numBlocks}]");
        if (sourcesLength >= 0) AtLeast(sourcesLength, numBlocks, "sources", $"[numBlocks={numBlocks}]");
        if (numBlocks == 0) return null;
        if (numIds == 0) throw new ArgumentOutOfRangeException("numIds", numIds, "there is no compact id to write a block to");
        if (sourcesLength >= 0 && sourceBlocks == 0) throw new ArgumentOutOfRangeException("sourceBlocks", sourceBlocks, "there is no source block to read");
        return new KernelLaunch("kivi_quantize_block_f32", (uint)numBlocks, 1, KiviQuantizeThreads);
    }

    /// <summary>
    /// kivi_decode_attention_f32: one partial (o, lse) per (sequence, head, compact block), grid (numSeqs, heads,
    /// maxBlocks), block G threads. numCompact[s] (on the device, unchecked) must be in [0, maxBlocks] and the first
    /// numCompact[s] entries of the sequence's block table valid ids.
    /// </summary>
    public static KernelLaunch? KiviDecodeAttention(long partialOLength, long partialLseLength, long qLength, long codesLength, long scalesLength,
        long minsLength, long blockTablesLength, long numCompactLength, int numSeqs, int maxBlocks, int numIds, int heads, int kvHeads, int headDim,
        int group, int bits)
    {
        NonNegative(numSeqs, "numSeqs");
        if (kvHeads < 1) throw new ArgumentOutOfRangeException("kvHeads", kvHeads, "kvHeads must be >= 1");
        if (heads < kvHeads || heads % kvHeads != 0)
            throw new ArgumentOutOfRangeException("heads", heads, $"heads must be a positive multiple of kvHeads = {kvHeads}");
        if (headDim < 1) throw new ArgumentOutOfRangeException("headDim", headDim, "headDim must be >= 1");
        CheckKiviLayout(kvHeads * headDim, group, bits);
        if (group % 32 != 0 || group > KiviMaxGroup)
            throw new ArgumentOutOfRangeException("group", group, $"kivi_decode_attention runs one thread per token: the group must be a multiple of 32 up to {KiviMaxGroup}");
        if (maxBlocks < 1) throw new ArgumentOutOfRangeException("maxBlocks", maxBlocks, "maxBlocks must be >= 1");
        CheckKiviPool(codesLength, scalesLength, minsLength, numIds, kvHeads * headDim, group, bits);
        long splits = Elements((long)numSeqs * heads, maxBlocks, "partialLse");
        AtLeast(partialOLength, Elements(splits, headDim, "partialO"), "partialO", $"[numSeqs={numSeqs}, heads={heads}, maxBlocks={maxBlocks}, headDim={headDim}]");
        AtLeast(partialLseLength, splits, "partialLse", $"[numSeqs={numSeqs}, heads={heads}, maxBlocks={maxBlocks}]");
        AtLeast(qLength, Elements((long)numSeqs * heads, headDim, "q"), "q", $"[numSeqs={numSeqs}, heads={heads}, headDim={headDim}]");
        AtLeast(blockTablesLength, Elements(numSeqs, maxBlocks, "blockTables"), "blockTables", $"[numSeqs={numSeqs}, maxBlocks={maxBlocks}]");
        AtLeast(numCompactLength, numSeqs, "numCompact", $"[numSeqs={numSeqs}]");
        if (numSeqs == 0) return null;
        if (heads > MaxGridRows) throw new ArgumentOutOfRangeException("heads", heads, $"at most {MaxGridRows} heads (grid y)");
        if (maxBlocks > MaxGridRows) throw new ArgumentOutOfRangeException("maxBlocks", maxBlocks, $"at most {MaxGridRows} blocks per sequence (grid z)");
        return new KernelLaunch("kivi_decode_attention_f32", (uint)numSeqs, (uint)heads, (uint)group, (uint)maxBlocks);
    }

    /// <summary>Head dims and groups kivi_decode_attention_split_* is compiled for, and its largest GQA group.</summary>
    internal static readonly int[] KiviSplitHeadDims = [64, 128];
    internal static readonly int[] KiviSplitGroups = [32, 64, 128];
    internal const int KiviSplitMaxGqa = 8, KiviSplitTileTokens = 128, KiviMaxSplits = 64;

    public static bool KiviSplitSupports(int heads, int kvHeads, int headDim, int group) =>
        Array.IndexOf(KiviSplitHeadDims, headDim) >= 0 && Array.IndexOf(KiviSplitGroups, group) >= 0 && kvHeads >= 1 && heads % kvHeads == 0 &&
        heads / kvHeads <= KiviSplitMaxGqa;

    /// <summary>kivi_decode_attention_split_* then kivi_merge_partials_f32 over its splits.</summary>
    internal readonly record struct KiviSplitPlan(KernelLaunch Attention, KernelLaunch Merge, int Splits, int BlocksPerSplit);

    /// <summary>
    /// kivi_decode_attention_split_b{bits}_hd{headDim}: a CTA per (kv head, sequence, split); the compact blocks of the
    /// longest sequence (<paramref name="maxCompact"/>) split on tile boundaries (128 / G blocks) until kvHeads x
    /// numSeqs x splits reaches <paramref name="targetCtas"/>, at most <see cref="KiviMaxSplits"/> and what the partial
    /// buffers hold. numCompact[s] (on the device, unchecked) must be at most maxBlocks.
    /// </summary>
    public static KiviSplitPlan? KiviDecodeAttentionSplit(long partialOLength, long partialLseLength, long qLength, long codesLength, long scalesLength,
        long minsLength, long blockTablesLength, long numCompactLength, long oLength, long lseLength, int numSeqs, int maxBlocks, int maxCompact, int numIds,
        int heads, int kvHeads, int headDim, int group, int bits, int targetCtas)
    {
        NonNegative(numSeqs, "numSeqs");
        if (kvHeads < 1) throw new ArgumentOutOfRangeException("kvHeads", kvHeads, "kvHeads must be >= 1");
        if (!KiviSplitSupports(heads, kvHeads, headDim, group))
            throw new ArgumentOutOfRangeException("headDim", headDim,
                $"kivi_decode_attention_split is compiled for head_dim {{{string.Join(", ", KiviSplitHeadDims)}}}, G in {{{string.Join(", ", KiviSplitGroups)}}} " +
                $"and up to {KiviSplitMaxGqa} query heads per kv head (got {heads}/{kvHeads} heads, G = {group})");
        CheckKiviLayout(kvHeads * headDim, group, bits);
        if (maxBlocks < 1) throw new ArgumentOutOfRangeException("maxBlocks", maxBlocks, "maxBlocks must be >= 1");
        if (maxCompact < 0 || maxCompact > maxBlocks) throw new ArgumentOutOfRangeException("maxCompact", maxCompact, $"maxCompact must be in [0, maxBlocks = {maxBlocks}]");
        CheckKiviPool(codesLength, scalesLength, minsLength, numIds, kvHeads * headDim, group, bits);
        AtLeast(qLength, Elements((long)numSeqs * heads, headDim, "q"), "q", $"[numSeqs={numSeqs}, heads={heads}, headDim={headDim}]");
        AtLeast(oLength, Elements((long)numSeqs * heads, headDim, "o"), "o", $"[numSeqs={numSeqs}, heads={heads}, headDim={headDim}]");
        AtLeast(lseLength, (long)numSeqs * heads, "lse", $"[numSeqs={numSeqs}, heads={heads}]");
        AtLeast(blockTablesLength, Elements(numSeqs, maxBlocks, "blockTables"), "blockTables", $"[numSeqs={numSeqs}, maxBlocks={maxBlocks}]");
        AtLeast(numCompactLength, numSeqs, "numCompact", $"[numSeqs={numSeqs}]");
        if (numSeqs == 0) return null;
        if (numSeqs > MaxGridRows) throw new ArgumentOutOfRangeException("numSeqs", numSeqs, $"at most {MaxGridRows} sequences (grid y)");
        int tile = KiviSplitTileTokens / group, tiles = Math.Max(1, (maxCompact + tile - 1) / tile);
        long ctas = (long)kvHeads * numSeqs;
        int splits = (int)Math.Clamp((targetCtas + ctas - 1) / ctas, 1, Math.Min(KiviMaxSplits, tiles));
        long rows = (long)numSeqs * heads;
        while (splits > 1 && (partialLseLength < rows * splits || partialOLength < rows * splits * headDim)) splits--;
        int perSplit = (tiles + splits - 1) / splits * tile;
        splits = Math.Max(1, (Math.Max(maxCompact, 1) + perSplit - 1) / perSplit);
        AtLeast(partialOLength, Elements(rows * splits, headDim, "partialO"), "partialO", $"[numSeqs={numSeqs}, heads={heads}, splits={splits}, headDim={headDim}]");
        AtLeast(partialLseLength, rows * splits, "partialLse", $"[numSeqs={numSeqs}, heads={heads}, splits={splits}]");
        var attention = new KernelLaunch($"kivi_decode_attention_split_b{bits}_hd{headDim}", (uint)kvHeads, (uint)numSeqs, 128, (uint)splits);
        var merge = new KernelLaunch("kivi_merge_partials_f32", (uint)numSeqs, (uint)heads, KiviMergeThreads);
        return new KiviSplitPlan(attention, merge, splits, perSplit);
    }

    /// <summary>kivi_merge_partials_f32: (o, lse) [numSeqs, heads, headDim] / [numSeqs, heads] merged in place with every split.</summary>
    public static KernelLaunch? KiviMergePartials(long oLength, long lseLength, long partialOLength, long partialLseLength, int numSeqs, int heads,
        int maxBlocks, int headDim)
    {
        NonNegative(numSeqs, "numSeqs");
        if (heads < 1) throw new ArgumentOutOfRangeException("heads", heads, "heads must be >= 1");
        if (maxBlocks < 1) throw new ArgumentOutOfRangeException("maxBlocks", maxBlocks, "maxBlocks must be >= 1");
        if (headDim < 1) throw new ArgumentOutOfRangeException("headDim", headDim, "headDim must be >= 1");
        long rows = (long)numSeqs * heads;
        AtLeast(oLength, Elements(rows, headDim, "o"), "o", $"[numSeqs={numSeqs}, heads={heads}, headDim={headDim}]");
        AtLeast(lseLength, rows, "lse", $"[numSeqs={numSeqs}, heads={heads}]");
        long splits = Elements(rows, maxBlocks, "partialLse");
        AtLeast(partialOLength, Elements(splits, headDim, "partialO"), "partialO", $"[numSeqs={numSeqs}, heads={heads}, maxBlocks={maxBlocks}, headDim={headDim}]");
        AtLeast(partialLseLength, splits, "partialLse", $"[numSeqs={numSeqs}, heads={heads}, maxBlocks={maxBlocks}]");
        if (numSeqs == 0) return null;
        if (heads > MaxGridRows) throw new ArgumentOutOfRangeException("heads", heads, $"at most {MaxGridRows} heads (grid y)");
        return new KernelLaunch("kivi_merge_partials_f32", (uint)numSeqs, (uint)heads, KiviMergeThreads);
    }
}
