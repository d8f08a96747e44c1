// The contract between the engine and a compute backend: paged KV memory and one batched forward step.
using Kernels.Runtime.KvCache;
using Kernels.Runtime.Models;

namespace Kernels.Runtime.Backends;

/// <summary>One sequence's part of a step: new tokens appended at cache.Length onward.</summary>
internal sealed record SequenceStep(IKvCache Cache, ReadOnlyMemory<int> Tokens, bool AllLogits = false);

internal interface IBackend : IDisposable
{
    string Name { get; }
    ModelConfig Config { get; }

    /// <summary>The backend's KV memory, in blocks; every cache it creates draws from it.</summary>
    KvBlockPool KvPool { get; }

    /// <summary>An empty sequence in <see cref="KvPool"/>.</summary>
    IKvCache CreateCache();

    /// <summary>
    /// Runs every sequence's new tokens through the model in one batch (weights read once for all rows), appends
    /// their keys and values to the caches, and returns per sequence the logits [rows, vocab] flattened: every
    /// position when AllLogits, else the last one only. With an <paramref name="attention"/> plan, keys shared by
    /// several sequences are attended once per level for all of them (Hydragen); without one, per sequence.
    /// </summary>
    float[][] Forward(IReadOnlyList<SequenceStep> batch, AttentionPlan? attention = null);
}
