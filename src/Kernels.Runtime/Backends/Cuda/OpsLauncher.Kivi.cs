// Launchers of the KIVI kernels (kernels/ops/kivi.cuh): block quantize, fused-dequant decode attention split per
// compact block, and the merge of those splits into (o, lse). Layout: src/Kernels.Runtime/Quantization/Kivi.cs.
namespace Kernels.Runtime.Backends.Cuda;

internal sealed unsafe partial class OpsLauncher
{
    /// <summary>
    /// One layer's compact KIVI pool: <paramref name="NumIds"/> block ids, each Kivi.CodeWords(KvDim, Group, Bits)
    /// code words, 2 * KvDim fp16 scales and 2 * KvDim fp32 mins (the CPU's per-block layout, ids side by side).
    /// </summary>
    public sealed record KiviPool(DeviceBuffer<uint> Codes, DeviceBuffer<Half> Scales, DeviceBuffer<float> Mins, int NumIds, int KvDim, int Group, int Bits);

    /// <summary>Floats of partial o plus partial lse that <see cref="KiviDecodeAttentionF32"/> writes: [numSeqs, heads, maxBlocks] x (headDim + 1).</summary>
    public static long KiviPartialFloats(int numSeqs, int heads, int maxBlocks, int headDim) => (long)numSeqs * heads * maxBlocks * (headDim + 1);

    /// <summary>
    /// Quantizes <paramref name="numBlocks"/> full blocks of fp16 keys and values [blocks, G, kvd]: block sources[i]
    /// (block i without <paramref name="sources"/>) goes to compact id blockIds[i] (each in [0, pool.NumIds), distinct).
    /// </summary>
    public void KiviQuantizeBlockF32(KiviPool pool, DeviceBuffer<Half> keys, DeviceBuffer<Half> values, DeviceBuffer<int> blockIds, int numBlocks,
        DeviceBuffer<int>? sources = null)
    {
        ArgumentNullException.ThrowIfNull(pool);
        ArgumentNullException.ThrowIfNull(keys);
        ArgumentNullException.ThrowIfNull(values);
        ArgumentNullException.ThrowIfNull(blockIds);
        long blockElements = (long)pool.Group * pool.KvDim;
        if (OpsLaunchPlans.KiviQuantizeBlock(pool.Codes.Length, pool.Scales.Length, pool.Mins.Length, keys.Length, values.Length, blockIds.Length,
                numBlocks, pool.NumIds, pool.KvDim, pool.Group, pool.Bits, sources?.Length ?? -1,
                sources == null ? 0 : (int)Math.Min(Math.Min(keys.Length, values.Length) / Math.Max(1, blockElements), int.MaxValue)) is not { } plan) return;
        SamePool(pool);
        SameDevice(keys, nameof(keys));
        SameDevice(values, nameof(values));
        SameDevice(blockIds, nameof(blockIds));
        if (sources != null) SameDevice(sources, nameof(sources));
        ulong pc = pool.Codes.Pointer, ps = pool.Scales.Pointer, pm = pool.Mins.Pointer, pk = keys.Pointer, pv = values.Pointer, pi = blockIds.Pointer;
        ulong pr = sources?.Pointer ?? 0;
        int nb = numBlocks, kvd = pool.KvDim, g = pool.Group, bits = pool.Bits;
        void** args = stackalloc void*[] { &pc, &ps, &pm, &pk, &pv, &pi, &pr, &nb, &kvd, &g, &bits };
        Launch(plan, args);
    }

    /// <summary>
    /// The quantized part of one decode row per sequence: q fp32 [numSeqs, heads, headDim]; sequence s reads its first
    /// numCompact[s] (&lt;= maxBlocks) blocks of blockTables [numSeqs, maxBlocks] from the pool. Writes the normalized
    /// partial per (s, head, block) into partialO [numSeqs, heads, maxBlocks, headDim] and its natural-log lse into
    /// partialLse [numSeqs, heads, maxBlocks] (blocks past numCompact[s]: o = 0, lse = -inf). Merge them with
    /// <see cref="KiviMergePartialsF32"/>.
    /// </summary>
    public void KiviDecodeAttentionF32(DeviceBuffer<float> partialO, DeviceBuffer<float> partialLse, DeviceBuffer<float> q, KiviPool pool,
        DeviceBuffer<int> blockTables, DeviceBuffer<int> numCompact, int numSeqs, int maxBlocks, int heads, int kvHeads, int headDim)
    {
        ArgumentNullException.ThrowIfNull(partialO);
        ArgumentNullException.ThrowIfNull(partialLse);
        ArgumentNullException.ThrowIfNull(q);
        ArgumentNullException.ThrowIfNull(pool);
        ArgumentNullException.ThrowIfNull(blockTables);
        ArgumentNullException.ThrowIfNull(numCompact);
        if (pool.KvDim != kvHeads * headDim)
            throw new ArgumentException($"the pool holds kvDim = {pool.KvDim} channels, the attention shape kvHeads * headDim = {kvHeads * headDim}", nameof(pool));
        if (OpsLaunchPlans.KiviDecodeAttention(partialO.Length, partialLse.Length, q.Length, pool.Codes.Length, pool.Scales.Length, pool.Mins.Length,
                blockTables.Length, numCompact.Length, numSeqs, maxBlocks, pool.NumIds, heads, kvHeads, headDim, pool.Group, pool.Bits) is not { } plan) return;
        SameDevice(partialO, nameof(partialO));
        SameDevice(partialLse, nameof(partialLse));
        SameDevice(q, nameof(q));
        SamePool(pool);
        SameDevice(blockTables, nameof(blockTables));
        SameDevice(numCompact, nameof(numCompact));
        ulong po = partialO.Pointer, pl = partialLse.Pointer, pq = q.Pointer, pc = pool.Codes.Pointer, ps = pool.Scales.Pointer, pm = pool.Mins.Pointer;
        ulong pt = blockTables.Pointer, pn = numCompact.Pointer;
        int ns = numSeqs, mb = maxBlocks, nh = heads, nkv = kvHeads, hd = headDim, g = pool.Group, bits = pool.Bits;
        void** args = stackalloc void*[] { &po, &pl, &pq, &pc, &ps, &pm, &pt, &pn, &ns, &mb, &nh, &nkv, &hd, &g, &bits };
        Launch(plan, args);
    }

    /// <summary>
    /// (o, lse) [numSeqs, heads, headDim] / [numSeqs, heads] := their merge with every split of partialO / partialLse
    /// (as <see cref="KiviDecodeAttentionF32"/> wrote them). o and lse are read first: set lse = -inf (o any finite
    /// value) for "nothing yet", or pass the fp16 window's partial.
    /// </summary>
    public void KiviMergePartialsF32(DeviceBuffer<float> o, DeviceBuffer<float> lse, DeviceBuffer<float> partialO, DeviceBuffer<float> partialLse,
        int numSeqs, int heads, int maxBlocks, int headDim)
    {
        ArgumentNullException.ThrowIfNull(o);
        ArgumentNullException.ThrowIfNull(lse);
        ArgumentNullException.ThrowIfNull(partialO);
        ArgumentNullException.ThrowIfNull(partialLse);
        if (OpsLaunchPlans.KiviMergePartials(o.Length, lse.Length, partialO.Length, partialLse.Length, numSeqs, heads, maxBlocks, headDim) is not { } plan) return;
        SameDevice(o, nameof(o));
        SameDevice(lse, nameof(lse));
        SameDevice(partialO, nameof(partialO));
        SameDevice(partialLse, nameof(partialLse));
        ulong mo = o.Pointer, ml = lse.Pointer, po = partialO.Pointer, pl = partialLse.Pointer;
        int ns = numSeqs, nh = heads, mb = maxBlocks, hd = headDim;
        void** args = stackalloc void*[] { &mo, &ml, &po, &pl, &ns, &nh, &mb, &hd };
        Launch(plan, args);
    }

    /// <summary>
    /// (o, lse) [numSeqs, heads, headDim] / [numSeqs, heads] := their merge with the attention of each sequence's query
    /// over its first numCompact[s] compact blocks (at most <paramref name="maxCompact"/>), by
    /// kivi_decode_attention_split (a CTA per kv head and split of the blocks) and kivi_merge_partials_f32; the partials
    /// go to partialO / partialLse (as many splits as they hold). Pass lse = -inf for "nothing yet", or the fp16
    /// window's partial. Returns the splits.
    /// </summary>
    public int KiviDecodeAttentionSplit(DeviceBuffer<float> o, DeviceBuffer<float> lse, DeviceBuffer<float> partialO, DeviceBuffer<float> partialLse,
        DeviceBuffer<float> q, KiviPool pool, DeviceBuffer<int> blockTables, DeviceBuffer<int> numCompact, int numSeqs, int maxBlocks, int maxCompact,
        int heads, int kvHeads, int headDim)
    {
        ArgumentNullException.ThrowIfNull(o);
        ArgumentNullException.ThrowIfNull(lse);
        ArgumentNullException.ThrowIfNull(partialO);
        ArgumentNullException.ThrowIfNull(partialLse);
        ArgumentNullException.ThrowIfNull(q);
        ArgumentNullException.ThrowIfNull(pool);
        ArgumentNullException.ThrowIfNull(blockTables);
        ArgumentNullException.ThrowIfNull(numCompact);
        if (pool.KvDim != kvHeads * headDim)
            throw new ArgumentException($"the pool holds kvDim = {pool.KvDim} channels, the attention shape kvHeads * headDim = {kvHeads * headDim}", nameof(pool));
        if (OpsLaunchPlans.KiviDecodeAttentionSplit(partialO.Length, partialLse.Length, q.Length, pool.Codes.Length, pool.Scales.Length, pool.Mins.Length,
                blockTables.Length, numCompact.Length, o.Length, lse.Length, numSeqs, maxBlocks, maxCompact, pool.NumIds, heads, kvHeads, headDim, pool.Group,
                pool.Bits, 2 * _module.Device.MultiprocessorCount) is not { } plan) return 0;
        SameDevice(o, nameof(o));
        SameDevice(lse, nameof(lse));
        SameDevice(partialO, nameof(partialO));
        SameDevice(partialLse, nameof(partialLse));
        SameDevice(q, nameof(q));
        SamePool(pool);
        SameDevice(blockTables, nameof(blockTables));
        SameDevice(numCompact, nameof(numCompact));
        Aligned(pool.Codes.Pointer, 16, nameof(pool)); // cp.async copies 16-byte chunks of code words
        ulong po = partialO.Pointer, pl = partialLse.Pointer, pq = q.Pointer, pc = pool.Codes.Pointer, ps = pool.Scales.Pointer, pm = pool.Mins.Pointer;
        ulong pt = blockTables.Pointer, pn = numCompact.Pointer;
        int ns = numSeqs, mb = maxBlocks, nh = heads, nkv = kvHeads, hd = headDim, g = pool.Group, bps = plan.BlocksPerSplit;
        void** args = stackalloc void*[] { &po, &pl, &pq, &pc, &ps, &pm, &pt, &pn, &ns, &mb, &nh, &nkv, &hd, &g, &bps };
        Launch(plan.Attention, args);
        ulong mo = o.Pointer, ml = lse.Pointer;
        int splits = plan.Splits;
        void** margs = stackalloc void*[] { &mo, &ml, &po, &pl, &ns, &nh, &splits, &hd };
        Launch(plan.Merge, margs);
        return plan.Splits;
    }

    private void SamePool(KiviPool pool)
    {
        SameDevice(pool.Codes, nameof(pool));
        SameDevice(pool.Scales, nameof(pool));
        SameDevice(pool.Mins, nameof(pool));
    }
}
