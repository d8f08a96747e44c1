// OpenAI's logprobs on /v1/completions (logprobs N, echo: what evaluation harnesses use for log-likelihood) and
// /v1/chat/completions (logprobs, top_logprobs), streamed and not, against the engine's own log-probabilities.
using System.Text.Json.Nodes;
using Kernels.Runtime.Engine;

namespace Kernels.Tests.Server;

[CancelAfter(120_000)]
public class LogprobsServerTests
{
    private TestServer _server = null!;

    [OneTimeSetUp]
    public async Task Start() => _server = await TestServer.StartAsync();

    [OneTimeTearDown]
    public async Task Stop() => await _server.DisposeAsync();

    private static float[] Floats(JsonNode? array) => array!.AsArray().Select(v => v!.GetValue<float>()).ToArray();

    /// <summary>A token text's bytes: UTF-8, or OpenAI's "bytes:\xNN..." for a token that is not whole characters.</summary>
    internal static byte[] Bytes(string token) =>
        token.StartsWith("bytes:") ? token["bytes:".Length..].Split("\\x", StringSplitOptions.RemoveEmptyEntries).Select(h => Convert.ToByte(h, 16)).ToArray()
            : System.Text.Encoding.UTF8.GetBytes(token);

    [Test]
    public async Task CompletionLogprobsAreTheEnginesWithTheirAlternatives()
    {
        const string Prompt = "Once upon a time";
        var (response, body) = await _server.PostAsync("/v1/completions", new { prompt = Prompt, max_tokens = 6, temperature = 0, ignore_eos = true, logprobs = 3 });
        Assert.That((int)response.StatusCode, Is.EqualTo(200), body?.ToJsonString());
        var lp = body!["choices"]![0]!["logprobs"]!;
        var engine = (await _server.Engine.GenerateAsync([new GenerationRequest { Prompt = Prompt, MaxNewTokens = 6, IgnoreEos = true, Logprobs = 3 }]))[0];

        Assert.That(lp["tokens"]!.AsArray(), Has.Count.EqualTo(6));
        Assert.That(Floats(lp["token_logprobs"]), Is.EqualTo(engine.Logprobs!.Select(l => l.Logprob)).Within(1e-6));
        var bytes = lp["tokens"]!.AsArray().SelectMany(t => Bytes(t!.GetValue<string>())).ToArray();
        Assert.That(System.Text.Encoding.UTF8.GetString(bytes), Is.EqualTo(body["choices"]![0]!["text"]!.GetValue<string>()), "the tokens' bytes spell the text");
        Assert.That(lp["tokens"]!.AsArray().Any(t => t!.GetValue<string>().StartsWith("bytes:")), "this model's bytes split characters: the bytes: form is exercised");
        var offsets = lp["text_offset"]!.AsArray().Select(o => o!.GetValue<int>()).ToArray();
        Assert.That(offsets[0], Is.Zero);
        Assert.That(offsets, Is.Ordered.Ascending);
        for (int i = 0; i < 6; i++)
        {
            var top = lp["top_logprobs"]![i]!.AsObject();
            Assert.That(top.Count, Is.InRange(1, 3), $"token {i}: up to 3 alternatives (two ids may share a text)");
            // Greedy: the chosen token is the most likely one.
            Assert.That(top.Max(kv => kv.Value!.GetValue<float>()), Is.EqualTo(Floats(lp["token_logprobs"])[i]).Within(1e-6));
        }
    }

    [Test]
    public async Task EchoWithNoNewTokensScoresThePrompt()
    {
        // The request lm-evaluation-harness sends for log-likelihood: the prompt echoed with its tokens' logprobs.
        const string Prompt = "The cat sat on the mat and looked at the dog";
        var (response, body) = await _server.PostAsync("/v1/completions", new { prompt = Prompt, max_tokens = 0, echo = true, logprobs = 1 });
        Assert.That((int)response.StatusCode, Is.EqualTo(200), body?.ToJsonString());
        var choice = body!["choices"]![0]!;
        Assert.That(choice["text"]!.GetValue<string>(), Is.EqualTo(Prompt));
        var engine = (await _server.Engine.GenerateAsync([new GenerationRequest { Prompt = Prompt, MaxNewTokens = 0, PromptLogprobs = 1 }]))[0];
        var lp = choice["logprobs"]!;
        var values = lp["token_logprobs"]!.AsArray();
        Assert.That(values, Has.Count.EqualTo(engine.PromptIds.Count));
        Assert.That(values[0], Is.Null, "the first prompt token has no log-probability");
        Assert.That(lp["top_logprobs"]![0], Is.Null);
        for (int i = 1; i < values.Count; i++)
        {
            Assert.That(values[i]!.GetValue<float>(), Is.EqualTo(engine.PromptLogprobs![i]!.Logprob).Within(1e-6), $"prompt token {i}");
            Assert.That(values[i]!.GetValue<float>(), Is.LessThanOrEqualTo(0f));
        }
        Assert.That(body["usage"]!["completion_tokens"]!.GetValue<int>(), Is.Zero);

        // With new tokens: the prompt's entries, then the completion's; the text is the prompt then the completion.
        var (_, more) = await _server.PostAsync("/v1/completions", new { prompt = Prompt, max_tokens = 3, temperature = 0, ignore_eos = true, echo = true, logprobs = 0 });
        var withTokens = more!["choices"]![0]!;
        Assert.That(withTokens["text"]!.GetValue<string>(), Does.StartWith(Prompt));
        Assert.That(withTokens["logprobs"]!["tokens"]!.AsArray(), Has.Count.EqualTo(engine.PromptIds.Count + 3));
        Assert.That(withTokens["logprobs"]!["text_offset"]![engine.PromptIds.Count]!.GetValue<int>(), Is.EqualTo(Prompt.Length), "the completion starts after the echoed prompt");
    }

    [Test]
    public async Task StreamedLogprobsEqualTheWholeResponses()
    {
        var request = new { prompt = "Lily and Tom went to the park.", max_tokens = 8, temperature = 0.8, seed = 11, n = 2, ignore_eos = true, echo = true, logprobs = 2 };
        var (_, whole) = await _server.PostAsync("/v1/completions", request);
        var chunks = await _server.StreamAsync("/v1/completions", new { request.prompt, request.max_tokens, request.temperature, request.seed, request.n, request.ignore_eos, request.echo, request.logprobs, stream = true });
        for (int c = 0; c < 2; c++)
        {
            var mine = chunks.SelectMany(ch => ch["choices"]!.AsArray()).Where(x => x!["index"]!.GetValue<int>() == c).ToArray();
            var expected = whole!["choices"]![c]!;
            Assert.That(string.Concat(mine.Select(x => x!["text"]!.GetValue<string>())), Is.EqualTo(expected["text"]!.GetValue<string>()), $"choice {c} text");
            var parts = mine.Select(x => x!["logprobs"]).Where(l => l != null).ToArray();
            var tokens = parts.SelectMany(l => l!["tokens"]!.AsArray().Select(t => t!.GetValue<string>())).ToArray();
            var values = parts.SelectMany(l => l!["token_logprobs"]!.AsArray().Select(v => v?.GetValue<float>())).ToArray();
            var offsets = parts.SelectMany(l => l!["text_offset"]!.AsArray().Select(v => v!.GetValue<int>())).ToArray();
            Assert.That(tokens, Is.EqualTo(expected["logprobs"]!["tokens"]!.AsArray().Select(t => t!.GetValue<string>())), $"choice {c} tokens");
            Assert.That(values, Is.EqualTo(expected["logprobs"]!["token_logprobs"]!.AsArray().Select(v => v?.GetValue<float>())), $"choice {c} logprobs");
            Assert.That(offsets, Is.EqualTo(expected["logprobs"]!["text_offset"]!.AsArray().Select(v => v!.GetValue<int>())), $"choice {c} offsets");
        }
    }
}
