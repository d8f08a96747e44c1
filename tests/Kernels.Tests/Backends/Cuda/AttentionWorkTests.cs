// AttentionWork's items, executed by a model of paged_attention_mma's contract (every item's rows against its keys,
// the causal bound pos0 + j, unmasked levels) and merged through the slot lists, must give every query row exactly
// the softmax over its own keys [0, position]: levels, suffixes and splits cover each key once for each row.
using Kernels.Runtime.Backends.Cuda;

namespace Kernels.Tests.Backends.Cuda;

public class AttentionWorkTests
{
    private const int BlockSize = 16, HeadDim = 4;

    /// <summary>A random paged cache: six sequences sharing a 64-key prefix, the first three also 32 more keys.</summary>
    private sealed class Batch
    {
        public readonly List<AttentionWork.Sequence> Sequences = new();
        public readonly List<AttentionWork.Level> Levels = new();
        public readonly List<int> Tables = new();
        public readonly int[] Positions; // per q row
        public readonly int[] TableOf;   // per q row
        public readonly int Rows, KvHeads, Group, Width;
        public readonly double[] K, V, Q;

        public Batch(int[] cached, int[] newRows, int kvHeads, int group, bool share, int seed)
        {
            var rng = new Random(seed);
            (KvHeads, Group) = (kvHeads, group);
            Width = (cached.Zip(newRows, (c, n) => c + n).Max() + BlockSize - 1) / BlockSize;
            int nextBlock = 6, row = 0;
            var positions = new List<int>();
            var tableOf = new List<int>();
            for (int s = 0; s < cached.Length; s++)
            {
                int table = Tables.Count;
                for (int b = 0; b < Width; b++)
                    Tables.Add(share && b < 4 ? b : share && s < 3 && b < 6 ? b : nextBlock++);
                int suffix = !share ? 0 : s < 3 ? 96 : 64;
                Sequences.Add(new AttentionWork.Sequence(row, newRows[s], cached[s], table, suffix));
                for (int j = 0; j < newRows[s]; j++, row++)
                {
                    positions.Add(cached[s] + j);
                    tableOf.Add(table);
                }
            }
            if (share)
            {
                Levels.Add(new AttentionWork.Level(0, 64, Enumerable.Range(0, cached.Length).ToArray()));
                Levels.Add(new AttentionWork.Level(64, 96, [0, 1, 2]));
            }
            Rows = row;
            Positions = positions.ToArray();
            TableOf = tableOf.ToArray();
            int slots = nextBlock * BlockSize * kvHeads * HeadDim;
            K = Enumerable.Range(0, slots).Select(_ => rng.NextDouble() * 2 - 1).ToArray();
            V = Enumerable.Range(0, slots).Select(_ => rng.NextDouble() * 2 - 1).ToArray();
            Q = Enumerable.Range(0, Rows * kvHeads * group * HeadDim).Select(_ => rng.NextDouble() * 2 - 1).ToArray();
        }

        private int Heads => KvHeads * Group;
        private long KeyRow(int table, int t, int kvh) => ((long)Tables[table + t / BlockSize] * BlockSize + t % BlockSize) * KvHeads * HeadDim + kvh * HeadDim;

        /// <summary>(o, lse) of q row r, head h over the keys <paramref name="sees"/> admits in [begin, end) of a table.</summary>
        public (double[] O, double Lse) Attend(int r, int h, int table, int begin, int end, Func<int, bool> sees)
        {
            var scores = new List<(double S, long At)>();
            for (int t = begin; t < end; t++)
            {
                if (!sees(t)) continue;
                long at = KeyRow(table, t, h / Group);
                double dot = 0;
                for (int d = 0; d < HeadDim; d++) dot += Q[((long)r * Heads + h) * HeadDim + d] * K[at + d];
                scores.Add((dot, at));
            }
            var o = new double[HeadDim];
            if (scores.Count == 0) return (o, double.NegativeInfinity);
            double m = scores.Max(x => x.S), sum = scores.Sum(x => Math.Exp(x.S - m));
            foreach (var (sc, at) in scores)
                for (int d = 0; d < HeadDim; d++) o[d] += Math.Exp(sc - m) / sum * V[at + d];
            return (o, m + Math.Log(sum));
        }

        /// <summary>The work executed as the kernel would, then merged through its slots: per (row, head).</summary>
        public (double[] O, double Lse)[,] Run(AttentionWork work)
        {
            int outRows = work.Direct ? Rows : work.PartialRows;
            var partial = new (double[] O, double Lse)[outRows, Heads];
            for (int i = 0; i < work.ItemCount; i++)
            {
                var it = work.Items.AsSpan(i * AttentionWork.ItemInts, AttentionWork.ItemInts).ToArray();
                Assert.That(it[1] * Group, Is.LessThanOrEqualTo(AttentionWork.CtaPairs), $"item {i}: rows x G past a CTA's 64 pairs");
                for (int j = 0; j < it[1]; j++)
                    for (int h = 0; h < Heads; h++)
                    {
                        int last = it[5] >= AttentionWork.NoMask ? int.MaxValue : it[5] + j;
                        var cell = Attend(work.RowIds[it[0] + j], h, it[2], it[3], it[4], t => t <= last);
                        Assert.That(partial[it[6] + j, h].O, Is.Null, $"out row {it[6] + j} written twice");
                        partial[it[6] + j, h] = cell;
                    }
            }
            if (work.Direct) return partial;
            var merged = new (double[] O, double Lse)[Rows, Heads];
            for (int r = 0; r < Rows; r++)
                for (int h = 0; h < Heads; h++)
                {
                    var parts = work.Slots[work.SlotStarts[r]..work.SlotStarts[r + 1]].Select(p => partial[p, h]).ToArray();
                    double m = parts.Max(p => p.Lse);
                    var o = new double[HeadDim];
                    if (double.IsNegativeInfinity(m)) { merged[r, h] = (o, m); continue; }
                    double sum = parts.Sum(p => Math.Exp(p.Lse - m));
                    foreach (var p in parts)
                        for (int d = 0; d < HeadDim; d++) o[d] += Math.Exp(p.Lse - m) / sum * p.O[d];
                    merged[r, h] = (o, m + Math.Log(sum));
                }
            return merged;
        }

        public void AssertExact(AttentionWork work)
        {
            var got = Run(work);
            for (int r = 0; r < Rows; r++)
                for (int h = 0; h < Heads; h++)
                {
                    var want = Attend(r, h, TableOf[r], 0, Positions[r] + 1, _ => true);
                    Assert.That(got[r, h].O, Is.Not.Null, $"row {r} head {h}: no item wrote it");
                    Assert.That(got[r, h].Lse, Is.EqualTo(want.Lse).Within(1e-9), $"row {r} head {h}: lse");
                    for (int d = 0; d < HeadDim; d++) Assert.That(got[r, h].O[d], Is.EqualTo(want.O[d]).Within(1e-9), $"row {r} head {h} dim {d}");
                }
        }
    }

    [TestCase(1, 4, 64, 16)]     // decode, G = 4, few CTAs wanted: no split
    [TestCase(1, 4, 64, 4000)]   // decode, many CTAs wanted: the shared and own ranges split
    [TestCase(20, 7, 32, 300)]   // a prefill chunk in every sequence, G = 7 (9 rows an item)
    [TestCase(3, 1, 64, 1000)]   // G = 1: 64 rows an item
    public void LevelsSuffixesAndSplitsGiveEachRowItsOwnSoftmax(int newRows, int group, int keysPerTile, int targetCtas)
    {
        var batch = new Batch([100, 97, 130, 64, 80, 700], Enumerable.Repeat(newRows, 6).ToArray(), kvHeads: 2, group, share: true, seed: newRows + group);
        var work = AttentionWork.Build(batch.Sequences, batch.Levels, batch.Rows, group, keysPerTile, batch.KvHeads, targetCtas, maxPartialRows: 1 << 20)!;
        Assert.That(work, Is.Not.Null);
        Assert.That(work.Direct, Is.False, "levels need the merge");
        batch.AssertExact(work);
        for (int i = 0; i < work.ItemCount; i++)
        {
            int begin = work.Items[i * AttentionWork.ItemInts + 3];
            bool levelItem = work.Items[i * AttentionWork.ItemInts + 5] >= AttentionWork.NoMask;
            if (levelItem) Assert.That(begin is 0 or 64 || (begin % keysPerTile == 0), $"item {i}: a split of a level starts on a tile boundary");
        }
        if (targetCtas > 1000) Assert.That(work.Splits, Is.GreaterThan(1), "a large target splits the ranges");
    }

    [Test]
    public void WithoutLevelsOrSplitsTheItemsWriteTheOutputDirectly()
    {
        var batch = new Batch([0, 40, 7], [50, 1, 30], kvHeads: 2, group: 4, share: false, seed: 3);
        var work = AttentionWork.Build(batch.Sequences, batch.Levels, batch.Rows, 4, 64, batch.KvHeads, targetCtas: 1, maxPartialRows: 0)!;
        Assert.That(work.Direct, Is.True);
        Assert.That(work.SlotStarts, Is.Empty);
        batch.AssertExact(work);
    }

    [Test]
    public void ASplitPrefillIsMergedAndCoversEveryKeyOnce()
    {
        var batch = new Batch([900], [40], kvHeads: 2, group: 4, share: false, seed: 4);
        var work = AttentionWork.Build(batch.Sequences, batch.Levels, batch.Rows, 4, 64, batch.KvHeads, targetCtas: 264, maxPartialRows: 4096)!;
        Assert.That(work.Direct, Is.False);
        Assert.That(work.Splits, Is.GreaterThan(1));
        batch.AssertExact(work);
    }

    [Test]
    public void SplitsShrinkToTheWorkspaceAndLevelsThatCannotFitGiveNull()
    {
        var batch = new Batch([1000, 900, 700, 600, 800, 1200], [1, 1, 1, 1, 1, 1], kvHeads: 2, group: 4, share: true, seed: 5);
        var roomy = AttentionWork.Build(batch.Sequences, batch.Levels, batch.Rows, 4, 64, batch.KvHeads, targetCtas: 4000, maxPartialRows: 1 << 20)!;
        // Level 1 (6 rows), level 2 (3 rows), six suffixes (1 row each): 15 partial rows without splits.
        var tight = AttentionWork.Build(batch.Sequences, batch.Levels, batch.Rows, 4, 64, batch.KvHeads, targetCtas: 4000, maxPartialRows: 15)!;
        Assert.That(roomy.PartialRows, Is.GreaterThan(15));
        Assert.That(tight.PartialRows, Is.EqualTo(15));
        Assert.That(tight.Splits, Is.EqualTo(1));
        batch.AssertExact(tight);
        Assert.That(AttentionWork.Build(batch.Sequences, batch.Levels, batch.Rows, 4, 64, batch.KvHeads, 4000, maxPartialRows: 14), Is.Null);
    }

    [Test]
    public void PaddingAddsEmptyItemsThatChangeNothing()
    {
        var batch = new Batch([100, 97, 130, 64, 80, 700], [1, 1, 1, 1, 1, 1], kvHeads: 2, group: 4, share: true, seed: 6);
        var work = AttentionWork.Build(batch.Sequences, batch.Levels, batch.Rows, 4, 64, batch.KvHeads, 264, 1 << 20)!;
        var padded = work.Padded(32);
        Assert.That(padded.ItemCount % 32, Is.Zero);
        Assert.That(padded.ItemCount, Is.GreaterThanOrEqualTo(work.ItemCount).And.LessThan(work.ItemCount + 32));
        Assert.That(padded.Items.AsSpan(0, work.Items.Length).SequenceEqual(work.Items), Is.True, "the real items come first, unchanged");
        Assert.That(padded.Items.Skip(work.Items.Length).All(v => v == 0), Is.True, "a padding item has no rows and no keys");
        batch.AssertExact(padded);
        Assert.That(padded.Padded(32), Is.SameAs(padded));
    }

    [Test]
    public void GroupsBeyondACtaAreRefused() =>
        Assert.Throws<ArgumentOutOfRangeException>(() => AttentionWork.Build([], [], 0, group: 65, 64, 1, 1, 0));
}

public class MmaAttentionLaunchPlansTests
{
    private static AttentionWork Work(int[] cached, int[] rows, int group, int target = 1, int maxPartial = 0)
    {
        var seqs = new List<AttentionWork.Sequence>();
        int row = 0;
        for (int s = 0; s < cached.Length; s++)
        {
            seqs.Add(new AttentionWork.Sequence(row, rows[s], cached[s], s * 64, 0));
            row += rows[s];
        }
        return AttentionWork.Build(seqs, [], row, group, 64, 8, target, maxPartial)!;
    }

    [TestCase(64, 32, 16384 + 256)]
    [TestCase(64, 64, 32768 + 512)]
    [TestCase(128, 32, 32768 + 256)]
    [TestCase(128, 64, 65536 + 512)]
    public void TheGridIsItemsByKvHeadsWithTheKernelsSharedMemory(int d, int keys, int bytes)
    {
        var work = Work([0, 100], [30, 1], group: 4);
        var p = OpsLaunchPlans.PagedAttentionMma("bf16", 31L * 32 * d, 31L * 32, 31L * 32 * d, 1L << 24, 1L << 24, 128, work.Items.Length, work.RowIds.Length,
            work, 31, 32, 8, d, 16, 40, keys)!.Value;
        Assert.That(p.Kernel, Is.EqualTo($"paged_attention_mma_hd{d}_k{keys}_bf16"));
        Assert.That((p.GridX, p.GridY, p.BlockX, p.SharedBytes), Is.EqualTo(((uint)work.ItemCount, 8u, 128u, (uint)bytes)));
        Assert.That(OpsLaunchPlans.MmaAttentionSharedBytes(d, keys), Is.EqualTo(bytes), "paged_attention_mma_smem_bytes");
    }

    [Test]
    public void ItemsThatWouldReadOrWriteOutsideTheirBuffersAreRefusedOnTheHost()
    {
        var work = Work([0, 100], [30, 1], group: 4);
        KernelLaunch? Plan(int qRows = 31, long tables = 128, long o = 31L * 32 * 128, string suffix = "f16", int heads = 32, int kvHeads = 8, int d = 128, int keys = 64) =>
            OpsLaunchPlans.PagedAttentionMma(suffix, o, 31L * 32, 31L * 32 * 128, 1L << 24, 1L << 24, tables, work.Items.Length, work.RowIds.Length, work, qRows, heads,
                kvHeads, d, 16, 40, keys);
        Assert.That(Plan(), Is.Not.Null);
        Assert.That(Assert.Catch<ArgumentException>(() => Plan(qRows: 30))!.Message, Does.Contain("outside [0, 30)"));
        Assert.That(Assert.Catch<ArgumentException>(() => Plan(tables: 70))!.Message, Does.Contain("table entries"));
        Assert.That(Assert.Catch<ArgumentException>(() => Plan(o: 100))!.ParamName, Is.EqualTo("o"));
        Assert.That(Assert.Catch<ArgumentException>(() => Plan(suffix: "f32"))!.ParamName, Is.EqualTo("headDim"));
        Assert.That(Assert.Catch<ArgumentException>(() => Plan(d: 256))!.ParamName, Is.EqualTo("headDim"));
        Assert.That(Assert.Catch<ArgumentException>(() => Plan(keys: 128))!.ParamName, Is.EqualTo("tileKeys"));
        Assert.That(Assert.Catch<ArgumentException>(() => Plan(heads: 32, kvHeads: 4))!.Message, Does.Contain("rows at"),
            "items of 16 rows (made for G = 4) are past a CTA's 64 pairs at G = 8");
    }

    [Test]
    public void TheMergePlanCoversRowsTimesHeadsAndChecksThePartials()
    {
        var p = OpsLaunchPlans.AttentionMergeSlots(10 * 32 * 128, 10 * 32, 40 * 32 * 128, 40 * 32, 11, 40, 10, 40, 32, 128)!.Value;
        Assert.That((p.Kernel, p.GridX, p.BlockX), Is.EqualTo(("attention_merge_slots_f32", 320u, 128u)));
        Assert.That(Assert.Catch<ArgumentException>(() => OpsLaunchPlans.AttentionMergeSlots(10 * 32 * 128, 10 * 32, 40 * 32 * 128, 40 * 32, 10, 40, 10, 40, 32, 128))!.ParamName,
            Is.EqualTo("slotStarts"));
        Assert.That(OpsLaunchPlans.AttentionMergeSlots(0, 0, 0, 0, 1, 0, 0, 0, 32, 128), Is.Null);
    }
}
