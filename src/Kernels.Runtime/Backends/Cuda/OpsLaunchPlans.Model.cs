// Shape checks and grid choice for the model kernels: dense_gemm, paged decode/prefill attention, attention_merge,
// sample_tokens (kernels/ops/*.cuh headers give the contracts these mirror). No driver calls: testable without a GPU.
namespace Kernels.Runtime.Backends.Cuda;

/// <summary>
/// Decode attention as launched: the attention kernel (grid z = splits), and when there is more than one split the
/// merge of the partials kept in the workspace.
/// </summary>
internal readonly record struct DecodeAttentionPlan(KernelLaunch Attention, KernelLaunch? Merge, int NumSplits, int TokensPerSplit);

internal static partial class OpsLaunchPlans
{
    /// <summary>dense_gemm_small_m serves M up to this (decode batches); larger M takes the 64x128 prefill tile.</summary>
    internal const int GemmSmallMMax = 16;
    /// <summary>dense_gemv: x rows up to which it is chosen; rows and output features per block (kernels/ops/dense_gemv.cuh).</summary>
    internal const int GemvMaxRows = 4, GemvRowsPerBlock = 4, GemvFeaturesPerBlock = 4;
    /// <summary>Fewest keys a decode split is given (a split's fixed cost: loading q, merging states, one more partial).</summary>
    internal const int DecodeMinTokensPerSplit = 256;
    /// <summary>Most decode splits (the merge reads every split's lse per output element).</summary>
    internal const int DecodeMaxSplits = 32;
    internal const int SampleThreads = 512;
    /// <summary>Head dims both attention kernels are compiled for: one entry each, paged_*_attention_hd&lt;D&gt;_&lt;dtype&gt;.</summary>
    internal static readonly int[] AttentionHeadDims = [8, 16, 32, 64, 128, 256];
    /// <summary>
    /// Query heads of one kv head a paged_decode_attention block handles (kDecodeMaxHeadsPerBlock in the kernel); larger GQA
    /// groups take several blocks per kv head.
    /// </summary>
    internal const int DecodeHeadsPerBlock = 4;

    /// <summary>The entry of an attention kernel for a head dim, e.g. paged_decode_attention_hd128_f16.</summary>
    public static string AttentionEntry(string op, int headDim, string suffix) => $"{op}_hd{headDim}_{suffix}";

    /// <summary>
    /// Whether paged_decode_attention_tiled has an entry for the KV dtype and head dim (16-bit KV, d 64 and 128); the
    /// other shapes keep paged_decode_attention, whose contract it shares.
    /// </summary>
    public static bool TiledDecodeSupports(string suffix, int headDim) => suffix is "f16" or "bf16" && headDim is 64 or 128;

    /// <summary>Blocks per kv head of paged_decode_attention (grid x = numKvHeads * this): ceil(group / 4).</summary>
    public static int DecodeHeadChunks(int numHeads, int numKvHeads) =>
        (numHeads / numKvHeads + DecodeHeadsPerBlock - 1) / DecodeHeadsPerBlock;

    /// <summary>
    /// The checks every y = x W^T plan makes: m, n >= 0, K > 0, y [m, n], x [m, k] and W [n, k] long enough (named
    /// <paramref name="y"/> and <paramref name="w"/> in the messages).
    /// </summary>
    private static void CheckLinear(string kernel, long yLength, long xLength, long wLength, int m, int n, int k, string y = "y", string w = "w")
    {
        NonNegative(m, "m");
        NonNegative(n, "n");
        if (k <= 0) throw new ArgumentOutOfRangeException("k", k, $"{kernel} needs K > 0");
        AtLeast(yLength, Elements(m, n, y), y, $"[m={m}, n={n}]");
        AtLeast(xLength, Elements(m, k, "x"), "x", $"[m={m}, k={k}]");
        AtLeast(wLength, Elements(n, k, w), w, $"[n={n}, k={k}]");
    }

    public static KernelLaunch? DenseGemm(string suffix, long yLength, long xLength, long wLength, long biasLength, int m, int n, int k)
    {
        CheckLinear("dense_gemm", yLength, xLength, wLength, m, n, k);
        if (biasLength >= 0) AtLeast(biasLength, n, "bias", $"[n={n}]");
        if (m == 0 || n == 0) return null;
        string kernel = DenseGemmKernel(suffix, m, k);
        if (kernel.StartsWith("dense_gemv_", StringComparison.Ordinal))
        {
            long rowGroups = (m + GemvRowsPerBlock - 1) / GemvRowsPerBlock;
            if (rowGroups > MaxGridRows) throw new ArgumentOutOfRangeException("m", m, $"dense_gemv covers at most {MaxGridRows * (long)GemvRowsPerBlock} rows per launch");
            return new KernelLaunch(kernel, (uint)((n + GemvFeaturesPerBlock - 1) / GemvFeaturesPerBlock), (uint)rowGroups, 256);
        }
        if (m <= GemmSmallMMax) return new KernelLaunch(kernel, (uint)((n + 15) / 16), 1, 128);
        long gridY = (m + 63) / 64;
        if (gridY > MaxGridRows) throw new ArgumentOutOfRangeException("m", m, $"dense_gemm covers at most {MaxGridRows * 64L} rows per launch");
        return new KernelLaunch(kernel, (uint)((n + 127) / 128), (uint)gridY, 256);
    }

    /// <summary>The fused GEMV entries' shared grid: ceil_div(features, 4) blocks by ceil_div(m, 4) row groups, 256 threads.</summary>
    private static KernelLaunch GemvGrid(string kernel, long featureBlocks, int m)
    {
        long rowGroups = (m + GemvRowsPerBlock - 1) / GemvRowsPerBlock;
        if (rowGroups > MaxGridRows) throw new ArgumentOutOfRangeException("m", m, $"{kernel} covers at most {MaxGridRows * (long)GemvRowsPerBlock} rows per launch");
        return new KernelLaunch(kernel, (uint)featureBlocks, (uint)rowGroups, 256);
    }

    private static long GemvBlocks(int n) => (n + GemvFeaturesPerBlock - 1L) / GemvFeaturesPerBlock;

    /// <summary>dense_gemv_residual_{suffix}: y [m, n] += x [m, k] W^T [n, k] (the o and down projections into the residual).</summary>
    public static KernelLaunch? DenseGemvResidual(string suffix, long yLength, long xLength, long wLength, int m, int n, int k)
    {
        CheckLinear("dense_gemv_residual", yLength, xLength, wLength, m, n, k);
        if (m == 0 || n == 0) return null;
        return GemvGrid($"dense_gemv_residual_{suffix}", GemvBlocks(n), m);
    }

    /// <summary>
    /// dense_gemv_qkv_{suffix}: q [m, nq], k and v [m, nkv] = x [m, k] times Wq^T, Wk^T, Wv^T (+ biases, each null or
    /// all three given: lengths &lt; 0 for none) in one launch, q's feature blocks first.
    /// </summary>
    public static KernelLaunch? DenseGemvQkv(string suffix, long yqLength, long ykLength, long yvLength, long xLength, long wqLength, long wkLength,
        long wvLength, long bqLength, long bkLength, long bvLength, int m, int nq, int nkv, int k)
    {
        CheckLinear("dense_gemv_qkv", yqLength, xLength, wqLength, m, nq, k, "yq", "wq");
        NonNegative(nkv, "nkv");
        AtLeast(ykLength, Elements(m, nkv, "yk"), "yk", $"[m={m}, nkv={nkv}]");
        AtLeast(yvLength, Elements(m, nkv, "yv"), "yv", $"[m={m}, nkv={nkv}]");
        AtLeast(wkLength, Elements(nkv, k, "wk"), "wk", $"[nkv={nkv}, k={k}]");
        AtLeast(wvLength, Elements(nkv, k, "wv"), "wv", $"[nkv={nkv}, k={k}]");
        if (bqLength >= 0) AtLeast(bqLength, nq, "bq", $"[nq={nq}]");
        if (bkLength >= 0) AtLeast(bkLength, nkv, "bk", $"[nkv={nkv}]");
        if (bvLength >= 0) AtLeast(bvLength, nkv, "bv", $"[nkv={nkv}]");
        if (m == 0 || nq + nkv == 0) return null;
        return GemvGrid($"dense_gemv_qkv_{suffix}", GemvBlocks(nq) + 2 * GemvBlocks(nkv), m);
    }

    /// <summary>dense_gemv_swiglu_{suffix}: out [m, n] = silu(x Wg^T) * (x Wu^T), Wg and Wu [n, k], no biases.</summary>
    public static KernelLaunch? DenseGemvSwiGlu(string suffix, long outLength, long xLength, long wgLength, long wuLength, int m, int n, int k)
    {
        CheckLinear("dense_gemv_swiglu", outLength, xLength, wgLength, m, n, k, "out", "wg");
        AtLeast(wuLength, Elements(n, k, "wu"), "wu", $"[n={n}, k={k}]");
        if (m == 0 || n == 0) return null;
        return GemvGrid($"dense_gemv_swiglu_{suffix}", GemvBlocks(n), m);
    }

    /// <summary>dense_gemv_qkv_norm_{suffix}: <see cref="DenseGemvQkv"/> of RMSNorm(x), g [k] the fp32 norm weight (same grid).</summary>
    public static KernelLaunch? DenseGemvQkvNorm(string suffix, long yqLength, long ykLength, long yvLength, long xLength, long gLength, float eps,
        long wqLength, long wkLength, long wvLength, long bqLength, long bkLength, long bvLength, int m, int nq, int nkv, int k)
    {
        var plan = DenseGemvQkv(suffix, yqLength, ykLength, yvLength, xLength, wqLength, wkLength, wvLength, bqLength, bkLength, bvLength, m, nq, nkv, k);
        CheckNorm(gLength, eps, k);
        return plan == null ? null : plan.Value with { Kernel = $"dense_gemv_qkv_norm_{suffix}" };
    }

    /// <summary>dense_gemv_swiglu_norm_{suffix}: <see cref="DenseGemvSwiGlu"/> of RMSNorm(x), g [k] the fp32 norm weight (same grid).</summary>
    public static KernelLaunch? DenseGemvSwiGluNorm(string suffix, long outLength, long xLength, long gLength, float eps, long wgLength, long wuLength,
        int m, int n, int k)
    {
        var plan = DenseGemvSwiGlu(suffix, outLength, xLength, wgLength, wuLength, m, n, k);
        CheckNorm(gLength, eps, k);
        return plan == null ? null : plan.Value with { Kernel = $"dense_gemv_swiglu_norm_{suffix}" };
    }

    private static void CheckNorm(long gLength, float eps, int k)
    {
        PositiveEps(eps);
        AtLeast(gLength, k, "g", $"[k={k}]");
    }

    /// <summary>
    /// The kernel a y = x W^T of <paramref name="m"/> rows runs: dense_gemv (CUDA cores, fp32 x, W streamed once) for
    /// m &lt;= <see cref="GemvMaxRows"/> and whenever K % 8 != 0 (the tensor-core tiles copy W in 16-byte chunks),
    /// dense_gemm_small_m up to <see cref="GemmSmallMMax"/> rows, else the prefill tile dense_gemm.
    /// </summary>
    public static string DenseGemmKernel(string suffix, int m, int k) =>
        m <= GemvMaxRows || k % 8 != 0 ? $"dense_gemv_{suffix}"
        : m <= GemmSmallMMax ? $"dense_gemm_small_m_{suffix}"
        : $"dense_gemm_{suffix}";

    /// <summary>Floats of workspace a split decode needs: partial o and lse for every (sequence, head, split).</summary>
    public static long DecodeWorkspaceFloats(int numSeqs, int numHeads, int headDim, int numSplits) =>
        numSplits <= 1 ? 0 : (long)numSeqs * numHeads * numSplits * (headDim + 1);

    /// <summary>
    /// Splits the context when (sequences x kv heads) blocks would leave the SMs idle: aim for two blocks per SM, with at
    /// least <see cref="DecodeMinTokensPerSplit"/> keys per split, at most <see cref="DecodeMaxSplits"/> splits, and
    /// only as many as the workspace holds (-1: no workspace, one split). <paramref name="maxSeqLen"/> only balances the
    /// splits: the last split takes every key up to the sequence's length whatever it is.
    /// </summary>
    public static DecodeAttentionPlan? PagedDecodeAttention(string suffix, long oLength, long lseLength, long qLength, long kCacheLength, long vCacheLength,
        long blockTablesLength, long seqLensLength, long workspaceLength, int numSeqs, int numHeads, int numKvHeads, int headDim, int blockSize,
        int maxBlocksPerSeq, int numBlocks, int maxSeqLen, int multiprocessors, bool tiled = false)
    {
        CheckPagedShape(numSeqs, numHeads, numKvHeads, headDim, blockSize, maxBlocksPerSeq, numBlocks);
        NonNegative(maxSeqLen, "maxSeqLen");
        long rowsQ = Elements((long)numSeqs * numHeads, headDim, "q");
        AtLeast(qLength, rowsQ, "q", $"[numSeqs={numSeqs}, numHeads={numHeads}, headDim={headDim}]");
        AtLeast(oLength, rowsQ, "o", $"[numSeqs={numSeqs}, numHeads={numHeads}, headDim={headDim}]");
        AtLeast(lseLength, (long)numSeqs * numHeads, "lse", $"[numSeqs={numSeqs}, numHeads={numHeads}]");
        CheckPagedBuffers(kCacheLength, vCacheLength, blockTablesLength, seqLensLength, numSeqs, numKvHeads, headDim, blockSize, maxBlocksPerSeq, numBlocks);
        if (numSeqs == 0) return null;
        if (numSeqs > MaxGridRows) throw new ArgumentOutOfRangeException("numSeqs", numSeqs, $"at most {MaxGridRows} sequences per launch (grid y)");

        int splits = 1;
        int chunks = DecodeHeadChunks(numHeads, numKvHeads);
        if ((long)numKvHeads * chunks > int.MaxValue)
            throw new ArgumentOutOfRangeException("numKvHeads", numKvHeads, $"numKvHeads * {chunks} head chunks exceeds the grid's x extent");
        int blocks = numSeqs * numKvHeads * chunks;
        int wanted = Math.Max(1, (2 * Math.Max(1, multiprocessors) + blocks - 1) / blocks);
        int byLength = Math.Max(1, (maxSeqLen + DecodeMinTokensPerSplit - 1) / DecodeMinTokensPerSplit);
        splits = Math.Min(Math.Min(wanted, byLength), DecodeMaxSplits);
        while (splits > 1 && workspaceLength < DecodeWorkspaceFloats(numSeqs, numHeads, headDim, splits)) splits--;
        int tokensPerSplit = Math.Max(1, (maxSeqLen + splits - 1) / splits);
        if (splits > 1) splits = (maxSeqLen + tokensPerSplit - 1) / tokensPerSplit; // no empty trailing split
        string op = tiled && TiledDecodeSupports(suffix, headDim) ? "paged_decode_attention_tiled" : "paged_decode_attention";
        var attention = new KernelLaunch(AttentionEntry(op, headDim, suffix), (uint)(numKvHeads * chunks), (uint)numSeqs, 128, (uint)splits);
        KernelLaunch? merge = splits > 1
            ? new KernelLaunch("attention_merge_f32", (uint)Math.Min((long)numSeqs * numHeads, MaxGridRows), 1, 128)
            : null;
        return new DecodeAttentionPlan(attention, merge, splits, tokensPerSplit);
    }

    public static KernelLaunch? AttentionMerge(long oLength, long lseLength, long oPartialLength, long lsePartialLength, int rows, int numSplits, int headDim)
    {
        NonNegative(rows, "rows");
        if (numSplits < 1) throw new ArgumentOutOfRangeException("numSplits", numSplits, "numSplits must be >= 1");
        if (headDim < 1) throw new ArgumentOutOfRangeException("headDim", headDim, "headDim must be >= 1");
        AtLeast(oLength, Elements(rows, headDim, "o"), "o", $"[rows={rows}, headDim={headDim}]");
        AtLeast(lseLength, rows, "lse", $"[rows={rows}]");
        AtLeast(oPartialLength, Elements((long)rows * numSplits, headDim, "oPartial"), "oPartial", $"[rows={rows}, numSplits={numSplits}, headDim={headDim}]");
        AtLeast(lsePartialLength, (long)rows * numSplits, "lsePartial", $"[rows={rows}, numSplits={numSplits}]");
        if (rows == 0) return null;
        return new KernelLaunch("attention_merge_f32", (uint)Math.Min(rows, MaxGridRows), 1, 128);
    }

    /// <summary><paramref name="maxQueryLen"/> = max over sequences of qStarts[s + 1] - qStarts[s] (the grid's x extent).</summary>
    public static KernelLaunch? PagedPrefillAttention(string suffix, long oLength, long lseLength, long qLength, long kCacheLength, long vCacheLength,
        long blockTablesLength, long seqLensLength, long qStartsLength, int numSeqs, int numTokens, int maxQueryLen, int numHeads, int numKvHeads,
        int headDim, int blockSize, int maxBlocksPerSeq, int numBlocks)
    {
        CheckPagedShape(numSeqs, numHeads, numKvHeads, headDim, blockSize, maxBlocksPerSeq, numBlocks);
        NonNegative(numTokens, "numTokens");
        NonNegative(maxQueryLen, "maxQueryLen");
        if (maxQueryLen > numTokens) throw new ArgumentOutOfRangeException("maxQueryLen", maxQueryLen, $"maxQueryLen exceeds numTokens = {numTokens}");
        long elements = Elements((long)numTokens * numHeads, headDim, "q");
        AtLeast(qLength, elements, "q", $"[numTokens={numTokens}, numHeads={numHeads}, headDim={headDim}]");
        AtLeast(oLength, elements, "o", $"[numTokens={numTokens}, numHeads={numHeads}, headDim={headDim}]");
        AtLeast(lseLength, (long)numTokens * numHeads, "lse", $"[numTokens={numTokens}, numHeads={numHeads}]");
        AtLeast(qStartsLength, numSeqs + 1L, "qStarts", $"[numSeqs + 1={numSeqs + 1}]");
        CheckPagedBuffers(kCacheLength, vCacheLength, blockTablesLength, seqLensLength, numSeqs, numKvHeads, headDim, blockSize, maxBlocksPerSeq, numBlocks);
        if (numSeqs == 0 || maxQueryLen == 0) return null;
        if (numSeqs > MaxGridRows) throw new ArgumentOutOfRangeException("numSeqs", numSeqs, $"at most {MaxGridRows} sequences per launch (grid z)");
        if (numHeads > MaxGridRows) throw new ArgumentOutOfRangeException("numHeads", numHeads, $"at most {MaxGridRows} heads (grid y)");
        return new KernelLaunch(AttentionEntry("paged_prefill_attention", headDim, suffix), (uint)((maxQueryLen + 15) / 16), (uint)numHeads, 128, (uint)numSeqs);
    }

    /// <summary>Head dims, keys per tile and dtypes paged_attention_mma is compiled for.</summary>
    internal static readonly int[] MmaAttentionHeadDims = [64, 128];
    internal static readonly int[] MmaAttentionTileKeys = [32, 64];

    public static bool MmaAttentionSupports(string suffix, int headDim, int numHeads, int numKvHeads) =>
        suffix is "f16" or "bf16" && Array.IndexOf(MmaAttentionHeadDims, headDim) >= 0 && numKvHeads >= 1 && numHeads % numKvHeads == 0 &&
        numHeads / numKvHeads <= AttentionWork.CtaPairs;

    /// <summary>paged_attention_mma_smem_bytes: K and V tiles in two stages plus each stage's key validity.</summary>
    public static int MmaAttentionSharedBytes(int headDim, int tileKeys) => 4 * tileKeys * headDim * 2 + 2 * tileKeys * 4;

    public static string MmaAttentionKernel(string suffix, int headDim, int tileKeys) => $"paged_attention_mma_hd{headDim}_k{tileKeys}_{suffix}";

    /// <summary>
    /// paged_attention_mma over <paramref name="work"/>'s items: q [qRows, numHeads, headDim]; o, lse hold the step's
    /// rows when the work is direct, else its partial rows. Checks every item against the buffers (row ids, out rows,
    /// the table entries its keys need), so a wrong plan is an ArgumentException here, not a fault on the GPU.
    /// </summary>
    public static KernelLaunch? PagedAttentionMma(string suffix, long oLength, long lseLength, long qLength, long kCacheLength, long vCacheLength,
        long tablesLength, long itemsLength, long rowIdsLength, AttentionWork work, int qRows, int numHeads, int numKvHeads, int headDim, int blockSize,
        int numBlocks, int tileKeys)
    {
        ArgumentNullException.ThrowIfNull(work);
        CheckPagedShape(0, numHeads, numKvHeads, headDim, blockSize, 1, numBlocks);
        if (!MmaAttentionSupports(suffix, headDim, numHeads, numKvHeads))
            throw new ArgumentOutOfRangeException("headDim", headDim,
                $"paged_attention_mma is compiled for f16/bf16 caches, head_dim {{{string.Join(", ", MmaAttentionHeadDims)}}} and GQA groups up to {AttentionWork.CtaPairs} (got {suffix}, {numHeads}/{numKvHeads} heads)");
        if (Array.IndexOf(MmaAttentionTileKeys, tileKeys) < 0)
            throw new ArgumentOutOfRangeException("tileKeys", tileKeys, $"paged_attention_mma's tiles hold {string.Join(" or ", MmaAttentionTileKeys)} keys");
        NonNegative(qRows, "qRows");
        int outRows = work.Direct ? qRows : work.PartialRows;
        AtLeast(qLength, Elements((long)qRows * numHeads, headDim, "q"), "q", $"[qRows={qRows}, numHeads={numHeads}, headDim={headDim}]");
        AtLeast(oLength, Elements((long)outRows * numHeads, headDim, "o"), "o", $"[outRows={outRows}, numHeads={numHeads}, headDim={headDim}]");
        AtLeast(lseLength, (long)outRows * numHeads, "lse", $"[outRows={outRows}, numHeads={numHeads}]");
        long cache = (long)numBlocks * blockSize * numKvHeads * headDim;
        AtLeast(kCacheLength, cache, "kCache", $"[numBlocks={numBlocks}, blockSize={blockSize}, numKvHeads*headDim={numKvHeads * headDim}]");
        AtLeast(vCacheLength, cache, "vCache", $"[numBlocks={numBlocks}, blockSize={blockSize}, numKvHeads*headDim={numKvHeads * headDim}]");
        AtLeast(itemsLength, work.Items.Length, "items", $"[{work.ItemCount} items x {AttentionWork.ItemInts}]");
        AtLeast(rowIdsLength, work.RowIds.Length, "rowIds", $"[{work.RowIds.Length}]");
        int group = numHeads / numKvHeads;
        for (int i = 0; i < work.ItemCount; i++)
        {
            var it = work.Items.AsSpan(i * AttentionWork.ItemInts, AttentionWork.ItemInts);
            int rowList = it[0], rows = it[1], table = it[2], begin = it[3], end = it[4], outRow = it[6];
            if (rows < 0 || rows * group > AttentionWork.CtaPairs || rowList < 0 || rowList + rows > work.RowIds.Length)
                throw new ArgumentException($"item {i}: {rows} rows at {rowList} (at most {AttentionWork.CtaPairs / group} a CTA, inside the {work.RowIds.Length} row ids)", "work");
            for (int j = 0; j < rows; j++)
                if ((uint)work.RowIds[rowList + j] >= (uint)qRows) throw new ArgumentException($"item {i}: q row {work.RowIds[rowList + j]} outside [0, {qRows})", "work");
            if (outRow < 0 || outRow + rows > outRows) throw new ArgumentException($"item {i}: out rows [{outRow}, {outRow + rows}) outside [0, {outRows})", "work");
            if (begin < 0 || end < begin) throw new ArgumentException($"item {i}: key range [{begin}, {end})", "work");
            if (end > begin && (table < 0 || table + (end - 1L) / blockSize >= tablesLength))
                throw new ArgumentException($"item {i}: keys up to {end} need table entries past the {tablesLength} given (table at {table})", "work");
        }
        if (work.ItemCount == 0) return null;
        if (numKvHeads > MaxGridRows) throw new ArgumentOutOfRangeException("numKvHeads", numKvHeads, $"at most {MaxGridRows} kv heads (grid y)");
        return new KernelLaunch(MmaAttentionKernel(suffix, headDim, tileKeys), (uint)work.ItemCount, (uint)numKvHeads, 128, 1,
            (uint)MmaAttentionSharedBytes(headDim, tileKeys));
    }

    /// <summary>attention_merge_slots_f32: o, lse [rows, numHeads(, headDim)] from the partial rows each row's slot list names.</summary>
    public static KernelLaunch? AttentionMergeSlots(long oLength, long lseLength, long oPartialLength, long lsePartialLength, long slotStartsLength,
        long slotsLength, int rows, int partialRows, int numHeads, int headDim)
    {
        NonNegative(rows, "rows");
        NonNegative(partialRows, "partialRows");
        if (numHeads < 1) throw new ArgumentOutOfRangeException("numHeads", numHeads, "numHeads must be >= 1");
        if (headDim < 1) throw new ArgumentOutOfRangeException("headDim", headDim, "headDim must be >= 1");
        AtLeast(oLength, Elements((long)rows * numHeads, headDim, "o"), "o", $"[rows={rows}, numHeads={numHeads}, headDim={headDim}]");
        AtLeast(lseLength, (long)rows * numHeads, "lse", $"[rows={rows}, numHeads={numHeads}]");
        AtLeast(oPartialLength, Elements((long)partialRows * numHeads, headDim, "oPartial"), "oPartial", $"[partialRows={partialRows}, numHeads={numHeads}, headDim={headDim}]");
        AtLeast(lsePartialLength, (long)partialRows * numHeads, "lsePartial", $"[partialRows={partialRows}, numHeads={numHeads}]");
        AtLeast(slotStartsLength, rows + 1L, "slotStarts", $"[rows + 1={rows + 1}]");
        if (rows == 0) return null;
        return new KernelLaunch("attention_merge_slots_f32", (uint)Math.Min((long)rows * numHeads, MaxGridRows), 1, 128);
    }

    /// <summary>sample_tokens_f32: tokens [rows] from logits rows <paramref name="stride"/> apart, the first <paramref name="vocab"/> of each candidates.</summary>
    public static KernelLaunch? SampleTokens(long tokensLength, long coinsLength, long logitsLength, long temperatureLength, long topKLength,
        long topPLength, long minPLength, int rows, int vocab, int stride, bool radix = false)
    {
        NonNegative(rows, "rows");
        if (vocab < 1) throw new ArgumentOutOfRangeException("vocab", vocab, "vocab must be >= 1");
        if (stride < vocab) throw new ArgumentOutOfRangeException("stride", stride, $"the logits' row stride must be >= vocab ({vocab})");
        AtLeast(tokensLength, rows, "tokens", $"[rows={rows}]");
        AtLeast(coinsLength, rows, "coins", $"[rows={rows}]");
        if (rows > 0) AtLeast(logitsLength, Elements(rows - 1, stride, "logits") + vocab, "logits", $"[rows={rows}, stride={stride}]");
        AtLeast(temperatureLength, rows, "temperature", $"[rows={rows}]");
        AtLeast(topKLength, rows, "topK", $"[rows={rows}]");
        AtLeast(topPLength, rows, "topP", $"[rows={rows}]");
        AtLeast(minPLength, rows, "minP", $"[rows={rows}]");
        if (rows == 0) return null;
        return new KernelLaunch(radix ? "sample_tokens_radix_f32" : "sample_tokens_f32", (uint)rows, 1, SampleThreads);
    }

    /// <summary>kv_append: k, v [numTokens, kvDim] into the caches' rows slots[t] (kCache, vCache [numSlots, kvDim]).</summary>
    public static KernelLaunch? KvAppend(string suffix, long kCacheLength, long vCacheLength, long kLength, long vLength, long slotsLength,
        int numTokens, int kvDim, int numSlots)
    {
        NonNegative(numTokens, "numTokens");
        NonNegative(kvDim, "kvDim");
        NonNegative(numSlots, "numSlots");
        long cache = (long)numSlots * kvDim;
        AtLeast(kCacheLength, cache, "kCache", $"[numSlots={numSlots}, kvDim={kvDim}]");
        AtLeast(vCacheLength, cache, "vCache", $"[numSlots={numSlots}, kvDim={kvDim}]");
        AtLeast(kLength, Elements(numTokens, kvDim, "k"), "k", $"[numTokens={numTokens}, kvDim={kvDim}]");
        AtLeast(vLength, Elements(numTokens, kvDim, "v"), "v", $"[numTokens={numTokens}, kvDim={kvDim}]");
        AtLeast(slotsLength, numTokens, "slots", $"[numTokens={numTokens}]");
        if (numTokens == 0 || kvDim == 0 || numSlots == 0) return null;
        return new KernelLaunch($"kv_append_{suffix}", (uint)Math.Min(numTokens, MaxGridRows), 1, 256);
    }

    /// <summary>
    /// rope_kv_append: <see cref="Rope"/> then <see cref="KvAppend"/> in one launch (their checks, the same bits): q's rows
    /// (qStride floats apart) rotated into the dense qOut, k's rotated rows and v's rows (kvStride apart) written at
    /// slots[t]; grid min(numTokens, 65535), block 128. Separate q, k, v: strides q_dim, kv_dim; one q|k|v GEMM's
    /// output: both strides q_dim + 2 kv_dim.
    /// </summary>
    public static KernelLaunch? RopeKvAppend(string suffix, long qOutLength, long qLength, long kLength, long vLength, int qStride, int kvStride,
        long kCacheLength, long vCacheLength, long positionsLength, long invFreqLength, long slotsLength, int numTokens, int numQHeads, int numKvHeads,
        int headDim, int numSlots)
    {
        if (numKvHeads < 1) throw new ArgumentOutOfRangeException("numKvHeads", numKvHeads, "rope_kv_append needs numKvHeads >= 1");
        var rope = Rope(qOutLength, kLength, positionsLength, invFreqLength, numTokens, numQHeads, numKvHeads, headDim);
        int qDim = numQHeads * headDim, kvDim = numKvHeads * headDim;
        if (qStride < qDim) throw new ArgumentOutOfRangeException("qStride", qStride, $"q's rows are {qDim} floats (numQHeads x headDim)");
        if (kvStride < kvDim) throw new ArgumentOutOfRangeException("kvStride", kvStride, $"k's and v's rows are {kvDim} floats (numKvHeads x headDim)");
        long Strided(long stride, int width) => numTokens == 0 ? 0 : (numTokens - 1L) * stride + width;
        AtLeast(qLength, Strided(qStride, qDim), "q", $"[numTokens={numTokens} rows of {qDim}, {qStride} apart]");
        AtLeast(kLength, Strided(kvStride, kvDim), "k", $"[numTokens={numTokens} rows of {kvDim}, {kvStride} apart]");
        AtLeast(vLength, Strided(kvStride, kvDim), "v", $"[numTokens={numTokens} rows of {kvDim}, {kvStride} apart]");
        long cache = (long)numSlots * kvDim;
        NonNegative(numSlots, "numSlots");
        AtLeast(kCacheLength, cache, "kCache", $"[numSlots={numSlots}, kvDim={kvDim}]");
        AtLeast(vCacheLength, cache, "vCache", $"[numSlots={numSlots}, kvDim={kvDim}]");
        AtLeast(slotsLength, numTokens, "slots", $"[numTokens={numTokens}]");
        return rope == null ? null : new KernelLaunch($"rope_kv_append_{suffix}", rope.Value.GridX, 1, 128);
    }

    // ---- paged KV checks --------------------------------------------------------------------------------------------

    private static void CheckPagedShape(int numSeqs, int numHeads, int numKvHeads, int headDim, int blockSize, int maxBlocksPerSeq, int numBlocks)
    {
        NonNegative(numSeqs, "numSeqs");
        if (numKvHeads < 1) throw new ArgumentOutOfRangeException("numKvHeads", numKvHeads, "numKvHeads must be >= 1");
        if (numHeads < numKvHeads || numHeads % numKvHeads != 0)
            throw new ArgumentOutOfRangeException("numHeads", numHeads, $"numHeads must be a positive multiple of numKvHeads = {numKvHeads}");
        if (Array.IndexOf(AttentionHeadDims, headDim) < 0)
            throw new ArgumentOutOfRangeException("headDim", headDim, $"the attention kernels support head_dim in {{{string.Join(", ", AttentionHeadDims)}}}");
        if (blockSize < 1) throw new ArgumentOutOfRangeException("blockSize", blockSize, "blockSize must be >= 1");
        if (maxBlocksPerSeq < 1) throw new ArgumentOutOfRangeException("maxBlocksPerSeq", maxBlocksPerSeq, "maxBlocksPerSeq must be >= 1");
        NonNegative(numBlocks, "numBlocks");
        if ((long)maxBlocksPerSeq * blockSize > int.MaxValue)
            throw new ArgumentOutOfRangeException("maxBlocksPerSeq", maxBlocksPerSeq, "maxBlocksPerSeq * blockSize must fit an int32 position");
    }

    private static void CheckPagedBuffers(long kCacheLength, long vCacheLength, long blockTablesLength, long seqLensLength, int numSeqs, int numKvHeads,
        int headDim, int blockSize, int maxBlocksPerSeq, int numBlocks)
    {
        // The cache may exceed 2^31 elements in total: kernels index it with 64-bit offsets, so only its length is checked.
        long cache = (long)numBlocks * blockSize * numKvHeads * headDim;
        string shape = $"[numBlocks={numBlocks}, blockSize={blockSize}, numKvHeads*headDim={numKvHeads * headDim}]";
        AtLeast(kCacheLength, cache, "kCache", shape);
        AtLeast(vCacheLength, cache, "vCache", shape);
        AtLeast(blockTablesLength, Elements(numSeqs, maxBlocksPerSeq, "blockTables"), "blockTables", $"[numSeqs={numSeqs}, maxBlocksPerSeq={maxBlocksPerSeq}]");
        AtLeast(seqLensLength, numSeqs, "seqLens", $"[numSeqs={numSeqs}]");
    }
}
