// kernels-bench verify, W4A8 region: w4a8_gemm_* against Cpu.W4A8Gemm (bit-exact) on weights quantized by the real
// QoqQuantizer (group 128/64 and per channel), and rms_norm_quant_int8_* against Cpu.RmsNorm + Int8Activations.
using Kernels.Runtime.Backends.Cuda;
using Kernels.Runtime.Models;
using Kernels.Runtime.Numerics;
using Kernels.Runtime.Quantization.W4A8;
using Cpu = Kernels.Runtime.Backends.Cpu;

namespace Kernels.Bench;

internal static unsafe partial class Verify
{
    private static readonly Tolerance W4A8Exact = new(0, "bit-exact: exact int32 accumulation of the same int8 x int8 products, then the same two fp32 products in the same order (W4A8Linear)");
    private static readonly Tolerance QuantizeExact = new(0, "the same fp32 rows: max, IEEE division and product, round to nearest even, as Int8Activations.QuantizeRow");
    private static readonly Tolerance NormQuantExact = new(0, "integer-valued x: the sum of squares is exact in any order, so the normalized row, codes, sum and scale match the CPU bit for bit");
    private static readonly Tolerance NormQuantTol = new(1e-5, "random x: the sum of squares rounds differently (RmsNormTol); codes may then differ by 1 where x*127/amax sits within ~1e-5 of a .5, the scale by RmsNormTol relative");

    /// <summary>M values of the W4A8 GEMM cases: decode (1, 5, 16: the 16-row CTA), its edge (17), prefill tiles (64, 100: partial CTA).</summary>
    private static readonly int[] W4A8Rows = [1, 5, 16, 17, 64, 100];

    /// <summary>(N, K, group): 0 = per channel. 1000 x 520 pads both N and K (K % 128 != 0 is why it is per channel); 300 leaves partial warps.</summary>
    private static readonly (int N, int K, int Group)[] W4A8Shapes =
        [(4096, 4096, 128), (4096, 4096, 0), (1000, 520, 0), (300, 384, 128), (160, 256, 64), (128, 14336, 128), (96, 14336, 0)];

    private sealed partial class Verifier
    {
        private IEnumerable<Case> W4A8Cases()
        {
            foreach (var (n, k, group) in W4A8Shapes)
                foreach (int m in W4A8Rows)
                {
                    yield return new Case(OpsLauncher.W4A8GemmKernel(m, group), $"M={m} N={n} K={k} {(group > 0 ? $"g{group}" : "per-channel")}",
                        () => W4A8GemmCase(m, n, k, group));
                    if (m <= OpsLaunchPlans.W4A8SmallMMax) // the split-K decode kernel on the same layers (split as the GPU's SM count asks)
                        yield return new Case(W4A8SplitKernel(group), $"M={m} N={n} K={k} {(group > 0 ? $"g{group}" : "per-channel")}",
                            () => W4A8GemmCase(m, n, k, group, splitK: true));
                }
            foreach (var dtype in new[] { TensorDType.F32, TensorDType.F16, TensorDType.BF16 })
                foreach (var (t, d) in new[] { (1, 4096), (7, 4096), (64, 67), (3, 14336) })
                {
                    yield return new Case($"rms_norm_quant_int8_{Suffix(dtype)}", $"T={t} D={d} integer x", () => RmsNormQuantCase(dtype, t, d, integerX: true));
                    yield return new Case($"rms_norm_quant_int8_{Suffix(dtype)}", $"T={t} D={d} normal x", () => RmsNormQuantCase(dtype, t, d, integerX: false));
                }
            foreach (var (t, d) in new[] { (1, 4096), (7, 4096), (64, 67), (3, 14336) })
                yield return new Case("quantize_int8_f32", $"T={t} D={d}", () => QuantizeCase(t, d));
        }

        /// <summary>
        /// quantize_int8_f32 against Int8Activations.QuantizeRow on the same fp32 rows: codes (padding 0), scales and
        /// sums bit-exact, with an all-zero row, a row scaled by 300 and exact ties at half a code.
        /// </summary>
        private CaseResult QuantizeCase(int t, int d)
        {
            int dp = W4A8Layout.Padded(d);
            var x = Normal(t * d, 1f);
            if (t > 2) Array.Clear(x, d, d);
            if (t > 3) for (int i = 0; i < d; i++) x[3 * d + i] *= 300f;
            if (t > 4) { x[4 * d] = 127f; x[4 * d + 1] = 0.5f; x[4 * d + 2] = -1.5f; } // inverse 1: ties round to even
            using var dx = DeviceBuffer<float>.From(device, x);
            var (xq, xScale, xSum) = QuantizedOutputs(t, dp);
            using var ownCodes = xq;
            using var ownScales = xScale;
            using var ownSums = xSum;
            ops.QuantizeInt8F32(xq, xScale, xSum, dx, t, d, dp);
            return CompareQuantized("quantize_int8_f32", $"T={t} D={d}", xq, xScale, xSum, QuantizeRows(x, t, d, dp), t, d, dp, QuantizeExact, QuantizeExact, codeSlack: 0);
        }

        /// <summary>A kernel's int8 outputs for t rows of dp codes, each followed by a guard of sentinels.</summary>
        private (DeviceBuffer<sbyte> Codes, DeviceBuffer<float> Scales, DeviceBuffer<int> Sums) QuantizedOutputs(int t, int dp)
        {
            var xq = DeviceBuffer<sbyte>.Allocate(device, (long)t * dp + Guard);
            var xSum = DeviceBuffer<int>.Allocate(device, t + Guard);
            xq.FillBytes(Sentinel);
            xSum.FillBytes(Sentinel);
            return (xq, Output(t), xSum);
        }

        /// <summary>
        /// A kernel's int8 rows against the CPU's: scales within <paramref name="scaleTol"/>, codes within
        /// <paramref name="codeSlack"/> (padding always exact), each row's sum within the number of its differing codes
        /// (exact when the slack is 0), the guards intact.
        /// </summary>
        private CaseResult CompareQuantized(string kernel, string shape, DeviceBuffer<sbyte> xq, DeviceBuffer<float> xScale, DeviceBuffer<int> xSum,
            (sbyte[] Codes, float[] Scales, int[] Sums) reference, int t, int d, int dp, Tolerance tol, Tolerance scaleTol, int codeSlack)
        {
            var scaleResult = Compare(kernel, shape, xScale, reference.Scales, scaleTol);
            device.Synchronize();
            var codes = xq.ToArray();
            var sums = xSum.ToArray();
            bool guard = scaleResult.GuardIntact;
            for (long i = (long)t * dp; i < codes.Length; i++) guard &= (byte)codes[i] == Sentinel;
            for (int i = t; i < sums.Length; i++) guard &= (uint)sums[i] == 0xA5A5A5A5u;
            long mismatches = scaleResult.Mismatches;
            int maxDiff = 0;
            for (int r = 0; r < t; r++)
            {
                int differing = 0;
                for (int i = 0; i < dp; i++)
                {
                    int diff = Math.Abs(codes[r * dp + i] - reference.Codes[r * dp + i]);
                    maxDiff = Math.Max(maxDiff, diff);
                    if (diff != 0) differing++;
                    if (diff > (i >= d ? 0 : codeSlack)) mismatches++;
                }
                if (Math.Abs(sums[r] - reference.Sums[r]) > (codeSlack == 0 ? 0 : differing)) mismatches++;
            }
            bool pass = mismatches == 0 && scaleResult.NonFiniteMismatches == 0 && guard;
            return new CaseResult(kernel, shape + $" (codes max diff {maxDiff})", Math.Max(scaleResult.MaxAbsError, maxDiff), scaleResult.MeanRelativeError,
                tol.Relative, tol.Source, mismatches, scaleResult.NonFiniteMismatches, guard, pass, null);
        }

        /// <summary>The CPU's int8 rows (Int8Activations.QuantizeRow): codes [rows, kPad] zero-padded, scales, code sums.</summary>
        private static (sbyte[] Codes, float[] Scales, int[] Sums) QuantizeRows(float[] x, int rows, int k, int kPad)
        {
            var codes = new sbyte[rows * kPad];
            var scales = new float[rows];
            var sums = new int[rows];
            for (int r = 0; r < rows; r++)
            {
                scales[r] = Int8Activations.QuantizeRow(x.AsSpan(r * k, k), codes.AsSpan(r * kPad, k));
                for (int i = 0; i < k; i++) sums[r] += codes[r * kPad + i];
            }
            return (codes, scales, sums);
        }

        // ---- w4a8_gemm ----------------------------------------------------------------------------------------------

        private static string W4A8SplitKernel(int group) => $"w4a8_gemm_{(group > 0 ? "group" : "channel")}_splitk";

        private CaseResult W4A8GemmCase(int m, int n, int k, int group, bool splitK = false)
        {
            var owners = new List<IDisposable>();
            try
            {
                var layer = QuantizeW4A8(n, k, group, owners);
                int kPad = layer.PaddedIn;
                var x = Normal(m * k, 1f);
                if (m > 2) Array.Clear(x, k, k); // an all-zero row: scale 0, codes 0, output 0
                if (m > 3) for (int i = 0; i < k; i++) x[3 * k + i] *= 300f;
                if (m > 4) x[4 * k + k - 1] = 1000f; // one outlier in the last (padded tile's) column: most codes 0

                // The GPU's inputs, as the fused producers write them: codes [m, Kpad] with zero padding, scales, sums.
                var (codes, scales, sums) = QuantizeRows(x, m, k, kPad);
                var reference = new float[m * n];
                Cpu.W4A8Gemm.Multiply(x, m, layer, reference);

                using var dxq = DeviceBuffer<sbyte>.From(device, codes);
                using var dScale = DeviceBuffer<float>.From(device, scales);
                using var dSum = DeviceBuffer<int>.From(device, sums);
                using var dq = Upload(layer.Codes);
                using var dws = DeviceBuffer<Half>.From(device, new ReadOnlySpan<Half>(layer.Scales.Data, n));
                using var ds2 = layer.GroupScaleTensor is { } s2 ? Upload(s2) : null;
                using var dz = Upload(layer.ZeroTensor!);
                using var y = Output(m * n);
                // Per group the sums are not needed: pass null there so the kernel's "may be null" is what runs.
                string shape = $"M={m} N={n} K={k} {(group > 0 ? $"g{group}" : "per-channel")}";
                if (!splitK)
                {
                    ops.W4A8Gemm(y, dxq, dScale, group > 0 ? null : dSum, dq, dws, ds2, dz, m, n, k, layer.GroupSize);
                    return Compare(OpsLauncher.W4A8GemmKernel(m, layer.GroupSize), shape, y, reference, W4A8Exact);
                }
                using var partial = DeviceBuffer<int>.Allocate(device, (long)OpsLaunchPlans.W4A8MaxSplits * m * n);
                int splits = ops.W4A8GemmSplitK(y, dxq, dScale, group > 0 ? null : dSum, dq, dws, ds2, dz, partial, m, n, k, layer.GroupSize);
                return Compare(W4A8SplitKernel(layer.GroupSize), $"{shape} splits={splits}", y, reference, W4A8Exact);
            }
            finally
            {
                foreach (var o in owners) o.Dispose();
            }
        }

        private DeviceBuffer<byte> Upload(WeightTensor t) => DeviceBuffer<byte>.From(device, new ReadOnlySpan<byte>(t.Data, checked((int)t.ByteLength)));

        /// <summary>Random weights with one large outlier per row, through QoqQuantizer and W4A8Linear.Load as a model directory would.</summary>
        private W4A8Linear QuantizeW4A8(int n, int k, int group, List<IDisposable> owners)
        {
            WeightTensor Tensor(string name, TensorDType dtype, long[] shape, ReadOnlySpan<byte> bytes)
            {
                var storage = new OwnedStorage(Math.Max(1, bytes.Length));
                owners.Add(storage);
                bytes.CopyTo(new Span<byte>(storage.Pointer, bytes.Length));
                return new WeightTensor(name, dtype, shape, storage.Pointer);
            }

            var w = Normal(n * k, 0.05f);
            for (int r = 0; r < n; r++) w[r * k + rng.Next(k)] = (rng.Next(2) * 2 - 1) * 0.9f;
            var bytes = new byte[w.Length * 4];
            Buffer.BlockCopy(w, 0, bytes, 0, bytes.Length);
            var dense = new DenseLinear("w", Tensor("w.weight", TensorDType.F32, [n, k], bytes));
            var tensors = new QoqQuantizer(group).Quantize(dense)
                .ToDictionary(t => t.Name, t => Tensor(t.Name, Enum.Parse<TensorDType>(t.DType), t.Shape, t.Data.Span));
            return W4A8Linear.Load("w", n, k, W4A8Method.GroupFor(group, k), name => tensors.GetValueOrDefault(name), "verify");
        }

        // ---- rms_norm_quant_int8 ------------------------------------------------------------------------------------

        private CaseResult RmsNormQuantCase(TensorDType dtype, int t, int d, bool integerX)
        {
            const float Eps = 1e-5f;
            int dp = W4A8Layout.Padded(d);
            var x = integerX ? Enumerable.Range(0, t * d).Select(_ => (float)rng.Next(-8, 9)).ToArray() : Normal(t * d, 1f);
            if (t > 2) Array.Clear(x, d, d); // a zero row: scale 0, codes 0
            if (t > 3) for (int i = 0; i < d; i++) x[3 * d + i] *= 256f; // large activations (still exact squares for integers)
            var w32 = Normal(d, 0.1f).Select(v => 1f + v).ToArray();
            using var dx = DeviceBuffer<float>.From(device, x);
            var (xq, xScale, xSum) = QuantizedOutputs(t, dp);
            using var ownCodes = xq;
            using var ownScales = xScale;
            using var ownSums = xSum;
            float[] wRef;
            switch (dtype)
            {
                case TensorDType.F32:
                {
                    wRef = w32;
                    using var w = DeviceBuffer<float>.From(device, w32);
                    ops.RmsNormQuantInt8F32(xq, xScale, xSum, dx, w, t, d, dp, Eps);
                    break;
                }
                case TensorDType.F16:
                {
                    var h = w32.Select(v => (Half)v).ToArray();
                    wRef = h.Select(v => (float)v).ToArray();
                    using var w = DeviceBuffer<Half>.From(device, h);
                    ops.RmsNormQuantInt8F16(xq, xScale, xSum, dx, w, t, d, dp, Eps);
                    break;
                }
                default:
                {
                    var b = w32.Select(DTypeConvert.SingleToBFloat16).ToArray();
                    wRef = b.Select(DTypeConvert.BFloat16ToSingle).ToArray();
                    using var w = DeviceBuffer<ushort>.From(device, b);
                    ops.RmsNormQuantInt8BF16(xq, xScale, xSum, dx, w, t, d, dp, Eps);
                    break;
                }
            }
            var normed = new float[t * d];
            Cpu.RmsNorm.Apply(x, wRef, Eps, normed, t);
            string kernel = $"rms_norm_quant_int8_{Suffix(dtype)}", shape = $"T={t} D={d} {(integerX ? "integer" : "normal")} x";
            var tol = integerX ? NormQuantExact : NormQuantTol;
            // Codes: exact for integer x (padding included); else off by at most 1, and a row's sum off by at most its differing codes.
            return CompareQuantized(kernel, shape, xq, xScale, xSum, QuantizeRows(normed, t, d, dp), t, d, dp, tol,
                tol.Relative == 0 ? tol : RmsNormTol, codeSlack: integerX ? 0 : 1);
        }
    }
}
