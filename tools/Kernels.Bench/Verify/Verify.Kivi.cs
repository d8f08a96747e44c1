// kernels-bench verify, KIVI cases: kivi_quantize_block_f32 against Kivi.QuantizeBlock (codes, scales and mins
// bit-exact), and kivi_decode_attention_f32 + kivi_merge_partials_f32 against the CPU's KIVI attention
// (Attention.Suffix over a CpuKvStorage of the same blocks, compacted), with the fp16 window's partial merged in.
using Kernels.Runtime.Backends.Cuda;
using Kernels.Runtime.KvCache;
using Kernels.Runtime.Models;
using Kernels.Runtime.Numerics;
using Kernels.Runtime.Quantization;
using Cpu = Kernels.Runtime.Backends.Cpu;

namespace Kernels.Bench;

internal static unsafe partial class Verify
{
    private static readonly Tolerance KiviExact = new(0, "bit-exact: the same IEEE fp32 min/max, (x - z) / s, round-half-even and fp16 round-up of the scale as Kivi.cs");
    private static readonly Tolerance KiviAttentionTol = new(1e-4, "same codes, scales and mins: the dequantized dot products differ only in association (CPU folds q*s and q.z, GPU fmaf(q, s*c + z)), ~1e-6 relative per score, then softmax and the LSE merge as in AttentionTol");

    private sealed partial class Verifier
    {
        private IEnumerable<Case> KiviCases()
        {
            foreach (int bits in new[] { 2, 4 })
            {
                yield return new Case("kivi_quantize_block_f32", $"kivi{bits} 9 blocks G=32 kvd=1024 (constant groups)", () => KiviQuantizeCase(bits, 9, 32, 1024));
                yield return new Case("kivi_quantize_block_f32", $"kivi{bits} 3 blocks G=64 kvd=128", () => KiviQuantizeCase(bits, 3, 64, 128));
                yield return new Case("kivi_quantize_block_f32", $"kivi{bits} 5 blocks G=32 kvd=256 from paged slots", () => KiviQuantizeCase(bits, 5, 32, 256, paged: true));
                yield return new Case("kivi_decode_attention_f32", $"kivi{bits} lens 1,32,100,1041 heads 32/8 d=128 G=32",
                    () => KiviDecodeCase(bits, [1, 32, 100, 1041], 32, 8, 128, 32));
                yield return new Case("kivi_decode_attention_f32", $"kivi{bits} lens 64,333 heads 8/2 d=64 G=32", () => KiviDecodeCase(bits, [64, 333], 8, 2, 64, 32));
                yield return new Case("kivi_decode_attention_f32", $"kivi{bits} lens 200,4100 heads 28/4 d=128 G=64", () => KiviDecodeCase(bits, [200, 4100], 28, 4, 128, 64));
                // The split kernel (a CTA per kv head and split of the blocks) on the same caches.
                yield return new Case($"kivi_decode_attention_split_b{bits}_hd128", $"kivi{bits} lens 1,32,100,1041 heads 32/8 d=128 G=32",
                    () => KiviDecodeCase(bits, [1, 32, 100, 1041], 32, 8, 128, 32, split: true));
                yield return new Case($"kivi_decode_attention_split_b{bits}_hd64", $"kivi{bits} lens 64,333 heads 8/2 d=64 G=32",
                    () => KiviDecodeCase(bits, [64, 333], 8, 2, 64, 32, split: true));
                yield return new Case($"kivi_decode_attention_split_b{bits}_hd128", $"kivi{bits} lens 200,4100 heads 28/4 d=128 G=64",
                    () => KiviDecodeCase(bits, [200, 4100], 28, 4, 128, 64, split: true));
            }
        }

        /// <summary>fp16 rows [G, kvd] of one block, with a constant key channel and a constant value group in every block when asked.</summary>
        private Half[] KiviRows(int group, int kvd, bool constants, float scale)
        {
            var rows = Normal(group * kvd, scale).Select(v => (Half)v).ToArray();
            if (!constants) return rows;
            int c = rng.Next(kvd), j = rng.Next(group), g = rng.Next(kvd / group);
            for (int t = 0; t < group; t++) rows[t * kvd + c] = (Half)0.375f; // a constant key channel: s = 1, codes 0
            for (int i = g * group; i < (g + 1) * group; i++) rows[j * kvd + i] = (Half)(-1.5f); // a constant value group
            return rows;
        }

        /// <summary>A KIVI CPU storage of one layer (block size = G), every listed block prepared.</summary>
        private static Cpu.CpuKvStorage KiviStorage(int bits, int heads, int kvHeads, int d, int group)
        {
            var config = new ModelConfig
            {
                Architecture = ModelArchitecture.Llama, HiddenSize = heads * d, IntermediateSize = 1, NumLayers = 1, NumHeads = heads,
                NumKvHeads = kvHeads, HeadDim = d, VocabSize = 1, MaxPositions = 1 << 20,
            };
            var format = new KvCacheFormat { Kind = bits == 2 ? KvCacheKind.Kivi2 : KvCacheKind.Kivi4, Group = group, Window = group };
            return new Cpu.CpuKvStorage(config, group, format);
        }

        private static void WriteBlock(Cpu.CpuKvStorage storage, int block, Half[] k, Half[] v, int rows, int kvd)
        {
            storage.Prepare(block);
            var key = new float[kvd];
            var value = new float[kvd];
            for (int j = 0; j < rows; j++)
            {
                for (int i = 0; i < kvd; i++)
                {
                    key[i] = (float)k[j * kvd + i];
                    value[i] = (float)v[j * kvd + i];
                }
                storage.WriteRow(0, block, j, key, value);
            }
        }

        /// <summary>
        /// <paramref name="paged"/>: the blocks sit at scattered slots of a larger fp16 region and the kernel reads them
        /// through its sources array (how the CUDA backend compacts its KIVI cache).
        /// </summary>
        private CaseResult KiviQuantizeCase(int bits, int numBlocks, int group, int kvd, bool paged = false)
        {
            int numIds = numBlocks + 5, numSlots = paged ? numBlocks + 7 : numBlocks;
            var ids = Enumerable.Range(0, numIds).OrderBy(_ => rng.Next()).Take(numBlocks).ToArray(); // scattered compact ids
            var sources = paged ? Enumerable.Range(0, numSlots).OrderBy(_ => rng.Next()).Take(numBlocks).ToArray() : Enumerable.Range(0, numBlocks).ToArray();
            var keys = new Half[numSlots * group * kvd];
            var values = new Half[numSlots * group * kvd];
            var storage = KiviStorage(bits, kvd / 64, kvd / 64, 64, group); // kvd a multiple of 64 here
            for (int i = 0; i < numBlocks; i++)
            {
                var k = KiviRows(group, kvd, true, i % 3 == 2 ? 40f : 1f); // every third block spans a wide range
                var v = KiviRows(group, kvd, true, 1f);
                k.CopyTo(keys, sources[i] * group * kvd);
                v.CopyTo(values, sources[i] * group * kvd);
                WriteBlock(storage, ids[i], k, v, group, kvd);
                storage.Quantize(0, ids[i]);
            }
            int words = Kivi.CodeWords(kvd, group, bits), param = 2 * kvd;
            using var codes = DeviceBuffer<uint>.Allocate(device, (long)numIds * words);
            using var scales = DeviceBuffer<Half>.Allocate(device, (long)numIds * param);
            using var mins = DeviceBuffer<float>.Allocate(device, (long)numIds * param);
            codes.FillBytes(Sentinel);
            scales.FillBytes(Sentinel);
            mins.FillBytes(Sentinel);
            using var dk = DeviceBuffer<Half>.From(device, keys);
            using var dv = DeviceBuffer<Half>.From(device, values);
            using var dIds = DeviceBuffer<int>.From(device, ids);
            using var dSources = paged ? DeviceBuffer<int>.From(device, sources) : null;
            var pool = new OpsLauncher.KiviPool(codes, scales, mins, numIds, kvd, group, bits);
            ops.KiviQuantizeBlockF32(pool, dk, dv, dIds, numBlocks, dSources);
            device.Synchronize();
            var gCodes = codes.ToArray();
            var gScales = scales.ToArray();
            var gMins = mins.ToArray();
            long codeMismatches = 0, scaleMismatches = 0, minMismatches = 0, untouched = 0;
            double maxAbs = 0;
            var written = new HashSet<int>(ids);
            for (int i = 0; i < numBlocks; i++)
            {
                int id = ids[i];
                uint* rc = storage.Codes(0, id);
                Half* rs = storage.Scales(0, id);
                float* rm = storage.Mins(0, id);
                for (int w = 0; w < words; w++) codeMismatches += gCodes[(long)id * words + w] != rc[w] ? 1 : 0;
                for (int p = 0; p < param; p++)
                {
                    Half gs = gScales[(long)id * param + p];
                    float gm = gMins[(long)id * param + p];
                    scaleMismatches += BitConverter.HalfToUInt16Bits(gs) != BitConverter.HalfToUInt16Bits(rs[p]) ? 1 : 0;
                    minMismatches += BitConverter.SingleToUInt32Bits(gm) != BitConverter.SingleToUInt32Bits(rm[p]) ? 1 : 0;
                    if (float.IsFinite((float)gs)) maxAbs = Math.Max(maxAbs, Math.Abs((float)gs - (float)rs[p]));
                    if (float.IsFinite(gm)) maxAbs = Math.Max(maxAbs, Math.Abs(gm - rm[p]));
                }
            }
            for (int id = 0; id < numIds; id++) // ids no block was sent to must keep the sentinel
                if (!written.Contains(id))
                    for (int w = 0; w < words; w++) untouched += gCodes[(long)id * words + w] != 0xA5A5A5A5u ? 1 : 0;
            long mismatches = codeMismatches + scaleMismatches + minMismatches;
            bool pass = mismatches == 0 && untouched == 0;
            string shape = $"kivi{bits} {numBlocks} blocks of {numIds} ids G={group} kvd={kvd}{(paged ? $" from {numSlots} paged slots" : "")}";
            string? error = pass ? null : $"{codeMismatches} code words, {scaleMismatches} scales, {minMismatches} mins differ; {untouched} words of unlisted ids written";
            return new CaseResult("kivi_quantize_block_f32", shape, maxAbs, 0, 0, KiviExact.Source, mismatches, 0, untouched == 0, pass, error);
        }

        private CaseResult KiviDecodeCase(int bits, int[] lens, int heads, int kvHeads, int d, int group, bool split = false)
        {
            int seqs = lens.Length, kvd = kvHeads * d;
            var compact = lens.Select(l => l / group).ToArray(); // full blocks: quantized; the last partial block: the fp16 window
            int maxBlocks = Math.Max(1, compact.Max());
            int used = lens.Sum(l => (l + group - 1) / group), numIds = used + 3;
            var ids = Enumerable.Range(0, numIds).OrderBy(_ => rng.Next()).ToArray();
            var storage = KiviStorage(bits, heads, kvHeads, d, group);
            var blocks = new int[seqs][];
            var tables = new int[seqs * maxBlocks];
            Array.Fill(tables, -1); // never read
            var windowK = new Half[seqs][];
            var windowV = new Half[seqs][];
            int next = 0;
            for (int s = 0; s < seqs; s++)
            {
                blocks[s] = new int[(lens[s] + group - 1) / group];
                for (int b = 0; b < blocks[s].Length; b++)
                {
                    int id = blocks[s][b] = ids[next++];
                    int rows = Math.Min(group, lens[s] - b * group);
                    var k = KiviRows(group, kvd, b % 5 == 1, 1f);
                    var v = KiviRows(group, kvd, b % 5 == 1, 1f);
                    WriteBlock(storage, id, k, v, rows, kvd);
                    if (b < compact[s])
                    {
                        tables[s * maxBlocks + b] = id;
                        storage.Quantize(0, id);
                        storage.Compact(id);
                    }
                    else
                    {
                        windowK[s] = k.AsSpan(0, rows * kvd).ToArray();
                        windowV[s] = v.AsSpan(0, rows * kvd).ToArray();
                    }
                }
            }
            var q = Normal(seqs * heads * d, 1f);

            // Reference: the CPU's KIVI attention (quantized partial and fp16 window partial, LSE-merged).
            var refO = new float[seqs * heads * d];
            var refLse = Enumerable.Repeat(float.NegativeInfinity, seqs * heads).ToArray();
            var layer = new Cpu.Attention.Layer(storage, 0, group, heads, kvHeads, d);
            var scores = new float[lens.Max() + group];
            var partial = new float[d];
            fixed (float* pq = q)
            fixed (float* po = refO)
            fixed (float* pl = refLse)
                for (int s = 0; s < seqs; s++)
                    for (int h = 0; h < heads; h++)
                        Cpu.Attention.Suffix(layer, blocks[s], pq + s * heads * d, po + s * heads * d, pl + s * heads, 1, lens[s] - 1, 0, h, null,
                            scores, partial, compact[s]);

            // The GPU's starting state: the fp16 window's partial (what the fp16 decode kernel would produce), computed here.
            var o0 = new float[seqs * heads * d];
            var lse0 = Enumerable.Repeat(float.NegativeInfinity, seqs * heads).ToArray();
            float scale = 1f / MathF.Sqrt(d);
            for (int s = 0; s < seqs; s++)
            {
                if (windowK[s] == null) continue;
                int rows = windowK[s].Length / kvd;
                for (int h = 0; h < heads; h++)
                {
                    int c0 = h / (heads / kvHeads) * d;
                    var sc = new double[rows];
                    double max = double.NegativeInfinity;
                    for (int j = 0; j < rows; j++)
                    {
                        double dot = 0;
                        for (int i = 0; i < d; i++) dot += q[(s * heads + h) * d + i] * (double)(float)windowK[s][j * kvd + c0 + i];
                        sc[j] = dot * scale;
                        max = Math.Max(max, sc[j]);
                    }
                    double sum = 0;
                    for (int j = 0; j < rows; j++) sum += sc[j] = Math.Exp(sc[j] - max);
                    for (int i = 0; i < d; i++)
                    {
                        double acc = 0;
                        for (int j = 0; j < rows; j++) acc += sc[j] * (float)windowV[s][j * kvd + c0 + i];
                        o0[(s * heads + h) * d + i] = (float)(acc / sum);
                    }
                    lse0[s * heads + h] = (float)(max + Math.Log(sum));
                }
            }

            // GPU: the compact pool (the CPU's codes, so this case checks attention alone), decode, merge into the window's state.
            int words = Kivi.CodeWords(kvd, group, bits), param = 2 * kvd;
            var hCodes = new uint[(long)numIds * words];
            var hScales = new Half[(long)numIds * param];
            var hMins = new float[(long)numIds * param];
            for (int s = 0; s < seqs; s++)
                for (int b = 0; b < compact[s]; b++)
                {
                    int id = blocks[s][b];
                    new ReadOnlySpan<uint>(storage.Codes(0, id), words).CopyTo(hCodes.AsSpan(id * words));
                    new ReadOnlySpan<Half>(storage.Scales(0, id), param).CopyTo(hScales.AsSpan(id * param));
                    new ReadOnlySpan<float>(storage.Mins(0, id), param).CopyTo(hMins.AsSpan(id * param));
                }
            using var codes = DeviceBuffer<uint>.From(device, hCodes);
            using var dScales = DeviceBuffer<Half>.From(device, hScales);
            using var dMins = DeviceBuffer<float>.From(device, hMins);
            using var dq = DeviceBuffer<float>.From(device, q);
            using var dTables = DeviceBuffer<int>.From(device, tables);
            using var dCompact = DeviceBuffer<int>.From(device, compact);
            long splits = (long)seqs * heads * (split ? OpsLaunchPlans.KiviMaxSplits : maxBlocks);
            using var partialO = DeviceBuffer<float>.Allocate(device, splits * d);
            using var partialLse = DeviceBuffer<float>.Allocate(device, splits);
            partialO.FillBytes(Sentinel); // every split is written, the empty ones included
            partialLse.FillBytes(Sentinel);
            using var o = InPlace(o0);
            using var lse = InPlace(lse0);
            var pool = new OpsLauncher.KiviPool(codes, dScales, dMins, numIds, kvd, group, bits);
            string kernel = split ? $"kivi_decode_attention_split_b{bits}_hd{d}" : "kivi_decode_attention_f32";
            string shape = $"kivi{bits} lens {string.Join(',', lens)} heads {heads}/{kvHeads} d={d} G={group}";
            if (split)
                shape += $" splits={ops.KiviDecodeAttentionSplit(o, lse, partialO, partialLse, dq, pool, dTables, dCompact, seqs, maxBlocks, compact.Max(), heads, kvHeads, d)}";
            else
            {
                ops.KiviDecodeAttentionF32(partialO, partialLse, dq, pool, dTables, dCompact, seqs, maxBlocks, heads, kvHeads, d);
                ops.KiviMergePartialsF32(o, lse, partialO, partialLse, seqs, heads, maxBlocks, d);
            }
            var ro = Compare(kernel, shape + " (o)", o, refO, KiviAttentionTol);
            var rl = Compare(kernel, shape + " (lse)", lse, refLse, KiviAttentionTol);
            if (!ro.Pass) return ro;
            if (!rl.Pass) return rl;
            return ro with { Shape = shape, MaxAbsError = Math.Max(ro.MaxAbsError, rl.MaxAbsError), MeanRelativeError = Math.Max(ro.MeanRelativeError, rl.MeanRelativeError) };
        }
    }
}
