// Microsoft.Extensions.AI's IChatClient over an InferenceEngine: messages become a prompt through the model's chat
// template, ChatOptions become a GenerationRequest, engine events become ChatResponse / ChatResponseUpdate.
using System.Globalization;
using System.Runtime.CompilerServices;
using System.Text;
using System.Text.Json;
using Microsoft.Extensions.AI;

namespace Kernels.Runtime.Engine.Chat;

/// <summary>
/// An <see cref="IChatClient"/> that runs on <paramref name="engine"/>. Thread-safe: concurrent calls are batched by
/// the engine like any other requests. Text content only (system, user and assistant messages); tools, other roles
/// and non-text content are rejected with an <see cref="ArgumentException"/> or <see cref="NotSupportedException"/>
/// rather than silently dropped.
/// <para>Options: Temperature (null = greedy), TopP, TopK, MaxOutputTokens (null = until EOS, a stop string or the
/// end of the context), StopSequences (added to the template's own end-of-turn strings), Seed, Instructions (a system
/// turn placed first), and through AdditionalProperties "min_p" and "repetition_penalty".</para>
/// Disposing the client does not dispose the engine; the caller owns it.
/// </summary>
public sealed class InferenceChatClient(InferenceEngine engine) : IChatClient
{
    public const string ProviderName = "kernels";
    public const string MinPProperty = "min_p";
    public const string RepetitionPenaltyProperty = "repetition_penalty";

    private readonly InferenceEngine _engine = engine ?? throw new ArgumentNullException(nameof(engine));

    public ChatClientMetadata Metadata { get; } = new(ProviderName, providerUri: null, defaultModelId: engine.ModelName);

    // ---- IChatClient ------------------------------------------------------------------------------------------------

    public async Task<ChatResponse> GetResponseAsync(IEnumerable<ChatMessage> messages, ChatOptions? options = null, CancellationToken cancellationToken = default)
    {
        var request = ToRequest(messages, options);
        var text = new StringBuilder();
        FinishReason? finish = null;
        Usage? usage = null;
        await foreach (var e in RunAsync(request, cancellationToken).ConfigureAwait(false))
        {
            text.Append(e.Text);
            if (e.Finish != null) (finish, usage) = (e.Finish, e.Usage);
        }
        return new ChatResponse(new ChatMessage(ChatRole.Assistant, text.ToString()))
        {
            ResponseId = NewId(),
            ModelId = _engine.ModelName,
            CreatedAt = DateTimeOffset.UtcNow,
            FinishReason = ToChatFinishReason(finish!.Value),
            Usage = ToUsageDetails(usage),
        };
    }

    public async IAsyncEnumerable<ChatResponseUpdate> GetStreamingResponseAsync(IEnumerable<ChatMessage> messages, ChatOptions? options = null,
        [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        var request = ToRequest(messages, options);
        string id = NewId();
        var created = DateTimeOffset.UtcNow;
        ChatResponseUpdate Update(IList<AIContent> contents) => new(ChatRole.Assistant, contents)
        {
            ResponseId = id,
            MessageId = id,
            ModelId = _engine.ModelName,
            CreatedAt = created,
        };

        await foreach (var e in RunAsync(request, cancellationToken).ConfigureAwait(false))
        {
            if (e.Finish is FinishReason f)
            {
                List<AIContent> last = [];
                if (e.Text.Length > 0) last.Add(new TextContent(e.Text));
                last.Add(new UsageContent(ToUsageDetails(e.Usage)));
                var final = Update(last);
                final.FinishReason = ToChatFinishReason(f);
                yield return final;
            }
            // Tokens that end inside a UTF-8 sequence (or inside a possible stop string) carry no text yet.
            else if (e.Text.Length > 0) yield return Update([new TextContent(e.Text)]);
        }
    }

    public object? GetService(Type serviceType, object? serviceKey = null)
    {
        ArgumentNullException.ThrowIfNull(serviceType);
        if (serviceKey != null) return null;
        if (serviceType == typeof(ChatClientMetadata)) return Metadata;
        if (serviceType == typeof(InferenceEngine)) return _engine;
        if (serviceType == typeof(ChatTemplate)) return _engine.ChatTemplate;
        return serviceType.IsInstanceOfType(this) ? this : null;
    }

    /// <summary>Nothing to release: the engine belongs to the caller.</summary>
    public void Dispose()
    {
    }

    // ---- Engine events ------------------------------------------------------------------------------------------------

    // The one sample of the request; engine-side validation errors surface as ArgumentException, the exception type
    // IChatClient callers expect for bad input.
    private async IAsyncEnumerable<GenerationEvent> RunAsync(GenerationRequest request, [EnumeratorCancellation] CancellationToken cancellationToken)
    {
        var events = _engine.GenerateAsync(request, cancellationToken).GetAsyncEnumerator(cancellationToken);
        try
        {
            while (true)
            {
                GenerationEvent e;
                try
                {
                    if (!await events.MoveNextAsync().ConfigureAwait(false)) break;
                    e = events.Current;
                }
                catch (RequestValidationException x)
                {
                    throw new ArgumentException(x.Message, x.Argument == nameof(GenerationRequest.Prompt) ? "messages" : "options", x);
                }
                if (e.Finish == FinishReason.Cancelled)
                {
                    cancellationToken.ThrowIfCancellationRequested();
                    throw new ObjectDisposedException(nameof(InferenceEngine), "the engine stopped before the response was finished");
                }
                yield return e;
                if (e.Finish != null) yield break;
            }
        }
        finally
        {
            await events.DisposeAsync().ConfigureAwait(false);
        }
        // The engine ends every stream with a finish event; a stream without one means the engine went away.
        throw new ObjectDisposedException(nameof(InferenceEngine), "the engine stopped before the response was finished");
    }

    private static ChatFinishReason ToChatFinishReason(FinishReason reason) => reason switch
    {
        FinishReason.EndOfSequence or FinishReason.Stop => ChatFinishReason.Stop,
        FinishReason.Length => ChatFinishReason.Length,
        _ => throw new ArgumentOutOfRangeException(nameof(reason), reason, "a cancelled sample has no chat finish reason"),
    };

    private static UsageDetails ToUsageDetails(Usage? usage) => new()
    {
        InputTokenCount = usage?.PromptTokens,
        OutputTokenCount = usage?.CompletionTokens,
        TotalTokenCount = usage is null ? null : usage.PromptTokens + usage.CompletionTokens,
    };

    private static string NewId() => "kernels-" + Guid.NewGuid().ToString("N");

    // ---- Request mapping ----------------------------------------------------------------------------------------------

    /// <summary>The engine request for a chat call: the rendered prompt, sampling and stop strings.</summary>
    public GenerationRequest ToRequest(IEnumerable<ChatMessage> messages, ChatOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(messages);
        var turns = new List<ChatTurn>();
        if (!string.IsNullOrEmpty(options?.Instructions)) turns.Add(new ChatTurn("system", options.Instructions));
        int index = 0;
        foreach (var m in messages)
        {
            turns.Add(ToTurn(m, index));
            index++;
        }
        if (turns.Count == 0) throw new ArgumentException("no messages given", nameof(messages));

        var template = _engine.ChatTemplate;
        var stop = new List<string>(template.StopStrings);
        if (options?.StopSequences is { } extra)
            foreach (string s in extra)
            {
                if (string.IsNullOrEmpty(s)) throw new ArgumentException("StopSequences contains an empty string", nameof(options));
                if (!stop.Contains(s)) stop.Add(s);
            }

        if (options?.MaxOutputTokens is < 1)
            throw new ArgumentException($"MaxOutputTokens must be at least 1, got {options.MaxOutputTokens}", nameof(options));
        RejectUnsupported(options);

        return new GenerationRequest
        {
            Prompt = template.Render(turns),
            // No limit asked for: the scheduler ends the sample when the context is full.
            MaxNewTokens = options?.MaxOutputTokens ?? _engine.Config.MaxPositions,
            Stop = stop,
            Sampling = new SamplingOptions
            {
                Temperature = options?.Temperature ?? 0f,
                TopP = options?.TopP ?? 1f,
                TopK = options?.TopK ?? 0,
                MinP = FloatProperty(options, MinPProperty) ?? 0f,
                RepetitionPenalty = FloatProperty(options, RepetitionPenaltyProperty) ?? 1f,
                Seed = options?.Seed is long seed ? unchecked((ulong)seed) : null,
            },
        };
    }

    private static ChatTurn ToTurn(ChatMessage message, int index)
    {
        if (message is null) throw new ArgumentException($"message {index} is null", "messages");
        string role = message.Role == ChatRole.System ? "system"
            : message.Role == ChatRole.User ? "user"
            : message.Role == ChatRole.Assistant ? "assistant"
            : throw new ArgumentException($"message {index} has role '{message.Role}'; only system, user and assistant are supported", "messages");
        var text = new StringBuilder();
        foreach (var content in message.Contents)
        {
            if (content is TextContent t) text.Append(t.Text);
            else throw new ArgumentException($"message {index} ({role}) contains {content.GetType().Name}; only text content is supported", "messages");
        }
        return new ChatTurn(role, text.ToString());
    }

    // Options this engine cannot honour fail loudly: a caller relying on tools or JSON mode must not get plain text.
    private static void RejectUnsupported(ChatOptions? options)
    {
        if (options is null) return;
        if (options.Tools is { Count: > 0 }) throw new NotSupportedException("tool calling is not supported by the kernels engine");
        if (options.ResponseFormat is ChatResponseFormatJson) throw new NotSupportedException("JSON response formats are not supported by the kernels engine");
        if (options.FrequencyPenalty is float fp && fp != 0f)
            throw new NotSupportedException($"FrequencyPenalty is not supported; use AdditionalProperties[\"{RepetitionPenaltyProperty}\"]");
        if (options.PresencePenalty is float pp && pp != 0f)
            throw new NotSupportedException($"PresencePenalty is not supported; use AdditionalProperties[\"{RepetitionPenaltyProperty}\"]");
    }

    // Values arrive as numbers, numeric strings or JsonElements (options deserialized from JSON).
    private static float? FloatProperty(ChatOptions? options, string name)
    {
        if (options?.AdditionalProperties is not { } props || !props.TryGetValue(name, out object? value) || value is null) return null;
        float? result = value switch
        {
            float f => f,
            double d => (float)d,
            decimal m => (float)m,
            int i => i,
            long l => l,
            string s when float.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out float parsed) => parsed,
            JsonElement { ValueKind: JsonValueKind.Number } j => j.GetSingle(),
            _ => null,
        };
        return result ?? throw new ArgumentException($"AdditionalProperties[\"{name}\"] must be a number, got {value.GetType().Name} '{value}'", nameof(options));
    }
}

/// <summary>Microsoft.Extensions.AI entry points for <see cref="InferenceEngine"/>.</summary>
public static class InferenceEngineChatExtensions
{
    /// <summary>An <see cref="IChatClient"/> over <paramref name="engine"/>; disposing it leaves the engine running.</summary>
    public static IChatClient AsChatClient(this InferenceEngine engine) => new InferenceChatClient(engine);
}
