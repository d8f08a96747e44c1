// Shape and precondition checks plus grid/block choice for every kernel in kernels/ops, with no driver call, so the
// launchers validate before touching the GPU and the checks are testable on a machine without one (STYLE habit 7).
namespace Kernels.Runtime.Backends.Cuda;

/// <summary>
/// One launch: which exported kernel, its grid and block (y and z of the block are 1) and its dynamic shared memory in
/// bytes (above <see cref="OpsLaunchPlans.DefaultSharedBytes"/> the launcher raises the function's limit first).
/// </summary>
internal readonly record struct KernelLaunch(string Kernel, uint GridX, uint GridY, uint BlockX, uint GridZ = 1, uint SharedBytes = 0);

/// <summary>
/// Each method mirrors an OpsLauncher method: its arguments are the buffer lengths and scalars, named as the launcher
/// names them, so an ArgumentException's ParamName points at the launcher's argument. It returns the launch, or null
/// when there is nothing to compute (the launcher then skips the launch: a zero grid is a launch error).
/// Grid and block follow the header comments in kernels/ops/*.cuh (and the table in kernels/README.md).
/// </summary>
internal static partial class OpsLaunchPlans
{
    /// <summary>gridDim.y and the grid-stride loops' row grid are capped at 65535 (gridDim.y's hardware limit).</summary>
    internal const int MaxGridRows = 65535;
    /// <summary>Dynamic shared memory a launch gets without raising the function's limit (48 KiB on sm_80 and sm_90).</summary>
    internal const int DefaultSharedBytes = 48 * 1024;
    /// <summary>ROPE_MAX_HEAD_DIM in kernels/ops/rope.cuh: the kernel's shared cos/sin tables hold head_dim / 2 floats.</summary>
    internal const int RopeMaxHeadDim = 512;

    public static KernelLaunch? EmbeddingGather(string kernel, long outputLength, long tableLength, long idsLength, int numTokens, int dim, int vocab)
    {
        NonNegative(numTokens, "numTokens");
        NonNegative(dim, "dim");
        NonNegative(vocab, "vocab");
        long outElements = Elements(numTokens, dim, "output");
        long tableElements = Elements(vocab, dim, "table");
        AtLeast(outputLength, outElements, "output", $"[numTokens={numTokens}, dim={dim}]");
        AtLeast(tableLength, tableElements, "table", $"[vocab={vocab}, dim={dim}]");
        AtLeast(idsLength, numTokens, "ids", $"[numTokens={numTokens}]");
        if (numTokens == 0 || dim == 0) return null;
        if (vocab == 0) throw new ArgumentOutOfRangeException("vocab", vocab, "an embedding table with no rows cannot be gathered from");
        return new KernelLaunch(kernel, (uint)Math.Min(numTokens, MaxGridRows), 1, 256);
    }

    public static KernelLaunch? RmsNorm(string kernel, long yLength, long xLength, long weightLength, int numTokens, int dim, float eps)
    {
        NonNegative(numTokens, "numTokens");
        NonNegative(dim, "dim");
        PositiveEps(eps);
        long elements = Elements(numTokens, dim, "x");
        AtLeast(yLength, elements, "y", $"[numTokens={numTokens}, dim={dim}]");
        AtLeast(xLength, elements, "x", $"[numTokens={numTokens}, dim={dim}]");
        AtLeast(weightLength, dim, "weight", $"[dim={dim}]");
        if (numTokens == 0 || dim == 0) return null;
        // block_reduce needs a multiple of 32 up to 1024; the summation order depends on the block size, so it is a
        // fixed function of dim: wide rows get more threads.
        uint block = dim >= 8192 ? 1024u : 256u;
        return new KernelLaunch(kernel, (uint)Math.Min(numTokens, MaxGridRows), 1, block);
    }

    /// <summary>
    /// rms_norm_{w}_to_{o}: <see cref="RmsNorm"/> (its checks and grid) writing y and its 16-bit copy y16 [numTokens, dim]
    /// (the cuBLASLt GEMM's input) in one launch.
    /// </summary>
    public static KernelLaunch? RmsNormTo16(string weightSuffix, string outputSuffix, long yLength, long y16Length, long xLength, long weightLength,
        int numTokens, int dim, float eps)
    {
        if (outputSuffix is not ("f16" or "bf16")) throw new ArgumentOutOfRangeException("y16", outputSuffix, "the copy is f16 or bf16");
        var plan = RmsNorm($"rms_norm_{weightSuffix}_to_{outputSuffix}", yLength, xLength, weightLength, numTokens, dim, eps);
        AtLeast(y16Length, Elements(numTokens, dim, "y16"), "y16", $"[numTokens={numTokens}, dim={dim}]");
        return plan;
    }

    /// <summary><paramref name="kLength"/> is -1 when there is no k buffer (allowed only with numKvHeads == 0).</summary>
    public static KernelLaunch? Rope(long qLength, long kLength, long positionsLength, long invFreqLength, int numTokens, int numQHeads, int numKvHeads, int headDim)
    {
        NonNegative(numTokens, "numTokens");
        NonNegative(numQHeads, "numQHeads");
        NonNegative(numKvHeads, "numKvHeads");
        if (headDim < 2 || headDim > RopeMaxHeadDim || headDim % 2 != 0)
            throw new ArgumentOutOfRangeException("headDim", headDim, $"rope_f32 needs an even head_dim in [2, {RopeMaxHeadDim}] (ROPE_MAX_HEAD_DIM)");
        long qElements = Elements((long)numTokens * numQHeads, headDim, "q");
        long kElements = Elements((long)numTokens * numKvHeads, headDim, "k");
        AtLeast(qLength, qElements, "q", $"[numTokens={numTokens}, numQHeads={numQHeads}, headDim={headDim}]");
        if (kLength < 0)
        {
            if (numKvHeads != 0) throw new ArgumentNullException("k", $"k is null but numKvHeads = {numKvHeads}");
        }
        else AtLeast(kLength, kElements, "k", $"[numTokens={numTokens}, numKvHeads={numKvHeads}, headDim={headDim}]");
        AtLeast(positionsLength, numTokens, "positions", $"[numTokens={numTokens}]");
        AtLeast(invFreqLength, headDim / 2, "invFreq", $"[headDim/2={headDim / 2}]");
        if (numTokens == 0 || numQHeads + numKvHeads == 0) return null;
        return new KernelLaunch("rope_f32", (uint)Math.Min(numTokens, MaxGridRows), 1, 128);
    }

    public static KernelLaunch? SwiGlu(long outputLength, long gateLength, long upLength, int numTokens, int inter)
    {
        NonNegative(numTokens, "numTokens");
        NonNegative(inter, "inter");
        long elements = Elements(numTokens, inter, "output");
        AtLeast(outputLength, elements, "output", $"[numTokens={numTokens}, inter={inter}]");
        AtLeast(gateLength, elements, "gate", $"[numTokens={numTokens}, inter={inter}]");
        AtLeast(upLength, elements, "up", $"[numTokens={numTokens}, inter={inter}]");
        return SwiGluGrid("swiglu_f32", numTokens, inter);
    }

    public static KernelLaunch? SwiGluFused(long outputLength, long gateUpLength, bool outputIsGateUp, int numTokens, int inter)
    {
        NonNegative(numTokens, "numTokens");
        NonNegative(inter, "inter");
        if (outputIsGateUp)
            throw new ArgumentException("swiglu_fused_f32 cannot run in place: output must not overlap gateUp (other blocks would read gateUp rows already overwritten)", "output");
        AtLeast(outputLength, Elements(numTokens, inter, "output"), "output", $"[numTokens={numTokens}, inter={inter}]");
        AtLeast(gateUpLength, Elements(numTokens, 2L * inter, "gateUp"), "gateUp", $"[numTokens={numTokens}, 2*inter={2L * inter}]");
        return SwiGluGrid("swiglu_fused_f32", numTokens, inter);
    }

    /// <summary>swiglu_fused_f32_to_{o}: <see cref="SwiGluFused"/> also writing output16 [numTokens, inter], output's 16-bit copy.</summary>
    public static KernelLaunch? SwiGluFusedTo16(string outputSuffix, long outputLength, long output16Length, long gateUpLength, bool outputIsGateUp,
        int numTokens, int inter)
    {
        if (outputSuffix is not ("f16" or "bf16")) throw new ArgumentOutOfRangeException("output16", outputSuffix, "the copy is f16 or bf16");
        var plan = SwiGluFused(outputLength, gateUpLength, outputIsGateUp, numTokens, inter);
        AtLeast(output16Length, Elements(numTokens, inter, "output16"), "output16", $"[numTokens={numTokens}, inter={inter}]");
        return plan == null ? null : plan.Value with { Kernel = $"swiglu_fused_f32_to_{outputSuffix}" };
    }

    private static KernelLaunch? SwiGluGrid(string kernel, int numTokens, int inter)
    {
        if (numTokens == 0 || inter == 0) return null;
        const int Block = 256;
        return new KernelLaunch(kernel, (uint)((inter + Block - 1) / Block), (uint)Math.Min(numTokens, MaxGridRows), Block);
    }

    public static KernelLaunch? ResidualAdd(long xLength, long yLength, int n)
    {
        NonNegative(n, "n");
        AtLeast(xLength, n, "x", $"[n={n}]");
        AtLeast(yLength, n, "y", $"[n={n}]");
        if (n == 0) return null;
        const int Block = 256;
        long float4Steps = (n + 3L) / 4;
        return new KernelLaunch("residual_add_f32", (uint)Math.Min((float4Steps + Block - 1) / Block, MaxGridRows), 1, Block);
    }

    /// <summary>bias_add_f32: y [rows, n] += bias [n] per row; grid (ceil_div(n, 256), min(rows, MaxGridRows)).</summary>
    public static KernelLaunch? BiasAdd(long yLength, long biasLength, int rows, int n)
    {
        NonNegative(rows, "rows");
        NonNegative(n, "n");
        AtLeast(yLength, Elements(rows, n, "y"), "y", $"[rows={rows}, n={n}]");
        AtLeast(biasLength, n, "bias", $"[n={n}]");
        if (rows == 0 || n == 0) return null;
        const int Block = 256;
        return new KernelLaunch("bias_add_f32", (uint)((n + Block - 1) / Block), (uint)Math.Min(rows, MaxGridRows), Block);
    }

    /// <summary>The most rows one squeezellm_gemv launch takes (its accumulators are registers); more rows go in chunks.</summary>
    public const int SqueezeMaxRows = 8;

    /// <summary>squeezellm_gemv_b{bits}: y [m, n] = x [m, k] W^T, m &lt;= SqueezeMaxRows; a warp per output row, 4 per block.</summary>
    public static KernelLaunch? SqueezeGemv(int bits, long yLength, long xLength, long codesLength, long tableLength, long rowsLength, int m, int n, int k)
    {
        if (bits is not (3 or 4)) throw new ArgumentOutOfRangeException("bits", bits, "SqueezeLLM codes are 3 or 4 bits");
        NonNegative(m, "m");
        NonNegative(n, "n");
        if (m > SqueezeMaxRows) throw new ArgumentOutOfRangeException("m", m, $"at most {SqueezeMaxRows} rows per launch");
        if (k < 1) throw new ArgumentOutOfRangeException("k", k, "k must be >= 1");
        AtLeast(yLength, Elements(m, n, "y"), "y", $"[m={m}, n={n}]");
        AtLeast(xLength, Elements(m, k, "x"), "x", $"[m={m}, k={k}]");
        AtLeast(codesLength, Elements(n, (k + 31L) / 32 * bits, "codes"), "codes", $"[n={n}, words]");
        AtLeast(tableLength, Elements(n, 1L << bits, "table"), "table", $"[n={n}, 2^{bits}]");
        AtLeast(rowsLength, n + 1L, "rows", $"[n + 1 = {n + 1}]");
        if (m == 0 || n == 0) return null;
        return new KernelLaunch($"squeezellm_gemv_b{bits}", (uint)((n + 3L) / 4), 1, 128);
    }

    /// <summary>convert_f32_to_{f16,bf16}: n fp32 values rounded into dst (<paramref name="suffix"/> "f16" or "bf16").</summary>
    public static KernelLaunch? ConvertFromF32(string suffix, long dstLength, long srcLength, int n)
    {
        if (suffix is not ("f16" or "bf16")) throw new ArgumentOutOfRangeException(nameof(suffix), suffix, "convert_f32_to_ writes f16 or bf16");
        NonNegative(n, "n");
        AtLeast(dstLength, n, "dst", $"[n={n}]");
        AtLeast(srcLength, n, "src", $"[n={n}]");
        if (n == 0) return null;
        const int Block = 256;
        long float4Steps = (n + 3L) / 4;
        return new KernelLaunch("convert_f32_to_" + suffix, (uint)Math.Min((float4Steps + Block - 1) / Block, MaxGridRows), 1, Block);
    }

    // ---- checks ----------------------------------------------------------------------------------------------------

    /// <summary>An RMSNorm's eps: finite and > 0 (it keeps 1/sqrt finite for a zero row).</summary>
    private static void PositiveEps(float eps)
    {
        if (!(eps > 0) || !float.IsFinite(eps))
            throw new ArgumentOutOfRangeException("eps", eps, "eps must be a finite number > 0 (it keeps 1/sqrt finite for a zero row)");
    }

    private static void NonNegative(int value, string argument)
    {
        if (value < 0) throw new ArgumentOutOfRangeException(argument, value, $"{argument} must be >= 0");
    }

    /// <summary>rows * columns, which abi.h requires to be below 2^31 for every tensor.</summary>
    private static long Elements(long rows, long columns, string argument)
    {
        long n = rows * columns;
        if (n > int.MaxValue)
            throw new ArgumentOutOfRangeException(argument, n, $"{argument} would have {n} elements; kernels take tensors of fewer than 2^31 elements");
        return n;
    }

    private static void AtLeast(long length, long needed, string argument, string shape)
    {
        if (length < needed)
            throw new ArgumentException($"{argument} holds {length} elements, but its shape {shape} needs {needed}", argument);
    }
}
