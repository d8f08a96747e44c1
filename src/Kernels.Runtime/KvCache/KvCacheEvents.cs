// What the prefix cache tells the outside about its blocks, in the shape of vLLM's KV events (vllm/distributed/
// kv_events.py): blocks stored, blocks removed, everything cleared. A router that follows them knows which prompt
// prefixes this replica holds without guessing.
namespace Kernels.Runtime.KvCache;

/// <summary>One change of the prefix cache. Hashes are <see cref="VllmBlockHasher.External"/> values.</summary>
public abstract record KvCacheEvent;

/// <summary>
/// A chain of full blocks entered the prefix cache: <see cref="BlockHashes"/>[i] holds
/// <see cref="TokenIds"/>[i*BlockSize .. (i+1)*BlockSize); the first one follows the block <see cref="ParentBlockHash"/>
/// (null: it starts the prompt).
/// </summary>
public sealed record KvBlockStored(IReadOnlyList<ulong> BlockHashes, ulong? ParentBlockHash, IReadOnlyList<int> TokenIds, int BlockSize) : KvCacheEvent;

/// <summary>These blocks left the prefix cache (evicted for memory).</summary>
public sealed record KvBlockRemoved(IReadOnlyList<ulong> BlockHashes) : KvCacheEvent;

/// <summary>The prefix cache is empty: forget everything this replica said before (sent at start and at shutdown).</summary>
public sealed record KvAllBlocksCleared : KvCacheEvent;

/// <summary>The events of one engine step, stamped with the wall clock in seconds since the Unix epoch.</summary>
public sealed record KvEventBatch(double Timestamp, IReadOnlyList<KvCacheEvent> Events);

/// <summary>Where an engine sends its KV event batches (a ZeroMQ publisher in the server). Called on the engine's loop thread: must not block.</summary>
public interface IKvEventSink
{
    void Publish(KvEventBatch batch);
}

/// <summary>A cached block as the prefix tree holds it, for comparing a consumer's view with the engine's.</summary>
internal sealed record CachedBlock(ulong Hash, ulong? ParentHash, int[] TokenIds);

/// <summary>Turns KV events on for an engine: where they go and the seed of the block hashes (see <see cref="VllmBlockHasher"/>).</summary>
public sealed record KvEventOptions(IKvEventSink Sink)
{
    public string HashSeed { get; init; } = VllmBlockHasher.DefaultSeed;
}
