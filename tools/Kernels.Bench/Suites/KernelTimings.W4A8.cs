// kernels-bench kernels, W4A8 region: w4a8_gemm at the Llama-3-8B shapes of issue 5 with the 4-bit weight roofline.
// tools/kernel_baselines.py times torch fp16 cuBLAS (Baseline), torch._int_mm and torch._scaled_mm fp8 (Baselines) on the
// same M, N, K from Params.
using Kernels.Runtime.Backends.Cuda;

namespace Kernels.Bench;

internal static partial class KernelTimings
{
    /// <summary>Dense int8 tensor-core peak (datasheet, no sparsity), TOP/s: twice the fp16 peak on Hopper and Ampere.</summary>
    private static double PeakInt8Tops(string name) => 2 * PeakTflops(name);

    /// <summary>
    /// w4a8_gemm records: group 128 at every (N x K, M) of issue 5 (quick: 28672x4096 at M = 1 and 64), per channel at
    /// M = 1 and 1024 (quick: none). RooflineMicroseconds = max(weight bytes / measured bandwidth, 2MNK / int8 peak), the
    /// weight bytes being the 4-bit codes plus the scales (fp16 per channel, 2 bytes per group entry): for M &lt;= 64 that is
    /// the 4-bit weight roofline of the issue. Bytes (for GB/s) also count xq, the scales and y.
    /// </summary>
    private static List<Record> W4A8Records(Timer t, bool quick, double bw, string deviceName)
    {
        double peak = PeakInt8Tops(deviceName);
        var records = new List<Record>();
        var shapes = quick ? new[] { ("gate_up", 28672, 4096) } : new[] { ("qkv", 6144, 4096), ("o", 4096, 4096), ("gate_up", 28672, 4096), ("down", 4096, 14336) };
        foreach (var (layer, n, k) in shapes)
            foreach (int group in quick ? new[] { 128 } : new[] { 128, 0 })
                foreach (int m in quick ? new[] { 1, 64 } : group > 0 ? new[] { 1, 16, 64, 256, 1024, 4096 } : new[] { 1, 1024 })
                {
                    double us = t.W4A8Gemm(m, n, k, group);
                    int nPad = (n + 31) / 32 * 32, kPad = (k + 31) / 32 * 32;
                    double weightBytes = (double)nPad * kPad / 2 + 2.0 * n + (group > 0 ? 2.0 * (k / group) * nPad : n);
                    double bytes = weightBytes + (double)m * kPad + 8.0 * m + 4.0 * m * n;
                    double flops = 2.0 * m * n * k;
                    double roof = Math.Max(weightBytes / (bw * 1e9), peak > 0 ? flops / (peak * 1e12) : 0) * 1e6;
                    string kernel = OpsLauncher.W4A8GemmKernel(m, group);
                    var r = new Record(kernel, $"{layer} M={m} N={n} K={k} {(group > 0 ? $"g{group}" : "per-channel")}", us, null, null, roof, bytes, flops,
                        bytes / (us * 1e-6) / 1e9, flops / (us * 1e-6) / 1e12, roof / us, new() { ["M"] = m, ["N"] = n, ["K"] = k, ["Group"] = group });
                    records.Add(r);
                    Console.WriteLine($"{kernel,-30} {r.Shape,-34} {us,9:F1} us  {r.GBps,7:F0} GB/s  {r.TFlops,7:F1} TOP/s   roofline {roof,8:F1} us ({r.RooflineFraction:P0}, 4-bit weights / int8 peak)");
                    if (m > OpsLaunchPlans.W4A8SmallMMax) continue;
                    // The split-K decode kernel on the same layer (CudaBackendOptions.W4A8SplitK), the same roofline.
                    var (sus, splits) = t.W4A8GemmSplitK(m, n, k, group);
                    string skernel = $"w4a8_gemm_{(group > 0 ? "group" : "channel")}_splitk";
                    var sr = new Record(skernel, r.Shape, sus, null, null, roof, bytes, flops, bytes / (sus * 1e-6) / 1e9, flops / (sus * 1e-6) / 1e12, roof / sus,
                        r.Params);
                    records.Add(sr);
                    Console.WriteLine($"{skernel,-30} {sr.Shape,-34} {sus,9:F1} us  {sr.GBps,7:F0} GB/s  {sr.TFlops,7:F1} TOP/s   roofline {roof,8:F1} us ({sr.RooflineFraction:P0}), splits {splits}");
                }
        t.ReleaseW4A8();
        return records;
    }

    private sealed unsafe partial class Timer
    {
        private W4A8Weights? _w4a8;

        public void ReleaseW4A8()
        {
            _w4a8?.Dispose();
            _w4a8 = null;
        }

        private sealed class W4A8Weights(int n, int k, int group, DeviceBuffer<byte> codes, DeviceBuffer<Half> scales, DeviceBuffer<byte>? scales2,
            DeviceBuffer<byte> zeros) : IDisposable
        {
            public (int N, int K, int Group) Shape { get; } = (n, k, group);
            public DeviceBuffer<byte> Codes { get; } = codes;
            public DeviceBuffer<Half> Scales { get; } = scales;
            public DeviceBuffer<byte>? Scales2 { get; } = scales2;
            public DeviceBuffer<byte> Zeros { get; } = zeros;

            public void Dispose()
            {
                Codes.Dispose();
                Scales.Dispose();
                Scales2?.Dispose();
                Zeros.Dispose();
            }
        }

        /// <summary>
        /// Median time of one w4a8_gemm (random 4-bit codes, s1 in 1..16 with zero terms 0: the values do not change the
        /// work), reusing one layer's weights for every M; xq random int8 with per-token scales and sums.
        /// </summary>
        public double W4A8Gemm(int m, int n, int k, int group) => W4A8Time(m, n, k, group, splitK: false).Us;

        public (double Us, int Splits) W4A8GemmSplitK(int m, int n, int k, int group) => W4A8Time(m, n, k, group, splitK: true);

        private (double Us, int Splits) W4A8Time(int m, int n, int k, int group, bool splitK)
        {
            int nPad = (n + 31) / 32 * 32, kPad = (k + 31) / 32 * 32;
            if (_w4a8 == null || _w4a8.Shape != (n, k, group))
            {
                _w4a8?.Dispose();
                var codes = new byte[(long)nPad * kPad / 2];
                _rng.NextBytes(codes);
                var scales = Random(n).Select(v => (Half)(Math.Abs(v) * 1e-3f + 1e-4f)).ToArray();
                DeviceBuffer<byte>? s2 = null;
                byte[] zeros;
                if (group > 0)
                {
                    var s1 = new byte[(long)(k / group) * nPad];
                    for (int i = 0; i < s1.Length; i++) s1[i] = (byte)(1 + _rng.Next(16));
                    s2 = DeviceBuffer<byte>.From(device, s1);
                    zeros = new byte[s1.Length];
                }
                else zeros = Enumerable.Range(0, n).Select(_ => (byte)_rng.Next(16)).ToArray();
                _w4a8 = new W4A8Weights(n, k, group, DeviceBuffer<byte>.From(device, codes), DeviceBuffer<Half>.From(device, scales), s2,
                    DeviceBuffer<byte>.From(device, zeros));
            }
            var w = _w4a8;
            var xqHost = new sbyte[(long)m * kPad];
            for (long i = 0; i < xqHost.Length; i++) xqHost[i] = (sbyte)(_rng.Next(255) - 127);
            using var xq = DeviceBuffer<sbyte>.From(device, xqHost);
            using var xScale = DeviceBuffer<float>.From(device, Enumerable.Repeat(0.01f, m).ToArray());
            using var xSum = DeviceBuffer<int>.From(device, new int[m]);
            using var y = DeviceBuffer<float>.Allocate(device, (long)m * n);
            if (!splitK) return (Median(() => ops.W4A8Gemm(y, xq, xScale, group > 0 ? null : xSum, w.Codes, w.Scales, w.Scales2, w.Zeros, m, n, k, group)), 1);
            using var partial = DeviceBuffer<int>.Allocate(device, (long)OpsLaunchPlans.W4A8MaxSplits * m * n);
            int splits = 0;
            double us = Median(() => splits = ops.W4A8GemmSplitK(y, xq, xScale, group > 0 ? null : xSum, w.Codes, w.Scales, w.Scales2, w.Zeros, partial, m, n, k, group));
            return (us, splits);
        }
    }
}
