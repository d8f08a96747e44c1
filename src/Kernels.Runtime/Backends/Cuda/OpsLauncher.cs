// One typed method per kernel exported from kernels/ops (kernels/exports.txt): validate, skip empty work, launch.
using Kernels.Interop;

namespace Kernels.Runtime.Backends.Cuda;

/// <summary>
/// Launches the op kernels of a loaded <see cref="KernelModule"/> on one stream (null: the legacy default stream).
/// Every method validates shapes and preconditions first (OpsLaunchPlans, no driver call) and throws an
/// ArgumentException naming the argument, skips the launch when there is nothing to compute, and returns once the
/// launch is queued: kernel faults surface at the next synchronizing call. Buffers hold at least what the shape needs.
/// </summary>
internal sealed unsafe partial class OpsLauncher
{
    private readonly KernelModule _module;
    private readonly CuStreamHandle? _stream;

    public OpsLauncher(KernelModule module, CuStreamHandle? stream = null)
    {
        ArgumentNullException.ThrowIfNull(module);
        _module = module;
        _stream = stream;
    }

    /// <summary>Entry names of the kernels compiled per element type, built once per T (a launch allocates no name).</summary>
    private static class ElementKernels<T> where T : unmanaged
    {
        public static readonly string EmbeddingGather = "embedding_gather_" + DeviceElement<T>.Suffix;
        public static readonly string RmsNorm = "rms_norm_" + DeviceElement<T>.Suffix;
    }

    // ---- embedding_gather_{f32,f16,bf16} ----------------------------------------------------------------------------
    // out [numTokens, dim] fp32 <- table [vocab, dim] rows ids[t]. Ids must be validated by the caller on the host
    // (they come from the tokenizer/sampler); an out-of-range id gives a zero row on the GPU instead of a fault.

    public void EmbeddingGatherF32(DeviceBuffer<float> output, DeviceBuffer<float> table, DeviceBuffer<int> ids, int numTokens, int dim, int vocab) =>
        EmbeddingGather(output, table, ids, numTokens, dim, vocab);

    public void EmbeddingGatherF16(DeviceBuffer<float> output, DeviceBuffer<Half> table, DeviceBuffer<int> ids, int numTokens, int dim, int vocab) =>
        EmbeddingGather(output, table, ids, numTokens, dim, vocab);

    /// <summary>bf16 table as raw ushort bits.</summary>
    public void EmbeddingGatherBF16(DeviceBuffer<float> output, DeviceBuffer<ushort> table, DeviceBuffer<int> ids, int numTokens, int dim, int vocab) =>
        EmbeddingGather(output, table, ids, numTokens, dim, vocab);

    /// <summary>The three above in one: T is float (F32), Half (F16) or ushort (BF16 bits), see <see cref="DeviceElement{T}"/>.</summary>
    internal void EmbeddingGather<T>(DeviceBuffer<float> output, DeviceBuffer<T> table, DeviceBuffer<int> ids, int numTokens, int dim, int vocab)
        where T : unmanaged
    {
        string kernel = ElementKernels<T>.EmbeddingGather;
        ArgumentNullException.ThrowIfNull(output);
        ArgumentNullException.ThrowIfNull(table);
        ArgumentNullException.ThrowIfNull(ids);
        if (OpsLaunchPlans.EmbeddingGather(kernel, output.Length, table.Length, ids.Length, numTokens, dim, vocab) is not { } plan) return;
        SameDevice(output, nameof(output));
        SameDevice(table, nameof(table));
        SameDevice(ids, nameof(ids));
        ulong o = output.Pointer, t = table.Pointer, i = ids.Pointer;
        int nt = numTokens, d = dim, v = vocab;
        void** args = stackalloc void*[] { &o, &t, &i, &nt, &d, &v };
        Launch(plan, args);
    }

    // ---- rms_norm_{f32,f16,bf16} ------------------------------------------------------------------------------------
    // y [numTokens, dim] = x / sqrt(mean(x^2) + eps) * weight; y may be x.

    public void RmsNormF32(DeviceBuffer<float> y, DeviceBuffer<float> x, DeviceBuffer<float> weight, int numTokens, int dim, float eps) =>
        RmsNorm(y, x, weight, numTokens, dim, eps);

    public void RmsNormF16(DeviceBuffer<float> y, DeviceBuffer<float> x, DeviceBuffer<Half> weight, int numTokens, int dim, float eps) =>
        RmsNorm(y, x, weight, numTokens, dim, eps);

    /// <summary>bf16 weight as raw ushort bits.</summary>
    public void RmsNormBF16(DeviceBuffer<float> y, DeviceBuffer<float> x, DeviceBuffer<ushort> weight, int numTokens, int dim, float eps) =>
        RmsNorm(y, x, weight, numTokens, dim, eps);

    /// <summary>The three above in one: T is float (F32), Half (F16) or ushort (BF16 bits), see <see cref="DeviceElement{T}"/>.</summary>
    internal void RmsNorm<T>(DeviceBuffer<float> y, DeviceBuffer<float> x, DeviceBuffer<T> weight, int numTokens, int dim, float eps)
        where T : unmanaged
    {
        string kernel = ElementKernels<T>.RmsNorm;
        ArgumentNullException.ThrowIfNull(y);
        ArgumentNullException.ThrowIfNull(x);
        ArgumentNullException.ThrowIfNull(weight);
        if (OpsLaunchPlans.RmsNorm(kernel, y.Length, x.Length, weight.Length, numTokens, dim, eps) is not { } plan) return;
        SameDevice(y, nameof(y));
        SameDevice(x, nameof(x));
        SameDevice(weight, nameof(weight));
        ulong py = y.Pointer, px = x.Pointer, pw = weight.Pointer;
        int nt = numTokens, d = dim;
        float e = eps;
        void** args = stackalloc void*[] { &py, &px, &pw, &nt, &d, &e };
        Launch(plan, args);
    }

    /// <summary>
    /// <see cref="RmsNorm{T}"/> writing y and y16 (y rounded to TO: f16 as Half, bf16 as ushort bits; as
    /// convert_f32_to_*) in one launch: the fp32 row and a cuBLASLt GEMM's 16-bit input. The same bits as the two launches.
    /// </summary>
    internal void RmsNormTo16<TW, TO>(DeviceBuffer<float> y, DeviceBuffer<TO> y16, DeviceBuffer<float> x, DeviceBuffer<TW> weight, int numTokens, int dim,
        float eps) where TW : unmanaged where TO : unmanaged
    {
        ArgumentNullException.ThrowIfNull(y);
        ArgumentNullException.ThrowIfNull(y16);
        ArgumentNullException.ThrowIfNull(x);
        ArgumentNullException.ThrowIfNull(weight);
        if (OpsLaunchPlans.RmsNormTo16(DeviceElement<TW>.Suffix, DeviceElement<TO>.Suffix, y.Length, y16.Length, x.Length, weight.Length, numTokens, dim, eps)
            is not { } plan) return;
        SameDevice(y, nameof(y));
        SameDevice(y16, nameof(y16));
        SameDevice(x, nameof(x));
        SameDevice(weight, nameof(weight));
        ulong py = y.Pointer, py16 = y16.Pointer, px = x.Pointer, pw = weight.Pointer;
        int nt = numTokens, d = dim;
        float e = eps;
        void** args = stackalloc void*[] { &py, &py16, &px, &pw, &nt, &d, &e };
        Launch(plan, args);
    }

    // ---- rope_f32 ---------------------------------------------------------------------------------------------------
    /// <summary>
    /// Rotates q [numTokens, numQHeads, headDim] and k [numTokens, numKvHeads, headDim] in place (rotate-half), token t
    /// at positions[t] (0 &lt;= pos &lt; 2^24, the caller's responsibility), angles positions[t] * invFreq[i].
    /// <paramref name="k"/> may be null when numKvHeads is 0.
    /// </summary>
    public void RopeF32(DeviceBuffer<float> q, DeviceBuffer<float>? k, DeviceBuffer<int> positions, DeviceBuffer<float> invFreq,
        int numTokens, int numQHeads, int numKvHeads, int headDim)
    {
        ArgumentNullException.ThrowIfNull(q);
        ArgumentNullException.ThrowIfNull(positions);
        ArgumentNullException.ThrowIfNull(invFreq);
        if (OpsLaunchPlans.Rope(q.Length, k?.Length ?? -1, positions.Length, invFreq.Length, numTokens, numQHeads, numKvHeads, headDim) is not { } plan) return;
        SameDevice(q, nameof(q));
        if (k != null) SameDevice(k, nameof(k));
        SameDevice(positions, nameof(positions));
        SameDevice(invFreq, nameof(invFreq));
        ulong pq = q.Pointer, pk = k?.Pointer ?? 0, pp = positions.Pointer, pf = invFreq.Pointer;
        int nt = numTokens, hq = numQHeads, hk = numKvHeads, hd = headDim;
        void** args = stackalloc void*[] { &pq, &pk, &pp, &pf, &nt, &hq, &hk, &hd };
        Launch(plan, args);
    }

    // ---- swiglu_f32, swiglu_fused_f32 -------------------------------------------------------------------------------

    /// <summary>output [numTokens, inter] = silu(gate) * up; output may be gate or up.</summary>
    public void SwiGluF32(DeviceBuffer<float> output, DeviceBuffer<float> gate, DeviceBuffer<float> up, int numTokens, int inter)
    {
        ArgumentNullException.ThrowIfNull(output);
        ArgumentNullException.ThrowIfNull(gate);
        ArgumentNullException.ThrowIfNull(up);
        if (OpsLaunchPlans.SwiGlu(output.Length, gate.Length, up.Length, numTokens, inter) is not { } plan) return;
        SameDevice(output, nameof(output));
        SameDevice(gate, nameof(gate));
        SameDevice(up, nameof(up));
        ulong po = output.Pointer, pg = gate.Pointer, pu = up.Pointer;
        int nt = numTokens, i = inter;
        void** args = stackalloc void*[] { &po, &pg, &pu, &nt, &i };
        Launch(plan, args);
    }

    /// <summary>output [numTokens, inter] from gateUp [numTokens, 2 * inter] (row = gate then up); no in-place.</summary>
    public void SwiGluFusedF32(DeviceBuffer<float> output, DeviceBuffer<float> gateUp, int numTokens, int inter)
    {
        ArgumentNullException.ThrowIfNull(output);
        ArgumentNullException.ThrowIfNull(gateUp);
        if (OpsLaunchPlans.SwiGluFused(output.Length, gateUp.Length, ReferenceEquals(output, gateUp), numTokens, inter) is not { } plan) return;
        SameDevice(output, nameof(output));
        SameDevice(gateUp, nameof(gateUp));
        ulong po = output.Pointer, pg = gateUp.Pointer;
        int nt = numTokens, i = inter;
        void** args = stackalloc void*[] { &po, &pg, &nt, &i };
        Launch(plan, args);
    }

    /// <summary><see cref="SwiGluFusedF32"/> also writing output16, output rounded to TO (the down projection's cuBLASLt input).</summary>
    internal void SwiGluFusedTo16<TO>(DeviceBuffer<float> output, DeviceBuffer<TO> output16, DeviceBuffer<float> gateUp, int numTokens, int inter)
        where TO : unmanaged
    {
        ArgumentNullException.ThrowIfNull(output);
        ArgumentNullException.ThrowIfNull(output16);
        ArgumentNullException.ThrowIfNull(gateUp);
        if (OpsLaunchPlans.SwiGluFusedTo16(DeviceElement<TO>.Suffix, output.Length, output16.Length, gateUp.Length, ReferenceEquals(output, gateUp), numTokens,
                inter) is not { } plan) return;
        SameDevice(output, nameof(output));
        SameDevice(output16, nameof(output16));
        SameDevice(gateUp, nameof(gateUp));
        ulong po = output.Pointer, po16 = output16.Pointer, pg = gateUp.Pointer;
        int nt = numTokens, i = inter;
        void** args = stackalloc void*[] { &po, &po16, &pg, &nt, &i };
        Launch(plan, args);
    }

    // ---- residual_add_f32 -------------------------------------------------------------------------------------------

    /// <summary>x[j] += y[j] for j &lt; n; y may be x.</summary>
    public void ResidualAddF32(DeviceBuffer<float> x, DeviceBuffer<float> y, int n)
    {
        ArgumentNullException.ThrowIfNull(x);
        ArgumentNullException.ThrowIfNull(y);
        if (OpsLaunchPlans.ResidualAdd(x.Length, y.Length, n) is not { } plan) return;
        SameDevice(x, nameof(x));
        SameDevice(y, nameof(y));
        ulong px = x.Pointer, py = y.Pointer;
        int count = n;
        void** args = stackalloc void*[] { &px, &py, &count };
        Launch(plan, args);
    }

    // ---- bias_add_f32 -----------------------------------------------------------------------------------------------

    /// <summary>y [rows, n] += bias [n] on every row (a quantized layer's bias, after its GEMM).</summary>
    public void BiasAddF32(DeviceBuffer<float> y, DeviceBuffer<float> bias, int rows, int n)
    {
        ArgumentNullException.ThrowIfNull(y);
        ArgumentNullException.ThrowIfNull(bias);
        if (OpsLaunchPlans.BiasAdd(y.Length, bias.Length, rows, n) is not { } plan) return;
        SameDevice(y, nameof(y));
        SameDevice(bias, nameof(bias));
        ulong py = y.Pointer, pb = bias.Pointer;
        int r = rows, count = n;
        void** args = stackalloc void*[] { &py, &pb, &r, &count };
        Launch(plan, args);
    }

    // ---- squeezellm_gemv_b{3,4} -------------------------------------------------------------------------------------

    /// <summary>
    /// y [m, n] = x [m, k] W^T for a SqueezeLLM layer on the device (codes, fp16 table, CSR outliers), in launches of at
    /// most <see cref="OpsLaunchPlans.SqueezeMaxRows"/> rows.
    /// </summary>
    public void SqueezeGemv(DeviceBuffer<float> y, DeviceBuffer<float> x, int bits, DeviceBuffer<int> codes, DeviceBuffer<Half> table, DeviceBuffer<int> rows,
        DeviceBuffer<int> cols, DeviceBuffer<float> values, int m, int n, int k)
    {
        ArgumentNullException.ThrowIfNull(y);
        ArgumentNullException.ThrowIfNull(x);
        ArgumentNullException.ThrowIfNull(codes);
        ArgumentNullException.ThrowIfNull(table);
        ArgumentNullException.ThrowIfNull(rows);
        ArgumentNullException.ThrowIfNull(cols);
        ArgumentNullException.ThrowIfNull(values);
        SameDevice(y, nameof(y));
        SameDevice(x, nameof(x));
        SameDevice(codes, nameof(codes));
        ulong py = 0, px = 0, pc = codes.Pointer, pt = table.Pointer, pr = rows.Pointer, pcol = cols.Pointer, pv = values.Pointer;
        int mm = 0, nn = n, kk = k;
        void** args = stackalloc void*[] { &py, &px, &pc, &pt, &pr, &pcol, &pv, &mm, &nn, &kk };
        for (int r0 = 0; r0 < m; r0 += OpsLaunchPlans.SqueezeMaxRows)
        {
            mm = Math.Min(OpsLaunchPlans.SqueezeMaxRows, m - r0);
            if (OpsLaunchPlans.SqueezeGemv(bits, y.Length - (long)r0 * n, x.Length - (long)r0 * k, codes.Length, table.Length, rows.Length, mm, n, k)
                is not { } plan) return;
            py = y.Pointer + (ulong)((long)r0 * n * 4);
            px = x.Pointer + (ulong)((long)r0 * k * 4);
            Launch(plan, args);
        }
    }

    // ---- convert_f32_to_{f16,bf16} ----------------------------------------------------------------------------------

    /// <summary>dst[j] = src[j] rounded to nearest even in T (Half for f16, ushort bf16 bits) for j &lt; n.</summary>
    internal void ConvertFromF32<T>(DeviceBuffer<T> dst, DeviceBuffer<float> src, int n) where T : unmanaged
    {
        ArgumentNullException.ThrowIfNull(dst);
        ArgumentNullException.ThrowIfNull(src);
        if (OpsLaunchPlans.ConvertFromF32(DeviceElement<T>.Suffix, dst.Length, src.Length, n) is not { } plan) return;
        SameDevice(dst, nameof(dst));
        SameDevice(src, nameof(src));
        ulong pd = dst.Pointer, ps = src.Pointer;
        int count = n;
        void** args = stackalloc void*[] { &pd, &ps, &count };
        Launch(plan, args);
    }

    // ---- launch -----------------------------------------------------------------------------------------------------

    private void SameDevice<T>(DeviceBuffer<T> buffer, string argument) where T : unmanaged
    {
        if (buffer.Device.Ordinal != _module.Device.Ordinal)
            throw new ArgumentException($"{argument} lives on device {buffer.Device.Ordinal}, the kernels on device {_module.Device.Ordinal}", argument);
    }

    private void Launch(KernelLaunch plan, void** args)
    {
        var device = _module.Device;
        IntPtr function = _module.Function(plan.Kernel);
        device.MakeCurrent();
        IntPtr stream = _stream?.DangerousGetHandle() ?? IntPtr.Zero;
        if (plan.SharedBytes > OpsLaunchPlans.DefaultSharedBytes) _module.AllowSharedBytes(plan.Kernel, function, (int)plan.SharedBytes);
        var result = CuApi.cuLaunchKernel(function, plan.GridX, plan.GridY, plan.GridZ, plan.BlockX, 1, 1, plan.SharedBytes, stream, args, null);
        if (result != CuResult.Success)
            throw new CudaException(result, $"cuLaunchKernel({plan.Kernel}, grid ({plan.GridX}, {plan.GridY}, {plan.GridZ}), block {plan.BlockX}, " +
                                            $"{plan.SharedBytes} bytes of dynamic shared memory)", device.Ordinal);
    }
}
