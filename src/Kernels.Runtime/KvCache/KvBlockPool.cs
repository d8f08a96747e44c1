// Fixed-size KV blocks with reference counts: sequences and the prefix tree share a block by each holding a reference.
namespace Kernels.Runtime.KvCache;

/// <summary>Where a backend keeps the data of KV blocks (CPU arrays, GPU memory).</summary>
internal interface IKvStorage
{
    /// <summary>Makes block <paramref name="block"/> addressable in its full-precision form; called each time the pool hands it out.</summary>
    void Prepare(int block);

    /// <summary>Copies the first <paramref name="tokens"/> positions of every layer's keys and values (a compact block: its compact form).</summary>
    void CopyBlock(int source, int destination, int tokens);

    /// <summary>The block's compact (quantized) form is written: drop its full-precision form.</summary>
    void Compact(int block) { }

    /// <summary>The block went back to the pool.</summary>
    void Release(int block) { }
}

/// <summary>
/// What a block costs in bytes: while it is full precision (freshly written, inside a sequence's window) and once it is
/// compact (quantized; immutable). <see cref="WindowBlocks"/>: the most blocks one sequence keeps full precision once it
/// is longer than its window (KIVI: ceil(R / block) + 1 for the partly filled tail).
/// </summary>
internal sealed record KvBlockCosts(long FullBytes, long CompactBytes, int WindowBlocks)
{
    /// <summary>Every block costs one unit and never compacts (fp32, fp16).</summary>
    public static readonly KvBlockCosts Uniform = new(1, 1, int.MaxValue);
    public bool Compacts => CompactBytes < FullBytes;
}

/// <summary>The KV memory ran out and nothing could be reclaimed; the message says how much was asked and held.</summary>
public sealed class KvCacheExhaustedException(string message) : Exception(message);

/// <summary>
/// The pool hands out block ids and accounts their memory. Uniform formats: a block is a block (capacity = budget /
/// block bytes). Compacting formats (KIVI): a block is allocated full precision at <see cref="KvBlockCosts.FullBytes"/>
/// and, once it falls out of its sequence's window and is quantized (<see cref="Compact"/>), costs only
/// <see cref="KvBlockCosts.CompactBytes"/>; the difference goes back to the budget. So the same byte budget holds
/// Full/Compact times more tokens of long sequences, and the scheduler (which asks for full blocks: <see cref="FreeBlocks"/>)
/// admits proportionally more of them. Capacity (ids) is budget / CompactBytes.
/// </summary>
internal sealed class KvBlockPool
{
    private readonly int[] _refs;
    private readonly bool[] _compact;
    private readonly Stack<int> _free = new();
    private int _neverUsed; // blocks [_neverUsed, Capacity) were never handed out
    private long _freeUnits;
    private int _full;      // allocated blocks that are not compact (each holds a full-precision slot)

    public int BlockSize { get; }
    public int Capacity { get; }
    public IKvStorage Storage { get; }
    public KvBlockCosts Costs { get; }
    /// <summary>The budget, in the units of <see cref="Costs"/> (bytes; blocks for uniform pools).</summary>
    public long BudgetUnits { get; }
    /// <summary>
    /// The most blocks that can be full precision at once, whatever the budget says (the CUDA backend's KIVI cache has
    /// a fixed number of fp16 slots beside its compact records); int.MaxValue when only the budget limits them.
    /// </summary>
    public int MaxFullBlocks { get; }

    private PrefixTree? _prefixes;

    /// <summary>The cached prompt prefixes of this pool; when the pool runs dry it evicts from them.</summary>
    public PrefixTree Prefixes => _prefixes ??= new PrefixTree(this);

    /// <summary>A pool of <paramref name="capacity"/> blocks that all cost the same.</summary>
    public KvBlockPool(int capacity, int blockSize, IKvStorage storage) : this(capacity, blockSize, storage, KvBlockCosts.Uniform)
    {
    }

    /// <summary>
    /// A pool of <paramref name="budgetUnits"/> units (bytes) whose blocks cost <paramref name="costs"/>, with at most
    /// <paramref name="maxBlocks"/> block ids and <paramref name="maxFullBlocks"/> blocks full precision at once (storage
    /// with fixed regions: compact records for every id, a number of full-precision slots).
    /// </summary>
    public KvBlockPool(long budgetUnits, int blockSize, IKvStorage storage, KvBlockCosts costs, int maxBlocks = int.MaxValue, int maxFullBlocks = int.MaxValue)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(blockSize, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(costs.CompactBytes, 1, nameof(costs));
        ArgumentOutOfRangeException.ThrowIfLessThan(budgetUnits, costs.FullBytes, nameof(budgetUnits));
        ArgumentOutOfRangeException.ThrowIfLessThan(maxBlocks, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(maxFullBlocks, 1);
        Capacity = (int)Math.Min(Math.Min(budgetUnits / costs.CompactBytes, int.MaxValue / 2), maxBlocks);
        MaxFullBlocks = maxFullBlocks;
        BudgetUnits = budgetUnits;
        _freeUnits = budgetUnits;
        BlockSize = blockSize;
        Storage = storage;
        Costs = costs;
        _refs = new int[Capacity];
        _compact = new bool[Capacity];
    }

    /// <summary>Full-precision blocks that could be allocated now without evicting anything.</summary>
    public int FreeBlocks => (int)Math.Min(Math.Min(_free.Count + Capacity - _neverUsed, _freeUnits / Costs.FullBytes), (long)MaxFullBlocks - _full);

    /// <summary>Full-precision blocks that could be allocated now, evicting cached prefixes nobody else holds when asked to.</summary>
    public int AvailableBlocks(bool evictingCachedPrefixes)
    {
        if (!evictingCachedPrefixes || _prefixes == null) return FreeBlocks;
        var (blocks, units) = _prefixes.EvictableCost();
        // Slots: evicted cached blocks may be compact, so they are not counted as freeing one (Allocate evicts them when
        // it has to).
        return (int)Math.Min(Math.Min(_free.Count + Capacity - _neverUsed + blocks, (_freeUnits + units) / Costs.FullBytes), (long)MaxFullBlocks - _full);
    }

    /// <summary>
    /// Share of the budget that sequences hold, 0..1 (vLLM's kv_cache_usage_perc): blocks only the prefix tree holds
    /// count as free, as vLLM counts its cached blocks nobody references, because they are evicted on demand.
    /// </summary>
    public double ActiveUsage
    {
        get
        {
            long evictable = _prefixes?.EvictableCost().Units ?? 0;
            return Math.Clamp(1.0 - (double)(_freeUnits + evictable) / BudgetUnits, 0, 1);
        }
    }

    /// <summary>Units one held block costs now.</summary>
    public long Cost(int block) => _compact[block] ? Costs.CompactBytes : Costs.FullBytes;

    /// <summary>
    /// Units a sequence of <paramref name="blocks"/> blocks holds once settled (its window full precision, the rest compact).
    /// </summary>
    public long SettledUnits(int blocks)
    {
        long full = Math.Min(blocks, Costs.WindowBlocks);
        return full * Costs.FullBytes + (blocks - full) * Costs.CompactBytes;
    }

    public int BlocksFor(int tokens) => (tokens + BlockSize - 1) / BlockSize;

    /// <summary>A full-precision block with reference count 1, reclaiming cached prefixes if none is free.</summary>
    public int Allocate()
    {
        while (FreeBlocks == 0 && _prefixes != null && _prefixes.Evict(1) > 0) { }
        int block;
        if (FreeBlocks == 0)
            throw new KvCacheExhaustedException(_full >= MaxFullBlocks
                ? $"KV cache exhausted: all {MaxFullBlocks} full-precision slots are held (blocks inside their sequences' windows or being prefilled); give the full-precision share more memory or run fewer sequences at once"
                : $"KV cache exhausted: no room for another block of {BlockSize} tokens ({Capacity - _free.Count - (Capacity - _neverUsed)} blocks in use)");
        if (_free.Count > 0) block = _free.Pop();
        else block = _neverUsed++;
        Storage.Prepare(block);
        _refs[block] = 1;
        _compact[block] = false;
        _freeUnits -= Costs.FullBytes;
        _full++;
        return block;
    }

    public void Retain(int block)
    {
        if (_refs[block] <= 0) throw new InvalidOperationException($"KV block {block} is not allocated");
        _refs[block]++;
    }

    public void Release(int block)
    {
        if (_refs[block] <= 0) throw new InvalidOperationException($"KV block {block} released more often than retained");
        if (--_refs[block] > 0) return;
        _freeUnits += Cost(block);
        if (!_compact[block]) _full--;
        _compact[block] = false;
        Storage.Release(block);
        _free.Push(block);
    }

    public int RefCount(int block) => _refs[block];

    public bool IsCompact(int block) => _compact[block];

    /// <summary>The block's compact form is written (every layer): it now costs CompactBytes and is immutable.</summary>
    public void Compact(int block)
    {
        if (_refs[block] <= 0) throw new InvalidOperationException($"KV block {block} is not allocated");
        if (!Costs.Compacts) throw new InvalidOperationException("this pool's format does not compact blocks");
        if (_compact[block]) return;
        _compact[block] = true;
        _full--;
        _freeUnits += Costs.FullBytes - Costs.CompactBytes;
        Storage.Compact(block);
    }
}
