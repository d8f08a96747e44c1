// A radix tree over token ids at block granularity: prompts that share a prefix share its KV blocks and its prefill.
namespace Kernels.Runtime.KvCache;

/// <summary>
/// Each node is one full KV block: the BlockSize token ids it holds and the block id. The tree keeps a reference
/// on every block it holds, so a cached prefix outlives the requests that computed it until memory is needed:
/// <see cref="Evict"/> drops least recently used leaves that nobody else references.
/// <para>
/// KIVI: a cached block may be compact (quantized). Its codes are a function of its tokens (and the history before
/// them), so sharing it is sound, and sharers in lockstep (n samples of a prompt) read exactly what they would alone.
/// A block is quantized when the first holder's window passes it and its fp16 rows are given back at once, so a
/// sharer that is behind (a later request matching a cached prompt, a preempted sample recomputing its history) reads
/// up to R tokens behind its match point quantized where a run without sharing reads them fp16. Exactness there
/// would need those fp16 rows kept while the prefix is cached, which is the memory KIVI exists to save.
/// </para>
/// </summary>
internal sealed class PrefixTree
{
    private sealed class Node(int block, int[] tokens, Node? parent, byte[]? hash)
    {
        public readonly int Block = block;
        public readonly int[] Tokens = tokens;
        public readonly Node? Parent = parent;
        /// <summary>vLLM's chained block hash of the prefix ending with this block (null for the root).</summary>
        public readonly byte[]? Hash = hash;
        public readonly Dictionary<int[], Node> Children = new(TokenBlockComparer.Instance);
        public long LastUsed;
    }

    private readonly KvBlockPool _pool;
    private readonly Node _root = new(-1, [], null, null);
    private long _clock;

    public int CachedBlocks { get; private set; }

    /// <summary>Names cached blocks for KV events (vLLM's hash, see <see cref="VllmBlockHasher"/>); set it before the first Insert.</summary>
    public VllmBlockHasher Hasher { get; set; } = VllmBlockHasher.Default;

    /// <summary>Told of every block that enters or leaves the tree (on the thread that changes the tree); null: nobody listens.</summary>
    public Action<KvCacheEvent>? Observer { get; set; }

    /// <summary>Made by <see cref="KvBlockPool.Prefixes"/>: one tree per pool.</summary>
    internal PrefixTree(KvBlockPool pool)
    {
        _pool = pool;
    }

    /// <summary>
    /// The blocks of the longest cached prefix of <paramref name="tokens"/>, in whole blocks and at most
    /// <paramref name="maxTokens"/> tokens (a prompt keeps at least its last token to compute, for its logits).
    /// </summary>
    public IReadOnlyList<int> Match(ReadOnlySpan<int> tokens, int maxTokens)
    {
        int bs = _pool.BlockSize;
        var blocks = new List<int>();
        var node = _root;
        long now = ++_clock;
        for (int start = 0; start + bs <= Math.Min(tokens.Length, maxTokens); start += bs)
        {
            if (!node.Children.TryGetValue(tokens.Slice(start, bs).ToArray(), out var child)) break;
            child.LastUsed = now;
            blocks.Add(child.Block);
            node = child;
        }
        return blocks;
    }

    /// <summary>Caches the full blocks of a prefilled sequence: <paramref name="blocks"/>[i] holds tokens[i*B .. (i+1)*B).</summary>
    public void Insert(ReadOnlySpan<int> tokens, IReadOnlyList<int> blocks)
    {
        int bs = _pool.BlockSize;
        var node = _root;
        long now = ++_clock;
        List<Node>? added = null; // new nodes are always the tail of the chain: a new node has no children yet
        for (int i = 0; (i + 1) * bs <= tokens.Length && i < blocks.Count; i++)
        {
            var key = tokens.Slice(i * bs, bs).ToArray();
            if (!node.Children.TryGetValue(key, out var child))
            {
                child = new Node(blocks[i], key, node, Hasher.Hash(node.Hash, key));
                node.Children[key] = child;
                _pool.Retain(blocks[i]);
                CachedBlocks++;
                (added ??= new()).Add(child);
            }
            child.LastUsed = now;
            node = child;
        }
        if (added != null && Observer is { } observer)
        {
            var parent = added[0].Parent!.Hash;
            observer(new KvBlockStored(added.Select(n => VllmBlockHasher.External(n.Hash!)).ToArray(),
                parent == null ? null : VllmBlockHasher.External(parent), added.SelectMany(n => n.Tokens).ToArray(), bs));
        }
    }

    /// <summary>Every cached block with its parent's hash and its tokens (read it while no step runs).</summary>
    public IReadOnlyList<CachedBlock> Blocks()
    {
        var all = new List<CachedBlock>();
        void Walk(Node n)
        {
            foreach (var c in n.Children.Values)
            {
                all.Add(new CachedBlock(VllmBlockHasher.External(c.Hash!), n.Hash == null ? null : VllmBlockHasher.External(n.Hash), c.Tokens));
                Walk(c);
            }
        }
        Walk(_root);
        return all;
    }

    /// <summary>
    /// Blocks that eviction could free now: those of subtrees no sequence references (eviction takes leaves first,
    /// so a node counts only when everything below it can go too).
    /// </summary>
    public int Evictable() => EvictableCost().Blocks;

    /// <summary>The blocks eviction could free now and the pool units they cost (compact blocks cost less).</summary>
    public (int Blocks, long Units) EvictableCost()
    {
        int count = 0;
        long units = 0;
        bool Walk(Node n) // true when n's whole subtree is held by the tree alone
        {
            bool all = true;
            foreach (var c in n.Children.Values) all &= Walk(c);
            if (n == _root || !all || _pool.RefCount(n.Block) != 1) return false;
            count++;
            units += _pool.Cost(n.Block);
            return true;
        }
        Walk(_root);
        return (count, units);
    }

    /// <summary>Frees up to <paramref name="blocks"/> blocks by dropping least recently used leaves only the tree holds.</summary>
    public int Evict(int blocks)
    {
        int freed = 0;
        List<ulong>? removed = Observer == null ? null : new();
        while (freed < blocks)
        {
            Node? victim = null;
            void Walk(Node n)
            {
                foreach (var c in n.Children.Values)
                {
                    if (c.Children.Count == 0)
                    {
                        if (_pool.RefCount(c.Block) == 1 && (victim == null || c.LastUsed < victim.LastUsed)) victim = c;
                    }
                    else Walk(c);
                }
            }
            Walk(_root);
            if (victim == null) break;
            victim.Parent!.Children.Remove(victim.Tokens);
            _pool.Release(victim.Block);
            CachedBlocks--;
            freed++;
            removed?.Add(VllmBlockHasher.External(victim.Hash!));
        }
        if (removed is { Count: > 0 }) Observer?.Invoke(new KvBlockRemoved(removed));
        return freed;
    }

    private sealed class TokenBlockComparer : IEqualityComparer<int[]>
    {
        public static readonly TokenBlockComparer Instance = new();
        public bool Equals(int[]? a, int[]? b) => a.AsSpan().SequenceEqual(b);
        public int GetHashCode(int[] tokens)
        {
            var h = new HashCode();
            foreach (int t in tokens) h.Add(t);
            return h.ToHashCode();
        }
    }
}
