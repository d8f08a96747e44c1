// What a caller asks the generator for, and what it streams back.
namespace Kernels.Runtime.Engine;

public sealed record GenerationRequest
{
    /// <summary>The prompt text (encoded with the model's tokenizer), or null when <see cref="PromptIds"/> is given.</summary>
    public string? Prompt { get; init; }
    /// <summary>Pre-tokenized prompt (used as is, no BOS added).</summary>
    public IReadOnlyList<int>? PromptIds { get; init; }
    /// <summary>Independent samples of this prompt; they share its prefill.</summary>
    public int N { get; init; } = 1;
    public int MaxNewTokens { get; init; } = 256;
    public SamplingOptions Sampling { get; init; } = SamplingOptions.Greedy;
    /// <summary>Generation ends before the first occurrence of any of these strings (not included in the text).</summary>
    public IReadOnlyList<string> Stop { get; init; } = [];
    /// <summary>Keep generating past EOS (benchmarks).</summary>
    public bool IgnoreEos { get; init; }
    /// <summary>null = the tokenizer's default.</summary>
    public bool? AddBos { get; init; }
}

public enum FinishReason
{
    /// <summary>The model produced an end-of-sequence token.</summary>
    EndOfSequence,
    /// <summary>A stop string appeared.</summary>
    Stop,
    /// <summary>MaxNewTokens reached, or the model's context is full.</summary>
    Length,
    Cancelled,
}

/// <summary>Token counts of one finished sample.</summary>
public sealed record Usage(int PromptTokens, int CompletionTokens);

/// <summary>
/// One streamed piece of one sample: the token just generated (null on a final event that carries only held-back
/// text) and the text it completed; <see cref="Finish"/> and <see cref="Usage"/> are set on the sample's last event.
/// </summary>
public sealed record GenerationEvent(int Request, int Sample, int? Token, string Text, FinishReason? Finish, Usage? Usage = null);

public sealed record GenerationResult(int Request, int Sample, IReadOnlyList<int> PromptIds, IReadOnlyList<int> Tokens, string Text, FinishReason Finish);

/// <summary>A request that cannot run as given (prompt beyond the context, bad options); the message says why.</summary>
public sealed class RequestValidationException(string argument, string message) : Exception($"{argument}: {message}")
{
    public string Argument { get; } = argument;
}
