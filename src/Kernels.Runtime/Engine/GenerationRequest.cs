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
    /// <summary>
    /// Log-probabilities of the generated tokens (<see cref="GenerationEvent.Logprobs"/>): null = none, 0 = each
    /// chosen token's, N = also the N most likely tokens at its position (at most <see cref="MaxLogprobs"/>).
    /// </summary>
    public int? Logprobs { get; init; }
    /// <summary>
    /// Log-probabilities of the prompt's tokens, each given those before it (the first has none), on every sample's
    /// first event (<see cref="GenerationEvent.PromptLogprobs"/>): null = none, N = with the N most likely tokens at
    /// each position. The prompt is then computed in full, not taken from the prefix cache.
    /// </summary>
    public int? PromptLogprobs { get; init; }

    /// <summary>The most alternatives <see cref="Logprobs"/> and <see cref="PromptLogprobs"/> may ask for.</summary>
    public const int MaxLogprobs = 20;
}

/// <summary>One token and its log-probability.</summary>
public readonly record struct TokenLogprob(int Token, float Logprob);

/// <summary>
/// A token's log-probability under the model (the log-softmax of its raw logits over the tokenizer's vocabulary:
/// before repetition penalty, temperature and filters, as vLLM and OpenAI report them), with the most likely tokens
/// at the same position, best first.
/// </summary>
public sealed record TokenLogprobs(int Token, float Logprob, IReadOnlyList<TokenLogprob> Top);

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
/// <see cref="Logprobs"/>: the token's, when the request asked (<see cref="GenerationRequest.Logprobs"/>);
/// <see cref="PromptLogprobs"/>: on the sample's first event, one per prompt token (the first null), when asked.
/// </summary>
public sealed record GenerationEvent(int Request, int Sample, int? Token, string Text, FinishReason? Finish, Usage? Usage = null)
{
    public TokenLogprobs? Logprobs { get; init; }
    public IReadOnlyList<TokenLogprobs?>? PromptLogprobs { get; init; }
}

/// <summary>
/// One finished sample. <see cref="Logprobs"/> (one per token) and <see cref="PromptLogprobs"/> (one per prompt
/// token, the first null) when the request asked for them, else null.
/// </summary>
public sealed record GenerationResult(int Request, int Sample, IReadOnlyList<int> PromptIds, IReadOnlyList<int> Tokens, string Text, FinishReason Finish)
{
    public IReadOnlyList<TokenLogprobs>? Logprobs { get; init; }
    public IReadOnlyList<TokenLogprobs?>? PromptLogprobs { get; init; }
}

/// <summary>
/// Folds streamed events into one <see cref="GenerationResult"/> per sample (for callers that want whole results).
/// Thread-safe: several request streams may feed one collector.
/// </summary>
internal sealed class GenerationResultCollector(IReadOnlyList<GenerationRequest> requests, IReadOnlyList<int[]> prompts)
{
    private readonly Dictionary<(int, int), (List<int> Tokens, System.Text.StringBuilder Text, List<TokenLogprobs> Logprobs)> _samples = new();
    private readonly Dictionary<(int, int), IReadOnlyList<TokenLogprobs?>> _prompts = new();
    private readonly List<GenerationResult> _results = new();

    /// <summary>Adds an event; <paramref name="request"/> overrides the event's Request index (an engine stream numbers it 0).</summary>
    public void Add(GenerationEvent e, int? request = null)
    {
        int r = request ?? e.Request;
        lock (_results)
        {
            if (!_samples.TryGetValue((r, e.Sample), out var sample)) _samples[(r, e.Sample)] = sample = (new List<int>(), new System.Text.StringBuilder(), new List<TokenLogprobs>());
            if (e.Token is int t) sample.Tokens.Add(t);
            if (e.Logprobs != null) sample.Logprobs.Add(e.Logprobs);
            if (e.PromptLogprobs != null) _prompts[(r, e.Sample)] = e.PromptLogprobs;
            sample.Text.Append(e.Text);
            if (e.Finish is FinishReason f)
                _results.Add(new GenerationResult(r, e.Sample, prompts[r], sample.Tokens, sample.Text.ToString(), f)
                {
                    Logprobs = requests[r].Logprobs != null ? sample.Logprobs : null,
                    PromptLogprobs = _prompts.GetValueOrDefault((r, e.Sample)),
                });
        }
    }

    public IReadOnlyList<GenerationResult> Results
    {
        get { lock (_results) return _results.OrderBy(x => x.Request).ThenBy(x => x.Sample).ToArray(); }
    }
}

/// <summary>A request that cannot run as given (prompt beyond the context, bad options); the message says why.</summary>
public sealed class RequestValidationException(string argument, string message) : Exception($"{argument}: {message}")
{
    /// <summary>
    /// What is wrong, by the library's name: a property of <see cref="GenerationRequest"/> or <see cref="SamplingOptions"/>
    /// ("Prompt", "TopP"), or a method's parameter ("messages", "window"). Front ends map it to theirs (a CLI flag, an
    /// OpenAI field).
    /// </summary>
    public string Argument { get; } = argument;

    /// <summary>The message without the "Argument: " in front, for a front end that names the argument its own way.</summary>
    public string Reason => Message[(Argument.Length + 2)..];
}
