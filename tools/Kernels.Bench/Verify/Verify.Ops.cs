// kernels-bench verify, the op cases: embedding, RMSNorm, RoPE, SwiGLU, residual add, dense GEMM, paged decode and
// prefill attention, KV append and sampling, each against its CPU reference, with the tolerance each is judged by and
// where the number comes from (the harness that runs and judges them: Harness/Verify.cs).
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
    // ---- tolerances (STYLE habit 20: per op, with where the number comes from) -------------------------------------

    private static readonly Tolerance Exact = new(0, "bit-exact: the kernel does the same IEEE operations as the reference (f16/bf16 -> f32 widening and one fp32 add are exact)");
    private static readonly Tolerance RopeTol = new(2e-6, "CUDA sincosf vs MathF.Cos/Sin differ by a few ulp (2 ulp each, 2^-23 ~ 1.2e-7 per ulp); angle and rotation are bit-identical");
    private static readonly Tolerance RmsNormTol = new(1e-5, "sum of squares: block tree reduction vs sequential SIMD dot, ~sqrt(dim) * 2^-24 relative at dim 4096; the rest is bit-identical");
    private static readonly Tolerance SwiGluTol = new(1e-6, "CUDA expf (2 ulp) vs MathF.Exp; silu carries exp's relative error scaled by exp/(1+exp) <= 1, then one rounded product");

    private static readonly Tolerance GemmF16Tol = new(1e-3, "x rounded to f16 on load (2^-11 relative per product, random signs): the sum's error ~ 2^-12 |x||w| sqrt(K) against max|y| ~ 4 |x||w| sqrt(K); 2^-10 bound with margin");
    private static readonly Tolerance NormGemvTol = new(5e-5, "the norm folded into the GEMV (r * sum x g w against sum ((x r) g) w): a few more fp32 roundings per term than GemvTol's summation-order difference, random signs");
    private static readonly Tolerance GemvTol = new(2e-5, "dense_gemv keeps x in fp32 and widens w exactly: only the summation order differs from the CPU's (a few ulp of the largest partial sums)");
    private static readonly Tolerance GemmBF16Tol = new(8e-3, "x rounded to bf16 on load (2^-8 relative per product): the same argument as f16 with 8x the unit roundoff");
    private static readonly Tolerance AttentionTol = new(1e-4, "fp32 from the same DT-rounded K/V: only summation order and online-softmax rescaling differ (~1 ulp per rescale, a few hundred sequential rescales at 5000 keys)");
    private static readonly Tolerance SamplingExact = new(0, "same coins (SamplerRng's, uploaded): greedy and index-order draws pick the same token");

    private static readonly int[] TokenCounts = [1, 7, 64];
    private static readonly int[] Dims = [64, 4096, 67]; // 67: not a multiple of the 128-bit vector width -> scalar paths

    private sealed partial class Verifier
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
            foreach (var weight in new[] { TensorDType.F32, TensorDType.F16, TensorDType.BF16 })
                foreach (var output in new[] { TensorDType.F16, TensorDType.BF16 })
                    foreach (var (t, d) in new[] { (7, 4096), (64, 67) })
                        yield return new Case($"rms_norm_{Suffix(weight)}_to_{Suffix(output)}", $"T={t} D={d}", () => NormTo16Case(weight, output, t, d));
            foreach (var output in new[] { TensorDType.F16, TensorDType.BF16 })
                foreach (var (t, inter) in new[] { (7, 14336), (64, 67) })
                    yield return new Case($"swiglu_fused_f32_to_{Suffix(output)}", $"T={t} I={inter}", () => SwiGluTo16Case(output, t, inter));
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
                {
                    yield return new Case("residual_add_f32", $"n={t}x{d}", () => ResidualAddCase(t * d));
                    yield return new Case("bias_add_f32", $"rows={t} n={d}", () => BiasAddCase(t, d));
                }
            foreach (var dtype in new[] { TensorDType.F16, TensorDType.BF16 })
                foreach (var (m, n, k, bias) in new[] { (1, 4096, 4096, false), (1, 6144, 4096, true), (3, 1001, 520, false), (4, 14336, 4096, false), (12, 172, 64, true), (12, 64, 172, false),
                             (7, 1000, 520, true), (16, 6144, 4096, false), (17, 1000, 264, true), (64, 4096, 4096, false), (256, 1024, 4096, false) })
                    yield return new Case(OpsLauncher.DenseGemmKernel(Suffix(dtype), m, k), $"M={m} N={n} K={k}{(bias ? " +bias" : "")}",
                        () => GemmCase(dtype, m, n, k, bias));
            foreach (var dtype in new[] { TensorDType.F16, TensorDType.BF16 })
                foreach (var (m, n, k) in new[] { (1, 4096, 4096), (4, 1000, 520), (3, 14336, 4096), (2, 64, 172) })
                    foreach (string fused in new[] { "qkv", "swiglu", "residual" })
                    {
                        if (fused != "residual")
                            yield return new Case($"dense_gemv_{fused}_norm_{Suffix(dtype)}", $"M={m} N={n} K={k}", () => NormGemvCase(dtype, fused, m, n, k));
                        yield return new Case($"dense_gemv_{fused}_{Suffix(dtype)}", $"M={m} N={n} K={k}", () => FusedGemvCase(dtype, fused, m, n, k));
                    }
            foreach (var dtype in new[] { TensorDType.F16, TensorDType.BF16 })
            {
                yield return new Case($"convert_f32_to_{Suffix(dtype)}", "n=4099 (overflow, NaN, subnormals, a scalar tail)", () => ConvertCase(dtype, 4099));
                foreach (var (m, n, k, accumulate) in new[] { (1, 4096, 4096, false), (16, 6144, 4096, false), (16, 4096, 14336, true), (64, 28672, 4096, false),
                             (256, 4096, 4096, true), (7, 1000, 520, false), (12, 64, 172, true) })
                    yield return new Case($"cublaslt_gemm_{Suffix(dtype)}", $"M={m} N={n} K={k}{(accumulate ? " y+=" : "")}", () => CublasLtCase(dtype, m, n, k, accumulate));
            }
            foreach (var dtype in new[] { TensorDType.F32, TensorDType.F16, TensorDType.BF16 })
            {
                string sfx = Suffix(dtype);
                string dec(int d) => $"paged_decode_attention_hd{d}_{sfx}";
                string pre(int d) => $"paged_prefill_attention_hd{d}_{sfx}";
                yield return new Case(dec(128), "lens 1,100,2000 heads 32/8 d=128 bs=16", () => DecodeCase(dtype, [1, 100, 2000], 32, 8, 128, 16));
                if (dtype != TensorDType.F32)
                {
                    // The tiled entries: partial last tiles, an empty sequence, splits, chunks of 4 and 3 query heads, G = 1.
                    string tiled(int d) => $"paged_decode_attention_tiled_hd{d}_{sfx}";
                    yield return new Case(tiled(128), "lens 1,100,2000 heads 32/8 d=128 bs=16", () => DecodeCase(dtype, [1, 100, 2000], 32, 8, 128, 16, tiled: true));
                    yield return new Case(tiled(128), "lens 5000 heads 28/4 d=128 bs=32 (split)", () => DecodeCase(dtype, [5000], 28, 4, 128, 32, tiled: true));
                    yield return new Case(tiled(128), "lens 33,0,1025 heads 8/8 d=128 bs=16", () => DecodeCase(dtype, [33, 0, 1025], 8, 8, 128, 16, tiled: true));
                    yield return new Case(tiled(64), "lens 17,300,0 heads 8/8 d=64 bs=16", () => DecodeCase(dtype, [17, 300, 0], 8, 8, 64, 16, tiled: true));
                    yield return new Case(tiled(64), "lens 4100 heads 16/2 d=64 bs=8 (G=8, split)", () => DecodeCase(dtype, [4100], 16, 2, 64, 8, tiled: true));
                }
                yield return new Case(dec(128), "lens 5000 heads 28/4 d=128 bs=32 (split)", () => DecodeCase(dtype, [5000], 28, 4, 128, 32));
                yield return new Case(dec(64), "lens 17,300,0 heads 8/8 d=64 bs=16", () => DecodeCase(dtype, [17, 300, 0], 8, 8, 64, 16));
                yield return new Case(dec(256), "lens 33,700 heads 8/2 d=256 bs=8", () => DecodeCase(dtype, [33, 700], 8, 2, 256, 8));
                // Small head dims (stories260K: 8/4 heads d=8; the golden models: 4/2 d=16) and a GQA group over 8 (two blocks per kv head).
                yield return new Case(dec(8), "lens 1,40,3000 heads 8/4 d=8 bs=16", () => DecodeCase(dtype, [1, 40, 3000], 8, 4, 8, 16));
                yield return new Case(dec(16), "lens 9,512 heads 4/2 d=16 bs=16", () => DecodeCase(dtype, [9, 512], 4, 2, 16, 16));
                yield return new Case(dec(32), "lens 77,2600 heads 32/2 d=32 bs=8 (G=16)", () => DecodeCase(dtype, [77, 2600], 32, 2, 32, 8));
                yield return new Case(pre(128), "(n,L) (37,37),(16,300),(1,50) heads 32/8 d=128 bs=16",
                    () => PrefillCase(dtype, [(37, 37), (16, 300), (1, 50)], 32, 8, 128, 16));
                yield return new Case(pre(64), "(n,L) (200,260) heads 8/2 d=64 bs=32", () => PrefillCase(dtype, [(200, 260)], 8, 2, 64, 32));
                yield return new Case(pre(8), "(n,L) (45,45),(3,70) heads 8/4 d=8 bs=16", () => PrefillCase(dtype, [(45, 45), (3, 70)], 8, 4, 8, 16));
                yield return new Case(pre(16), "(n,L) (33,33),(17,100) heads 4/2 d=16 bs=16", () => PrefillCase(dtype, [(33, 33), (17, 100)], 4, 2, 16, 16));
                yield return new Case(pre(32), "(n,L) (70,90) heads 32/2 d=32 bs=8", () => PrefillCase(dtype, [(70, 90)], 32, 2, 32, 8));
                yield return new Case(pre(256), "(n,L) (40,40),(5,130) heads 8/2 d=256 bs=16", () => PrefillCase(dtype, [(40, 40), (5, 130)], 8, 2, 256, 16));
            }
            foreach (var dtype in new[] { TensorDType.F32, TensorDType.F16, TensorDType.BF16 })
            {
                yield return new Case($"kv_append_{Suffix(dtype)}", "T=37 kv_dim=1024 slots=64x16 (one padded row)", () => KvAppendCase(dtype, 37, 1024, 64 * 16));
                yield return new Case($"kv_append_{Suffix(dtype)}", "T=1 kv_dim=128 slots=4x16", () => KvAppendCase(dtype, 1, 128, 4 * 16));
                string fused = $"rope_kv_append_{Suffix(dtype)}";
                yield return new Case(fused, "T=37 heads=32/8 d=128 slots=64x16 (one padded row)", () => RopeKvAppendCase(dtype, 37, 32, 8, 128, 64 * 16, joined: false));
                yield return new Case(fused, "T=37 heads=32/8 d=128 slots=64x16 (one padded row) q|k|v rows", () => RopeKvAppendCase(dtype, 37, 32, 8, 128, 64 * 16, joined: true));
                yield return new Case(fused, "T=1 heads=32/8 d=128 slots=4x16", () => RopeKvAppendCase(dtype, 1, 32, 8, 128, 4 * 16, joined: false));
                yield return new Case(fused, "T=5 heads=14/2 d=64 slots=8x16 (one padded row) q|k|v rows", () => RopeKvAppendCase(dtype, 5, 14, 2, 64, 8 * 16, joined: true));
            }
            foreach (bool radix in new[] { false, true })
            {
                string entry = radix ? "sample_tokens_radix_f32" : "sample_tokens_f32";
                yield return new Case(entry, "greedy rows=6 V=128256 (ties, -inf, NaN)", () => SampleGreedyCase(128256, radix));
                yield return new Case(entry, "T=0.7 min-p rows=64 V=32000 same coins", () => SampleSameCoinsCase(64, 32000, radix));
                yield return new Case(entry, "T=0.8 top-k=50 top-p=0.9 rows=64 V=32000 stride 32064 same coins", () => SampleFilteredSameCoinsCase(64, 32000, 32064, radix));
                yield return new Case(entry, "T=1 top-k=40 top-p=0.8 rows=64 V=4096 tied logits same coins", () => SampleTiedCase(64, 4096, radix));
                yield return new Case(entry, "T=1 top-k=50 top-p=0.9 V=1000 8192 draws", () => SampleDistributionCase(8192, 1000, 0f, radix));
                yield return new Case(entry, "T=1 top-k=50 top-p=0.9 min-p=0.05 V=1000 8192 draws", () => SampleDistributionCase(8192, 1000, 0.05f, radix));
            }
            foreach (var kivi in KiviCases()) yield return kivi; // Verify.Kivi.cs
            foreach (var mma in MmaAttentionCases()) yield return mma; // Verify.MmaAttention.cs
            foreach (var squeeze in SqueezeCases()) yield return squeeze; // Verify.Squeeze.cs
            foreach (var c in W4A8Cases()) yield return c; // Verify.W4A8.cs
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

        private CaseResult BiasAddCase(int rows, int n)
        {
            var y = Normal(rows * n, 1f);
            var bias = Normal(n, 1f);
            using var dy = InPlace(y);
            using var db = DeviceBuffer<float>.From(device, bias);
            ops.BiasAddF32(dy, db, rows, n);
            for (int r = 0; r < rows; r++)
                for (int j = 0; j < n; j++) y[r * n + j] += bias[j]; // the CPU's add after a quantized GEMM (W4A8Gemm, LutMatMul)
            return Compare("bias_add_f32", $"rows={rows} n={n}", dy, y, Exact);
        }

        // ---- model kernels: dense GEMM, paged attention, sampling ----------------------------------------------------

        private CaseResult GemmCase(TensorDType dtype, int m, int n, int k, bool withBias)
        {
            var x = Normal(m * k, 1f);
            var w32 = Normal(n * k, 0.05f);
            var b32 = withBias ? Normal(n, 0.5f) : null;
            var reference = new float[m * n];
            using var dx = DeviceBuffer<float>.From(device, x);
            using var y = Output(m * n);
            string kernel = OpsLauncher.DenseGemmKernel(Suffix(dtype), m, k);
            if (dtype == TensorDType.F16)
            {
                var w = w32.Select(v => (Half)v).ToArray();
                var b = b32?.Select(v => (Half)v).ToArray() ?? [];
                fixed (Half* pw = w)
                fixed (Half* pb = b)
                    Cpu.MatMul.Multiply(x, m, new WeightTensor("w", dtype, [n, k], (byte*)pw), reference, withBias ? new WeightTensor("b", dtype, [n], (byte*)pb) : null);
                using var dw = DeviceBuffer<Half>.From(device, w);
                using var db = withBias ? DeviceBuffer<Half>.From(device, b) : null;
                ops.DenseGemmF16(y, dx, dw, db, m, n, k);
                device.Synchronize();
            }
            else
            {
                var w = w32.Select(DTypeConvert.SingleToBFloat16).ToArray();
                var b = b32?.Select(DTypeConvert.SingleToBFloat16).ToArray() ?? [];
                fixed (ushort* pw = w)
                fixed (ushort* pb = b)
                    Cpu.MatMul.Multiply(x, m, new WeightTensor("w", dtype, [n, k], (byte*)pw), reference, withBias ? new WeightTensor("b", dtype, [n], (byte*)pb) : null);
                using var dw = DeviceBuffer<ushort>.From(device, w);
                using var db = withBias ? DeviceBuffer<ushort>.From(device, b) : null;
                ops.DenseGemmBF16(y, dx, dw, db, m, n, k);
                device.Synchronize();
            }
            var tolerance = kernel.StartsWith("dense_gemv_", StringComparison.Ordinal) ? GemvTol : dtype == TensorDType.F16 ? GemmF16Tol : GemmBF16Tol;
            return Compare(kernel, $"M={m} N={n} K={k}{(withBias ? " +bias" : "")}", y, reference, tolerance);
        }

        /// <summary>
        /// The fused decode GEMVs against the launches they replace, bit for bit (their promise): dense_gemv_qkv against
        /// three dense_gemv (q [m, n], k and v [m, n / 4], with biases); dense_gemv_swiglu against two dense_gemv and
        /// swiglu_f32; dense_gemv_residual against dense_gemv into a scratch row and residual_add_f32. (dense_gemv itself
        /// is checked against the CPU above.)
        /// </summary>
        private CaseResult FusedGemvCase(TensorDType dtype, string fused, int m, int n, int k) => dtype == TensorDType.F16
            ? FusedGemvCase<Half>(fused, m, n, k, v => (Half)v)
            : FusedGemvCase<ushort>(fused, m, n, k, DTypeConvert.SingleToBFloat16);

        private CaseResult FusedGemvCase<T>(string fused, int m, int n, int k, Func<float, T> convert) where T : unmanaged
        {
            string kernel = $"dense_gemv_{fused}_{DeviceElement<T>.Suffix}", shape = $"M={m} N={n} K={k}";
            int nkv = Math.Max(1, n / 4);
            var x = Normal(m * k, 1f);
            DeviceBuffer<T> W(int rows, float std) => DeviceBuffer<T>.From(device, Normal(rows * k, std).Select(convert).ToArray());
            DeviceBuffer<T> B(int rows) => DeviceBuffer<T>.From(device, Normal(rows, 0.5f).Select(convert).ToArray());
            using var dx = DeviceBuffer<float>.From(device, x);
            using var w0 = W(n, 0.05f);
            using var w1 = W(fused == "qkv" ? nkv : n, 0.05f);
            using var w2 = W(nkv, 0.05f);
            using var b0 = B(n);
            using var b1 = B(nkv);
            using var b2 = B(nkv);
            using var y0 = Output(m * n);
            using var y1 = Output(m * n);
            using var y2 = Output(m * n);
            using var r0 = Output(m * n);
            using var r1 = Output(m * n);
            using var r2 = Output(m * n);
            float[] expected, got;
            switch (fused)
            {
                case "qkv":
                    ops.DenseGemm(r0, dx, w0, b0, m, n, k);
                    ops.DenseGemm(r1, dx, w1, b1, m, nkv, k);
                    ops.DenseGemm(r2, dx, w2, b2, m, nkv, k);
                    ops.DenseGemvQkv(y0, y1, y2, dx, w0, w1, w2, b0, b1, b2, m, n, nkv, k);
                    device.Synchronize();
                    expected = [.. r0.ToArray().AsSpan(0, m * n), .. r1.ToArray().AsSpan(0, m * nkv), .. r2.ToArray().AsSpan(0, m * nkv)];
                    got = [.. y0.ToArray().AsSpan(0, m * n), .. y1.ToArray().AsSpan(0, m * nkv), .. y2.ToArray().AsSpan(0, m * nkv)];
                    break;
                case "swiglu":
                    ops.DenseGemm<T>(r0, dx, w0, null, m, n, k);
                    ops.DenseGemm<T>(r1, dx, w1, null, m, n, k);
                    ops.SwiGluF32(r2, r0, r1, m, n);
                    ops.DenseGemvSwiGlu(y0, dx, w0, w1, m, n, k);
                    device.Synchronize();
                    expected = r2.ToArray()[..(m * n)];
                    got = y0.ToArray()[..(m * n)];
                    break;
                default:
                    var start = Normal(m * n, 1f);
                    using (var seed = DeviceBuffer<float>.From(device, start))
                    {
                        ops.DenseGemm<T>(r0, dx, w0, null, m, n, k);
                        ops.ResidualAddF32(seed, r0, m * n);
                        using var acc = DeviceBuffer<float>.From(device, start);
                        ops.DenseGemvResidual(acc, dx, w0, m, n, k);
                        device.Synchronize();
                        expected = seed.ToArray();
                        got = acc.ToArray();
                    }
                    break;
            }
            return SameBits(kernel, shape, expected, got, "bit-exact: the same sums as the launches it fuses");
        }

        /// <summary>
        /// rms_norm_*_to_* against the launches it fuses (rms_norm, then convert_f32_to_*), bit for bit: the fp32 rows
        /// and the 16-bit copy (widened exactly).
        /// </summary>
        private CaseResult NormTo16Case(TensorDType weight, TensorDType output, int t, int d)
        {
            var w32 = Normal(d, 1f);
            return (weight, output) switch
            {
                (TensorDType.F32, TensorDType.F16) => NormTo16Case<float, Half>(t, d, w32, x => (float)x),
                (TensorDType.F32, _) => NormTo16Case<float, ushort>(t, d, w32, DTypeConvert.BFloat16ToSingle),
                (TensorDType.F16, TensorDType.F16) => NormTo16Case<Half, Half>(t, d, w32.Select(v => (Half)v).ToArray(), x => (float)x),
                (TensorDType.F16, _) => NormTo16Case<Half, ushort>(t, d, w32.Select(v => (Half)v).ToArray(), DTypeConvert.BFloat16ToSingle),
                (_, TensorDType.F16) => NormTo16Case<ushort, Half>(t, d, w32.Select(DTypeConvert.SingleToBFloat16).ToArray(), x => (float)x),
                _ => NormTo16Case<ushort, ushort>(t, d, w32.Select(DTypeConvert.SingleToBFloat16).ToArray(), DTypeConvert.BFloat16ToSingle),
            };
        }

        private CaseResult NormTo16Case<TW, TO>(int t, int d, TW[] weight, Func<TO, float> widen) where TW : unmanaged where TO : unmanaged
        {
            string kernel = $"rms_norm_{DeviceElement<TW>.Suffix}_to_{DeviceElement<TO>.Suffix}", shape = $"T={t} D={d}";
            var x = Normal(t * d, 2f);
            using var dx = DeviceBuffer<float>.From(device, x);
            using var w = DeviceBuffer<TW>.From(device, weight);
            float[] Run(bool fused)
            {
                using var y = DeviceBuffer<float>.Allocate(device, (long)t * d);
                using var y16 = DeviceBuffer<TO>.Allocate(device, (long)t * d);
                if (fused) ops.RmsNormTo16(y, y16, dx, w, t, d, 1e-5f);
                else
                {
                    ops.RmsNorm(y, dx, w, t, d, 1e-5f);
                    ops.ConvertFromF32(y16, y, t * d);
                }
                device.Synchronize();
                return [.. y.ToArray(), .. y16.ToArray().Select(widen)];
            }
            return SameBits(kernel, shape, Run(fused: false), Run(fused: true), "bit-exact: rms_norm's and convert_f32_to_*'s operations in one launch");
        }

        /// <summary>swiglu_fused_f32_to_* against swiglu_fused_f32 then convert_f32_to_*, bit for bit (both outputs).</summary>
        private CaseResult SwiGluTo16Case(TensorDType output, int t, int inter) => output == TensorDType.F16
            ? SwiGluTo16Case<Half>(t, inter, x => (float)x)
            : SwiGluTo16Case<ushort>(t, inter, DTypeConvert.BFloat16ToSingle);

        private CaseResult SwiGluTo16Case<TO>(int t, int inter, Func<TO, float> widen) where TO : unmanaged
        {
            string kernel = $"swiglu_fused_f32_to_{DeviceElement<TO>.Suffix}", shape = $"T={t} I={inter}";
            var gateUp = Normal(t * 2 * inter, 4f);
            gateUp[0] = -100f; // silu -> -0
            using var dg = DeviceBuffer<float>.From(device, gateUp);
            float[] Run(bool fused)
            {
                using var y = DeviceBuffer<float>.Allocate(device, (long)t * inter);
                using var y16 = DeviceBuffer<TO>.Allocate(device, (long)t * inter);
                if (fused) ops.SwiGluFusedTo16(y, y16, dg, t, inter);
                else
                {
                    ops.SwiGluFusedF32(y, dg, t, inter);
                    ops.ConvertFromF32(y16, y, t * inter);
                }
                device.Synchronize();
                return [.. y.ToArray(), .. y16.ToArray().Select(widen)];
            }
            return SameBits(kernel, shape, Run(fused: false), Run(fused: true), "bit-exact: swiglu_fused_f32's and convert_f32_to_*'s operations in one launch");
        }

        /// <summary>
        /// dense_gemv_{qkv,swiglu}_norm against rms_norm (fp32 weight) then dense_gemv_{qkv,swiglu} on the normalized
        /// rows: the norm folded into the tile rounds differently, so within <see cref="NormGemvTol"/>.
        /// </summary>
        private CaseResult NormGemvCase(TensorDType dtype, string fused, int m, int n, int k) => dtype == TensorDType.F16
            ? NormGemvCase<Half>(fused, m, n, k, v => (Half)v)
            : NormGemvCase<ushort>(fused, m, n, k, DTypeConvert.SingleToBFloat16);

        private CaseResult NormGemvCase<T>(string fused, int m, int n, int k, Func<float, T> convert) where T : unmanaged
        {
            string kernel = $"dense_gemv_{fused}_norm_{DeviceElement<T>.Suffix}", shape = $"M={m} N={n} K={k}";
            const float Eps = 1e-5f;
            int nkv = Math.Max(1, n / 4);
            var x = Normal(m * k, 3f);
            var g = Normal(k, 0.3f).Select(v => 1f + v).ToArray();
            DeviceBuffer<T> W(int rows) => DeviceBuffer<T>.From(device, Normal(rows * k, 0.05f).Select(convert).ToArray());
            using var dx = DeviceBuffer<float>.From(device, x);
            using var dg = DeviceBuffer<float>.From(device, g);
            using var xn = DeviceBuffer<float>.Allocate(device, (long)m * k);
            using var w0 = W(n);
            using var w1 = W(fused == "qkv" ? nkv : n);
            using var w2 = W(nkv);
            using var b0 = DeviceBuffer<T>.From(device, Normal(n, 0.5f).Select(convert).ToArray());
            using var b1 = DeviceBuffer<T>.From(device, Normal(nkv, 0.5f).Select(convert).ToArray());
            using var b2 = DeviceBuffer<T>.From(device, Normal(nkv, 0.5f).Select(convert).ToArray());
            using var r0 = DeviceBuffer<float>.Allocate(device, (long)m * n);
            using var r1 = DeviceBuffer<float>.Allocate(device, (long)m * n);
            using var r2 = DeviceBuffer<float>.Allocate(device, (long)m * n);
            using var y0 = DeviceBuffer<float>.Allocate(device, (long)m * n);
            using var y1 = DeviceBuffer<float>.Allocate(device, (long)m * n);
            using var y2 = DeviceBuffer<float>.Allocate(device, (long)m * n);
            ops.RmsNorm(xn, dx, dg, m, k, Eps);
            float[] expected, got;
            if (fused == "qkv")
            {
                ops.DenseGemvQkv(r0, r1, r2, xn, w0, w1, w2, b0, b1, b2, m, n, nkv, k);
                ops.DenseGemvQkv(y0, y1, y2, dx, w0, w1, w2, b0, b1, b2, m, n, nkv, k, (dg, Eps));
                device.Synchronize();
                expected = [.. r0.ToArray().AsSpan(0, m * n), .. r1.ToArray().AsSpan(0, m * nkv), .. r2.ToArray().AsSpan(0, m * nkv)];
                got = [.. y0.ToArray().AsSpan(0, m * n), .. y1.ToArray().AsSpan(0, m * nkv), .. y2.ToArray().AsSpan(0, m * nkv)];
            }
            else
            {
                ops.DenseGemvSwiGlu(r0, xn, w0, w1, m, n, k);
                ops.DenseGemvSwiGlu(y0, dx, w0, w1, m, n, k, (dg, Eps));
                device.Synchronize();
                expected = r0.ToArray()[..(m * n)];
                got = y0.ToArray()[..(m * n)];
            }
            using var result = InPlace(got);
            return Compare(kernel, shape, result, expected, NormGemvTol);
        }

        /// <summary>A fused kernel's outputs against the unfused launches' outputs, bit for bit.</summary>
        private static CaseResult SameBits(string kernel, string shape, float[] expected, float[] got, string promise)
        {
            long mismatches = 0;
            double maxAbs = 0;
            for (int i = 0; i < expected.Length; i++)
            {
                if (BitConverter.SingleToUInt32Bits(expected[i]) == BitConverter.SingleToUInt32Bits(got[i])) continue;
                mismatches++;
                maxAbs = Math.Max(maxAbs, Math.Abs(expected[i] - got[i]));
            }
            bool pass = mismatches == 0 && expected.Length == got.Length;
            return new CaseResult(kernel, shape, maxAbs, 0, 0, promise, mismatches, 0, true, pass,
                pass ? null : $"{mismatches} of {expected.Length} outputs differ from the unfused launches");
        }

        /// <summary>
        /// rope_kv_append against rope_f32 then kv_append on the same inputs, bit for bit: the rotated q and both caches
        /// (zeroed, distinct random slots, the last token's slot -1: padding writes no row). q, k and v come from
        /// separate buffers (q rotated in place) or, <paramref name="joined"/>, as the columns of one q|k|v GEMM's rows.
        /// </summary>
        private CaseResult RopeKvAppendCase(TensorDType dtype, int t, int qHeads, int kvHeads, int headDim, int numSlots, bool joined) => dtype switch
        {
            TensorDType.F32 => RopeKvAppendCase<float>(t, qHeads, kvHeads, headDim, numSlots, joined, x => x),
            TensorDType.F16 => RopeKvAppendCase<Half>(t, qHeads, kvHeads, headDim, numSlots, joined, x => (float)x),
            _ => RopeKvAppendCase<ushort>(t, qHeads, kvHeads, headDim, numSlots, joined, DTypeConvert.BFloat16ToSingle),
        };

        private CaseResult RopeKvAppendCase<T>(int t, int qHeads, int kvHeads, int headDim, int numSlots, bool joined, Func<T, float> widen) where T : unmanaged
        {
            string kernel = $"rope_kv_append_{DeviceElement<T>.Suffix}";
            string shape = $"T={t} heads={qHeads}/{kvHeads} d={headDim} slots={numSlots}{(joined ? " q|k|v rows" : "")}";
            int qDim = qHeads * headDim, kvDim = kvHeads * headDim, stride = qDim + 2 * kvDim;
            var invFreq = Enumerable.Range(0, headDim / 2).Select(i => (float)(1.0 / Math.Pow(500000, 2.0 * i / headDim))).ToArray();
            var positions = Enumerable.Range(0, t).Select(i => i == 0 ? 0 : rng.Next(8192)).ToArray();
            var slots = Enumerable.Range(0, numSlots).OrderBy(_ => rng.Next()).Take(t).ToArray();
            if (t > 1) slots[^1] = -1;
            var q = Normal(t * qDim, 1f);
            var k = Normal(t * kvDim, 3f);
            var v = Normal(t * kvDim, 3f);
            var rows = new float[t * stride]; // the same values as one q|k|v GEMM's output rows
            for (int r = 0; r < t; r++)
            {
                q.AsSpan(r * qDim, qDim).CopyTo(rows.AsSpan(r * stride));
                k.AsSpan(r * kvDim, kvDim).CopyTo(rows.AsSpan(r * stride + qDim));
                v.AsSpan(r * kvDim, kvDim).CopyTo(rows.AsSpan(r * stride + qDim + kvDim));
            }
            using var dPos = DeviceBuffer<int>.From(device, positions);
            using var dFreq = DeviceBuffer<float>.From(device, invFreq);
            using var dSlots = DeviceBuffer<int>.From(device, slots);
            float[] Run(bool fused)
            {
                using var dq = DeviceBuffer<float>.From(device, q);
                using var dk = DeviceBuffer<float>.From(device, k);
                using var dv = DeviceBuffer<float>.From(device, v);
                using var dRows = DeviceBuffer<float>.From(device, rows);
                using var kc = DeviceBuffer<T>.Allocate(device, (long)numSlots * kvDim);
                using var vc = DeviceBuffer<T>.Allocate(device, (long)numSlots * kvDim);
                kc.FillBytes(0);
                vc.FillBytes(0);
                if (!fused)
                {
                    ops.RopeF32(dq, dk, dPos, dFreq, t, qHeads, kvHeads, headDim);
                    ops.KvAppend(kc, vc, dk, dv, dSlots, t, kvDim, numSlots);
                }
                else if (!joined) ops.RopeKvAppend(dq, dq, dk, dv, qDim, kvDim, kc, vc, dPos, dFreq, dSlots, t, qHeads, kvHeads, headDim, numSlots);
                else
                {
                    long floats = (long)t * stride;
                    dq.FillBytes(0);
                    ops.RopeKvAppend(dq, dRows.View<float>(0, floats), dRows.View<float>(qDim * 4L, floats - qDim), dRows.View<float>((qDim + kvDim) * 4L, floats - qDim - kvDim),
                        stride, stride, kc, vc, dPos, dFreq, dSlots, t, qHeads, kvHeads, headDim, numSlots);
                }
                device.Synchronize();
                return [.. dq.ToArray(), .. kc.ToArray().Select(widen), .. vc.ToArray().Select(widen)];
            }
            return SameBits(kernel, shape, Run(fused: false), Run(fused: true), "bit-exact: rope_f32's and kv_append's operations in one launch");
        }

        /// <summary>
        /// convert_f32_to_{f16,bf16}: bit-exact against (Half)x and DTypeConvert.SingleToBFloat16, on values that
        /// overflow, NaN, subnormals of both types and n % 4 != 0 (the scalar tail).
        /// </summary>
        private CaseResult ConvertCase(TensorDType dtype, int n)
        {
            var x = Normal(n, 3f);
            x[0] = 1e6f; x[1] = -7e4f; x[2] = float.NaN; x[3] = 1e-7f; x[4] = -3e-41f; x[5] = float.PositiveInfinity; x[n - 1] = 65519.9f;
            using var dx = DeviceBuffer<float>.From(device, x);
            string kernel = $"convert_f32_to_{Suffix(dtype)}";
            ushort[] expected, got;
            if (dtype == TensorDType.F16)
            {
                using var y = DeviceBuffer<Half>.Allocate(device, n);
                ops.ConvertFromF32(y, dx, n);
                device.Synchronize();
                got = y.ToArray().Select(BitConverter.HalfToUInt16Bits).ToArray();
                expected = x.Select(v => BitConverter.HalfToUInt16Bits((Half)v)).ToArray();
            }
            else
            {
                using var y = DeviceBuffer<ushort>.Allocate(device, n);
                ops.ConvertFromF32(y, dx, n);
                device.Synchronize();
                got = y.ToArray();
                expected = x.Select(DTypeConvert.SingleToBFloat16).ToArray();
            }
            // NaN payloads may differ: any NaN matches a NaN.
            bool Same(ushort a, ushort b) => a == b || (dtype == TensorDType.F16
                ? Half.IsNaN(BitConverter.UInt16BitsToHalf(a)) && Half.IsNaN(BitConverter.UInt16BitsToHalf(b))
                : float.IsNaN(DTypeConvert.BFloat16ToSingle(a)) && float.IsNaN(DTypeConvert.BFloat16ToSingle(b)));
            int bad = Enumerable.Range(0, n).Count(i => !Same(got[i], expected[i]));
            return new CaseResult(kernel, $"n={n}", bad, (double)bad / n, 0, "bit-exact rounding to nearest even", bad, 0, true, bad == 0, null);
        }

        /// <summary>
        /// The cuBLASLt GEMM path as the CUDA backend runs it: x rounded to W's type by convert_f32_to_*, then
        /// cublasLtMatmul (y = x W^T, or y += x W^T onto a random residual); the reference is the CPU matmul of the fp32 x
        /// (plus the residual), judged like our GEMM kernels (x rounded to 16 bits on the way in).
        /// </summary>
        private CaseResult CublasLtCase(TensorDType dtype, int m, int n, int k, bool accumulate)
        {
            var x = Normal(m * k, 1f);
            var w32 = Normal(n * k, 0.05f);
            var residual = accumulate ? Normal(m * n, 1f) : new float[m * n];
            var reference = new float[m * n];
            using var lt = new CublasLtGemm(device);
            using var dx = DeviceBuffer<float>.From(device, x);
            using var y = Output(m * n);
            if (accumulate) y.CopyFrom(residual);
            bool ran;
            if (dtype == TensorDType.F16)
            {
                var w = w32.Select(v => (Half)v).ToArray();
                fixed (Half* pw = w) Cpu.MatMul.Multiply(x, m, new WeightTensor("w", dtype, [n, k], (byte*)pw), reference);
                using var dw = DeviceBuffer<Half>.From(device, w);
                using var xh = DeviceBuffer<Half>.Allocate(device, m * k);
                ops.ConvertFromF32(xh, dx, m * k);
                device.Synchronize();
                ran = lt.TryRun(y, xh, dw, m, n, k, accumulate, IntPtr.Zero);
            }
            else
            {
                var w = w32.Select(DTypeConvert.SingleToBFloat16).ToArray();
                fixed (ushort* pw = w) Cpu.MatMul.Multiply(x, m, new WeightTensor("w", dtype, [n, k], (byte*)pw), reference);
                using var dw = DeviceBuffer<ushort>.From(device, w);
                using var xh = DeviceBuffer<ushort>.Allocate(device, m * k);
                ops.ConvertFromF32(xh, dx, m * k);
                device.Synchronize();
                ran = lt.TryRun(y, xh, dw, m, n, k, accumulate, IntPtr.Zero);
            }
            device.Synchronize();
            string kernel = $"cublaslt_gemm_{Suffix(dtype)}", shape = $"M={m} N={n} K={k}{(accumulate ? " y+=" : "")}";
            if (!ran) return new CaseResult(kernel, shape, double.NaN, double.NaN, 0, "", 0, 0, true, false, "cuBLASLt offered no algorithm for this shape");
            for (int i = 0; i < reference.Length; i++) reference[i] += residual[i];
            return Compare(kernel, shape, y, reference, dtype == TensorDType.F16 ? GemmF16Tol : GemmBF16Tol);
        }

        /// <summary>One layer's paged K/V with random block placement; values already rounded to the storage dtype.</summary>
        private sealed record PagedCache(float[] K, float[] V, int[][] Blocks, int[] Tables, int NumBlocks, int MaxBlocks, int BlockSize, int KvHeads, int HeadDim);

        private PagedCache MakeCache(TensorDType dtype, int[] lens, int kvHeads, int d, int bs)
        {
            int maxBlocks = Math.Max(1, lens.Max(l => (l + bs - 1) / bs));
            int used = lens.Sum(l => (l + bs - 1) / bs), numBlocks = used + 3;
            var ids = Enumerable.Range(0, numBlocks).OrderBy(_ => rng.Next()).ToArray(); // scattered blocks
            var blocks = new int[lens.Length][];
            var tables = new int[lens.Length * maxBlocks];
            int next = 0;
            for (int s = 0; s < lens.Length; s++)
            {
                blocks[s] = new int[(lens[s] + bs - 1) / bs];
                for (int b = 0; b < blocks[s].Length; b++) tables[s * maxBlocks + b] = blocks[s][b] = ids[next++];
                for (int b = blocks[s].Length; b < maxBlocks; b++) tables[s * maxBlocks + b] = -1; // never read
            }
            float[] Round(float[] a) => dtype switch
            {
                TensorDType.F16 => a.Select(v => (float)(Half)v).ToArray(),
                TensorDType.BF16 => a.Select(v => DTypeConvert.BFloat16ToSingle(DTypeConvert.SingleToBFloat16(v))).ToArray(),
                _ => a,
            };
            int n = numBlocks * bs * kvHeads * d;
            return new PagedCache(Round(Normal(n, 1f)), Round(Normal(n, 1f)), blocks, tables, numBlocks, maxBlocks, bs, kvHeads, d);
        }

        /// <summary>The CPU storage holding the same blocks, for Attention.Suffix.</summary>
        private static Cpu.CpuKvStorage CpuStorage(PagedCache c, int heads)
        {
            var config = new ModelConfig
            {
                Architecture = ModelArchitecture.Llama, HiddenSize = heads * c.HeadDim, IntermediateSize = 1, NumLayers = 1, NumHeads = heads,
                NumKvHeads = c.KvHeads, HeadDim = c.HeadDim, VocabSize = 1, MaxPositions = 1 << 20,
            };
            var storage = new Cpu.CpuKvStorage(config, c.BlockSize);
            int blockFloats = c.BlockSize * c.KvHeads * c.HeadDim;
            for (int b = 0; b < c.NumBlocks; b++)
            {
                storage.Prepare(b);
                c.K.AsSpan(b * blockFloats, blockFloats).CopyTo(storage.Keys(0, b));
                c.V.AsSpan(b * blockFloats, blockFloats).CopyTo(storage.Values(0, b));
            }
            return storage;
        }

        /// <summary>Uploads the cache in dtype, runs <paramref name="run"/> with it, and waits for the GPU.</summary>
        private R WithCache<R>(TensorDType dtype, PagedCache c, DeviceBuffer<int> lens, Func<object, R> run)
        {
            using var tables = DeviceBuffer<int>.From(device, c.Tables);
            R Go<T>(Func<float, T> convert) where T : unmanaged
            {
                using var k = DeviceBuffer<T>.From(device, c.K.Select(convert).ToArray());
                using var v = DeviceBuffer<T>.From(device, c.V.Select(convert).ToArray());
                var r = run(new OpsLauncher.PagedKv<T>(k, v, tables, lens, c.NumBlocks, c.BlockSize, c.MaxBlocks));
                device.Synchronize();
                return r;
            }
            return dtype switch
            {
                TensorDType.F16 => Go(v => (Half)v),
                TensorDType.BF16 => Go(DTypeConvert.SingleToBFloat16),
                _ => Go(v => v),
            };
        }

        private CaseResult DecodeCase(TensorDType dtype, int[] lens, int heads, int kvHeads, int d, int bs, bool tiled = false)
        {
            int seqs = lens.Length;
            var c = MakeCache(dtype, lens, kvHeads, d, bs);
            var q = Normal(seqs * heads * d, 1f);
            var refO = new float[seqs * heads * d];
            var refLse = Enumerable.Repeat(float.NegativeInfinity, seqs * heads).ToArray();
            var storage = CpuStorage(c, heads);
            var layer = new Cpu.Attention.Layer(storage, 0, bs, heads, kvHeads, d);
            var scores = new float[lens.Max() + 1];
            var partial = new float[d];
            fixed (float* pq = q)
            fixed (float* po = refO)
            fixed (float* pl = refLse)
                for (int s = 0; s < seqs; s++)
                    for (int h = 0; h < heads && lens[s] > 0; h++)
                        Cpu.Attention.Suffix(layer, c.Blocks[s], pq + s * heads * d, po + s * heads * d, pl + s * heads, 1, lens[s] - 1, 0, h, null, scores, partial);

            using var dq = DeviceBuffer<float>.From(device, q);
            using var o = Output(seqs * heads * d);
            using var lse = Output(seqs * heads);
            using var dLens = DeviceBuffer<int>.From(device, lens);
            using var ws = DeviceBuffer<float>.Allocate(device, ops.DecodeWorkspaceFloats(seqs, heads, d));
            int maxLen = lens.Max();
            int splits = WithCache(dtype, c, dLens, kv => kv switch
            {
                OpsLauncher.PagedKv<Half> h => ops.PagedDecodeAttention(o, lse, dq, h, ws, seqs, heads, kvHeads, d, maxLen, tiled),
                OpsLauncher.PagedKv<ushort> b => ops.PagedDecodeAttention(o, lse, dq, b, ws, seqs, heads, kvHeads, d, maxLen, tiled),
                OpsLauncher.PagedKv<float> f => ops.PagedDecodeAttentionF32(o, lse, dq, f, ws, seqs, heads, kvHeads, d, maxLen),
                _ => throw new InvalidOperationException(),
            });
            string shape = $"lens {string.Join(',', lens)} heads {heads}/{kvHeads} d={d} bs={bs} splits={splits}";
            return Both($"paged_decode_attention{(tiled ? "_tiled" : "")}_hd{d}_{Suffix(dtype)}", shape, o, refO, lse, refLse);
        }

        private CaseResult PrefillCase(TensorDType dtype, (int New, int Len)[] seqsSpec, int heads, int kvHeads, int d, int bs)
        {
            int seqs = seqsSpec.Length;
            var lens = seqsSpec.Select(x => x.Len).ToArray();
            var qStarts = new int[seqs + 1];
            for (int s = 0; s < seqs; s++) qStarts[s + 1] = qStarts[s] + seqsSpec[s].New;
            int tokens = qStarts[seqs], maxNew = seqsSpec.Max(x => x.New);
            var c = MakeCache(dtype, lens, kvHeads, d, bs);
            var q = Normal(tokens * heads * d, 1f);
            var refO = new float[tokens * heads * d];
            var refLse = Enumerable.Repeat(float.NegativeInfinity, tokens * heads).ToArray();
            var storage = CpuStorage(c, heads);
            var layer = new Cpu.Attention.Layer(storage, 0, bs, heads, kvHeads, d);
            var scores = new float[lens.Max() + 1];
            var partial = new float[d];
            fixed (float* pq = q)
            fixed (float* po = refO)
            fixed (float* pl = refLse)
                for (int s = 0; s < seqs; s++)
                    for (int h = 0; h < heads; h++)
                        Cpu.Attention.Suffix(layer, c.Blocks[s], pq + qStarts[s] * heads * d, po + qStarts[s] * heads * d, pl + qStarts[s] * heads,
                            seqsSpec[s].New, lens[s] - seqsSpec[s].New, 0, h, null, scores, partial);

            using var dq = DeviceBuffer<float>.From(device, q);
            using var o = Output(tokens * heads * d);
            using var lse = Output(tokens * heads);
            using var dLens = DeviceBuffer<int>.From(device, lens);
            using var dStarts = DeviceBuffer<int>.From(device, qStarts);
            WithCache(dtype, c, dLens, kv =>
            {
                switch (kv)
                {
                    case OpsLauncher.PagedKv<Half> h: ops.PagedPrefillAttentionF16(o, lse, dq, h, dStarts, seqs, tokens, maxNew, heads, kvHeads, d); break;
                    case OpsLauncher.PagedKv<ushort> b: ops.PagedPrefillAttentionBF16(o, lse, dq, b, dStarts, seqs, tokens, maxNew, heads, kvHeads, d); break;
                    case OpsLauncher.PagedKv<float> f: ops.PagedPrefillAttentionF32(o, lse, dq, f, dStarts, seqs, tokens, maxNew, heads, kvHeads, d); break;
                }
                return 0;
            });
            string shape = $"(n,L) {string.Join(',', seqsSpec.Select(x => $"({x.New},{x.Len})"))} heads {heads}/{kvHeads} d={d} bs={bs}";
            return Both($"paged_prefill_attention_hd{d}_{Suffix(dtype)}", shape, o, refO, lse, refLse);
        }

        /// <summary>o and lse both within AttentionTol; the reported errors are the larger of the two.</summary>
        private CaseResult Both(string kernel, string shape, DeviceBuffer<float> o, float[] refO, DeviceBuffer<float> lse, float[] refLse)
        {
            var ro = Compare(kernel, shape + " (o)", o, refO, AttentionTol);
            var rl = Compare(kernel, shape + " (lse)", lse, refLse, AttentionTol);
            if (!ro.Pass) return ro;
            if (!rl.Pass) return rl;
            return ro with { Shape = shape, MaxAbsError = Math.Max(ro.MaxAbsError, rl.MaxAbsError), MeanRelativeError = Math.Max(ro.MeanRelativeError, rl.MeanRelativeError) };
        }

        /// <summary>Runs sample_tokens_f32 on <paramref name="logits"/> [rows, vocab]; row r's coin is the first draw of SamplerRng(seed, r).</summary>
        private int[] Sample(float[] logits, int rows, int vocab, float[] temperature, int[] topK, float[] topP, float[] minP, ulong seed, bool radix)
        {
            using var tokens = DeviceBuffer<int>.Allocate(device, rows);
            using var coins = DeviceBuffer<double>.From(device, Enumerable.Range(0, rows).Select(r => new Kernels.Runtime.Engine.SamplerRng(seed, (ulong)r).NextDouble()).ToArray());
            using var dl = DeviceBuffer<float>.From(device, logits);
            using var dt = DeviceBuffer<float>.From(device, temperature);
            using var dk = DeviceBuffer<int>.From(device, topK);
            using var dp = DeviceBuffer<float>.From(device, topP);
            using var dm = DeviceBuffer<float>.From(device, minP);
            tokens.FillBytes(0xFF);
            ops.SampleTokensF32(tokens, coins, dl, vocab, dt, dk, dp, dm, rows, vocab, radix);
            device.Synchronize();
            return tokens.ToArray();
        }

        private static CaseResult TokenResult(bool radix, string shape, int mismatches, int rows, Tolerance tol) =>
            new(radix ? "sample_tokens_radix_f32" : "sample_tokens_f32", shape, mismatches, (double)mismatches / rows, tol.Relative, tol.Source, mismatches, 0, true, mismatches == 0, null);

        private CaseResult SampleGreedyCase(int vocab, bool radix)
        {
            const int Rows = 6;
            var logits = Normal(Rows * vocab, 3f);
            logits[1 * vocab + 77] = logits[1 * vocab + 90001] = 50f; // tie: the lower index wins
            for (int i = 0; i < vocab; i++) logits[2 * vocab + i] = i % 2 == 0 ? float.NegativeInfinity : float.NaN; // no candidate: 0
            logits[3 * vocab + vocab - 1] = 1e30f;
            logits[4 * vocab + 5] = float.NaN; // NaN never wins
            for (int i = 0; i < vocab; i++) logits[5 * vocab + i] -= 300f; // logits far below zero
            var gpu = Sample(logits, Rows, vocab, new float[Rows], new int[Rows], Enumerable.Repeat(1f, Rows).ToArray(), new float[Rows], 1, radix);
            int bad = 0;
            for (int r = 0; r < Rows; r++)
                if (gpu[r] != Kernels.Runtime.Backends.Sampler.ArgMax(logits.AsSpan(r * vocab, vocab))) bad++;
            return TokenResult(radix, $"greedy rows={Rows} V={vocab} (ties, -inf, NaN)", bad, Rows, SamplingExact);
        }

        private CaseResult SampleSameCoinsCase(int rows, int vocab, bool radix)
        {
            var logits = Normal(rows * vocab, 2f);
            var temperature = Enumerable.Repeat(0.7f, rows).ToArray();
            var minP = Enumerable.Range(0, rows).Select(r => r % 2 == 0 ? 0.05f : 0f).ToArray();
            const ulong Seed = 2024;
            var gpu = Sample(logits, rows, vocab, temperature, new int[rows], Enumerable.Repeat(1f, rows).ToArray(), minP, Seed, radix);
            int bad = 0;
            for (int r = 0; r < rows; r++)
            {
                var options = new Kernels.Runtime.Engine.SamplingOptions { Temperature = temperature[r], MinP = minP[r] };
                int cpu = Kernels.Runtime.Backends.Sampler.Sample(logits.AsSpan(r * vocab, vocab).ToArray(),
                    options.Choice(null, new Kernels.Runtime.Engine.SamplerRng(Seed, (ulong)r).NextDouble()));
                if (cpu != gpu[r]) bad++;
            }
            return TokenResult(radix, $"T=0.7 min-p rows={rows} V={vocab} same coins", bad, rows, SamplingExact);
        }

        /// <summary>
        /// Top-k + top-p with the engine's coins, rows laid <paramref name="stride"/> apart with only the first
        /// <paramref name="vocab"/> candidates (a tokenizer smaller than the LM head; the padding holds the row's
        /// largest logits, which must never be picked): both sides walk the kept set in id order, so each row gives the CPU's token.
        /// </summary>
        private CaseResult SampleFilteredSameCoinsCase(int rows, int vocab, int stride, bool radix)
        {
            var logits = Normal(rows * stride, 2f);
            for (int r = 0; r < rows; r++) logits.AsSpan(r * stride + vocab, stride - vocab).Fill(40f);
            using var tokens = DeviceBuffer<int>.Allocate(device, rows);
            var coinValues = Enumerable.Range(0, rows).Select(r => new Kernels.Runtime.Engine.SamplerRng(5, (ulong)r).NextDouble()).ToArray();
            using var coins = DeviceBuffer<double>.From(device, coinValues);
            using var dl = DeviceBuffer<float>.From(device, logits);
            using var dt = DeviceBuffer<float>.From(device, Enumerable.Repeat(0.8f, rows).ToArray());
            using var dk = DeviceBuffer<int>.From(device, Enumerable.Repeat(50, rows).ToArray());
            using var dp = DeviceBuffer<float>.From(device, Enumerable.Repeat(0.9f, rows).ToArray());
            using var dm = DeviceBuffer<float>.From(device, new float[rows]);
            tokens.FillBytes(0xFF);
            ops.SampleTokensF32(tokens, coins, dl, stride, dt, dk, dp, dm, rows, vocab, radix);
            device.Synchronize();
            var gpu = tokens.ToArray();
            var options = new Kernels.Runtime.Engine.SamplingOptions { Temperature = 0.8f, TopK = 50, TopP = 0.9f };
            int bad = 0;
            for (int r = 0; r < rows; r++)
                if (gpu[r] != Kernels.Runtime.Backends.Sampler.Sample(logits.AsSpan(r * stride, vocab).ToArray(), options.Choice(null, coinValues[r]))) bad++;
            return TokenResult(radix, $"T=0.8 top-k=50 top-p=0.9 rows={rows} V={vocab} stride {stride} same coins", bad, rows, SamplingExact);
        }

        /// <summary>
        /// Logits on a grid of 0.25 (hundreds of tokens share each value): the top-k and top-p cuts fall inside runs of
        /// equal probabilities, where the kept tokens are the lowest ids of the run; same coins, the CPU's tokens.
        /// </summary>
        private CaseResult SampleTiedCase(int rows, int vocab, bool radix)
        {
            var logits = Normal(rows * vocab, 2f).Select(x => MathF.Round(x * 4f) / 4f).ToArray();
            var coinValues = Enumerable.Range(0, rows).Select(r => new Kernels.Runtime.Engine.SamplerRng(9, (ulong)r).NextDouble()).ToArray();
            var gpu = Sample(logits, rows, vocab, Enumerable.Repeat(1f, rows).ToArray(), Enumerable.Repeat(40, rows).ToArray(),
                Enumerable.Repeat(0.8f, rows).ToArray(), new float[rows], 9, radix);
            var options = new Kernels.Runtime.Engine.SamplingOptions { Temperature = 1f, TopK = 40, TopP = 0.8f };
            int bad = 0;
            for (int r = 0; r < rows; r++)
                if (gpu[r] != Kernels.Runtime.Backends.Sampler.Sample(logits.AsSpan(r * vocab, vocab).ToArray(), options.Choice(null, coinValues[r]))) bad++;
            return TokenResult(radix, $"T=1 top-k=40 top-p=0.8 rows={rows} V={vocab} tied logits same coins", bad, rows, SamplingExact);
        }

        /// <summary>
        /// Top-k + top-p (+ min-p, applied last on both sides): besides the same-coin case above, a distributional check: every
        /// GPU draw must lie in the CPU's kept set, and the total variation distance between the GPU's empirical
        /// distribution and the CPU's (from a fine grid of coins) must stay below 0.06 (expected ~0.03 for ~40 kept
        /// tokens and 8192 draws).
        /// </summary>
        private CaseResult SampleDistributionCase(int draws, int vocab, float minP, bool radix)
        {
            var row = Normal(vocab, 2f);
            var options = new Kernels.Runtime.Engine.SamplingOptions { Temperature = 1f, TopK = 50, TopP = 0.9f, MinP = minP };
            const int Grid = 200_000;
            var cpu = new double[vocab];
            for (int j = 0; j < Grid; j++)
                cpu[Kernels.Runtime.Backends.Sampler.Sample(row.ToArray(), options.Choice(null, (j + 0.5) / Grid))] += 1.0 / Grid;
            var logits = new float[draws * vocab];
            for (int r = 0; r < draws; r++) row.CopyTo(logits, r * vocab);
            var gpu = Sample(logits, draws, vocab, Enumerable.Repeat(1f, draws).ToArray(), Enumerable.Repeat(50, draws).ToArray(),
                Enumerable.Repeat(0.9f, draws).ToArray(), Enumerable.Repeat(minP, draws).ToArray(), 7, radix);
            var freq = new double[vocab];
            int outside = 0;
            foreach (int t in gpu)
            {
                if ((uint)t >= (uint)vocab || cpu[t] == 0) { outside++; continue; }
                freq[t] += 1.0 / draws;
            }
            double tv = 0.5 * Enumerable.Range(0, vocab).Sum(i => Math.Abs(freq[i] - cpu[i]));
            const double Limit = 0.06;
            bool pass = outside == 0 && tv < Limit;
            string filters = minP > 0 ? $"top-k=50 top-p=0.9 min-p={minP}" : "top-k=50 top-p=0.9";
            return new CaseResult(radix ? "sample_tokens_radix_f32" : "sample_tokens_f32", $"T=1 {filters} V={vocab} {draws} draws ({cpu.Count(p => p > 0)} kept)", tv, tv, Limit,
                "distributional: total variation vs the CPU sampler's distribution; draws outside the CPU's kept set count as mismatches",
                outside, 0, true, pass, null);
        }

        /// <summary>
        /// kv_append: distinct random slots (the last token's slot -1: padding writes nothing) into a zeroed cache; the
        /// reference is the CPU backend's row copy rounded to the cache dtype ((Half)x, DTypeConvert.SingleToBFloat16).
        /// f16/bf16 caches are read back, widened exactly to fp32 and compared through an fp32 buffer (widening is
        /// injective, so bit-exactness is kept).
        /// </summary>
        private CaseResult KvAppendCase(TensorDType dtype, int t, int kvDim, int numSlots)
        {
            var k = Normal(t * kvDim, 3f);
            var v = Normal(t * kvDim, 3f);
            var slots = Enumerable.Range(0, numSlots).OrderBy(_ => rng.Next()).Take(t).ToArray();
            if (t > 1) slots[^1] = -1;
            float Round(float x) => dtype switch
            {
                TensorDType.F16 => (float)(Half)x,
                TensorDType.BF16 => DTypeConvert.BFloat16ToSingle(DTypeConvert.SingleToBFloat16(x)),
                _ => x,
            };
            var refK = new float[numSlots * kvDim];
            var refV = new float[numSlots * kvDim];
            for (int i = 0; i < t; i++)
            {
                if (slots[i] < 0) continue;
                for (int j = 0; j < kvDim; j++)
                {
                    refK[slots[i] * kvDim + j] = Round(k[i * kvDim + j]);
                    refV[slots[i] * kvDim + j] = Round(v[i * kvDim + j]);
                }
            }
            var reference = refK.Concat(refV).ToArray();
            using var dk = DeviceBuffer<float>.From(device, k);
            using var dv = DeviceBuffer<float>.From(device, v);
            using var dSlots = DeviceBuffer<int>.From(device, slots);
            string kernel = $"kv_append_{Suffix(dtype)}";
            string shape = $"T={t} kv_dim={kvDim} slots={numSlots}";
            if (dtype == TensorDType.F32)
            {
                using var cache = Output(2 * numSlots * kvDim);
                cache.CopyFrom(new float[2 * numSlots * kvDim]); // zero the cache, keep the guard after it
                var kc = cache.View<float>(0, (long)numSlots * kvDim);
                var vc = cache.View<float>((long)numSlots * kvDim * 4, (long)numSlots * kvDim);
                ops.KvAppendF32(kc, vc, dk, dv, dSlots, t, kvDim, numSlots);
                return Compare(kernel, shape, cache, reference, Exact);
            }
            var widened = new float[2 * numSlots * kvDim];
            if (dtype == TensorDType.F16)
            {
                using var kc = DeviceBuffer<Half>.Allocate(device, (long)numSlots * kvDim);
                using var vc = DeviceBuffer<Half>.Allocate(device, (long)numSlots * kvDim);
                kc.FillBytes(0);
                vc.FillBytes(0);
                ops.KvAppendF16(kc, vc, dk, dv, dSlots, t, kvDim, numSlots);
                var all = kc.ToArray().Concat(vc.ToArray()).ToArray();
                for (int i = 0; i < all.Length; i++) widened[i] = (float)all[i];
            }
            else
            {
                using var kc = DeviceBuffer<ushort>.Allocate(device, (long)numSlots * kvDim);
                using var vc = DeviceBuffer<ushort>.Allocate(device, (long)numSlots * kvDim);
                kc.FillBytes(0);
                vc.FillBytes(0);
                ops.KvAppendBF16(kc, vc, dk, dv, dSlots, t, kvDim, numSlots);
                var all = kc.ToArray().Concat(vc.ToArray()).ToArray();
                for (int i = 0; i < all.Length; i++) widened[i] = DTypeConvert.BFloat16ToSingle(all[i]);
            }
            using var result = InPlace(widened);
            return Compare(kernel, shape, result, reference, Exact);
        }
    }
}
