// kernels-bench verify: every op kernel of the fatbin against its CPU reference (Backends/Cpu) on random inputs of
// real shapes; per kernel and shape: max abs error, mean relative error, the tolerance and PASS/FAIL.
// Exit codes: 0 all pass, 1 any FAIL (or the fatbin does not load), 2 CUDA or kernels unavailable here.
using System.Security.Cryptography;
using System.Text.Json;
using Kernels.Interop;
using Kernels.Runtime.Backends;
using Kernels.Runtime.Backends.Cuda;
using Cpu = Kernels.Runtime.Backends.Cpu;
using Kernels.Runtime.Models;
using Kernels.Runtime.Numerics;

namespace Kernels.Bench;

internal static unsafe class Verify
{
    // ---- tolerances (STYLE habit 20: per op, with where the number comes from) -------------------------------------

    /// <summary>Relative = 0 means bit-exact. Otherwise an element passes when |gpu - ref| <= Relative * (|ref| + max|ref|):
    /// the max|ref| term is the absolute part, sized to the tensor, so outputs that cancel to near zero (rope's
    /// x0*c - x1*s) are judged against the scale of their operands rather than their own tiny value.</summary>
    private sealed record Tolerance(double Relative, string Source);

    private static readonly Tolerance Exact = new(0, "bit-exact: the kernel does the same IEEE operations as the reference (f16/bf16 -> f32 widening and one fp32 add are exact)");
    private static readonly Tolerance RopeTol = new(2e-6, "CUDA sincosf vs MathF.Cos/Sin differ by a few ulp (2 ulp each, 2^-23 ~ 1.2e-7 per ulp); angle and rotation are bit-identical");
    private static readonly Tolerance RmsNormTol = new(1e-5, "sum of squares: block tree reduction vs sequential SIMD dot, ~sqrt(dim) * 2^-24 relative at dim 4096; the rest is bit-identical");
    private static readonly Tolerance SwiGluTol = new(1e-6, "CUDA expf (2 ulp) vs MathF.Exp; silu carries exp's relative error scaled by exp/(1+exp) <= 1, then one rounded product");

    private sealed record CaseResult(string Kernel, string Shape, double MaxAbsError, double MeanRelativeError, double Tolerance,
        string ToleranceSource, long Mismatches, long NonFiniteMismatches, bool GuardIntact, bool Pass, string? Error);

    /// <summary>Elements after every output buffer, filled with a sentinel and checked after the launch (STYLE habit 22).</summary>
    private const int Guard = 64;
    private const byte Sentinel = 0xA5;

    private static readonly int[] TokenCounts = [1, 7, 64];
    private static readonly int[] Dims = [64, 4096, 67]; // 67: not a multiple of the 128-bit vector width -> scalar paths

    public static int Run(string? fatbinPath, string? jsonPath, int seed, int ordinal)
    {
        using var device = CudaDevice.TryOpen(ordinal, out string? why);
        if (device == null)
        {
            Console.WriteLine($"CUDA unavailable: {why}");
            return 2;
        }
        byte[]? image = fatbinPath != null ? File.ReadAllBytes(fatbinPath) : KernelImage.Load();
        if (image == null)
        {
            Console.WriteLine($"kernels unavailable: this bench has no embedded fatbin ({KernelImage.Describe()}); pass --fatbin PATH");
            return 2;
        }
        string source = fatbinPath ?? "embedded";
        string sha = Convert.ToHexStringLower(SHA256.HashData(image));
        Console.WriteLine($"# device: {device}");
        Console.WriteLine($"# fatbin: {source}, {image.Length:N0} bytes, sha256 {sha}");
        Console.WriteLine($"# seed: {seed}");
        KernelModule module;
        try
        {
            module = KernelModule.Load(device, image, source);
        }
        catch (Exception e) when (e is CudaException or InvalidOperationException)
        {
            Console.WriteLine($"FAIL: the fatbin did not load: {e.Message}");
            return 1;
        }

        var results = new List<CaseResult>();
        using (module)
        {
            var v = new Verifier(device, new OpsLauncher(module), new Random(seed));
            foreach (var run in v.Cases())
            {
                CaseResult r;
                try
                {
                    r = run.Run();
                }
                catch (Exception e) when (e is CudaException or ArgumentException or InvalidOperationException)
                {
                    r = new CaseResult(run.Kernel, run.Shape, double.NaN, double.NaN, 0, "", 0, 0, false, false, e.Message);
                }
                results.Add(r);
                Console.WriteLine($"{(r.Pass ? "PASS" : "FAIL")}  {r.Kernel,-22} {r.Shape,-34} max abs {r.MaxAbsError,10:G3}  mean rel {r.MeanRelativeError,10:G3}  " +
                                  $"tol {(r.Tolerance == 0 ? "exact" : r.Tolerance.ToString("G2"))}" +
                                  (r.Mismatches > 0 ? $"  {r.Mismatches} elements out of tolerance" : "") +
                                  (r.NonFiniteMismatches > 0 ? $"  {r.NonFiniteMismatches} NaN/inf mismatches" : "") +
                                  (!r.GuardIntact && r.Error == null ? "  GUARD OVERWRITTEN" : "") +
                                  (r.Error != null ? $"  error: {r.Error}" : ""));
            }
        }
        int failed = results.Count(r => !r.Pass);
        Console.WriteLine($"# {results.Count - failed} of {results.Count} cases pass");
        if (jsonPath != null)
            File.WriteAllText(jsonPath, JsonSerializer.Serialize(new
            {
                device = device.ToString(), fatbin = source, fatbinSha256 = sha, seed, abiVersion = KernelAbi.Version,
                passed = results.Count - failed, failed, results,
            }, new JsonSerializerOptions { WriteIndented = true, NumberHandling = System.Text.Json.Serialization.JsonNumberHandling.AllowNamedFloatingPointLiterals }));
        return failed == 0 ? 0 : 1;
    }

    private sealed record Case(string Kernel, string Shape, Func<CaseResult> Run);

    private sealed class Verifier(CudaDevice device, OpsLauncher ops, Random rng)
    {
        public IEnumerable<Case> Cases()
        {
            foreach (var dtype in new[] { TensorDType.F32, TensorDType.F16, TensorDType.BF16 })
                foreach (int t in TokenCounts)
                    foreach (int d in Dims)
                        yield return new Case($"embedding_gather_{Suffix(dtype)}", $"T={t} D={d} vocab=1000", () => Embedding(dtype, t, d, 1000));
            foreach (var dtype in new[] { TensorDType.F32, TensorDType.F16, TensorDType.BF16 })
                foreach (int t in TokenCounts)
                    foreach (int d in Dims)
                        yield return new Case($"rms_norm_{Suffix(dtype)}", $"T={t} D={d}", () => RmsNormCase(dtype, t, d));
            foreach (int t in TokenCounts)
            {
                yield return new Case("rope_f32", $"T={t} heads=32/8 d=128", () => RopeCase(t, 32, 8, 128));
                yield return new Case("rope_f32", $"T={t} heads=4/0 d=64", () => RopeCase(t, 4, 0, 64));
            }
            foreach (int t in TokenCounts)
                foreach (int inter in new[] { 64, 4096, 14336 })
                {
                    yield return new Case("swiglu_f32", $"T={t} I={inter}", () => SwiGluCase(t, inter, fused: false));
                    yield return new Case("swiglu_fused_f32", $"T={t} I={inter}", () => SwiGluCase(t, inter, fused: true));
                }
            foreach (int t in TokenCounts)
                foreach (int d in Dims)
                    yield return new Case("residual_add_f32", $"n={t}x{d}", () => ResidualAddCase(t * d));
        }

        // ---- cases ------------------------------------------------------------------------------------------------

        private CaseResult Embedding(TensorDType dtype, int t, int d, int vocab)
        {
            var values = Normal(vocab * d, 1f);
            var ids = Enumerable.Range(0, t).Select(i => i == 0 ? 0 : i == t - 1 ? vocab - 1 : rng.Next(vocab)).ToArray();
            var reference = new float[t * d];
            using var dIds = DeviceBuffer<int>.From(device, ids);
            using var output = Output(t * d);
            string kernel = $"embedding_gather_{Suffix(dtype)}";
            switch (dtype)
            {
                case TensorDType.F32:
                {
                    fixed (float* p = values) Cpu.Embedding.Gather(new WeightTensor("table", dtype, [vocab, d], (byte*)p), ids, reference);
                    using var table = DeviceBuffer<float>.From(device, values);
                    ops.EmbeddingGatherF32(output, table, dIds, t, d, vocab);
                    break;
                }
                case TensorDType.F16:
                {
                    var half = values.Select(x => (Half)x).ToArray();
                    fixed (Half* p = half) Cpu.Embedding.Gather(new WeightTensor("table", dtype, [vocab, d], (byte*)p), ids, reference);
                    using var table = DeviceBuffer<Half>.From(device, half);
                    ops.EmbeddingGatherF16(output, table, dIds, t, d, vocab);
                    break;
                }
                default:
                {
                    var bf = values.Select(DTypeConvert.SingleToBFloat16).ToArray();
                    fixed (ushort* p = bf) Cpu.Embedding.Gather(new WeightTensor("table", dtype, [vocab, d], (byte*)p), ids, reference);
                    using var table = DeviceBuffer<ushort>.From(device, bf);
                    ops.EmbeddingGatherBF16(output, table, dIds, t, d, vocab);
                    break;
                }
            }
            return Compare(kernel, $"T={t} D={d} vocab={vocab}", output, reference, Exact);
        }

        private CaseResult RmsNormCase(TensorDType dtype, int t, int d)
        {
            const float Eps = 1e-5f;
            var x = Normal(t * d, 1f);
            if (t > 2) Array.Clear(x, d, d); // a zero row: inv_rms = 1/sqrt(eps), output zeros
            if (t > 3) for (int i = 0; i < d; i++) x[3 * d + i] *= 300f; // large activations
            var w32 = Normal(d, 0.1f).Select(v => 1f + v).ToArray();
            using var dx = DeviceBuffer<float>.From(device, x);
            using var y = Output(t * d);
            float[] wRef;
            switch (dtype)
            {
                case TensorDType.F32:
                {
                    wRef = w32;
                    using var w = DeviceBuffer<float>.From(device, w32);
                    ops.RmsNormF32(y, dx, w, t, d, Eps);
                    break;
                }
                case TensorDType.F16:
                {
                    var h = w32.Select(v => (Half)v).ToArray();
                    wRef = h.Select(v => (float)v).ToArray();
                    using var w = DeviceBuffer<Half>.From(device, h);
                    ops.RmsNormF16(y, dx, w, t, d, Eps);
                    break;
                }
                default:
                {
                    var b = w32.Select(DTypeConvert.SingleToBFloat16).ToArray();
                    wRef = b.Select(DTypeConvert.BFloat16ToSingle).ToArray();
                    using var w = DeviceBuffer<ushort>.From(device, b);
                    ops.RmsNormBF16(y, dx, w, t, d, Eps);
                    break;
                }
            }
            var reference = new float[t * d];
            Cpu.RmsNorm.Apply(x, wRef, Eps, reference, t);
            return Compare($"rms_norm_{Suffix(dtype)}", $"T={t} D={d}", y, reference, RmsNormTol);
        }

        private CaseResult RopeCase(int t, int qHeads, int kvHeads, int headDim)
        {
            const double Theta = 500000; // Llama 3
            var invFreq = Enumerable.Range(0, headDim / 2).Select(i => (float)(1.0 / Math.Pow(Theta, 2.0 * i / headDim))).ToArray();
            var positions = Enumerable.Range(0, t).Select(i => i == 0 ? 0 : rng.Next(8192)).ToArray();
            int n = t * (qHeads + kvHeads) * headDim;
            var qk = Normal(n, 1f);
            var q = qk.AsSpan(0, t * qHeads * headDim).ToArray();
            var k = qk.AsSpan(t * qHeads * headDim).ToArray();
            using var dq = InPlace(q);
            using var dk = kvHeads > 0 ? InPlace(k) : null;
            using var dPos = DeviceBuffer<int>.From(device, positions);
            using var dFreq = DeviceBuffer<float>.From(device, invFreq);
            ops.RopeF32(dq, dk, dPos, dFreq, t, qHeads, kvHeads, headDim);
            Cpu.Rope.Apply(q, t, qHeads, headDim, positions, invFreq);
            if (kvHeads > 0) Cpu.Rope.Apply(k, t, kvHeads, headDim, positions, invFreq);
            var shape = $"T={t} heads={qHeads}/{kvHeads} d={headDim}";
            var rq = Compare("rope_f32", shape + " (q)", dq, q, RopeTol);
            if (dk == null || !rq.Pass) return rq;
            var rk = Compare("rope_f32", shape + " (k)", dk, k, RopeTol);
            return rk.Pass ? rq with { Shape = shape, MaxAbsError = Math.Max(rq.MaxAbsError, rk.MaxAbsError), MeanRelativeError = Math.Max(rq.MeanRelativeError, rk.MeanRelativeError) } : rk;
        }

        private CaseResult SwiGluCase(int t, int inter, bool fused)
        {
            var gate = Normal(t * inter, 4f);
            var up = Normal(t * inter, 1f);
            gate[0] = -100f; // exp(100) overflows: silu -> -0
            if (gate.Length > 1) gate[1] = 100f; // silu(g) = g
            var reference = new float[t * inter];
            Cpu.SwiGlu.Apply(gate, up, reference);
            using var output = Output(t * inter);
            if (fused)
            {
                var gateUp = new float[2 * t * inter];
                for (int r = 0; r < t; r++)
                {
                    gate.AsSpan(r * inter, inter).CopyTo(gateUp.AsSpan(2 * r * inter));
                    up.AsSpan(r * inter, inter).CopyTo(gateUp.AsSpan((2 * r + 1) * inter));
                }
                using var dGateUp = DeviceBuffer<float>.From(device, gateUp);
                ops.SwiGluFusedF32(output, dGateUp, t, inter);
            }
            else
            {
                using var dGate = DeviceBuffer<float>.From(device, gate);
                using var dUp = DeviceBuffer<float>.From(device, up);
                ops.SwiGluF32(output, dGate, dUp, t, inter);
            }
            return Compare(fused ? "swiglu_fused_f32" : "swiglu_f32", $"T={t} I={inter}", output, reference, SwiGluTol);
        }

        private CaseResult ResidualAddCase(int n)
        {
            var x = Normal(n, 1f);
            var y = Normal(n, 1f);
            using var dx = InPlace(x);
            using var dy = DeviceBuffer<float>.From(device, y);
            ops.ResidualAddF32(dx, dy, n);
            Cpu.ResidualAdd.Apply(x, y);
            return Compare("residual_add_f32", $"n={n}", dx, x, Exact);
        }

        // ---- buffers and comparison -------------------------------------------------------------------------------

        private DeviceBuffer<float> Output(int n)
        {
            var b = DeviceBuffer<float>.Allocate(device, n + Guard);
            b.FillBytes(Sentinel); // unwritten outputs then show up as mismatches, and overruns as a broken guard
            return b;
        }

        private DeviceBuffer<float> InPlace(float[] data)
        {
            var b = Output(data.Length);
            b.CopyFrom(data);
            return b;
        }

        private float[] Normal(int n, float scale)
        {
            var a = new float[n];
            for (int i = 0; i < n; i++)
                a[i] = scale * (float)(Math.Sqrt(-2 * Math.Log(1 - rng.NextDouble())) * Math.Cos(2 * Math.PI * rng.NextDouble()));
            return a;
        }

        private CaseResult Compare(string kernel, string shape, DeviceBuffer<float> buffer, float[] reference, Tolerance tol)
        {
            device.Synchronize(); // a kernel fault surfaces here, as a CudaException naming cuCtxSynchronize
            var all = buffer.ToArray();
            bool guardIntact = true;
            for (int i = reference.Length; i < all.Length; i++)
                guardIntact &= BitConverter.SingleToUInt32Bits(all[i]) == 0xA5A5A5A5u;
            double refMax = 0, sumErr = 0, sumRef = 0, maxAbs = 0;
            foreach (var r in reference) if (float.IsFinite(r)) refMax = Math.Max(refMax, Math.Abs(r));
            long mismatches = 0, nonFinite = 0;
            for (int i = 0; i < reference.Length; i++)
            {
                float g = all[i], r = reference[i];
                // NaN and inf first: they must match exactly (same class and sign), and never enter the error metrics.
                if (!float.IsFinite(g) || !float.IsFinite(r))
                {
                    if (!(float.IsNaN(g) && float.IsNaN(r)) && g != r) nonFinite++;
                    continue;
                }
                double err = Math.Abs((double)g - r);
                maxAbs = Math.Max(maxAbs, err);
                sumErr += err;
                sumRef += Math.Abs(r);
                bool ok = tol.Relative == 0
                    ? BitConverter.SingleToUInt32Bits(g) == BitConverter.SingleToUInt32Bits(r)
                    : err <= tol.Relative * (Math.Abs(r) + refMax);
                if (!ok) mismatches++;
            }
            double meanRel = sumRef > 0 ? sumErr / sumRef : sumErr;
            bool pass = mismatches == 0 && nonFinite == 0 && guardIntact;
            return new CaseResult(kernel, shape, maxAbs, meanRel, tol.Relative, tol.Source, mismatches, nonFinite, guardIntact, pass, null);
        }

        private static string Suffix(TensorDType dtype) => dtype switch
        {
            TensorDType.F32 => "f32",
            TensorDType.F16 => "f16",
            TensorDType.BF16 => "bf16",
            _ => throw new ArgumentOutOfRangeException(nameof(dtype), dtype, "no kernel entry for this dtype"),
        };
    }
}
