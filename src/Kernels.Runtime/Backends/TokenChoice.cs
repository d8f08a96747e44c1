// What the engine asks of a step instead of logits: each sequence's next token, chosen where the logits are, and
// the log-probabilities a request asked for. Only these cross from the backend to the engine (ids, a few floats),
// never a vocabulary-wide row per sequence.
namespace Kernels.Runtime.Backends;

/// <summary>
/// One draw of a sequence's next token from its last row's logits: the engine's sampling options for this step,
/// with the coin that decides it. Ids at and past <see cref="Vocab"/> (padding of the LM head beyond the tokenizer)
/// are never chosen and carry no probability.
/// </summary>
internal sealed record TokenChoice
{
    /// <summary>0 picks the most likely token (greedy); otherwise logits are divided by it before sampling.</summary>
    public float Temperature { get; init; }
    public int TopK { get; init; }
    public float TopP { get; init; } = 1f;
    public float MinP { get; init; }
    public float RepetitionPenalty { get; init; } = 1f;
    /// <summary>The tokens the repetition penalty applies to (null: none).</summary>
    public IReadOnlySet<int>? Seen { get; init; }
    /// <summary>A uniform draw in [0, 1) that decides among the kept tokens (unused when greedy).</summary>
    public double Coin { get; init; }
    /// <summary>The usable vocabulary: ids in [0, Vocab) only; 0 = the whole row.</summary>
    public int Vocab { get; init; }
    /// <summary>-1: no log-probabilities; 0: the chosen token's; N: also the N most likely tokens'.</summary>
    public int Logprobs { get; init; } = -1;

    public bool IsGreedy => Temperature <= 0f;

    public static TokenChoice Greedy { get; } = new();
}

/// <summary>
/// Log-probabilities asked of every row of a step's tokens (a prompt's, for OpenAI's echo): row r is scored on
/// Targets[r], the token that follows it; Targets may be one shorter than the rows (the last row's successor is the
/// token to be chosen). <see cref="Top"/>: how many most likely alternatives per row (0: none).
/// </summary>
internal sealed record TargetScoring(ReadOnlyMemory<int> Targets, int Top, int Vocab);

/// <summary>
/// A token's log-probability under the model's raw distribution (the logits' log-softmax over the usable vocabulary,
/// before penalties and temperature, as vLLM and OpenAI report them), with the most likely tokens of the same row,
/// best first (ties to the lower id).
/// </summary>
internal sealed record ScoredToken(int Token, float Logprob, int[] TopIds, float[] TopLogprobs);

/// <summary>
/// A step's answer for one sequence: per <see cref="SequenceStep.Choose"/> entry its token and, when asked, its
/// scores; per scored row (<see cref="SequenceStep.Score"/>) the target's scores.
/// </summary>
internal sealed record StepOutput(int[] Tokens, ScoredToken?[] Chosen, ScoredToken[]? Targets)
{
    public static StepOutput None { get; } = new([], [], null);
}
