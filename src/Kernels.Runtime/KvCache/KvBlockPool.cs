// Fixed-size KV blocks with reference counts: sequences and the prefix tree share a block by each holding a reference.
namespace Kernels.Runtime.KvCache;

/// <summary>Where a backend keeps the data of KV blocks (CPU arrays, GPU memory).</summary>
public interface IKvStorage
{
    /// <summary>Makes block <paramref name="block"/> addressable (storage may grow lazily).</summary>
    void Prepare(int block);

    /// <summary>Copies the first <paramref name="tokens"/> positions of every layer's keys and values.</summary>
    void CopyBlock(int source, int destination, int tokens);
}

/// <summary>The KV memory ran out and nothing could be reclaimed; the message says how much was asked and held.</summary>
public sealed class KvCacheExhaustedException(string message) : Exception(message);

public sealed class KvBlockPool
{
    private readonly int[] _refs;
    private readonly Stack<int> _free = new();
    private int _neverUsed; // blocks [_neverUsed, Capacity) were never handed out: storage for them is not prepared yet

    public int BlockSize { get; }
    public int Capacity { get; }
    public IKvStorage Storage { get; }

    private PrefixTree? _prefixes;

    /// <summary>The cached prompt prefixes of this pool; when the pool runs dry it evicts from them.</summary>
    public PrefixTree Prefixes => _prefixes ??= new PrefixTree(this);

    public KvBlockPool(int capacity, int blockSize, IKvStorage storage)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(capacity, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(blockSize, 1);
        Capacity = capacity;
        BlockSize = blockSize;
        Storage = storage;
        _refs = new int[capacity];
    }

    /// <summary>Blocks no one holds.</summary>
    public int FreeBlocks => _free.Count + Capacity - _neverUsed;

    public int BlocksFor(int tokens) => (tokens + BlockSize - 1) / BlockSize;

    /// <summary>A block with reference count 1, reclaiming cached prefixes if none is free.</summary>
    public int Allocate()
    {
        if (FreeBlocks == 0) _prefixes?.Evict(1);
        int block;
        if (_free.Count > 0) block = _free.Pop();
        else if (_neverUsed < Capacity)
        {
            block = _neverUsed++;
            Storage.Prepare(block);
        }
        else throw new KvCacheExhaustedException($"KV cache exhausted: all {Capacity} blocks of {BlockSize} tokens are in use");
        _refs[block] = 1;
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
        if (--_refs[block] == 0) _free.Push(block);
    }

    public int RefCount(int block) => _refs[block];
}
