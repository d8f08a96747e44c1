// What the CPU suites' rooflines divide by: the copy bandwidth and the fp32 FMA peak of all cores, measured here.
using System.Diagnostics;

namespace Kernels.Bench;

internal static class CpuRoofline
{
    /// <summary>fp32 FMA rate of all cores: 8 independent Vector256 FMA chains per thread, best of 3 (FLOPs = 2 per lane).</summary>
    public static double MeasureFmaGflops()
    {
        if (!System.Runtime.Intrinsics.X86.Fma.IsSupported) return 1;
        const int iterations = 20_000_000;
        double best = 0;
        for (int rep = 0; rep < 3; rep++)
        {
            var clock = Stopwatch.StartNew();
            Parallel.For(0, Environment.ProcessorCount, _ => FmaChains(iterations));
            best = Math.Max(best, Environment.ProcessorCount * (double)iterations * 8 * 8 * 2 / clock.Elapsed.TotalSeconds / 1e9);
        }
        return best;
    }

    private static float FmaChains(int iterations)
    {
        var m = System.Runtime.Intrinsics.Vector256.Create(0.999f);
        var a = System.Runtime.Intrinsics.Vector256.Create(1e-3f);
        var c0 = a; var c1 = a; var c2 = a; var c3 = a; var c4 = a; var c5 = a; var c6 = a; var c7 = a;
        for (int i = 0; i < iterations; i++)
        {
            c0 = System.Runtime.Intrinsics.X86.Fma.MultiplyAdd(c0, m, a); c1 = System.Runtime.Intrinsics.X86.Fma.MultiplyAdd(c1, m, a);
            c2 = System.Runtime.Intrinsics.X86.Fma.MultiplyAdd(c2, m, a); c3 = System.Runtime.Intrinsics.X86.Fma.MultiplyAdd(c3, m, a);
            c4 = System.Runtime.Intrinsics.X86.Fma.MultiplyAdd(c4, m, a); c5 = System.Runtime.Intrinsics.X86.Fma.MultiplyAdd(c5, m, a);
            c6 = System.Runtime.Intrinsics.X86.Fma.MultiplyAdd(c6, m, a); c7 = System.Runtime.Intrinsics.X86.Fma.MultiplyAdd(c7, m, a);
        }
        return System.Runtime.Intrinsics.Vector256.Sum(((c0 + c1) + (c2 + c3)) + ((c4 + c5) + (c6 + c7)));
    }

    /// <summary>Copy bandwidth of a 256 MB buffer on all cores, best of 5 (bytes read + written, like the GPU figure).</summary>
    public static double MeasureBandwidthGBps()
    {
        const int bytes = 256 << 20;
        var a = GC.AllocateUninitializedArray<byte>(bytes);
        var b = GC.AllocateUninitializedArray<byte>(bytes);
        a.AsSpan().Fill(1);
        b.AsSpan().Fill(2);
        int parts = Environment.ProcessorCount * 4, chunk = bytes / parts;
        double best = double.MaxValue;
        for (int rep = 0; rep < 5; rep++)
        {
            var clock = Stopwatch.StartNew();
            Parallel.For(0, parts, i => a.AsSpan(i * chunk, chunk).CopyTo(b.AsSpan(i * chunk, chunk)));
            best = Math.Min(best, clock.Elapsed.TotalSeconds);
        }
        return 2.0 * bytes / best / 1e9;
    }
}
