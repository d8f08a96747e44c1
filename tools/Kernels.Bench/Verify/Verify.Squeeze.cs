// kernels-bench verify, SqueezeLLM: squeezellm_gemv_b{3,4} (the CUDA C++ LUT GEMV the CUDA backend runs) against
// LutMatMul on layers made by the real quantizer (0.45 % CSR outliers), M = 1, 5, 8 and 13 (two launches), K a multiple
// of 32 and not: every output within 1e-5 of sum_k |W[n,k] x[m,k]| (the summation order differs).
using Kernels.Runtime.Backends.Cuda;
using Kernels.Runtime.Quantization.SqueezeLlm;
using Cpu = Kernels.Runtime.Backends.Cpu;

namespace Kernels.Bench;

internal static unsafe partial class Verify
{
    private const double SqueezeTolerance = 1e-5;

    private sealed partial class Verifier
    {
        private IEnumerable<Case> SqueezeCases()
        {
            foreach (int bits in new[] { 3, 4 })
                foreach (var (n, k) in new[] { (512, 4096), (301, 1000) })
                    foreach (int m in new[] { 1, 5, 8, 13 })
                        yield return new Case($"squeezellm_gemv_b{bits}", $"M={m} N={n} K={k}", () => SqueezeCase(bits, m, n, k));
        }

        private CaseResult SqueezeCase(int bits, int m, int n, int k)
        {
            var storage = new List<IDisposable>();
            try
            {
                var layer = SqueezeGpu.QuantizedLayer($"verify.{bits}.{n}x{k}", n, k, bits, 7 + n + k + bits, storage);
                var x = Normal(m * k, 1f);
                var expected = new float[m * n];
                Cpu.LutMatMul.Multiply(x, m, layer, expected);
                var dequant = new float[(long)n * k];
                for (int r = 0; r < n; r++) layer.ReadRow(r, dequant.AsSpan(r * k, k));

                DeviceBuffer<T> Upload<T>(Kernels.Runtime.Models.WeightTensor t) where T : unmanaged =>
                    DeviceBuffer<T>.From(device, new ReadOnlySpan<T>(t.Data, (int)Math.Max(1, t.ElementCount)));
                using var dx = DeviceBuffer<float>.From(device, x);
                using var y = Output(m * n);
                using var codes = Upload<int>(layer.Codes);
                using var table = Upload<Half>(layer.LookupTable);
                using var rows = Upload<int>(layer.OutlierRows);
                using var cols = Upload<int>(layer.OutlierCols);
                using var values = Upload<float>(layer.OutlierValues);
                ops.SqueezeGemv(y, dx, bits, codes, table, rows, cols, values, m, n, k);
                device.Synchronize();
                var all = y.ToArray();
                bool guard = true;
                for (int i = m * n; i < all.Length; i++) guard &= BitConverter.SingleToUInt32Bits(all[i]) == 0xA5A5A5A5u;
                double worst = 0;
                long bad = 0;
                for (int t = 0; t < m; t++)
                    for (int j = 0; j < n; j++)
                    {
                        double scale = 0;
                        for (int c = 0; c < k; c++) scale += Math.Abs((double)dequant[(long)j * k + c] * x[t * k + c]);
                        double err = Math.Abs((double)all[t * n + j] - expected[t * n + j]) / Math.Max(scale, 1e-30);
                        if (!(err <= SqueezeTolerance)) bad++; // NaN fails too
                        worst = double.IsNaN(err) ? double.NaN : Math.Max(worst, err);
                    }
                return new CaseResult($"squeezellm_gemv_b{bits}", $"M={m} N={n} K={k} ({layer.OutlierCount} outliers)", worst, worst, SqueezeTolerance,
                    "|gpu - cpu| / sum_k |W x|: the same products summed in another order", bad, 0, guard, bad == 0 && guard, null);
            }
            finally
            {
                foreach (var s in storage) s.Dispose();
            }
        }
    }
}
