// A step's attention as paged_attention_mma work items (kernels/ops/paged_attention_mma.cuh): each Hydragen level as
// every member's query rows against the shared keys (read once for all of them, unmasked), each sequence's causal
// suffix, long key ranges split so the grid fills the GPU, and, where a row gets several partial results, the slot
// lists attention_merge_slots_f32 merges. Pure: no driver call, so it is tested on the CPU against a model of the
// kernel's contract.
namespace Kernels.Runtime.Backends.Cuda;

internal sealed class AttentionWork
{
    /// <summary>Ints per item: row list, rows, table, key begin, key end, pos0, out row, 0 (the kernel's layout).</summary>
    public const int ItemInts = 8;
    /// <summary>(query row, head) pairs per CTA (ops::kMmaRows): an item holds at most CtaPairs / G query rows.</summary>
    public const int CtaPairs = 64;
    /// <summary>pos0 of an unmasked item (ops::kMmaNoMask).</summary>
    public const int NoMask = 1 << 30;
    /// <summary>A split keeps at least this many keys (fewer only when the range is shorter), so its fixed costs (Q load, output, merge) stay small.</summary>
    public const int MinKeysPerSplit = 256;
    public const int MaxSplits = 64;

    /// <summary>
    /// A sequence's part of the step: q rows [FirstRow, FirstRow + Rows) at positions FirstPosition, FirstPosition + 1, ...
    /// (each sees keys up to its own position), its block table at offset Table of the step's tables, and its own keys
    /// from SuffixStart (the keys before it are in levels).
    /// </summary>
    public readonly record struct Sequence(int FirstRow, int Rows, int FirstPosition, int Table, int SuffixStart);

    /// <summary>Keys [Start, End) held in the same blocks by Members (indices into the sequences), read through the first member's table.</summary>
    public readonly record struct Level(int Start, int End, int[] Members);

    /// <summary>ItemCount x <see cref="ItemInts"/> ints.</summary>
    public int[] Items { get; }
    public int ItemCount => Items.Length / ItemInts;
    public int[] RowIds { get; }
    /// <summary>Rows of the partial output the items write; 0 when they write the step's output directly (no merge).</summary>
    public int PartialRows { get; }
    /// <summary>Row r's partial rows are Slots[SlotStarts[r] .. SlotStarts[r + 1]) (empty arrays when direct).</summary>
    public int[] SlotStarts { get; }
    public int[] Slots { get; }
    /// <summary>The split factor the grid asked for (1: none).</summary>
    public int Splits { get; }
    public bool Direct => PartialRows == 0;

    private AttentionWork(int[] items, int[] rowIds, int partialRows, int[] slotStarts, int[] slots, int splits) =>
        (Items, RowIds, PartialRows, SlotStarts, Slots, Splits) = (items, rowIds, partialRows, slotStarts, slots, splits);

    /// <summary>
    /// This work with empty items appended (no rows, no keys: their CTAs exit without a write) up to a multiple of
    /// <paramref name="bucket"/> items, so a captured decode graph's grid holds for every step of its bucket.
    /// </summary>
    public AttentionWork Padded(int bucket)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(bucket, 1);
        int count = (ItemCount + bucket - 1) / bucket * bucket;
        if (count == ItemCount) return this;
        var items = new int[count * ItemInts];
        Items.CopyTo(items, 0);
        return new AttentionWork(items, RowIds, PartialRows, SlotStarts, Slots, Splits);
    }

    /// <summary>
    /// The items for <paramref name="sequences"/> (q rows 0 .. <paramref name="rows"/> - 1 between them) and
    /// <paramref name="levels"/> (parents before children; each member's levels tile [0, SuffixStart)). Key ranges are
    /// split by one factor, as many as <paramref name="targetCtas"/> CTAs ask for (at least
    /// <see cref="MinKeysPerSplit"/> keys a split, split points on <paramref name="keysPerTile"/>), reduced until the
    /// partial rows fit <paramref name="maxPartialRows"/>. Returns null when even one split per range does not fit (the
    /// caller attends without levels).
    /// </summary>
    public static AttentionWork? Build(IReadOnlyList<Sequence> sequences, IReadOnlyList<Level> levels, int rows, int group, int keysPerTile,
        int kvHeads, int targetCtas, int maxPartialRows)
    {
        ArgumentNullException.ThrowIfNull(sequences);
        ArgumentNullException.ThrowIfNull(levels);
        if (group < 1 || group > CtaPairs) throw new ArgumentOutOfRangeException(nameof(group), group, $"a GQA group of 1 to {CtaPairs} query heads");
        if (keysPerTile < 1) throw new ArgumentOutOfRangeException(nameof(keysPerTile), keysPerTile, "keysPerTile must be >= 1");
        int tileRows = CtaPairs / group;

        // Ranges: (row ids, key begin, key end, pos0 of the first row, table); a causal range's rows are consecutive.
        var ranges = new List<(int[] Rows, int Begin, int End, int Pos0, int Table)>();
        foreach (var level in levels)
        {
            if (level.Members.Length == 0 || level.End <= level.Start) continue;
            var members = level.Members.SelectMany(m => Enumerable.Range(sequences[m].FirstRow, sequences[m].Rows)).ToArray();
            for (int r0 = 0; r0 < members.Length; r0 += tileRows)
                ranges.Add((members[r0..Math.Min(members.Length, r0 + tileRows)], level.Start, level.End, NoMask, sequences[level.Members[0]].Table));
        }
        bool leveled = ranges.Count > 0;
        foreach (var s in sequences)
            for (int r0 = 0; r0 < s.Rows; r0 += tileRows)
            {
                int n = Math.Min(tileRows, s.Rows - r0), pos0 = s.FirstPosition + r0;
                ranges.Add((Enumerable.Range(s.FirstRow + r0, n).ToArray(), s.SuffixStart, pos0 + n, pos0, s.Table));
            }

        int baseCtas = Math.Max(1, ranges.Count * kvHeads);
        for (int wanted = Math.Clamp((targetCtas + baseCtas - 1) / baseCtas, 1, MaxSplits); wanted >= 1; wanted--)
        {
            var pieces = new List<(int Range, int Begin, int End)>();
            long partial = 0;
            bool split = false;
            for (int i = 0; i < ranges.Count; i++)
            {
                var (rowIds, begin, end, _, _) = ranges[i];
                int keys = end - begin;
                int parts = Math.Clamp(Math.Min(wanted, (keys + MinKeysPerSplit - 1) / MinKeysPerSplit), 1, MaxSplits);
                int per = Math.Max(1, (keys + parts - 1) / parts);
                per = (per + keysPerTile - 1) / keysPerTile * keysPerTile;
                int first = pieces.Count;
                for (int b = begin; ; b += per)
                {
                    pieces.Add((i, b, Math.Min(end, b + per)));
                    partial += rowIds.Length;
                    if (b + per >= end) break;
                }
                split |= pieces.Count - first > 1;
            }
            bool direct = !leveled && !split;
            if (!direct && partial > maxPartialRows) continue;
            return Make(ranges, pieces, rows, direct, wanted);
        }
        return null;
    }

    private static AttentionWork Make(List<(int[] Rows, int Begin, int End, int Pos0, int Table)> ranges, List<(int Range, int Begin, int End)> pieces,
        int rows, bool direct, int splits)
    {
        var items = new int[pieces.Count * ItemInts];
        var rowIds = new List<int>();
        var perRow = direct ? null : Enumerable.Range(0, rows).Select(_ => new List<int>()).ToArray();
        int outRows = 0;
        for (int p = 0; p < pieces.Count; p++)
        {
            var (range, begin, end) = pieces[p];
            var r = ranges[range];
            int outRow = direct ? r.Rows[0] : outRows;
            items[p * ItemInts + 0] = rowIds.Count;
            items[p * ItemInts + 1] = r.Rows.Length;
            items[p * ItemInts + 2] = r.Table;
            items[p * ItemInts + 3] = begin;
            items[p * ItemInts + 4] = end;
            items[p * ItemInts + 5] = r.Pos0;
            items[p * ItemInts + 6] = outRow;
            rowIds.AddRange(r.Rows);
            if (!direct)
                for (int j = 0; j < r.Rows.Length; j++) perRow![r.Rows[j]].Add(outRows + j);
            outRows += r.Rows.Length;
        }
        if (direct) return new AttentionWork(items, rowIds.ToArray(), 0, [], [], 1);
        var starts = new int[rows + 1];
        var slots = new List<int>();
        for (int q = 0; q < rows; q++)
        {
            starts[q] = slots.Count;
            slots.AddRange(perRow![q]);
        }
        starts[rows] = slots.Count;
        return new AttentionWork(items, rowIds.ToArray(), outRows, starts, slots.ToArray(), splits);
    }
}
