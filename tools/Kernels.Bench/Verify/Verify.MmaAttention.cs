// kernels-bench verify, the tensor-core attention: paged_attention_mma (+ attention_merge_slots_f32) over the work
// items AttentionWork makes for a batch (Hydragen levels over blocks shared in the block tables, causal suffixes and
// prefill chunks, key ranges split to fill the GPU), against the CPU reference Attention.Suffix over each sequence's
// whole table (the same softmax the decomposition must reproduce exactly). q is rounded to the cache dtype first, as the
// kernel rounds it, so the reference sees the same q.
using Kernels.Runtime.Backends.Cuda;
using Kernels.Runtime.Models;
using Kernels.Runtime.Numerics;
using Cpu = Kernels.Runtime.Backends.Cpu;

namespace Kernels.Bench;

internal static unsafe partial class Verify
{
    private static readonly Tolerance MmaAttentionF16Tol = new(5e-3,
        "P rounded to f16 for P.V (2^-11 relative per weight, random signs): |do| <= 2^-11 sum p|v| ~ 2^-11 max|v| (~4 for normal v) " +
        "against |o| + max|o| >= ~0.2; q rounded for both sides; lse is judged by AttentionTol (P's rounding does not reach it)");
    private static readonly Tolerance MmaAttentionBF16Tol = new(4e-2, "as f16 with bf16's 2^-8 unit roundoff (8x)");

    private sealed partial class Verifier
    {
        private IEnumerable<Case> MmaAttentionCases()
        {
            foreach (var dtype in new[] { TensorDType.F16, TensorDType.BF16 })
                foreach (int d in OpsLaunchPlans.MmaAttentionHeadDims)
                    foreach (int keys in OpsLaunchPlans.MmaAttentionTileKeys)
                    {
                        string kernel = OpsLaunchPlans.MmaAttentionKernel(Suffix(dtype), d, keys);
                        yield return new Case(kernel, "decode tree: 6 seqs share 256 keys, 3 of them 128 more; heads 32/8 bs=16, split to 264 CTAs",
                            () => MmaAttentionCase(dtype, d, keys, 32, 8, 16, [700, 650, 900, 300, 520, 1000], [1, 1, 1, 1, 1, 1], 16, 8, 3, 264));
                        yield return new Case(kernel, "prefill chunks (n,L) (200,200),(30,130),(64,101) heads 32/8 bs=16, no levels (direct)",
                            () => MmaAttentionCase(dtype, d, keys, 32, 8, 16, [0, 100, 37], [200, 30, 64], 0, 0, 0, 1));
                        if (d == 128 && keys == 64)
                            yield return new Case(kernel, "levels + chunks, G=7: heads 28/4 bs=32, (n,L) (20,532),(1,601),(5,535), 512 shared keys",
                                () => MmaAttentionCase(dtype, d, keys, 28, 4, 32, [512, 600, 530], [20, 1, 5], 16, 0, 0, 64));
                        if (d == 64 && keys == 32)
                            yield return new Case(kernel, "G=1, bs=5: heads 8/8, (n,L) (70,370),(3,303),(1,1001), 300 shared keys, 50 more for 2",
                                () => MmaAttentionCase(dtype, d, keys, 8, 8, 5, [300, 300, 1000], [70, 3, 1], 60, 10, 2, 132));
                    }
        }

        /// <summary>
        /// Sequences s with cached[s] keys already written and newRows[s] rows appended: the first sharedA blocks are the same
        /// physical blocks in every table, the next sharedB the same in the first inB tables; the rest are each one's own.
        /// </summary>
        private CaseResult MmaAttentionCase(TensorDType dtype, int d, int keys, int heads, int kvHeads, int bs, int[] cached, int[] newRows, int sharedA,
            int sharedB, int inB, int targetCtas)
        {
            int seqs = cached.Length;
            var lens = cached.Zip(newRows, (c, n) => c + n).ToArray();
            int maxBlocks = lens.Max(l => (l + bs - 1) / bs);
            int next = 0;
            var a = Enumerable.Range(0, sharedA).Select(_ => next++).ToArray();
            var b = Enumerable.Range(0, sharedB).Select(_ => next++).ToArray();
            var blocks = new int[seqs][];
            var tables = new int[seqs * maxBlocks];
            for (int s = 0; s < seqs; s++)
            {
                blocks[s] = new int[(lens[s] + bs - 1) / bs];
                for (int j = 0; j < blocks[s].Length; j++)
                    blocks[s][j] = j < sharedA ? a[j] : s < inB && j < sharedA + sharedB ? b[j - sharedA] : next++;
                blocks[s].CopyTo(tables, s * maxBlocks);
            }
            int numBlocks = next + 2;
            int n = numBlocks * bs * kvHeads * d;
            float[] Round(float[] x) => dtype == TensorDType.F16 ? x.Select(v => (float)(Half)v).ToArray()
                : x.Select(v => DTypeConvert.BFloat16ToSingle(DTypeConvert.SingleToBFloat16(v))).ToArray();
            var cache = new PagedCache(Round(Normal(n, 1f)), Round(Normal(n, 1f)), blocks, tables, numBlocks, maxBlocks, bs, kvHeads, d);

            int rows = newRows.Sum();
            var q = Round(Normal(rows * heads * d, 1f));
            var refO = new float[rows * heads * d];
            var refLse = Enumerable.Repeat(float.NegativeInfinity, rows * heads).ToArray(); // Attention.Suffix merges into (o, lse)
            var layer = new Cpu.Attention.Layer(CpuStorage(cache, heads), 0, bs, heads, kvHeads, d);
            var scores = new float[lens.Max() + 1];
            var partialRow = new float[d];
            var sequences = new List<AttentionWork.Sequence>();
            fixed (float* pq = q)
            fixed (float* po = refO)
            fixed (float* pl = refLse)
                for (int s = 0, row = 0; s < seqs; row += newRows[s], s++)
                {
                    for (int h = 0; h < heads; h++)
                        Cpu.Attention.Suffix(layer, blocks[s], pq + row * heads * d, po + row * heads * d, pl + row * heads, newRows[s], cached[s], 0, h, null, scores,
                            partialRow);
                    int suffix = sharedA == 0 ? 0 : (s < inB ? sharedA + sharedB : sharedA) * bs;
                    sequences.Add(new AttentionWork.Sequence(row, newRows[s], cached[s], s * maxBlocks, suffix));
                }
            var levels = new List<AttentionWork.Level>();
            if (sharedA > 0) levels.Add(new AttentionWork.Level(0, sharedA * bs, Enumerable.Range(0, seqs).ToArray()));
            if (sharedB > 0) levels.Add(new AttentionWork.Level(sharedA * bs, (sharedA + sharedB) * bs, Enumerable.Range(0, inB).ToArray()));
            var work = AttentionWork.Build(sequences, levels, rows, heads / kvHeads, keys, kvHeads, targetCtas, 1 << 20)
                       ?? throw new InvalidOperationException("no work for the case");

            using var dq = DeviceBuffer<float>.From(device, q);
            using var o = Output(rows * heads * d);
            using var lse = Output(rows * heads);
            using var dLens = DeviceBuffer<int>.From(device, lens);
            using var items = DeviceBuffer<int>.From(device, work.Items);
            using var rowIds = DeviceBuffer<int>.From(device, work.RowIds);
            using var starts = DeviceBuffer<int>.From(device, work.SlotStarts.Length > 0 ? work.SlotStarts : [0]);
            using var slots = DeviceBuffer<int>.From(device, work.Slots.Length > 0 ? work.Slots : [0]);
            using var partial = work.Direct ? null : DeviceBuffer<float>.Allocate(device, OpsLauncher.MmaAttentionPartialFloats(work, heads, d));
            var buffers = new OpsLauncher.AttentionWorkBuffers(items, rowIds, starts, slots);
            WithCache(dtype, cache, dLens, kv =>
            {
                switch (kv)
                {
                    case OpsLauncher.PagedKv<Half> h: ops.PagedAttentionMma(o, lse, dq, h, work, buffers, partial, rows, heads, kvHeads, d, keys); break;
                    case OpsLauncher.PagedKv<ushort> bf: ops.PagedAttentionMma(o, lse, dq, bf, work, buffers, partial, rows, heads, kvHeads, d, keys); break;
                }
                return 0;
            });
            string kernel = OpsLaunchPlans.MmaAttentionKernel(Suffix(dtype), d, keys);
            string shape = $"{work.ItemCount} items, {(work.Direct ? "direct" : $"{work.PartialRows} partial rows merged")}, splits {work.Splits}";
            var ro = Compare(kernel, shape + " (o)", o, refO, dtype == TensorDType.F16 ? MmaAttentionF16Tol : MmaAttentionBF16Tol);
            var rl = Compare(kernel, shape + " (lse)", lse, refLse, AttentionTol);
            if (!ro.Pass) return ro;
            if (!rl.Pass) return rl;
            return ro with { Shape = shape, MaxAbsError = Math.Max(ro.MaxAbsError, rl.MaxAbsError) };
        }
    }
}
