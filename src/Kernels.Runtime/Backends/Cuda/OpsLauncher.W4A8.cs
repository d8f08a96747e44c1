// Launchers of W4A8 (QServe/QoQ): w4a8_gemm_{group,channel}_{m16,m64} and rms_norm_quant_int8_{f32,f16,bf16}.
// Byte tensors are DeviceBuffer<byte> (qweight, scales2, zeros as W4A8Linear stores them), int8 activations <sbyte>.
namespace Kernels.Runtime.Backends.Cuda;

internal sealed unsafe partial class OpsLauncher
{
    // ---- w4a8_gemm_{group,channel}_{m16,m64} ------------------------------------------------------------------------
    // y [m, n] fp32 = ((acc * xScale[m]) * wScale[n]) with acc the exact int32 sum_k xq * w8 - zc[n] * xSum[m]
    // (W4A8Linear's arithmetic; bit-exact with Cpu.W4A8Gemm). m <= 16 takes the 16-row CTA, larger m the 64-row one.

    /// <summary>The kernel <see cref="W4A8Gemm"/> launches for <paramref name="m"/> rows.</summary>
    public static string W4A8GemmKernel(int m, int groupSize) => OpsLaunchPlans.W4A8GemmKernel(m, groupSize);

    /// <param name="y">[m, n] fp32, written (must not overlap the inputs).</param>
    /// <param name="xq">[m, Kpad] int8, zero in columns K..Kpad-1; 16-byte aligned.</param>
    /// <param name="xScale">[m] per-token scale.</param>
    /// <param name="xSum">[m] per-token sum of xq; needed per channel, may be null per group.</param>
    /// <param name="qweight">[Npad * Kpad / 2] 4-bit codes in the W4A8Layout tiles; 16-byte aligned.</param>
    /// <param name="wScale">[n] fp16: level-0 (per group) or per-channel scale.</param>
    /// <param name="scales2">[K / groupSize, Npad] s1 bytes (per group), null per channel.</param>
    /// <param name="zeros">[K / groupSize, Npad] -z*s1 bytes (per group) or [n] integer zero points (per channel).</param>
    /// <param name="groupSize">Input channels per group, 0 = per channel.</param>
    public void W4A8Gemm(DeviceBuffer<float> y, DeviceBuffer<sbyte> xq, DeviceBuffer<float> xScale, DeviceBuffer<int>? xSum, DeviceBuffer<byte> qweight,
        DeviceBuffer<Half> wScale, DeviceBuffer<byte>? scales2, DeviceBuffer<byte> zeros, int m, int n, int k, int groupSize)
    {
        ArgumentNullException.ThrowIfNull(y);
        ArgumentNullException.ThrowIfNull(xq);
        ArgumentNullException.ThrowIfNull(xScale);
        ArgumentNullException.ThrowIfNull(qweight);
        ArgumentNullException.ThrowIfNull(wScale);
        ArgumentNullException.ThrowIfNull(zeros);
        if (OpsLaunchPlans.W4A8Gemm(y.Length, xq.Length, xScale.Length, xSum?.Length ?? -1, qweight.Length, wScale.Length, scales2?.Length ?? -1,
                zeros.Length, m, n, k, groupSize) is not { } plan) return;
        CheckW4A8Buffers(y, xq, xScale, xSum, qweight, wScale, scales2, zeros, groupSize);
        ulong py = y.Pointer, pxq = xq.Pointer, pxs = xScale.Pointer, pxsum = xSum?.Pointer ?? 0, pq = qweight.Pointer, pws = wScale.Pointer,
            ps2 = scales2?.Pointer ?? 0, pz = zeros.Pointer;
        int mm = m, nn = n, kk = k, g = groupSize;
        void** args = stackalloc void*[] { &py, &pxq, &pxs, &pxsum, &pq, &pws, &ps2, &pz, &mm, &nn, &kk, &g };
        Launch(plan, args);
    }

    // ---- w4a8_gemm_{group,channel}_splitk (+ w4a8_splitk_reduce) -------------------------------------------------------

    /// <summary>
    /// <see cref="W4A8Gemm"/> for m &lt;= 16 by the split-K kernel (4-stage pipeline, K split to fill the GPU): the same
    /// y bits. <paramref name="workspace"/> holds the splits' int32 partial sums (null: one split). Returns the splits.
    /// </summary>
    public int W4A8GemmSplitK(DeviceBuffer<float> y, DeviceBuffer<sbyte> xq, DeviceBuffer<float> xScale, DeviceBuffer<int>? xSum, DeviceBuffer<byte> qweight,
        DeviceBuffer<Half> wScale, DeviceBuffer<byte>? scales2, DeviceBuffer<byte> zeros, DeviceBuffer<int>? workspace, int m, int n, int k, int groupSize)
    {
        ArgumentNullException.ThrowIfNull(y);
        ArgumentNullException.ThrowIfNull(xq);
        ArgumentNullException.ThrowIfNull(xScale);
        ArgumentNullException.ThrowIfNull(qweight);
        ArgumentNullException.ThrowIfNull(wScale);
        ArgumentNullException.ThrowIfNull(zeros);
        if (OpsLaunchPlans.W4A8GemmSplitK(y.Length, xq.Length, xScale.Length, xSum?.Length ?? -1, qweight.Length, wScale.Length, scales2?.Length ?? -1,
                zeros.Length, workspace?.Length ?? 0, m, n, k, groupSize, 2 * _module.Device.MultiprocessorCount) is not { } plan) return 0;
        CheckW4A8Buffers(y, xq, xScale, xSum, qweight, wScale, scales2, zeros, groupSize);
        if (workspace != null) SameDevice(workspace, nameof(workspace));
        ulong py = y.Pointer, pxq = xq.Pointer, pxs = xScale.Pointer, pxsum = xSum?.Pointer ?? 0, pq = qweight.Pointer, pws = wScale.Pointer,
            ps2 = scales2?.Pointer ?? 0, pz = zeros.Pointer, pp = plan.Reduce != null ? workspace!.Pointer : 0;
        int mm = m, nn = n, kk = k, g = groupSize, tiles = plan.TilesPerSplit, splits = plan.Splits;
        void** args = stackalloc void*[] { &py, &pxq, &pxs, &pxsum, &pq, &pws, &ps2, &pz, &mm, &nn, &kk, &g, &pp, &tiles };
        Launch(plan.Gemm, args);
        if (plan.Reduce is { } reduce)
        {
            void** rargs = stackalloc void*[] { &py, &pp, &pxs, &pxsum, &pws, &pz, &mm, &nn, &splits, &g };
            Launch(reduce, rargs);
        }
        return plan.Splits;
    }

    // ---- rms_norm_quant_int8_{f32,f16,bf16} -------------------------------------------------------------------------
    // xq [numTokens, dimPadded] int8 (zero padding), xScale, xSum [numTokens] = Int8Activations of rms_norm(x, weight).

    public void RmsNormQuantInt8F32(DeviceBuffer<sbyte> xq, DeviceBuffer<float> xScale, DeviceBuffer<int> xSum, DeviceBuffer<float> x,
        DeviceBuffer<float> weight, int numTokens, int dim, int dimPadded, float eps) =>
        RmsNormQuantInt8("rms_norm_quant_int8_f32", xq, xScale, xSum, x, weight, numTokens, dim, dimPadded, eps);

    public void RmsNormQuantInt8F16(DeviceBuffer<sbyte> xq, DeviceBuffer<float> xScale, DeviceBuffer<int> xSum, DeviceBuffer<float> x,
        DeviceBuffer<Half> weight, int numTokens, int dim, int dimPadded, float eps) =>
        RmsNormQuantInt8("rms_norm_quant_int8_f16", xq, xScale, xSum, x, weight, numTokens, dim, dimPadded, eps);

    /// <summary>bf16 weight as raw ushort bits.</summary>
    public void RmsNormQuantInt8BF16(DeviceBuffer<sbyte> xq, DeviceBuffer<float> xScale, DeviceBuffer<int> xSum, DeviceBuffer<float> x,
        DeviceBuffer<ushort> weight, int numTokens, int dim, int dimPadded, float eps) =>
        RmsNormQuantInt8("rms_norm_quant_int8_bf16", xq, xScale, xSum, x, weight, numTokens, dim, dimPadded, eps);

    /// <summary>The typed forms above in one: T is float, Half or ushort (bf16 bits), see <see cref="DeviceElement{T}"/>.</summary>
    internal void RmsNormQuantInt8<T>(DeviceBuffer<sbyte> xq, DeviceBuffer<float> xScale, DeviceBuffer<int> xSum, DeviceBuffer<float> x,
        DeviceBuffer<T> weight, int numTokens, int dim, int dimPadded, float eps) where T : unmanaged =>
        RmsNormQuantInt8("rms_norm_quant_int8_" + DeviceElement<T>.Suffix, xq, xScale, xSum, x, weight, numTokens, dim, dimPadded, eps);

    private void RmsNormQuantInt8<T>(string kernel, DeviceBuffer<sbyte> xq, DeviceBuffer<float> xScale, DeviceBuffer<int> xSum, DeviceBuffer<float> x,
        DeviceBuffer<T> weight, int numTokens, int dim, int dimPadded, float eps) where T : unmanaged
    {
        ArgumentNullException.ThrowIfNull(xq);
        ArgumentNullException.ThrowIfNull(xScale);
        ArgumentNullException.ThrowIfNull(xSum);
        ArgumentNullException.ThrowIfNull(x);
        ArgumentNullException.ThrowIfNull(weight);
        if (OpsLaunchPlans.RmsNormQuantInt8(kernel, xq.Length, xScale.Length, xSum.Length, x.Length, weight.Length, numTokens, dim, dimPadded, eps)
            is not { } plan) return;
        SameDevice(xq, nameof(xq));
        SameDevice(xScale, nameof(xScale));
        SameDevice(xSum, nameof(xSum));
        SameDevice(x, nameof(x));
        SameDevice(weight, nameof(weight));
        ulong pq = xq.Pointer, ps = xScale.Pointer, pn = xSum.Pointer, px = x.Pointer, pw = weight.Pointer;
        int nt = numTokens, d = dim, dp = dimPadded;
        float e = eps;
        void** args = stackalloc void*[] { &pq, &ps, &pn, &px, &pw, &nt, &d, &dp, &e };
        Launch(plan, args);
    }

    /// <summary>xq, xScale, xSum of x's rows (Int8Activations.QuantizeRow's bytes): the input of a W4A8 layer no RMSNorm produces.</summary>
    public void QuantizeInt8F32(DeviceBuffer<sbyte> xq, DeviceBuffer<float> xScale, DeviceBuffer<int> xSum, DeviceBuffer<float> x, int numTokens, int dim, int dimPadded)
    {
        ArgumentNullException.ThrowIfNull(xq);
        ArgumentNullException.ThrowIfNull(xScale);
        ArgumentNullException.ThrowIfNull(xSum);
        ArgumentNullException.ThrowIfNull(x);
        if (OpsLaunchPlans.QuantizeInt8(xq.Length, xScale.Length, xSum.Length, x.Length, numTokens, dim, dimPadded) is not { } plan) return;
        SameDevice(xq, nameof(xq));
        SameDevice(xScale, nameof(xScale));
        SameDevice(xSum, nameof(xSum));
        SameDevice(x, nameof(x));
        ulong pq = xq.Pointer, ps = xScale.Pointer, pn = xSum.Pointer, px = x.Pointer;
        int nt = numTokens, d = dim, dp = dimPadded;
        void** args = stackalloc void*[] { &pq, &ps, &pn, &px, &nt, &d, &dp };
        Launch(plan, args);
    }

    /// <summary>The W4A8 GEMMs' buffers on this device, aligned as they are read: cp.async copies 16 bytes per instruction, the group tables are 32-bit words.</summary>
    private void CheckW4A8Buffers(DeviceBuffer<float> y, DeviceBuffer<sbyte> xq, DeviceBuffer<float> xScale, DeviceBuffer<int>? xSum, DeviceBuffer<byte> qweight,
        DeviceBuffer<Half> wScale, DeviceBuffer<byte>? scales2, DeviceBuffer<byte> zeros, int groupSize)
    {
        SameDevice(y, nameof(y));
        SameDevice(xq, nameof(xq));
        SameDevice(xScale, nameof(xScale));
        if (xSum != null) SameDevice(xSum, nameof(xSum));
        SameDevice(qweight, nameof(qweight));
        SameDevice(wScale, nameof(wScale));
        if (scales2 != null) SameDevice(scales2, nameof(scales2));
        SameDevice(zeros, nameof(zeros));
        Aligned(xq.Pointer, 16, nameof(xq));
        Aligned(qweight.Pointer, 16, nameof(qweight));
        if (scales2 != null) Aligned(scales2.Pointer, 4, nameof(scales2));
        if (groupSize > 0) Aligned(zeros.Pointer, 4, nameof(zeros));
    }

    private static void Aligned(ulong pointer, int bytes, string argument)
    {
        if (pointer % (ulong)bytes != 0)
            throw new ArgumentException($"{argument} must be {bytes}-byte aligned (device address 0x{pointer:x})", argument);
    }
}
