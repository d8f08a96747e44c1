// Reads the body of /v1/completions and /v1/chat/completions into engine requests, refusing what it cannot honour.
using System.Text.Json;
using Kernels.Runtime.Engine;
using Kernels.Runtime.Engine.Chat;
using Kernels.Runtime.KvCache;
using Microsoft.AspNetCore.Http;

namespace Kernels.Server;

public enum ApiEndpoint
{
    Completions,
    ChatCompletions,
}

/// <summary>
/// One HTTP request as engine work: one <see cref="GenerationRequest"/> per prompt (completions may send several),
/// each with N samples; choice index = prompt index x N + sample, as OpenAI numbers them.
/// </summary>
public sealed record OpenAiRequest(
    ApiEndpoint Endpoint,
    IReadOnlyList<GenerationRequest> Requests,
    IReadOnlyList<int> PromptTokens,
    int N,
    bool Stream,
    bool IncludeUsage)
{
    /// <summary>Most samples per prompt; a guard against one request filling the whole KV cache.</summary>
    public const int MaxN = 128;

    /// <summary>
    /// Log-probabilities asked for each generated token: completions' <c>logprobs</c> (N alternatives), chat's
    /// <c>top_logprobs</c> (0 when only <c>logprobs: true</c>); null = none.
    /// </summary>
    public int? Logprobs { get; init; }

    /// <summary>Completions' <c>echo</c>: each choice's text starts with its prompt (and its logprobs with the prompt's, when asked).</summary>
    public bool Echo { get; init; }

    /// <summary>Each prompt's text as echoed: the string sent, or the decoded ids.</summary>
    public IReadOnlyList<string> PromptTexts { get; init; } = [];

    /// <summary>
    /// Parses and validates <paramref name="body"/> (including the engine's own checks: prompt length, KV room), so
    /// that every refusal happens before a response starts. Throws <see cref="ApiException"/> naming the parameter.
    /// </summary>
    public static OpenAiRequest Parse(JsonElement body, ApiEndpoint endpoint, InferenceEngine engine, RequestLimits? limits = null)
    {
        limits ??= new RequestLimits();
        if (body.ValueKind != JsonValueKind.Object) throw new ApiException(StatusCodes.Status400BadRequest, "the request body must be a JSON object");
        var fields = new Fields(body);

        if (fields.String("model") is { } model && model != engine.ModelName)
            throw new ApiException(StatusCodes.Status404NotFound, $"The model '{model}' does not exist; this server serves '{engine.ModelName}'", "model", "model_not_found");

        RejectUnsupported(fields, endpoint);

        int n = fields.Int("n") ?? 1;
        if (n < 1) throw ApiException.BadRequest("n", $"must be at least 1, got {n}");
        if (n > MaxN) throw ApiException.BadRequest("n", $"must be at most {MaxN}, got {n}");
        if (fields.Int("best_of") is { } bestOf && bestOf != n) throw ApiException.NotSupported("best_of", "best_of other than n");

        string maxParam = endpoint == ApiEndpoint.ChatCompletions && fields.Has("max_completion_tokens") ? "max_completion_tokens" : "max_tokens";
        // OpenAI's defaults: 16 for completions; chat runs to the end of the context (the engine stops there with "length").
        int maxTokens = fields.Int(maxParam) ?? (endpoint == ApiEndpoint.Completions ? 16 : engine.Config.MaxPositions);
        if (maxTokens < 0) throw ApiException.BadRequest(maxParam, $"must be >= 0, got {maxTokens}");

        var sampling = new SamplingOptions
        {
            Temperature = fields.Float("temperature") ?? 1f, // OpenAI's default
            TopP = fields.Float("top_p") ?? 1f,
            TopK = fields.Int("top_k") is { } k ? (k == -1 ? 0 : k) : 0, // -1 = off, as vLLM reads it
            MinP = fields.Float("min_p") ?? 0f,
            RepetitionPenalty = fields.Float("repetition_penalty") ?? 1f,
            Seed = fields.Seed("seed"),
        };
        if (sampling.Temperature < 0) throw ApiException.BadRequest("temperature", $"must be >= 0, got {sampling.Temperature}");
        if (!(sampling.TopP > 0 && sampling.TopP <= 1)) throw ApiException.BadRequest("top_p", $"must be in (0, 1], got {sampling.TopP}");

        var (logprobs, echo) = LogprobsAsked(fields, endpoint);
        var stop = fields.StopList("stop", limits);
        bool stream = fields.Bool("stream") ?? false;
        bool includeUsage = false;
        if (fields.Object("stream_options") is { } so) includeUsage = new Fields(so, "stream_options.").Bool("include_usage") ?? false;
        var template = new GenerationRequest
        {
            N = n,
            MaxNewTokens = maxTokens,
            Sampling = sampling,
            IgnoreEos = fields.Bool("ignore_eos") ?? false,
            Logprobs = logprobs,
            PromptLogprobs = echo ? logprobs : null,
        };

        List<GenerationRequest> requests;
        if (endpoint == ApiEndpoint.Completions)
        {
            template = template with { Stop = stop };
            requests = CompletionPrompts(fields, n, limits).Select(p => p.Text != null ? template with { Prompt = p.Text } : template with { PromptIds = p.Ids }).ToList();
        }
        else
        {
            var turns = Messages(fields);
            string prompt;
            try
            {
                prompt = engine.ChatTemplate.Render(turns);
            }
            catch (RequestValidationException e)
            {
                throw ApiException.BadRequest("messages", e.Reason);
            }
            // The template's end-of-turn markers end the reply and, as stop strings, never reach the text.
            if (n > limits.MaxChoices) throw TooManyChoices(1, n, limits);
            requests = [template with { Prompt = prompt, Stop = [.. stop, .. engine.ChatTemplate.StopStrings.Where(s => !stop.Contains(s))] }];
        }

        var prompts = Validate(requests, engine, endpoint, maxParam);
        // The work the whole fan-out may queue: every prompt once, every sample up to its max_tokens (or the context).
        long asked = 0;
        int context = engine.Config.MaxPositions;
        for (int i = 0; i < requests.Count; i++)
            asked += prompts[i].Length + (long)n * Math.Min(maxTokens, context - prompts[i].Length);
        if (asked > limits.MaxRequestTokens)
            throw new ApiException(StatusCodes.Status400BadRequest,
                $"{maxParam}: {requests.Count} prompt(s) x n = {n} x {maxParam} ask for up to {asked} tokens; this server allows {limits.MaxRequestTokens} per request (lower n or {maxParam})",
                maxParam, "request_too_large");
        // Tokenized once here: the engine runs the ids as they are (BOS included).
        var texts = echo ? requests.Select((r, i) => r.Prompt ?? engine.Tokenizer.Decode(prompts[i])).ToArray() : [];
        requests = requests.Select((r, i) => r with { Prompt = null, PromptIds = prompts[i] }).ToList();
        return new OpenAiRequest(endpoint, requests, prompts.Select(p => p.Length).ToArray(), n, stream, includeUsage)
        {
            Logprobs = logprobs, Echo = echo, PromptTexts = texts,
        };
    }

    private static ApiException TooManyChoices(int prompts, int n, RequestLimits limits) =>
        new(StatusCodes.Status400BadRequest,
            $"{(prompts > 1 ? $"prompt: {prompts} prompts x n = {n}" : $"n: {n}")} choices exceed this server's limit of {limits.MaxChoices} per request",
            prompts > 1 ? "prompt" : "n", "too_many_choices");

    /// <summary>
    /// The engine's checks (prompt within the context, KV room for the whole fan-out, sampling ranges) as 400s;
    /// returns each prompt's token ids.
    /// </summary>
    private static int[][] Validate(IReadOnlyList<GenerationRequest> requests, InferenceEngine engine, ApiEndpoint endpoint, string maxParam)
    {
        try
        {
            return engine.PromptIds(requests);
        }
        catch (RequestValidationException e)
        {
            string message = e.Reason;
            string param = e.Argument switch
            {
                nameof(GenerationRequest.Prompt) => endpoint == ApiEndpoint.ChatCompletions ? "messages" : "prompt",
                nameof(GenerationRequest.MaxNewTokens) => maxParam,
                var other => SnakeCase(other), // TopP -> top_p, as OpenAI (and vLLM's extra parameters) spell them
            };
            string? code = e.Argument == nameof(GenerationRequest.Prompt) && message.Contains("context") ? "context_length_exceeded" : null;
            throw new ApiException(StatusCodes.Status400BadRequest, $"{param}: {message}", param, code);
        }
        catch (KvCacheExhaustedException e)
        {
            throw new ApiException(StatusCodes.Status400BadRequest, $"{maxParam}: {e.Message}", maxParam, "context_length_exceeded");
        }
    }

    private static string SnakeCase(string name) =>
        string.Concat(name.Select((c, i) => char.IsUpper(c) ? (i > 0 ? "_" : "") + char.ToLowerInvariant(c) : c.ToString()));

    /// <summary>
    /// What log-probabilities are asked: completions take <c>logprobs</c> (an integer) and <c>echo</c>; chat takes
    /// <c>logprobs</c> (a boolean) and <c>top_logprobs</c>, which needs it. At most 20 alternatives, as vLLM allows.
    /// </summary>
    private static (int? Logprobs, bool Echo) LogprobsAsked(Fields f, ApiEndpoint endpoint)
    {
        const int Max = GenerationRequest.MaxLogprobs;
        if (endpoint == ApiEndpoint.Completions)
        {
            int? n = f.Int("logprobs");
            if (n is int k && (k < 0 || k > Max)) throw ApiException.BadRequest("logprobs", $"must be in [0, {Max}], got {k}");
            return (n, f.Bool("echo") ?? false);
        }
        bool wanted = f.Bool("logprobs") ?? false;
        int? top = f.Int("top_logprobs");
        if (top is int t && (t < 0 || t > Max)) throw ApiException.BadRequest("top_logprobs", $"must be in [0, {Max}], got {t}");
        if (top != null && !wanted) throw ApiException.BadRequest("top_logprobs", "needs \"logprobs\": true");
        return (wanted ? top ?? 0 : null, false);
    }

    private static void RejectUnsupported(Fields f, ApiEndpoint endpoint)
    {
        // Not faked: a client asking for these would silently get something other than what it asked for.
        if (endpoint == ApiEndpoint.Completions)
        {
            if (f.String("suffix") is { Length: > 0 }) throw ApiException.NotSupported("suffix", "suffix");
        }
        else
        {
            if (f.Raw("tools") is { ValueKind: JsonValueKind.Array } tools && tools.GetArrayLength() > 0) throw ApiException.NotSupported("tools", "tool calling");
            if (f.Raw("functions") is { ValueKind: JsonValueKind.Array } fns && fns.GetArrayLength() > 0) throw ApiException.NotSupported("functions", "function calling");
            if (f.Object("response_format") is { } rf && new Fields(rf, "response_format.").String("type") is { } type && type != "text")
                throw ApiException.NotSupported("response_format", $"response_format '{type}'");
        }
        foreach (string penalty in new[] { "frequency_penalty", "presence_penalty" })
            if (f.Float(penalty) is { } p && p != 0) throw ApiException.NotSupported(penalty, $"{penalty} (use repetition_penalty)");
        if (f.Object("logit_bias") is { } bias && bias.EnumerateObject().Any()) throw ApiException.NotSupported("logit_bias", "logit_bias");
    }

    private static List<(string? Text, int[]? Ids)> CompletionPrompts(Fields f, int n, RequestLimits limits)
    {
        var prompt = f.Raw("prompt") ?? throw ApiException.BadRequest("prompt", "is required");
        const string Shape = "must be a string, an array of strings, an array of token ids or an array of token-id arrays";
        switch (prompt.ValueKind)
        {
            case JsonValueKind.String:
                if (n > limits.MaxChoices) throw TooManyChoices(1, n, limits);
                return [(f.Text(prompt, "prompt"), (int[]?)null)];
            case JsonValueKind.Array when prompt.GetArrayLength() == 0:
                throw ApiException.BadRequest("prompt", "is an empty array");
            case JsonValueKind.Array:
            {
                var items = prompt.EnumerateArray().ToArray();
                if (items.All(i => i.ValueKind == JsonValueKind.Number))
                {
                    if (n > limits.MaxChoices) throw TooManyChoices(1, n, limits);
                    return [(null, TokenIds(prompt))];
                }
                // Several prompts: the fan-out is bounded before any of them is read further.
                if ((long)items.Length * n > limits.MaxChoices) throw TooManyChoices(items.Length, n, limits);
                if (items.All(i => i.ValueKind == JsonValueKind.String)) return items.Select((i, k) => ((string? Text, int[]? Ids))(f.Text(i, $"prompt[{k}]"), null)).ToList();
                if (items.All(i => i.ValueKind == JsonValueKind.Array)) return items.Select(i => ((string?)null, (int[]?)TokenIds(i))).ToList();
                throw ApiException.BadRequest("prompt", Shape);
            }
            default:
                throw ApiException.BadRequest("prompt", Shape);
        }

        static int[] TokenIds(JsonElement array) =>
            array.EnumerateArray().Select(e => e.ValueKind == JsonValueKind.Number && e.TryGetInt32(out int id) ? id
                : throw ApiException.BadRequest("prompt", $"token ids must be integers, got {e.GetRawText()}")).ToArray();
    }

    private static List<ChatTurn> Messages(Fields f)
    {
        var messages = f.Raw("messages") ?? throw ApiException.BadRequest("messages", "is required");
        if (messages.ValueKind != JsonValueKind.Array) throw ApiException.BadRequest("messages", "must be an array");
        if (messages.GetArrayLength() == 0) throw ApiException.BadRequest("messages", "must contain at least one message");
        var turns = new List<ChatTurn>();
        int i = 0;
        foreach (var m in messages.EnumerateArray())
        {
            if (m.ValueKind != JsonValueKind.Object) throw ApiException.BadRequest("messages", $"[{i}] must be an object");
            var mf = new Fields(m, $"messages[{i}].");
            string role = mf.String("role") ?? throw ApiException.BadRequest("messages", $"[{i}].role is required");
            if (role == "developer") role = "system"; // OpenAI's newer name for the system role
            turns.Add(new ChatTurn(role, Content(mf, i)));
            i++;
        }
        return turns;

        static string Content(Fields mf, int i)
        {
            if (mf.Raw("content") is not { } c) return "";
            if (c.ValueKind == JsonValueKind.String) return mf.Text(c, "content");
            if (c.ValueKind != JsonValueKind.Array) throw ApiException.BadRequest("messages", $"[{i}].content must be a string or an array of text parts");
            var sb = new System.Text.StringBuilder();
            int j = 0;
            foreach (var part in c.EnumerateArray())
            {
                // A part is {"type": "text", "text": "..."}; anything else is refused, never read as "".
                if (part.ValueKind != JsonValueKind.Object)
                    throw ApiException.BadRequest("messages", $"[{i}].content[{j}] must be a {{\"type\": \"text\", \"text\": ...}} object, got {Fields.Truncate(part.GetRawText())}");
                var pf = new Fields(part, $"messages[{i}].content[{j}].");
                string type = pf.String("type") ?? "text";
                if (type != "text") throw ApiException.NotSupported("messages", $"content of type '{type}'");
                sb.Append(pf.String("text") ?? throw ApiException.BadRequest("messages", $"[{i}].content[{j}].text is required"));
                j++;
            }
            return sb.ToString();
        }
    }

    /// <summary>Typed reads of a JSON object's fields; a wrong type is a 400 naming the field. null and absent read as null.</summary>
    private sealed class Fields(JsonElement obj, string prefix = "")
    {
        public bool Has(string name) => Raw(name) != null;

        public JsonElement? Raw(string name) =>
            obj.ValueKind == JsonValueKind.Object && obj.TryGetProperty(name, out var v) && v.ValueKind != JsonValueKind.Null ? v : null;

        private ApiException Wrong(string name, string expected, JsonElement v) =>
            ApiException.BadRequest(prefix + name, $"must be {expected}, got {Truncate(v.GetRawText())}");

        public static string Truncate(string s) => s.Length <= 40 ? s : s[..40] + "...";

        public string? String(string name) => Raw(name) is not { } v ? null
            : v.ValueKind == JsonValueKind.String ? Text(v, name) : throw Wrong(name, "a string", v);

        /// <summary>
        /// The text of a JSON string; invalid UTF-8 or an unpaired surrogate escape ("\ud800") is a 400 naming the
        /// field, not an exception later (System.Text.Json only finds it when the string is read).
        /// </summary>
        public string Text(JsonElement v, string name)
        {
            try
            {
                return v.GetString()!;
            }
            catch (InvalidOperationException)
            {
                throw ApiException.BadRequest(prefix + name, "is not valid Unicode text (invalid UTF-8 or an unpaired surrogate)");
            }
        }

        public bool? Bool(string name) => Raw(name) is not { } v ? null
            : v.ValueKind is JsonValueKind.True or JsonValueKind.False ? v.GetBoolean() : throw Wrong(name, "true or false", v);

        public int? Int(string name) => Raw(name) is not { } v ? null
            : v.ValueKind == JsonValueKind.Number && v.TryGetInt32(out int i) ? i : throw Wrong(name, "an integer", v);

        public float? Float(string name) => Raw(name) is not { } v ? null
            : v.ValueKind == JsonValueKind.Number && v.TryGetDouble(out double d) && double.IsFinite(d) ? (float)d : throw Wrong(name, "a number", v);

        public ulong? Seed(string name) => Raw(name) is not { } v ? null
            : v.ValueKind == JsonValueKind.Number && v.TryGetInt64(out long l) ? unchecked((ulong)l)
            : v.ValueKind == JsonValueKind.Number && v.TryGetUInt64(out ulong u) ? u
            : throw Wrong(name, "an integer", v);

        public JsonElement? Object(string name) => Raw(name) is not { } v ? null
            : v.ValueKind == JsonValueKind.Object ? v : throw Wrong(name, "an object", v);

        public List<string> StopList(string name, RequestLimits limits)
        {
            if (Raw(name) is not { } v) return [];
            if (v.ValueKind == JsonValueKind.Array && v.GetArrayLength() > limits.MaxStopStrings)
                throw ApiException.BadRequest(prefix + name, $"{v.GetArrayLength()} stop strings exceed this server's limit of {limits.MaxStopStrings}");
            var list = v.ValueKind switch
            {
                JsonValueKind.String => [Text(v, name)],
                JsonValueKind.Array => v.EnumerateArray().Select((s, i) => s.ValueKind == JsonValueKind.String ? Text(s, $"{name}[{i}]") : throw Wrong(name, "a string or an array of strings", v)).ToList(),
                _ => throw Wrong(name, "a string or an array of strings", v),
            };
            if (list.Any(s => s.Length == 0)) throw ApiException.BadRequest(prefix + name, "stop strings must not be empty");
            if (list.FirstOrDefault(s => s.Length > limits.MaxStopLength) is { } tooLong)
                throw ApiException.BadRequest(prefix + name, $"a stop string of {tooLong.Length} characters exceeds this server's limit of {limits.MaxStopLength}");
            return list;
        }
    }
}
