// What the engine holds for one sequence's keys and values: the KV cache's contract, implemented by KvSequence (paged
// blocks in a KvBlockPool) and handed out by a backend's CreateCache.
namespace Kernels.Runtime.KvCache;

/// <summary>The keys and values a sequence has accumulated, in the backend's memory.</summary>
internal interface IKvCache : IDisposable
{
    /// <summary>Tokens held; the next token appended sits at this position.</summary>
    int Length { get; }

    /// <summary>A copy that continues independently (n samples of one prompt); full blocks are shared, not copied.</summary>
    IKvCache Fork();

    /// <summary>Drops every token at position >= <paramref name="length"/>.</summary>
    void Truncate(int length);
}
