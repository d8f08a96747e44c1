// OpenAI's two shapes of log-probabilities: completions' parallel lists (tokens, token_logprobs, top_logprobs,
// text_offset) and chat's list of {token, logprob, bytes, top_logprobs}.
using System.Text;
using System.Text.Json.Nodes;
using Kernels.Runtime.Engine;
using Kernels.Runtime.Tokenization;

namespace Kernels.Server;

internal sealed class LogprobsJson(ITextTokenizer tokenizer)
{
    /// <summary>What JSON carries for a log-probability of -inf (JSON has no infinities); vLLM's floor.</summary>
    public const float Floor = -9999f;

    private static readonly UTF8Encoding StrictUtf8 = new(false, throwOnInvalidBytes: true);

    /// <summary>A token's text: its bytes as UTF-8, or OpenAI's "bytes:\xNN..." when they are not whole characters.</summary>
    public string Text(int id)
    {
        var bytes = tokenizer.TokenBytes(id);
        try
        {
            return StrictUtf8.GetString(bytes);
        }
        catch (DecoderFallbackException)
        {
            return "bytes:" + string.Concat(bytes.Select(b => $"\\x{b:x2}"));
        }
    }

    private static JsonNode Value(float logprob) => JsonValue.Create(float.IsNegativeInfinity(logprob) || float.IsNaN(logprob) ? Floor : logprob);

    /// <summary>
    /// Completions' object for <paramref name="tokens"/> with their scores (null: none, as for a prompt's first
    /// token); text_offset counts UTF-16 characters from <paramref name="offset"/>, token text after token text.
    /// Returns the offset after the last token.
    /// </summary>
    public int AppendCompletion(JsonObject target, IReadOnlyList<int> tokens, IReadOnlyList<TokenLogprobs?> scores, int offset)
    {
        var texts = (JsonArray)(target["tokens"] ??= new JsonArray());
        var values = (JsonArray)(target["token_logprobs"] ??= new JsonArray());
        var tops = (JsonArray)(target["top_logprobs"] ??= new JsonArray());
        var offsets = (JsonArray)(target["text_offset"] ??= new JsonArray());
        for (int i = 0; i < tokens.Count; i++)
        {
            string text = Text(tokens[i]);
            texts.Add(text);
            offsets.Add(offset);
            offset += text.Length;
            if (scores[i] is not { } s)
            {
                values.Add(null);
                tops.Add(null);
                continue;
            }
            values.Add(Value(s.Logprob));
            var top = new JsonObject();
            foreach (var t in s.Top)
            {
                string key = Text(t.Token);
                if (!top.ContainsKey(key)) top[key] = Value(t.Logprob); // two ids with one text: the likelier one
            }
            tops.Add(top);
        }
        return offset;
    }

    /// <summary>Chat's entries for generated tokens: {token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}.</summary>
    public JsonArray Chat(IEnumerable<TokenLogprobs> scores)
    {
        var content = new JsonArray();
        foreach (var s in scores)
        {
            var entry = Entry(s.Token, s.Logprob);
            var top = new JsonArray();
            foreach (var t in s.Top) top.Add(Entry(t.Token, t.Logprob));
            entry["top_logprobs"] = top;
            content.Add(entry);
        }
        return content;
    }

    private JsonObject Entry(int id, float logprob) => new()
    {
        ["token"] = Text(id),
        ["logprob"] = Value(logprob),
        ["bytes"] = new JsonArray(tokenizer.TokenBytes(id).Select(b => (JsonNode)JsonValue.Create((int)b)).ToArray()),
    };
}
