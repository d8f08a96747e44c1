// kernels-bench kernels, KIVI records (issue 7): decode attention over a 2/4-bit KIVI cache, the per-block kernel
// plus the merge of its splits (what a decode step runs for the quantized part), at B=16 L=4K/32K and B=64 L=8K,
// 32/8 heads, d 128, G 32. Roofline bytes: the compact KV (codes + fp16 scales + fp32 mins) + q + o; the per-block
// partials the kernel writes and the merge reads back are its own overhead and not counted.
// kernel_baselines.py times SDPA fp16 on contiguous K/V of the same B, L, heads for these records.
using Kernels.Runtime.Backends.Cuda;
using Kernels.Runtime.Quantization;

namespace Kernels.Bench;

internal static partial class KernelTimings
{
    /// <summary>The KIVI decode records; <paramref name="add"/> is Run's Add (kernel, shape, us, bytes, flops, params).</summary>
    private static void KiviRecords(Timer t, bool quick, Action<string, string, double, double, double, Dictionary<string, int>> add)
    {
        const int Heads = 32, KvHeads = 8, D = 128, G = 32;
        var shapes = quick ? new[] { (16, 4096) } : new[] { (16, 4096), (16, 32768), (64, 8192) };
        foreach (int bits in quick ? new[] { 2 } : new[] { 2, 4 })
            foreach (var (b, len) in shapes)
            {
                double us = t.KiviDecode(bits, b, len, Heads, KvHeads, D, G);
                double kv = (double)b * (len / G) * Kivi.BlockBytes(KvHeads * D, G, bits);
                double bytes = kv + 2.0 * b * Heads * D * 4;
                var prm = new Dictionary<string, int> { ["B"] = b, ["L"] = len, ["Hq"] = Heads, ["Hkv"] = KvHeads, ["D"] = D, ["Bits"] = bits, ["G"] = G };
                add("kivi_decode_attention_f32", $"kivi{bits} B={b} L={len} heads 32/8 d=128 G=32 +merge", us, bytes, 4.0 * b * Heads * len * D, prm);
                // The split kernel (a CTA per kv head and split, code words through cp.async), the same cache and merge.
                double sus = t.KiviDecode(bits, b, len, Heads, KvHeads, D, G, split: true);
                add($"kivi_decode_attention_split_b{bits}_hd128", $"kivi{bits} B={b} L={len} heads 32/8 d=128 G=32 +merge", sus, bytes, 4.0 * b * Heads * len * D, prm);
            }
    }

    private sealed unsafe partial class Timer
    {
        /// <summary>
        /// Median of (kivi_decode_attention_f32 + kivi_merge_partials_f32) over b sequences of len tokens, all compact
        /// (len a multiple of G), contiguous block ids; codes random bits, scales and mins small random values. o and lse
        /// keep the previous launch's result (the merge's work does not depend on it).
        /// </summary>
        public double KiviDecode(int bits, int b, int len, int heads, int kvHeads, int d, int group, bool split = false)
        {
            int kvd = kvHeads * d, perSeq = len / group, numIds = b * perSeq;
            int words = Kivi.CodeWords(kvd, group, bits), param = 2 * kvd;
            var codeBytes = new byte[(long)numIds * words * 4];
            _rng.NextBytes(codeBytes);
            var blockScales = Random(param).Select(v => (Half)(0.02f + 0.01f * v)).ToArray(); // one block's, repeated
            var blockMins = Random(param).Select(v => -0.05f + 0.01f * v).ToArray();
            var scales = new Half[(long)numIds * param];
            var mins = new float[(long)numIds * param];
            for (int i = 0; i < numIds; i++)
            {
                blockScales.CopyTo(scales, (long)i * param);
                blockMins.CopyTo(mins, (long)i * param);
            }
            using var codes = DeviceBuffer<uint>.From(device, System.Runtime.InteropServices.MemoryMarshal.Cast<byte, uint>(codeBytes));
            using var dScales = DeviceBuffer<Half>.From(device, scales);
            using var dMins = DeviceBuffer<float>.From(device, mins);
            using var tables = DeviceBuffer<int>.From(device, Enumerable.Range(0, numIds).ToArray()); // [b, perSeq]
            using var compact = DeviceBuffer<int>.From(device, Enumerable.Repeat(perSeq, b).ToArray());
            using var q = DeviceBuffer<float>.From(device, Random((long)b * heads * d));
            using var o = DeviceBuffer<float>.From(device, new float[(long)b * heads * d]);
            using var lse = DeviceBuffer<float>.From(device, Enumerable.Repeat(float.NegativeInfinity, b * heads).ToArray());
            long splits = (long)b * heads * (split ? OpsLaunchPlans.KiviMaxSplits : perSeq);
            using var partialO = DeviceBuffer<float>.Allocate(device, splits * d);
            using var partialLse = DeviceBuffer<float>.Allocate(device, splits);
            var pool = new OpsLauncher.KiviPool(codes, dScales, dMins, numIds, kvd, group, bits);
            if (split)
                return Median(() => ops.KiviDecodeAttentionSplit(o, lse, partialO, partialLse, q, pool, tables, compact, b, perSeq, perSeq, heads, kvHeads, d));
            return Median(() =>
            {
                ops.KiviDecodeAttentionF32(partialO, partialLse, q, pool, tables, compact, b, perSeq, heads, kvHeads, d);
                ops.KiviMergePartialsF32(o, lse, partialO, partialLse, b, heads, perSeq, d);
            });
        }
    }
}
