// The contract between the engine and a compute backend: paged KV memory and one batched forward step.
using Kernels.Runtime.KvCache;
using Kernels.Runtime.Models;

namespace Kernels.Runtime.Backends;

/// <summary>
/// One sequence's part of a step: new tokens appended at cache.Length onward. For <see cref="IBackend.Step"/>: the
/// draws of the next token from the last row (<see cref="Choose"/>, several for a prompt's samples) and the rows to
/// score (<see cref="Score"/>, which needs <see cref="AllLogits"/>).
/// </summary>
internal sealed record SequenceStep(IKvCache Cache, ReadOnlyMemory<int> Tokens, bool AllLogits = false)
{
    public IReadOnlyList<TokenChoice>? Choose { get; init; }
    public TargetScoring? Score { get; init; }
}

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

    /// <summary>
    /// <see cref="Forward"/>, answering with tokens instead of logits: per sequence the tokens its
    /// <see cref="SequenceStep.Choose"/> draws and the log-probabilities it asked for. What the engine calls each
    /// step; a backend chooses where its logits are. This default copies them out and chooses on the host.
    /// </summary>
    StepOutput[] Step(IReadOnlyList<SequenceStep> batch, AttentionPlan? attention = null) =>
        TokenChooser.Choose(batch, Forward(batch, attention), Config.VocabSize);
}
