// kernels-bench squeeze-gpu: the SqueezeLLM LUT GEMV (ILGPU, src/Kernels.Runtime.Ilgpu/SqueezeLlmLutGemv.cs) on ILGPU's CUDA
// accelerator. (a) verify: layers made by the real quantizer (3 and 4 bits, 0.45% CSR outliers), M = 1, 4, 8, the GPU
// result vs LutMatMul on the CPU; (b) timings at the four Llama-3-8B layer shapes (N x K = 6144x4096, 4096x4096,
// 28672x4096, 4096x14336; --quick: 28672x4096 only) for M = 1, 4, 8: ILGPU profiling markers (CUDA events) around each
// launch, L2 flushed before each (a memset of a buffer larger than L2), median; plus a Stopwatch over back-to-back
// launches as a cross-check. Writes {results: [{Kernel, Shape, Microseconds, Baseline, BaselineMicroseconds,
// RooflineMicroseconds, Params, ...}], verify: [...]} like kernels.json, so tools/kernel_baselines.py adds torch.matmul
// fp16 (cuBLAS) on the same M x K times K x N. Exit codes: 0 done and every check passed, 1 a check FAILed (timings
// still run; an exception in one layer is a FAIL/ERROR line and the rest go on), 2 no CUDA accelerator. --cpu: the same on ILGPU's CPU accelerator at tiny shapes (checks the command
// runs; its numbers mean nothing).
using System.CommandLine;
using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Text.Json;
using System.Text.Json.Serialization;
using ILGPU;
using Half = System.Half;
using ILGPU.Runtime;
using ILGPU.Runtime.CPU;
using ILGPU.Runtime.Cuda;
using Kernels.Runtime.Backends.Cpu;
using Kernels.Runtime.Backends.Ilgpu;
using Kernels.Runtime.Models;
using Kernels.Runtime.Numerics;
using Kernels.Runtime.Quantization;
using Kernels.Runtime.Quantization.SqueezeLlm;

namespace Kernels.Bench;

internal static unsafe class SqueezeGpu
{
    /// <summary>Same fields as <see cref="KernelTimings.Record"/> (what kernel_baselines.py and Report.cs read), plus
    /// the back-to-back Stopwatch figure and the layer's make-up.</summary>
    private sealed record Record(string Kernel, string Shape, double Microseconds, string? Baseline, double? BaselineMicroseconds,
        double RooflineMicroseconds, double Bytes, double Flops, double GBps, double TFlops, double RooflineFraction, Dictionary<string, int> Params,
        double BackToBackMicroseconds, int Outliers);

    private sealed record Check(string Kernel, string Shape, int Bits, int M, int N, int K, int Outliers, double MaxRelativeError, double Tolerance, bool Pass, string? Error = null);

    /// <summary>|gpu - cpu| &lt;= Tolerance * sum_k |W[n,k] x[m,k]| per output (fp32 sums in a different order: per-lane
    /// partial sums then a shuffle tree on the GPU, 8-wide AVX2 on the CPU).</summary>
    private const double Tolerance = 1e-5;

    private const double SparsityPercent = SqueezeLlmSettings.DefaultSparsityPercent;

    public static Command CreateCommand()
    {
        var json = new Option<string>("--json") { DefaultValueFactory = _ => "squeeze.json", Description = "Where to write the checks and timings (kernels.json format)" };
        var quick = new Option<bool>("--quick") { Description = "Timings at 28672x4096 only, fewer verify shapes" };
        var iterations = new Option<int>("--iterations") { DefaultValueFactory = _ => 50, Description = "Timed launches per shape (median)" };
        var cpu = new Option<bool>("--cpu") { Description = "Dry run on ILGPU's CPU accelerator at tiny shapes (checks the command, not a GPU)" };
        var ordinal = new Option<int>("--device") { DefaultValueFactory = _ => 0, Description = "CUDA device ordinal (as ILGPU numbers them)" };
        var seed = new Option<int>("--seed") { DefaultValueFactory = _ => 1234, Description = "Seed of the random layers and inputs" };
        var cmd = new Command("squeeze-gpu", "SqueezeLLM LUT GEMV on ILGPU's CUDA accelerator: verify vs LutMatMul (CPU), then timings at Llama-3-8B shapes, M = 1, 4, 8; exit 1 on FAIL, 2 without CUDA");
        foreach (var o in new Option[] { json, quick, iterations, cpu, ordinal, seed }) cmd.Options.Add(o);
        cmd.SetAction(p => Run(p.GetValue(json)!, p.GetValue(quick), p.GetValue(iterations), p.GetValue(cpu), p.GetValue(ordinal), p.GetValue(seed)));
        return cmd;
    }

    public static int Run(string jsonPath, bool quick, int iterations, bool cpu, int ordinal, int seed)
    {
        Context context;
        Accelerator accelerator;
        try
        {
            if (cpu)
            {
                context = Context.Create(b => b.CPU(CPUDeviceKind.Nvidia).Profiling());
                accelerator = context.CreateCPUAccelerator(0);
            }
            else
            {
                context = Context.Create(b => b.Cuda().Profiling());
                var devices = context.GetCudaDevices();
                if (devices.Count <= ordinal)
                {
                    Console.WriteLine($"CUDA unavailable: ILGPU sees {devices.Count} CUDA device(s), device {ordinal} asked for (no driver or no GPU); --cpu runs the checks on the CPU accelerator");
                    context.Dispose();
                    return 2;
                }
                accelerator = context.CreateCudaAccelerator(ordinal);
            }
        }
        catch (Exception e)
        {
            Console.WriteLine($"CUDA unavailable: ILGPU's {(cpu ? "CPU" : "CUDA")} accelerator did not open: {e.GetType().Name}: {e.Message}");
            return 2;
        }
        using (context)
        using (accelerator)
        {
            long l2 = accelerator is CudaAccelerator cuda ? cuda.L2CacheSize : 0;
            Console.WriteLine($"# squeeze-gpu: {accelerator.Name} ({accelerator.AcceleratorType}), {accelerator.MemorySize >> 20} MiB, warp {accelerator.WarpSize}, L2 {l2 >> 20} MiB; ILGPU {typeof(Context).Assembly.GetName().Version}");
            var storage = new List<IDisposable>();
            try
            {
                var checks = VerifyAll(accelerator, quick, cpu, seed, storage);
                bool pass = checks.All(c => c.Pass);
                Console.WriteLine($"# verify: {checks.Count(c => c.Pass)}/{checks.Count} PASS");
                List<Record> records = [];
                double bw = 0;
                long flushBytes = 0;
                int errors = 0;
                try
                {
                    (records, bw, flushBytes, errors) = TimeAll(accelerator, quick, cpu, iterations, seed, l2, storage);
                }
                catch (Exception e) // the flush buffer or the bandwidth copy failed: still write the checks
                {
                    errors++;
                    Console.WriteLine($"ERROR timings: {e.GetType().Name}: {e.Message}");
                }
                File.WriteAllText(jsonPath, JsonSerializer.Serialize(new
                {
                    device = accelerator.Name, accelerator = accelerator.AcceleratorType.ToString(), bandwidthGBps = bw, iterations, flushBytes,
                    sparsityPercent = SparsityPercent, tolerance = Tolerance, verifyPass = pass, timingErrors = errors, verify = checks, results = records,
                }, new JsonSerializerOptions { WriteIndented = true, NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals }));
                Console.WriteLine($"# wrote {jsonPath} ({checks.Count} checks, {records.Count} timings)");
                return pass && errors == 0 ? 0 : 1;
            }
            finally
            {
                foreach (var s in storage) s.Dispose();
            }
        }
    }

    // -----------------------------------------------------------------------------------------------------------------
    // (a) verify

    private static List<Check> VerifyAll(Accelerator accelerator, bool quick, bool cpu, int seed, List<IDisposable> storage)
    {
        // (N, K): a real K, a long K (down_proj), K not a multiple of 32 (padded code blocks), N not a multiple of 4.
        var shapes = cpu ? new[] { (70, 100), (33, 256) }
            : quick ? new[] { (512, 4096), (301, 1000) } : new[] { (512, 4096), (256, 14336), (301, 1000) };
        Console.WriteLine($"# verify: GPU vs LutMatMul (CPU); layers from SqueezeLlmQuantizer ({SparsityPercent}% outliers, plain k-means); x uniform in [-2, 2);");
        Console.WriteLine($"#   PASS when |gpu - cpu| <= {Tolerance:0e0} * sum_k |W[n,k] x[m,k]| for every output");
        var checks = new List<Check>();
        var rng = new Random(seed);
        foreach (int bits in new[] { 3, 4 })
            foreach (var (n, k) in shapes)
                try
                {
                    VerifyLayer(accelerator, bits, n, k, seed, rng, storage, checks);
                }
                catch (Exception e) // e.g. the kernel does not compile or launch: a FAIL line, and the other layers still run
                {
                    var failed = new Check($"squeezellm_lut_gemv_{bits}bit", $"N={n} K={k}", bits, 0, n, k, 0, double.NaN, Tolerance, false, $"{e.GetType().Name}: {e.Message}");
                    checks.Add(failed);
                    Console.WriteLine($"FAIL {failed.Kernel,-26} {failed.Shape,-24} {failed.Error}");
                }
        return checks;
    }

    private static void VerifyLayer(Accelerator accelerator, int bits, int n, int k, int seed, Random rng, List<IDisposable> storage, List<Check> checks)
    {
        var layer = QuantizedLayer($"verify.{bits}bit.{n}x{k}", n, k, bits, seed + n + k + bits, storage);
        var dequant = new float[(long)n * k];
        for (int r = 0; r < n; r++) layer.ReadRow(r, dequant.AsSpan(r * k, k));
        using var gemv = new SqueezeLlmLutGemv(accelerator, layer);
        foreach (int m in new[] { 1, 4, 8 })
        {
            var x = new float[m * k];
            for (int i = 0; i < x.Length; i++) x[i] = (float)(rng.NextDouble() * 4 - 2);
            var expected = new float[m * n];
            var actual = new float[m * n];
            LutMatMul.Multiply(x, m, layer, expected);
            gemv.Multiply(x, m, actual);
            double worst = 0;
            bool ok = true;
            for (int t = 0; t < m; t++)
                for (int j = 0; j < n; j++)
                {
                    double scale = 0;
                    for (int c = 0; c < k; c++) scale += Math.Abs((double)dequant[(long)j * k + c] * x[t * k + c]);
                    double err = Math.Abs((double)actual[t * n + j] - expected[t * n + j]) / Math.Max(scale, 1e-30);
                    if (!(err <= Tolerance)) ok = false; // NaN fails too
                    worst = double.IsNaN(err) ? double.NaN : Math.Max(worst, err);
                }
            var c2 = new Check($"squeezellm_lut_gemv_{bits}bit", $"M={m} N={n} K={k}", bits, m, n, k, layer.OutlierCount, worst, Tolerance, ok);
            checks.Add(c2);
            Console.WriteLine($"{(ok ? "PASS" : "FAIL")} {c2.Kernel,-26} {c2.Shape,-24} outliers {c2.Outliers,6}  max |err| / sum|terms| {worst:0.00e0}");
        }
    }

    /// <summary>A layer through the real quantizer (weights like a trained layer: small values, 1 in 300 twenty times larger).</summary>
    internal static SqueezeLlmLinear QuantizedLayer(string name, int n, int k, int bits, int seed, List<IDisposable> storage)
    {
        var rng = new Random(seed);
        var w = new float[(long)n * k];
        for (long i = 0; i < w.Length; i++)
        {
            double u = rng.NextDouble() + rng.NextDouble() + rng.NextDouble() - 1.5;
            w[i] = (float)(0.05 * u);
            if (rng.Next(300) == 0) w[i] *= 20;
        }
        var dense = new DenseLinear(name, Native(name + ".weight", TensorDType.F32, [n, k], MemoryMarshal.AsBytes(w.AsSpan()), storage));
        var quantizer = new SqueezeLlmQuantizer(new SqueezeLlmSettings(bits, SparsityPercent, SensitivityWeighting.None), null, seed);
        var byName = quantizer.Quantize(dense).ToDictionary(t => t.Name, t => Native(t.Name, Enum.Parse<TensorDType>(t.DType), t.Shape, t.Data.Span, storage));
        WeightTensor Get(string suffix) => byName[name + "." + suffix];
        return new SqueezeLlmLinear(name, n, k, bits, Get(SqueezeLlmLinear.CodesSuffix), Get(SqueezeLlmLinear.TableSuffix),
            Get(SqueezeLlmLinear.OutlierRowsSuffix), Get(SqueezeLlmLinear.OutlierColsSuffix), Get(SqueezeLlmLinear.OutlierValuesSuffix), "squeeze-gpu");
    }

    private static WeightTensor Native(string name, TensorDType dtype, long[] shape, ReadOnlySpan<byte> bytes, List<IDisposable> storage)
    {
        var s = new OwnedStorage(Math.Max(1, bytes.Length));
        storage.Add(s);
        bytes.CopyTo(new Span<byte>(s.Pointer, bytes.Length));
        return new WeightTensor(name, dtype, shape, s.Pointer);
    }

    // -----------------------------------------------------------------------------------------------------------------
    // (b) timings

    /// <summary>
    /// A layer in the stored format with random content (the quantizer's exact k-means takes minutes at 28672x4096 and
    /// the kernel's speed does not depend on the values): random codes, ascending random fp16 tables, and
    /// round(K * 0.45%) outliers in every row at random distinct columns (the quantizer picks the largest |w| of the
    /// whole layer, so its rows hold unequal counts; the total is the same).
    /// </summary>
    private static SqueezeLlmLinear RandomLayer(string name, int n, int k, int bits, Random rng, List<IDisposable> storage)
    {
        // SyntheticQuantizedModels writes the same random layers for the 8B decode tables (0.45 % outliers per row).
        var tensors = SyntheticQuantizedModels.SqueezeLlmLayer(name, n, k, bits, rng, storage);
        WeightTensor Get(string suffix) => tensors.Single(t => t.Name == name + "." + suffix);
        return new SqueezeLlmLinear(name, n, k, bits, Get(SqueezeLlmLinear.CodesSuffix), Get(SqueezeLlmLinear.TableSuffix),
            Get(SqueezeLlmLinear.OutlierRowsSuffix), Get(SqueezeLlmLinear.OutlierColsSuffix), Get(SqueezeLlmLinear.OutlierValuesSuffix), "squeeze-gpu");
    }

    private static (List<Record> Records, double BandwidthGBps, long FlushBytes, int Errors) TimeAll(Accelerator accelerator, bool quick, bool cpu, int iterations,
        int seed, long l2, List<IDisposable> storage)
    {
        var layers = cpu ? new[] { ("tiny", 64, 256) }
            : quick ? new[] { ("gate_up", 28672, 4096) }
            : new[] { ("qkv", 6144, 4096), ("o", 4096, 4096), ("gate_up", 28672, 4096), ("down", 4096, 14336) };
        long flushBytes = cpu ? 8L << 20 : Math.Max(512L << 20, 8 * l2); // 512 MiB: 10x the 50 MB L2 of an H100/H200
        if (cpu) iterations = Math.Min(iterations, 3);
        long copyBytes = cpu ? 64L << 20 : 1L << 30;
        double bw = CopyBandwidthGBps(accelerator, copyBytes);
        Console.WriteLine($"# timings: measured device-to-device copy bandwidth {bw:F0} GB/s (read + write, best of 5 copies of {copyBytes >> 20} MiB)");
        Console.WriteLine($"# median of {iterations} launches, each between two ILGPU profiling markers (CUDA events), L2 flushed before each ({flushBytes >> 20} MiB memset);");
        Console.WriteLine("#   roofline = bytes / bandwidth, bytes = packed codes + fp32 tables + CSR (row starts, cols, deltas) + x + y (fp32);");
        Console.WriteLine("#   back-to-back = Stopwatch over 100 launches then one synchronize (L2 warm, ILGPU's host launch cost included)");
        var records = new List<Record>();
        using var flush = accelerator.Allocate1D<byte>(flushBytes);
        var rng = new Random(seed);
        int errors = 0;
        foreach (int bits in new[] { 3, 4 })
            foreach (var (name, n, k) in layers)
                try
                {
                    TimeLayer(accelerator, flush, name, n, k, bits, cpu, iterations, bw, rng, storage, records);
                }
                catch (Exception e)
                {
                    errors++;
                    Console.WriteLine($"ERROR squeezellm_lut_gemv_{bits}bit {name} N={n} K={k}: {e.GetType().Name}: {e.Message}");
                }
        return (records, bw, flushBytes, errors);
    }

    private static void TimeLayer(Accelerator accelerator, MemoryBuffer1D<byte, Stride1D.Dense> flush, string name, int n, int k, int bits, bool cpu,
        int iterations, double bw, Random rng, List<IDisposable> storage, List<Record> records)
    {
        var layer = RandomLayer($"{name}.{bits}bit", n, k, bits, rng, storage);
        using var gemv = new SqueezeLlmLutGemv(accelerator, layer);
        double weightBytes = (double)n * layer.RowBytes + (double)n * layer.TableSize * 4 + (n + 1.0) * 4 + layer.OutlierCount * 8.0;
        foreach (int m in new[] { 1, 4, 8 })
        {
            var xs = new float[m * k];
            for (int i = 0; i < xs.Length; i++) xs[i] = (float)(rng.NextDouble() * 2 - 1);
            using var x = accelerator.Allocate1D(xs);
            using var y = accelerator.Allocate1D<float>((long)m * n);
            void Launch() => gemv.Launch(x.View, m, y.View);
            double us = Median(accelerator, flush, Launch, iterations);
            double b2b = BackToBack(accelerator, Launch, cpu ? 2 : 100);
            double bytes = weightBytes + 4.0 * m * k + 4.0 * m * n, flops = 2.0 * m * n * k + 2.0 * m * layer.OutlierCount;
            double roof = bytes / (bw * 1e9) * 1e6;
            var r = new Record($"squeezellm_lut_gemv_{bits}bit", $"{name} M={m} N={n} K={k}", us, null, null, roof, bytes, flops,
                bytes / (us * 1e-6) / 1e9, flops / (us * 1e-6) / 1e12, roof / us, new() { ["M"] = m, ["N"] = n, ["K"] = k, ["Bits"] = bits },
                b2b, layer.OutlierCount);
            records.Add(r);
            Console.WriteLine($"{r.Kernel,-26} {r.Shape,-30} {us,9:F1} us  {r.GBps,7:F0} GB/s  roofline {roof,7:F1} us ({r.RooflineFraction:P0}, {us / roof:F2}x)  back-to-back {b2b,8:F1} us");
        }
    }

    /// <summary>Median GPU time of <paramref name="launch"/> in microseconds, L2 flushed before every launch.</summary>
    private static double Median(Accelerator accelerator, MemoryBuffer1D<byte, Stride1D.Dense> flush, Action launch, int iterations)
    {
        for (int w = 0; w < 3; w++) launch(); // the first launch compiles and loads the kernel
        accelerator.Synchronize();
        var times = new double[iterations];
        for (int i = 0; i < iterations; i++)
        {
            flush.View.MemSetToZero();
            using var start = accelerator.AddProfilingMarker();
            launch();
            using var stop = accelerator.AddProfilingMarker();
            stop.Synchronize();
            times[i] = stop.MeasureFrom(start).TotalMicroseconds;
        }
        Array.Sort(times);
        return times[iterations / 2];
    }

    private static double BackToBack(Accelerator accelerator, Action launch, int count)
    {
        accelerator.Synchronize();
        var clock = Stopwatch.StartNew();
        for (int i = 0; i < count; i++) launch();
        accelerator.Synchronize();
        return clock.Elapsed.TotalMicroseconds / count;
    }

    /// <summary>Device-to-device copy, best of 5 after one warm-up: bytes read + written per second (as KernelTimings).</summary>
    private static double CopyBandwidthGBps(Accelerator accelerator, long bytes)
    {
        using var a = accelerator.Allocate1D<byte>(bytes);
        using var b = accelerator.Allocate1D<byte>(bytes);
        a.View.MemSetToZero();
        double best = double.MaxValue;
        for (int i = 0; i < 6; i++)
        {
            using var start = accelerator.AddProfilingMarker();
            a.View.CopyTo(b.View);
            using var stop = accelerator.AddProfilingMarker();
            stop.Synchronize();
            if (i > 0) best = Math.Min(best, stop.MeasureFrom(start).TotalSeconds);
        }
        return 2.0 * bytes / best / 1e9;
    }
}
