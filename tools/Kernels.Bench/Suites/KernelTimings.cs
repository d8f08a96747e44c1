// kernels-bench kernels: GPU kernel timings at Llama-3-8B shapes. CUDA events around each launch, L2 flushed before
// every launch (a memset over a buffer larger than any L2 we run on), median of many launches, achieved GB/s and
// TFLOP/s, and the roofline from the device-to-device copy bandwidth measured in the same run. Writes kernels.json
// ({results: [{Kernel, Shape, Microseconds, Baseline, BaselineMicroseconds, RooflineMicroseconds, ...}]}, the fields
// Report.cs reads); tools/kernel_baselines.py fills Baseline/BaselineMicroseconds with PyTorch on the same shapes.
// Exit codes: 0 done, 1 the fatbin does not load, 2 CUDA or kernels unavailable.
using System.Text.Json;
using Kernels.Interop;
using Kernels.Runtime.Backends;
using Kernels.Runtime.Backends.Cuda;

namespace Kernels.Bench;

internal static partial class KernelTimings
{
    /// <summary>
    /// One timed shape. Params carries the numbers the baseline script needs (M, N, K or B, L, heads...).
    /// RooflineMicroseconds = max(bytes / measured copy bandwidth, flops / datasheet peak) (the flop term only when
    /// the peak is known for the GPU).
    /// </summary>
    internal sealed record Record(string Kernel, string Shape, double Microseconds, string? Baseline, double? BaselineMicroseconds,
        double RooflineMicroseconds, double Bytes, double Flops, double GBps, double TFlops, double RooflineFraction, Dictionary<string, int> Params);

    private const long FlushBytes = 512L << 20; // > the 50 MB L2 of an H100/H200 by 10x

    /// <summary>Dense fp16/bf16 tensor-core peak (datasheet, no sparsity), TFLOP/s, by device name; 0 = unknown.</summary>
    private static double PeakTflops(string name) =>
        name.Contains("H100") || name.Contains("H200") || name.Contains("H800") ? 989 : name.Contains("A100") || name.Contains("A800") ? 312 : 0;

    public static int Run(string? fatbinPath, string jsonPath, int iterations, bool quick, int ordinal)
    {
        if (GpuBench.Open(fatbinPath, ordinal) is not var (device, image)) return 2;
        using var owned = device;
        KernelModule module;
        try
        {
            module = KernelModule.Load(device, image, fatbinPath ?? "embedded");
        }
        catch (Exception e) when (e is CudaException or InvalidOperationException)
        {
            Console.WriteLine($"FAIL: the fatbin did not load: {e.Message}");
            return 1;
        }
        using (module)
        {
            var t = new Timer(device, new OpsLauncher(module), iterations);
            double bw = t.CopyBandwidthGBps();
            double peak = PeakTflops(device.Name);
            Console.WriteLine($"# device: {device}");
            Console.WriteLine($"# measured device-to-device copy bandwidth: {bw:F0} GB/s (read + write); tensor peak (datasheet): {(peak > 0 ? $"{peak} TFLOP/s" : "unknown")}");
            Console.WriteLine($"# median of {iterations} launches, L2 flushed ({FlushBytes >> 20} MiB memset) before each; roofline = max(bytes/bandwidth, flops/peak)");
            var records = new List<Record>();
            void Add(string kernel, string shape, double us, double bytes, double flops, Dictionary<string, int> p)
            {
                double roof = Math.Max(bytes / (bw * 1e9), peak > 0 ? flops / (peak * 1e12) : 0) * 1e6;
                var r = new Record(kernel, shape, us, null, null, roof, bytes, flops, bytes / (us * 1e-6) / 1e9, flops / (us * 1e-6) / 1e12, roof / us, p);
                records.Add(r);
                Console.WriteLine($"{kernel,-30} {shape,-34} {us,9:F1} us  {r.GBps,7:F0} GB/s  {r.TFlops,7:F1} TFLOP/s  roofline {roof,8:F1} us ({r.RooflineFraction:P0})");
            }

            // ---- dense GEMM (fp16 weights): Llama-3-8B layers ----
            var layers = quick ? new[] { ("qkv", 6144, 4096) } : new[] { ("qkv", 6144, 4096), ("gate_up", 28672, 4096), ("down", 4096, 14336) };
            foreach (var (layer, n, k) in layers)
                foreach (int m in quick ? new[] { 1, 64 } : new[] { 1, 16, 64, 256, 1024 })
                {
                    double us = t.Gemm(m, n, k);
                    string kernel = OpsLauncher.DenseGemmKernel("f16", m, k);
                    Add(kernel, $"{layer} M={m} N={n} K={k}", us, 2.0 * n * k + 4.0 * m * k + 4.0 * m * n, 2.0 * m * n * k,
                        new() { ["M"] = m, ["N"] = n, ["K"] = k });
                    // The same GEMM as the backend runs it with UseCublasLt: convert_f32_to_f16 of x, then cublasLtMatmul.
                    if (t.CublasLtGemm(m, n, k) is double lt)
                        Add("cublaslt_gemm_f16", $"{layer} M={m} N={n} K={k}", lt, 2.0 * n * k + 6.0 * m * k + 4.0 * m * n, 2.0 * m * n * k,
                            new() { ["M"] = m, ["N"] = n, ["K"] = k });
                }

            // ---- the fused decode GEMVs against the launches they replace (CudaBackendOptions.FusedGemv), 8B shapes ----
            foreach (var (kind, n, k) in new[] { ("qkv", 6144, 4096), ("swiglu", 28672, 4096), ("residual", 4096, 14336) })
                foreach (int m in quick ? new[] { 1 } : new[] { 1, 4 })
                {
                    var (fused, unfused) = t.FusedGemv(kind, m, n, k);
                    string layer = kind switch { "qkv" => "qkv", "swiglu" => "gate_up", _ => "down" }, shape = $"{layer} M={m} N={n} K={k}";
                    double bytes = 2.0 * n * k + 4.0 * m * k + 4.0 * m * n;
                    var p = new Dictionary<string, int> { ["M"] = m, ["N"] = n, ["K"] = k };
                    Add($"dense_gemv_{kind}_f16", shape, fused, bytes, 2.0 * m * n * k, p);
                    Add(kind switch { "qkv" => "3 x dense_gemv_f16", "swiglu" => "2 x dense_gemv_f16 + swiglu_f32", _ => "dense_gemv_f16 + residual_add_f32" },
                        shape, unfused, bytes, 2.0 * m * n * k, p);
                }

            // ---- the decode GEMVs with the RMSNorm folded in, against rms_norm_f32 + the fused GEMV ----
            foreach (var (kind, n, k) in new[] { ("qkv", 6144, 4096), ("swiglu", 28672, 4096) })
                foreach (int m in quick ? new[] { 1 } : new[] { 1, 4 })
                {
                    var (folded, separate) = t.NormGemv(kind, m, n, k);
                    string shape = $"{(kind == "qkv" ? "qkv" : "gate_up")} M={m} N={n} K={k}";
                    double bytes = 2.0 * n * k + 4.0 * m * k + 4.0 * k + 4.0 * m * n;
                    var p = new Dictionary<string, int> { ["M"] = m, ["N"] = n, ["K"] = k };
                    Add($"dense_gemv_{kind}_norm_f16", shape, folded, bytes, 2.0 * m * n * k, p);
                    Add($"rms_norm_f32 + dense_gemv_{kind}_f16", shape, separate, bytes, 2.0 * m * n * k, p);
                }

            // ---- paged decode attention (fp16 KV): 32/8 heads, d 128, block 16 ----
            // The CUDA-core kernel and the tiled one (CudaBackendOptions.TiledDecodeAttention), the same shapes and plans.
            foreach (bool tiled in new[] { false, true })
                foreach (int b in quick ? new[] { 16 } : new[] { 1, 16, 64 })
                    foreach (int len in quick ? new[] { 1024 } : new[] { 1024, 4096 })
                    {
                        var (us, splits) = t.Decode(b, len, 32, 8, 128, 16, tiled);
                        double bytes = 2.0 * b * len * 8 * 128 * 2 + 2.0 * b * 32 * 128 * 4;
                        Add(tiled ? "paged_decode_attention_tiled_hd128_f16" : "paged_decode_attention_hd128_f16", $"B={b} L={len} heads 32/8 d=128 splits={splits}", us,
                            bytes, 4.0 * b * 32 * len * 128, new() { ["B"] = b, ["L"] = len, ["Hq"] = 32, ["Hkv"] = 8, ["D"] = 128 });
                    }

            // ---- paged prefill attention (fp16 KV), causal, whole prompt ----
            foreach (var (b, n) in quick ? new[] { (1, 512) } : new[] { (1, 512), (1, 2048), (8, 512) })
            {
                double us = t.Prefill(b, n, 32, 8, 128, 16);
                double bytes = 2.0 * b * n * 8 * 128 * 2 + 2.0 * b * n * 32 * 128 * 4;
                Add("paged_prefill_attention_hd128_f16", $"B={b} N=L={n} heads 32/8 d=128", us, bytes, 2.0 * b * 32 * (double)n * n * 128, // causal: half of 4 n^2 d
                    new() { ["B"] = b, ["L"] = n, ["Hq"] = 32, ["Hkv"] = 8, ["D"] = 128 });
            }

            AttentionRecords(t, quick, Add); // ---- tensor-core prefill and Hydragen prefix attention (KernelTimings.Attention.cs) ----

            KiviRecords(t, quick, Add); // ---- KIVI decode attention (KernelTimings.Kivi.cs) ----

            // ---- sampling ----
            // Both samplers (bisection cuts, radix cuts: CudaBackendOptions.RadixSampling chooses), greedy and filtered.
            foreach (bool radix in new[] { false, true })
                foreach (int rows in quick ? new[] { 1 } : new[] { 1, 64, 256 })
                    foreach (bool filtered in new[] { false, true })
                    {
                        double us = t.Sample(rows, 128256, filtered, radix);
                        Add(radix ? "sample_tokens_radix_f32" : "sample_tokens_f32", $"rows={rows} V=128256 {(filtered ? "T=0.8 top-k=50 top-p=0.9" : "greedy")}", us,
                            rows * 128256.0 * 4, 0, new() { ["Rows"] = rows, ["V"] = 128256, ["Filtered"] = filtered ? 1 : 0 });
                    }

            records.AddRange(W4A8Records(t, quick, bw, device.Name)); // KernelTimings.W4A8.cs

            t.Dispose();
            File.WriteAllText(jsonPath, JsonSerializer.Serialize(new
            {
                device = device.ToString(), deviceName = device.Name, bandwidthGBps = bw, peakTflops = peak, iterations, flushBytes = FlushBytes, results = records,
            }, new JsonSerializerOptions { WriteIndented = true }));
            Console.WriteLine($"# wrote {jsonPath} ({records.Count} records)");
        }
        return 0;
    }

    /// <summary>Buffers and timing for one shape at a time; every launch is preceded by the L2 flush.</summary>
    private sealed unsafe partial class Timer(CudaDevice device, OpsLauncher ops, int iterations) : IDisposable
    {
        public void Dispose()
        {
            _weights?.Dispose();
            _lt?.Dispose();
        }

        private readonly Random _rng = new(1);

        /// <summary>Median GPU time of <paramref name="launch"/> in microseconds (events on the default stream).</summary>
        private double Median(Action launch)
        {
            using var flush = DeviceBuffer<byte>.Allocate(device, FlushBytes);
            using var start = device.CreateEvent();
            using var stop = device.CreateEvent();
            for (int w = 0; w < 3; w++) launch();
            var times = new double[iterations];
            for (int i = 0; i < iterations; i++)
            {
                flush.FillBytes((byte)i);
                Cu.Check(CuApi.cuEventRecord(start.DangerousGetHandle(), IntPtr.Zero));
                launch();
                Cu.Check(CuApi.cuEventRecord(stop.DangerousGetHandle(), IntPtr.Zero));
                Cu.Check(CuApi.cuEventSynchronize(stop.DangerousGetHandle()));
                Cu.Check(CuApi.cuEventElapsedTime(out float ms, start.DangerousGetHandle(), stop.DangerousGetHandle()));
                times[i] = ms * 1e3;
            }
            Array.Sort(times);
            return times[iterations / 2];
        }

        public double CopyBandwidthGBps() => GpuBench.CopyBandwidthGBps(device);

        private float[] Random(long n)
        {
            var a = new float[n];
            for (long i = 0; i < n; i++) a[i] = (float)(_rng.NextDouble() * 2 - 1);
            return a;
        }

        private Half[] RandomHalf(long n) => Random(n).Select(v => (Half)(v * 0.05f)).ToArray();

        private DeviceBuffer<Half>? _weights;
        private (int N, int K) _weightShape;

        /// <summary>The random fp16 weight of an [n, k] layer: one per layer shape, reused for every M and both GEMM paths.</summary>
        private DeviceBuffer<Half> Weight(int n, int k)
        {
            if (_weights == null || _weightShape != (n, k))
            {
                _weights?.Dispose();
                _weights = DeviceBuffer<Half>.From(device, RandomHalf((long)n * k));
                _weightShape = (n, k);
            }
            return _weights;
        }

        public double Gemm(int m, int n, int k)
        {
            var w = Weight(n, k);
            using var x = DeviceBuffer<float>.From(device, Random((long)m * k));
            using var y = DeviceBuffer<float>.Allocate(device, (long)m * n);
            return Median(() => ops.DenseGemmF16(y, x, w, null, m, n, k));
        }

        /// <summary>
        /// A fused decode GEMV and the launches it replaces, on one [n, k] weight cut as the backend's matrices are: qkv
        /// n = 4096 + 2 x 1024 rows (q, k, v), swiglu n = 2 x 14336 (gate, up: n / 2 outputs), residual n x k (down).
        /// </summary>
        public (double Fused, double Unfused) FusedGemv(string kind, int m, int n, int k)
        {
            var w = Weight(n, k);
            using var x = DeviceBuffer<float>.From(device, Random((long)m * k));
            using var y = DeviceBuffer<float>.Allocate(device, (long)m * n);
            using var y1 = DeviceBuffer<float>.Allocate(device, (long)m * n);
            using var y2 = DeviceBuffer<float>.Allocate(device, (long)m * n);
            DeviceBuffer<Half> Rows(int from, int count) => w.View<Half>((long)from * k * 2, (long)count * k);
            switch (kind)
            {
                case "qkv":
                {
                    int nkv = (n - 4096) / 2;
                    var (wq, wk, wv) = (Rows(0, 4096), Rows(4096, nkv), Rows(4096 + nkv, nkv));
                    double fused = Median(() => ops.DenseGemvQkv<Half>(y, y1, y2, x, wq, wk, wv, null, null, null, m, 4096, nkv, k));
                    double unfused = Median(() =>
                    {
                        ops.DenseGemm<Half>(y, x, wq, null, m, 4096, k);
                        ops.DenseGemm<Half>(y1, x, wk, null, m, nkv, k);
                        ops.DenseGemm<Half>(y2, x, wv, null, m, nkv, k);
                    });
                    return (fused, unfused);
                }
                case "swiglu":
                {
                    int half = n / 2;
                    var (wg, wu) = (Rows(0, half), Rows(half, half));
                    double fused = Median(() => ops.DenseGemvSwiGlu<Half>(y, x, wg, wu, m, half, k));
                    double unfused = Median(() =>
                    {
                        ops.DenseGemm<Half>(y1, x, wg, null, m, half, k);
                        ops.DenseGemm<Half>(y2, x, wu, null, m, half, k);
                        ops.SwiGluF32(y, y1, y2, m, half);
                    });
                    return (fused, unfused);
                }
                default:
                {
                    double fused = Median(() => ops.DenseGemvResidual<Half>(y, x, w, m, n, k));
                    double unfused = Median(() =>
                    {
                        ops.DenseGemm<Half>(y1, x, w, null, m, n, k);
                        ops.ResidualAddF32(y, y1, m * n);
                    });
                    return (fused, unfused);
                }
            }
        }

        /// <summary>
        /// A decode GEMV with the RMSNorm folded in (dense_gemv_{qkv,swiglu}_norm_f16, x the fp32 residual rows) against
        /// rms_norm_f32 then the plain fused GEMV, what it replaces; the weight cut as in <see cref="FusedGemv"/>.
        /// </summary>
        public (double Folded, double Separate) NormGemv(string kind, int m, int n, int k)
        {
            var w = Weight(n, k);
            using var x = DeviceBuffer<float>.From(device, Random((long)m * k));
            using var g = DeviceBuffer<float>.From(device, Random(k));
            using var xn = DeviceBuffer<float>.Allocate(device, (long)m * k);
            using var y = DeviceBuffer<float>.Allocate(device, (long)m * n);
            using var y1 = DeviceBuffer<float>.Allocate(device, (long)m * n);
            using var y2 = DeviceBuffer<float>.Allocate(device, (long)m * n);
            DeviceBuffer<Half> Rows(int from, int count) => w.View<Half>((long)from * k * 2, (long)count * k);
            const float eps = 1e-5f;
            if (kind == "qkv")
            {
                int nkv = (n - 4096) / 2;
                var (wq, wk, wv) = (Rows(0, 4096), Rows(4096, nkv), Rows(4096 + nkv, nkv));
                double folded = Median(() => ops.DenseGemvQkv<Half>(y, y1, y2, x, wq, wk, wv, null, null, null, m, 4096, nkv, k, (g, eps)));
                double separate = Median(() =>
                {
                    ops.RmsNorm(xn, x, g, m, k, eps);
                    ops.DenseGemvQkv<Half>(y, y1, y2, xn, wq, wk, wv, null, null, null, m, 4096, nkv, k);
                });
                return (folded, separate);
            }
            int half = n / 2;
            var (wg, wu) = (Rows(0, half), Rows(half, half));
            double foldedSwiGlu = Median(() => ops.DenseGemvSwiGlu<Half>(y, x, wg, wu, m, half, k, (g, eps)));
            double separateSwiGlu = Median(() =>
            {
                ops.RmsNorm(xn, x, g, m, k, eps);
                ops.DenseGemvSwiGlu<Half>(y, xn, wg, wu, m, half, k);
            });
            return (foldedSwiGlu, separateSwiGlu);
        }

        private Kernels.Runtime.Backends.Cuda.CublasLtGemm? _lt;
        private bool _ltTried;

        /// <summary>convert_f32_to_f16 + cuBLASLt for y = x W^T (the backend's UseCublasLt path); null when cuBLASLt is absent or has no algorithm.</summary>
        public double? CublasLtGemm(int m, int n, int k)
        {
            if (!_ltTried)
            {
                _ltTried = true;
                try
                {
                    _lt = new Kernels.Runtime.Backends.Cuda.CublasLtGemm(device);
                }
                catch (Exception e) when (e is DllNotFoundException or CublasException)
                {
                    Console.WriteLine($"# cuBLASLt GEMM timings skipped: {e.Message}");
                }
            }
            if (_lt == null) return null;
            var w = Weight(n, k);
            using var x = DeviceBuffer<float>.From(device, Random((long)m * k));
            using var xh = DeviceBuffer<Half>.Allocate(device, (long)m * k);
            using var y = DeviceBuffer<float>.Allocate(device, (long)m * n);
            if (!_lt.TryRun(y, xh, w, m, n, k, false, IntPtr.Zero)) return null;
            return Median(() =>
            {
                ops.ConvertFromF32(xh, x, m * k);
                _lt.TryRun(y, xh, w, m, n, k, false, IntPtr.Zero);
            });
        }

        private (OpsLauncher.PagedKv<Half> Kv, IDisposable[] Owned) Cache(int b, int len, int kvHeads, int d, int bs)
        {
            int perSeq = (len + bs - 1) / bs, numBlocks = b * perSeq;
            var k = DeviceBuffer<Half>.From(device, RandomHalf((long)numBlocks * bs * kvHeads * d));
            var v = DeviceBuffer<Half>.From(device, RandomHalf((long)numBlocks * bs * kvHeads * d));
            var tables = DeviceBuffer<int>.From(device, Enumerable.Range(0, numBlocks).ToArray()); // contiguous, [b, perSeq]
            var lens = DeviceBuffer<int>.From(device, Enumerable.Repeat(len, b).ToArray());
            return (new OpsLauncher.PagedKv<Half>(k, v, tables, lens, numBlocks, bs, perSeq), [k, v, tables, lens]);
        }

        public (double Us, int Splits) Decode(int b, int len, int heads, int kvHeads, int d, int bs, bool tiled = false)
        {
            var (kv, owned) = Cache(b, len, kvHeads, d, bs);
            try
            {
                using var q = DeviceBuffer<float>.From(device, Random((long)b * heads * d));
                using var o = DeviceBuffer<float>.Allocate(device, (long)b * heads * d);
                using var lse = DeviceBuffer<float>.Allocate(device, (long)b * heads);
                using var ws = DeviceBuffer<float>.Allocate(device, ops.DecodeWorkspaceFloats(b, heads, d));
                int splits = 0;
                double us = Median(() => splits = ops.PagedDecodeAttention(o, lse, q, kv, ws, b, heads, kvHeads, d, len, tiled));
                return (us, splits);
            }
            finally
            {
                foreach (var x in owned) x.Dispose();
            }
        }

        public double Prefill(int b, int n, int heads, int kvHeads, int d, int bs)
        {
            var (kv, owned) = Cache(b, n, kvHeads, d, bs);
            try
            {
                using var q = DeviceBuffer<float>.From(device, Random((long)b * n * heads * d));
                using var o = DeviceBuffer<float>.Allocate(device, (long)b * n * heads * d);
                using var lse = DeviceBuffer<float>.Allocate(device, (long)b * n * heads);
                using var starts = DeviceBuffer<int>.From(device, Enumerable.Range(0, b + 1).Select(i => i * n).ToArray());
                return Median(() => ops.PagedPrefillAttentionF16(o, lse, q, kv, starts, b, b * n, n, heads, kvHeads, d));
            }
            finally
            {
                foreach (var x in owned) x.Dispose();
            }
        }

        public double Sample(int rows, int vocab, bool filtered, bool radix)
        {
            using var logits = DeviceBuffer<float>.From(device, Random((long)rows * vocab).Select(v => v * 10).ToArray());
            using var tokens = DeviceBuffer<int>.Allocate(device, rows);
            using var coins = DeviceBuffer<double>.From(device, Enumerable.Range(0, rows).Select(r => (r + 0.5) / rows).ToArray());
            using var temperature = DeviceBuffer<float>.From(device, Enumerable.Repeat(filtered ? 0.8f : 0f, rows).ToArray());
            using var topK = DeviceBuffer<int>.From(device, Enumerable.Repeat(filtered ? 50 : 0, rows).ToArray());
            using var topP = DeviceBuffer<float>.From(device, Enumerable.Repeat(filtered ? 0.9f : 1f, rows).ToArray());
            using var minP = DeviceBuffer<float>.From(device, new float[rows]);
            return Median(() => ops.SampleTokensF32(tokens, coins, logits, vocab, temperature, topK, topP, minP, rows, vocab, radix));
        }
    }
}
