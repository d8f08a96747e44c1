// kernels-bench verify, the harness: every op kernel of the fatbin against its CPU reference (Backends/Cpu) on random
// inputs of real shapes; per kernel and shape: max abs error, mean relative error, the tolerance and PASS/FAIL. This
// file runs the cases and judges them (guard regions, NaN/inf first, relative + absolute tolerance, the JSON record);
// the cases and their tolerances live in Verify/ (Verify.Ops.cs, Verify.Kivi.cs, Verify.W4A8.cs).
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

internal static unsafe partial class Verify
{
    /// <summary>Relative = 0 means bit-exact. Otherwise an element passes when |gpu - ref| <= Relative * (|ref| + max|ref|):
    /// the max|ref| term is the absolute part, sized to the tensor, so outputs that cancel to near zero (rope's
    /// x0*c - x1*s) are judged against the scale of their operands rather than their own tiny value.</summary>
    private sealed record Tolerance(double Relative, string Source);

    private sealed record CaseResult(string Kernel, string Shape, double MaxAbsError, double MeanRelativeError, double Tolerance,
        string ToleranceSource, long Mismatches, long NonFiniteMismatches, bool GuardIntact, bool Pass, string? Error);

    /// <summary>Elements after every output buffer, filled with a sentinel and checked after the launch (STYLE habit 22).</summary>
    private const int Guard = 64;
    private const byte Sentinel = 0xA5;

    public static int Run(string? fatbinPath, string? jsonPath, int seed, int ordinal)
    {
        if (GpuBench.Open(fatbinPath, ordinal) is not var (device, image)) return 2;
        using var owned = device;
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
                catch (Exception e) when (e is CudaException or ArgumentException or InvalidOperationException or CublasException or DllNotFoundException)
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

    private sealed partial class Verifier(CudaDevice device, OpsLauncher ops, Random rng)
    {
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
