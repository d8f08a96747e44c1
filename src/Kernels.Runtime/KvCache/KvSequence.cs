// One sequence's view of the KV cache: its block table (block ids in position order) and how many tokens it holds.
namespace Kernels.Runtime.KvCache;

/// <summary>
/// Position p of the sequence lives in block Blocks[p / BlockSize] at row p % BlockSize. Blocks may be shared with
/// other sequences and the prefix tree (copy-on-write: a shared block is copied before this sequence writes into it).
/// Compact (quantized) blocks are always full and immutable, so they are shared as they are and never written again.
/// </summary>
internal sealed class KvSequence : IKvCache
{
    private readonly KvBlockPool _pool;
    private readonly List<int> _blocks;
    private bool _disposed;

    public int Length { get; private set; }
    public IReadOnlyList<int> Blocks => _blocks;
    public KvBlockPool Pool => _pool;

    public KvSequence(KvBlockPool pool)
    {
        _pool = pool;
        _blocks = new List<int>();
    }

    /// <summary>A sequence that starts with <paramref name="length"/> tokens already held in <paramref name="blocks"/> (retained here).</summary>
    public KvSequence(KvBlockPool pool, IReadOnlyList<int> blocks, int length)
    {
        if (pool.BlocksFor(length) != blocks.Count)
            throw new ArgumentException($"{blocks.Count} blocks cannot hold exactly {length} tokens", nameof(length));
        _pool = pool;
        _blocks = new List<int>(blocks);
        foreach (int b in _blocks) pool.Retain(b);
        Length = length;
    }

    /// <summary>
    /// Makes positions [Length, Length + tokens) writable: allocates blocks, and copies the partly filled tail block
    /// first when another holder shares it. Throws <see cref="KvCacheExhaustedException"/> (and changes nothing
    /// it cannot undo) when the pool has no room.
    /// </summary>
    public void Reserve(int tokens)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        int bs = _pool.BlockSize;
        if (Length % bs != 0 && tokens > 0)
        {
            int tail = _blocks[Length / bs];
            if (_pool.RefCount(tail) > 1)
            {
                int copy = _pool.Allocate();
                _pool.Storage.CopyBlock(tail, copy, Length % bs);
                _pool.Release(tail);
                _blocks[Length / bs] = copy;
            }
        }
        int needed = _pool.BlocksFor(Length + tokens);
        while (_blocks.Count < needed) _blocks.Add(_pool.Allocate());
    }

    /// <summary>Records that <paramref name="tokens"/> reserved positions were written.</summary>
    public void Advance(int tokens)
    {
        if (Length + tokens > _blocks.Count * _pool.BlockSize) throw new InvalidOperationException("advance past the reserved blocks; call Reserve first");
        Length += tokens;
    }

    /// <summary>
    /// A private copy of every block (no sharing): what an engine without prefix sharing holds per sequence. A compact
    /// block is copied in its compact form (block by block, so the copy never needs every block full precision at once).
    /// </summary>
    public KvSequence Copy()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        var copy = new KvSequence(_pool);
        try
        {
            for (int b = 0; b < _blocks.Count; b++)
            {
                int block = _pool.Allocate();
                copy._blocks.Add(block);
                _pool.Storage.CopyBlock(_blocks[b], block, Math.Min(_pool.BlockSize, Length - b * _pool.BlockSize));
                if (_pool.IsCompact(_blocks[b])) _pool.Compact(block);
            }
        }
        catch
        {
            copy.Dispose();
            throw;
        }
        copy.Length = Length;
        return copy;
    }

    public IKvCache Fork()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        return new KvSequence(_pool, _blocks, Length);
    }

    public void Truncate(int length)
    {
        if (length < 0 || length > Length) throw new ArgumentOutOfRangeException(nameof(length), length, $"sequence holds {Length} tokens");
        int keep = _pool.BlocksFor(length);
        if (length % _pool.BlockSize != 0 && _pool.IsCompact(_blocks[keep - 1]))
            throw new InvalidOperationException($"cannot truncate to {length} tokens: block {keep - 1} is quantized (immutable); truncate to a block boundary");
        for (int i = _blocks.Count - 1; i >= keep; i--)
        {
            _pool.Release(_blocks[i]);
            _blocks.RemoveAt(i);
        }
        Length = length;
    }

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        foreach (int b in _blocks) _pool.Release(b);
        _blocks.Clear();
        Length = 0;
    }
}
