// Shape checks and grid choice for W4A8 (QServe/QoQ): w4a8_gemm_{group,channel}_{m16,m64} and rms_norm_quant_int8_*
// (kernels/ops/w4a8_gemm.cuh and rms_norm_quant.cuh give the contracts these mirror). No driver calls.
namespace Kernels.Runtime.Backends.Cuda;

internal static partial class OpsLaunchPlans
{
    /// <summary>w4a8_gemm_*_m16 (16-row CTA) serves M up to this; larger M takes the 64-row CTA.</summary>
    internal const int W4A8SmallMMax = 16;
    /// <summary>Output channels per CTA of w4a8_gemm (4 warps x 32).</summary>
    internal const int W4A8CtaN = 128;
    /// <summary>Largest K: |xq * w8| &lt;= 127 * 127, so an int32 sum over 131072 products cannot overflow.</summary>
    internal const int W4A8MaxK = 131072;
    /// <summary>rms_norm_quant_int8 reduces the int sum of a row in fp32: exact while 127 * dim &lt; 2^24.</summary>
    internal const int RmsNormQuantMaxDim = 132000;

    /// <summary>N or K rounded up to the 32-wide W4A8 tile.</summary>
    internal static int W4A8Padded(int size) => (size + 31) / 32 * 32;

    /// <summary>The w4a8_gemm entry for M rows: the 16-row CTA up to <see cref="W4A8SmallMMax"/> rows, else the 64-row one.</summary>
    public static string W4A8GemmKernel(int m, int groupSize) =>
        $"w4a8_gemm_{(groupSize > 0 ? "group" : "channel")}_{(m <= W4A8SmallMMax ? "m16" : "m64")}";

    /// <summary>
    /// y [m, n] fp32; xq [m, Kpad] int8; xScale [m]; xSum [m] int32 (per channel; -1 = absent, allowed per group);
    /// qweight [Npad * Kpad / 2] bytes; wScale [n] fp16; scales2, zeros [K / groupSize, Npad] bytes per group
    /// (scales2Length -1 per channel) or zeros [n] per channel. groupSize 0 = per channel.
    /// </summary>
    public static KernelLaunch? W4A8Gemm(long yLength, long xqLength, long xScaleLength, long xSumLength, long qweightLength, long wScaleLength,
        long scales2Length, long zerosLength, int m, int n, int k, int groupSize)
    {
        NonNegative(m, "m");
        NonNegative(n, "n");
        if (k <= 0 || k > W4A8MaxK)
            throw new ArgumentOutOfRangeException("k", k, $"w4a8_gemm needs 0 < K <= {W4A8MaxK} (the int32 accumulator's bound)");
        if (groupSize < 0 || groupSize % 32 != 0)
            throw new ArgumentOutOfRangeException("groupSize", groupSize, "groupSize must be 0 (per channel) or a positive multiple of 32");
        if (groupSize > 0 && k % groupSize != 0)
            throw new ArgumentOutOfRangeException("groupSize", groupSize, $"K = {k} is not a multiple of groupSize; such layers are stored per channel");
        int nPad = W4A8Padded(n), kPad = W4A8Padded(k);
        AtLeast(yLength, Elements(m, n, "y"), "y", $"[m={m}, n={n}]");
        AtLeast(xqLength, Elements(m, kPad, "xq"), "xq", $"[m={m}, Kpad={kPad}]");
        AtLeast(xScaleLength, m, "xScale", $"[m={m}]");
        AtLeast(qweightLength, Elements(nPad, kPad / 2, "qweight"), "qweight", $"[Npad={nPad}, Kpad/2={kPad / 2}]");
        AtLeast(wScaleLength, n, "wScale", $"[n={n}]");
        if (groupSize > 0)
        {
            long table = Elements(k / groupSize, nPad, "scales2");
            if (scales2Length < 0) throw new ArgumentNullException("scales2", "per-group w4a8_gemm needs the group scales");
            AtLeast(scales2Length, table, "scales2", $"[K/group={k / groupSize}, Npad={nPad}]");
            AtLeast(zerosLength, table, "zeros", $"[K/group={k / groupSize}, Npad={nPad}]");
            if (xSumLength >= 0) AtLeast(xSumLength, m, "xSum", $"[m={m}]");
        }
        else
        {
            if (xSumLength < 0) throw new ArgumentNullException("xSum", "per-channel w4a8_gemm needs the activation sums (the zero-point term)");
            AtLeast(xSumLength, m, "xSum", $"[m={m}]");
            AtLeast(zerosLength, n, "zeros", $"[n={n}]");
        }
        if (m == 0 || n == 0) return null;
        int ctaM = m <= W4A8SmallMMax ? 16 : 64;
        long gridY = (m + ctaM - 1L) / ctaM;
        if (gridY > MaxGridRows) throw new ArgumentOutOfRangeException("m", m, $"w4a8_gemm covers at most {MaxGridRows * 64L} rows per launch");
        return new KernelLaunch(W4A8GemmKernel(m, groupSize), (uint)((nPad + W4A8CtaN - 1) / W4A8CtaN), (uint)gridY, 128);
    }

    /// <summary>K tiles of 32 per pipeline stage of w4a8_gemm_*_splitk (kSplitTilesPerStage): split points fall on stages.</summary>
    internal const int W4A8SplitTilesPerStage = 4;
    internal const int W4A8MaxSplits = 16;

    /// <summary>One w4a8_gemm_*_splitk launch: the kernel, and w4a8_splitk_reduce when K is split (its partials need Workspace ints).</summary>
    internal readonly record struct W4A8SplitPlan(KernelLaunch Gemm, KernelLaunch? Reduce, int Splits, int TilesPerSplit, long WorkspaceInts);

    /// <summary>
    /// w4a8_gemm_{group,channel}_splitk for m &lt;= 16: the shape checks of <see cref="W4A8Gemm"/>, and K split so that
    /// (Npad / 128) x splits CTAs reach <paramref name="targetCtas"/> (each split at least one 4-tile stage, at most
    /// <see cref="W4A8MaxSplits"/>), fewer when <paramref name="workspaceInts"/> cannot hold splits x m x n partial sums.
    /// </summary>
    public static W4A8SplitPlan? W4A8GemmSplitK(long yLength, long xqLength, long xScaleLength, long xSumLength, long qweightLength, long wScaleLength,
        long scales2Length, long zerosLength, long workspaceInts, int m, int n, int k, int groupSize, int targetCtas)
    {
        if (m > W4A8SmallMMax) throw new ArgumentOutOfRangeException("m", m, $"w4a8_gemm_*_splitk takes at most {W4A8SmallMMax} rows");
        if (W4A8Gemm(yLength, xqLength, xScaleLength, xSumLength, qweightLength, wScaleLength, scales2Length, zerosLength, m, n, k, groupSize) is null)
            return null;
        int kTiles = W4A8Padded(k) / 32, ctas = (W4A8Padded(n) + W4A8CtaN - 1) / W4A8CtaN;
        int stages = (kTiles + W4A8SplitTilesPerStage - 1) / W4A8SplitTilesPerStage;
        int splits = Math.Clamp((targetCtas + ctas - 1) / ctas, 1, Math.Min(W4A8MaxSplits, stages));
        while (splits > 1 && (long)splits * m * n > workspaceInts) splits--;
        int tiles = (stages + splits - 1) / splits * W4A8SplitTilesPerStage;
        splits = (kTiles + tiles - 1) / tiles; // no empty split
        string kernel = $"w4a8_gemm_{(groupSize > 0 ? "group" : "channel")}_splitk";
        var gemm = new KernelLaunch(kernel, (uint)ctas, (uint)splits, 128);
        KernelLaunch? reduce = splits > 1 ? new KernelLaunch("w4a8_splitk_reduce", (uint)(((long)m * n + 255) / 256), 1, 256) : null;
        return new W4A8SplitPlan(gemm, reduce, splits, tiles, splits > 1 ? (long)splits * m * n : 0);
    }

    /// <summary>rms_norm_quant_int8_{f32,f16,bf16}: xq [numTokens, dimPadded], xScale, xSum [numTokens] from x [numTokens, dim].</summary>
    public static KernelLaunch? RmsNormQuantInt8(string kernel, long xqLength, long xScaleLength, long xSumLength, long xLength, long weightLength,
        int numTokens, int dim, int dimPadded, float eps)
    {
        NonNegative(numTokens, "numTokens");
        NonNegative(dim, "dim");
        if (dim == 0 && dimPadded > 0) throw new ArgumentOutOfRangeException("dim", dim, "an empty row has no RMS; pass dimPadded 0 too");
        if (dim > RmsNormQuantMaxDim) throw new ArgumentOutOfRangeException("dim", dim, $"rms_norm_quant_int8 supports dim <= {RmsNormQuantMaxDim} (exact fp32 sum of the codes)");
        if (dimPadded < dim || dimPadded % 32 != 0)
            throw new ArgumentOutOfRangeException("dimPadded", dimPadded, $"dimPadded must be a multiple of 32 and >= dim = {dim}");
        PositiveEps(eps);
        AtLeast(xqLength, Elements(numTokens, dimPadded, "xq"), "xq", $"[numTokens={numTokens}, dimPadded={dimPadded}]");
        AtLeast(xScaleLength, numTokens, "xScale", $"[numTokens={numTokens}]");
        AtLeast(xSumLength, numTokens, "xSum", $"[numTokens={numTokens}]");
        AtLeast(xLength, Elements(numTokens, dim, "x"), "x", $"[numTokens={numTokens}, dim={dim}]");
        AtLeast(weightLength, dim, "weight", $"[dim={dim}]");
        if (numTokens == 0 || dimPadded == 0) return null;
        // The same block size as rms_norm for the same dim: the sum of squares then reduces in the same order.
        uint block = dim >= 8192 ? 1024u : 256u;
        return new KernelLaunch(kernel, (uint)Math.Min(numTokens, MaxGridRows), 1, block);
    }

    /// <summary>
    /// quantize_int8_f32: rms_norm_quant_int8's quantization of x itself (no norm, no weight), with its shape rules and
    /// its block for the dim (the code sum reduces in the same order).
    /// </summary>
    public static KernelLaunch? QuantizeInt8(long xqLength, long xScaleLength, long xSumLength, long xLength, int numTokens, int dim, int dimPadded) =>
        RmsNormQuantInt8("quantize_int8_f32", xqLength, xScaleLength, xSumLength, xLength, dim, numTokens, dim, dimPadded, 1f);
}
