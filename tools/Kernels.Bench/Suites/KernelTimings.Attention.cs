// kernels-bench kernels, tensor-core attention records (issue 17): paged_attention_mma for causal prefill at the shapes
// paged_prefill_attention is timed on (the same shape strings, so `tune` compares them), and Hydragen decode over a
// shared prefix at the anchor shapes (B sequences, P shared keys, S = 256 own keys each, 32/8 heads, d 128): the work
// AttentionWork makes (the prefix read once for all B rows, suffixes, splits, the merge) against our per-sequence decode
// kernel over the same block tables (each sequence re-reads the prefix), in the same run. kernel_baselines.py adds
// PyTorch: SDPA causal for prefill; for the prefix records the two-level decomposition and per-sequence SDPA of the
// anchor script (../shared/anchors/method-anchors.py).
using Kernels.Runtime.Backends.Cuda;

namespace Kernels.Bench;

internal static partial class KernelTimings
{
    private static void AttentionRecords(Timer t, bool quick, Action<string, string, double, double, double, Dictionary<string, int>> add)
    {
        const int Heads = 32, KvHeads = 8, D = 128, Bs = 16, S = 256;
        foreach (int keys in OpsLaunchPlans.MmaAttentionTileKeys)
        {
            string kernel = OpsLaunchPlans.MmaAttentionKernel("f16", D, keys);
            foreach (var (b, n) in quick ? new[] { (1, 512) } : new[] { (1, 512), (1, 2048), (8, 512) })
            {
                double us = t.PrefillMma(b, n, Heads, KvHeads, D, Bs, keys);
                double bytes = 2.0 * b * n * KvHeads * D * 2 + 2.0 * b * n * Heads * D * 4;
                add(kernel, $"B={b} N=L={n} heads 32/8 d=128", us, bytes, 2.0 * b * Heads * (double)n * n * D,
                    new() { ["B"] = b, ["L"] = n, ["Hq"] = Heads, ["Hkv"] = KvHeads, ["D"] = D });
            }
            var prefix = quick ? new[] { (64, 4096) } : new[] { (64, 4096), (256, 4096), (256, 16384), (1024, 4096) };
            foreach (var (b, p) in prefix)
            {
                string shape = $"prefix B={b} P={p} S={S} heads 32/8 d=128";
                var prm = new Dictionary<string, int> { ["B"] = b, ["P"] = p, ["S"] = S, ["Hq"] = Heads, ["Hkv"] = KvHeads, ["D"] = D, ["Prefix"] = 1 };
                double flops = 4.0 * b * Heads * (p + S) * D;
                double shared = 2.0 * KvHeads * p * D * 2 + 2.0 * b * KvHeads * S * D * 2 + 2.0 * b * Heads * D * 4;
                var (us, items) = t.PrefixMma(b, p, S, Heads, KvHeads, D, Bs, keys);
                add(kernel, shape + $" levels ({items} items)", us, shared, flops, prm);
                if (keys == OpsLaunchPlans.MmaAttentionTileKeys[0])
                {
                    // Our per-sequence decode over the same tables: every sequence reads the P shared keys itself.
                    var (dus, splits) = t.PrefixDecode(b, p, S, Heads, KvHeads, D, Bs);
                    add("paged_decode_attention_hd128_f16", shape + $" per sequence splits={splits}", dus, 2.0 * b * KvHeads * (p + S) * D * 2 + 2.0 * b * Heads * D * 4,
                        flops, prm);
                }
            }
        }
    }

    private sealed unsafe partial class Timer
    {
        /// <summary>K/V of <paramref name="blocks"/> blocks and tables (as given) for the attention records.</summary>
        private (OpsLauncher.PagedKv<Half> Kv, IDisposable[] Owned) Tables(int blocks, int[] tables, int[] lens, int kvHeads, int d, int bs, int width)
        {
            var k = DeviceBuffer<Half>.From(device, RandomHalf((long)blocks * bs * kvHeads * d));
            var v = DeviceBuffer<Half>.From(device, RandomHalf((long)blocks * bs * kvHeads * d));
            var t = DeviceBuffer<int>.From(device, tables);
            var l = DeviceBuffer<int>.From(device, lens);
            return (new OpsLauncher.PagedKv<Half>(k, v, t, l, blocks, bs, width), [k, v, t, l]);
        }

        /// <summary>Times <paramref name="work"/> on the device (uploaded once; the merge included).</summary>
        private double TimeWork(AttentionWork work, OpsLauncher.PagedKv<Half> kv, int rows, int heads, int kvHeads, int d, int keys)
        {
            using var q = DeviceBuffer<float>.From(device, Random((long)rows * heads * d));
            using var o = DeviceBuffer<float>.Allocate(device, (long)rows * heads * d);
            using var lse = DeviceBuffer<float>.Allocate(device, (long)rows * heads);
            using var items = DeviceBuffer<int>.From(device, work.Items);
            using var rowIds = DeviceBuffer<int>.From(device, work.RowIds);
            using var starts = DeviceBuffer<int>.From(device, work.SlotStarts.Length > 0 ? work.SlotStarts : [0]);
            using var slots = DeviceBuffer<int>.From(device, work.Slots.Length > 0 ? work.Slots : [0]);
            using var partial = work.Direct ? null : DeviceBuffer<float>.Allocate(device, OpsLauncher.MmaAttentionPartialFloats(work, heads, d));
            var buffers = new OpsLauncher.AttentionWorkBuffers(items, rowIds, starts, slots);
            return Median(() => ops.PagedAttentionMma(o, lse, q, kv, work, buffers, partial, rows, heads, kvHeads, d, keys));
        }

        public double PrefillMma(int b, int n, int heads, int kvHeads, int d, int bs, int keys)
        {
            var (kv, owned) = Cache(b, n, kvHeads, d, bs);
            try
            {
                int perSeq = (n + bs - 1) / bs;
                var seqs = Enumerable.Range(0, b).Select(s => new AttentionWork.Sequence(s * n, n, 0, s * perSeq, 0)).ToArray();
                var work = AttentionWork.Build(seqs, [], b * n, heads / kvHeads, keys, kvHeads, 2 * device.MultiprocessorCount, b * n * 4)!;
                return TimeWork(work, kv, b * n, heads, kvHeads, d, keys);
            }
            finally
            {
                foreach (var x in owned) x.Dispose();
            }
        }

        /// <summary>B sequences whose tables share the first P / bs blocks, each with S own keys; one decode row each (the last key).</summary>
        private static (int Blocks, int[] Tables, int Width) PrefixTables(int b, int p, int s, int bs)
        {
            int shared = p / bs, own = (s + bs - 1) / bs, width = shared + own;
            var tables = new int[b * width];
            for (int i = 0; i < b; i++)
                for (int j = 0; j < width; j++) tables[i * width + j] = j < shared ? j : shared + i * own + (j - shared);
            return (shared + b * own, tables, width);
        }

        public (double Us, int Items) PrefixMma(int b, int p, int s, int heads, int kvHeads, int d, int bs, int keys)
        {
            var (blocks, tables, width) = PrefixTables(b, p, s, bs);
            var (kv, owned) = Tables(blocks, tables, Enumerable.Repeat(p + s, b).ToArray(), kvHeads, d, bs, width);
            try
            {
                var seqs = Enumerable.Range(0, b).Select(i => new AttentionWork.Sequence(i, 1, p + s - 1, i * width, p)).ToArray();
                var levels = new[] { new AttentionWork.Level(0, p, Enumerable.Range(0, b).ToArray()) };
                var work = AttentionWork.Build(seqs, levels, b, heads / kvHeads, keys, kvHeads, 2 * device.MultiprocessorCount,
                    b * CudaMemoryPlan.AttentionSlotsPerRow) ?? throw new InvalidOperationException("the prefix work does not fit its workspace");
                return (TimeWork(work, kv, b, heads, kvHeads, d, keys), work.ItemCount);
            }
            finally
            {
                foreach (var x in owned) x.Dispose();
            }
        }

        public (double Us, int Splits) PrefixDecode(int b, int p, int s, int heads, int kvHeads, int d, int bs)
        {
            var (blocks, tables, width) = PrefixTables(b, p, s, bs);
            var (kv, owned) = Tables(blocks, tables, Enumerable.Repeat(p + s, b).ToArray(), kvHeads, d, bs, width);
            try
            {
                using var q = DeviceBuffer<float>.From(device, Random((long)b * heads * d));
                using var o = DeviceBuffer<float>.Allocate(device, (long)b * heads * d);
                using var lse = DeviceBuffer<float>.Allocate(device, (long)b * heads);
                using var ws = DeviceBuffer<float>.Allocate(device, ops.DecodeWorkspaceFloats(b, heads, d));
                int splits = 0;
                double us = Median(() => splits = ops.PagedDecodeAttention(o, lse, q, kv, ws, b, heads, kvHeads, d, p + s));
                return (us, splits);
            }
            finally
            {
                foreach (var x in owned) x.Dispose();
            }
        }
    }
}
