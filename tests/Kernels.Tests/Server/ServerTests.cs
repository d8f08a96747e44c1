// The HTTP server end to end over a real socket: OpenAI-shaped completions and chat (JSON and SSE), n > 1, stop,
// usage, errors with OpenAI-style bodies, the API key, /v1/models, /health, /metrics and client disconnects.
using System.Net;
using System.Text;
using System.Text.Json.Nodes;
using Kernels.Runtime.Engine;
using Kernels.Runtime.Engine.Chat;

namespace Kernels.Tests.Server;

[CancelAfter(120_000)]
public class ServerTests
{
    private TestServer _server = null!;

    [OneTimeSetUp]
    public async Task Start() => _server = await TestServer.StartAsync();

    [OneTimeTearDown]
    public async Task Stop() => await _server.DisposeAsync();

    private string Model => _server.Engine.ModelName;

    private static string Text(JsonNode choice) => choice["text"]?.GetValue<string>() ?? choice["message"]!["content"]!.GetValue<string>();

    // ---------------------------------------------------------------- completions

    [Test]
    public async Task CompletionMatchesTheEngineAndReportsUsage()
    {
        var (response, body) = await _server.PostAsync("/v1/completions", new { model = Model, prompt = "Once upon a time", max_tokens = 12, temperature = 0, ignore_eos = true });
        Assert.That(response.StatusCode, Is.EqualTo(HttpStatusCode.OK), body?.ToJsonString());
        Assert.That(response.Content.Headers.ContentType?.MediaType, Is.EqualTo("application/json"));
        Assert.That(body!["object"]!.GetValue<string>(), Is.EqualTo("text_completion"));
        Assert.That(body["id"]!.GetValue<string>(), Does.StartWith("cmpl-"));
        Assert.That(body["model"]!.GetValue<string>(), Is.EqualTo(Model));
        var choice = body["choices"]!.AsArray().Single()!;
        string expected = await _server.EngineTextAsync(new GenerationRequest { Prompt = "Once upon a time", MaxNewTokens = 12, IgnoreEos = true });
        Assert.That(Text(choice), Is.EqualTo(expected));
        Assert.That(choice["finish_reason"]!.GetValue<string>(), Is.EqualTo("length"));
        Assert.That(choice["index"]!.GetValue<int>(), Is.EqualTo(0));

        var usage = body["usage"]!;
        int promptTokens = _server.Engine.PromptIds(new GenerationRequest { Prompt = "Once upon a time" }).Length;
        Assert.That(usage["prompt_tokens"]!.GetValue<int>(), Is.EqualTo(promptTokens));
        Assert.That(usage["completion_tokens"]!.GetValue<int>(), Is.EqualTo(12));
        Assert.That(usage["total_tokens"]!.GetValue<int>(), Is.EqualTo(promptTokens + 12));
    }

    [Test]
    public async Task ModelMayBeOmitted()
    {
        var (response, body) = await _server.PostAsync("/v1/completions", new { prompt = "abc", max_tokens = 2, temperature = 0 });
        Assert.That(response.StatusCode, Is.EqualTo(HttpStatusCode.OK), body?.ToJsonString());
    }

    [Test]
    public async Task StreamedCompletionEqualsTheNonStreamedOne()
    {
        var request = new { model = Model, prompt = "The capital of France is", max_tokens = 16, temperature = 0, ignore_eos = true };
        var (_, whole) = await _server.PostAsync("/v1/completions", request);
        var chunks = await _server.StreamAsync("/v1/completions", new { request.model, request.prompt, request.max_tokens, request.temperature, request.ignore_eos, stream = true });

        Assert.That(chunks.Count, Is.GreaterThan(1), "streamed in pieces");
        Assert.That(chunks.Select(c => c["object"]!.GetValue<string>()), Has.All.EqualTo("text_completion"));
        Assert.That(chunks.Select(c => c["id"]!.GetValue<string>()).Distinct().Count(), Is.EqualTo(1), "one id for the whole stream");
        var choices = chunks.Select(c => c["choices"]!.AsArray().Single()!).ToList();
        Assert.That(string.Concat(choices.Select(Text)), Is.EqualTo(Text(whole!["choices"]![0]!)));
        Assert.That(choices[^1]["finish_reason"]!.GetValue<string>(), Is.EqualTo("length"));
        Assert.That(choices[..^1].Select(c => c["finish_reason"]), Has.All.Null);
        Assert.That(chunks.Any(c => c["usage"] != null), Is.False, "no usage unless stream_options.include_usage");
    }

    [Test]
    public async Task StreamWithIncludeUsageEndsWithAUsageChunk()
    {
        var chunks = await _server.StreamAsync("/v1/completions", new
        {
            prompt = "abc", max_tokens = 5, temperature = 0, ignore_eos = true, stream = true, stream_options = new { include_usage = true },
        });
        var last = chunks[^1];
        Assert.That(last["choices"]!.AsArray(), Is.Empty);
        Assert.That(last["usage"]!["completion_tokens"]!.GetValue<int>(), Is.EqualTo(5));
        Assert.That(last["usage"]!["prompt_tokens"]!.GetValue<int>(), Is.EqualTo(4), "BOS + 3 bytes");
        Assert.That(chunks[..^1].Select(c => c.AsObject().ContainsKey("usage") && c["usage"] == null), Has.All.True, "earlier chunks carry usage: null");
    }

    [Test]
    public async Task SeveralSamplesAreNumberedChoicesAndSeedsRepeat()
    {
        var request = new { prompt = "Once", n = 3, max_tokens = 10, temperature = 1.0, seed = 42, ignore_eos = true };
        var (response, first) = await _server.PostAsync("/v1/completions", request);
        Assert.That(response.StatusCode, Is.EqualTo(HttpStatusCode.OK), first?.ToJsonString());
        var choices = first!["choices"]!.AsArray();
        Assert.That(choices.Select(c => c!["index"]!.GetValue<int>()), Is.EqualTo(new[] { 0, 1, 2 }));
        Assert.That(choices.Select(c => c!["finish_reason"]!.GetValue<string>()), Has.All.EqualTo("length"));
        Assert.That(first["usage"]!["completion_tokens"]!.GetValue<int>(), Is.EqualTo(30));
        Assert.That(choices.Select(c => Text(c!)).Distinct().Count(), Is.GreaterThan(1), "samples differ at temperature 1");

        var (_, again) = await _server.PostAsync("/v1/completions", request);
        Assert.That(again!["choices"]!.AsArray().Select(c => Text(c!)), Is.EqualTo(choices.Select(c => Text(c!))), "same seed, same text");

        var chunks = await _server.StreamAsync("/v1/completions", new { request.prompt, request.n, request.max_tokens, request.temperature, request.seed, request.ignore_eos, stream = true });
        for (int i = 0; i < 3; i++)
        {
            var mine = chunks.Select(c => c["choices"]![0]!).Where(c => c["index"]!.GetValue<int>() == i).ToList();
            Assert.That(string.Concat(mine.Select(Text)), Is.EqualTo(Text(choices[i]!)), $"choice {i} streamed");
            Assert.That(mine[^1]["finish_reason"]!.GetValue<string>(), Is.EqualTo("length"));
        }
    }

    [Test]
    public async Task SeveralPromptsAreNumberedPromptMajor()
    {
        var (response, body) = await _server.PostAsync("/v1/completions", new { prompt = new[] { "abc", "xyz" }, n = 2, max_tokens = 6, temperature = 0, ignore_eos = true });
        Assert.That(response.StatusCode, Is.EqualTo(HttpStatusCode.OK), body?.ToJsonString());
        var texts = body!["choices"]!.AsArray().OrderBy(c => c!["index"]!.GetValue<int>()).Select(c => Text(c!)).ToArray();
        string abc = await _server.EngineTextAsync(new GenerationRequest { Prompt = "abc", MaxNewTokens = 6, IgnoreEos = true });
        string xyz = await _server.EngineTextAsync(new GenerationRequest { Prompt = "xyz", MaxNewTokens = 6, IgnoreEos = true });
        Assert.That(texts, Is.EqualTo(new[] { abc, abc, xyz, xyz }));
        Assert.That(body["usage"]!["prompt_tokens"]!.GetValue<int>(), Is.EqualTo(8), "each prompt counted once");
    }

    [Test]
    public async Task StopStringEndsTheTextBeforeIt()
    {
        string full = await _server.EngineTextAsync(new GenerationRequest { Prompt = "Once upon a time", MaxNewTokens = 24, IgnoreEos = true });
        Assume.That(full.Length, Is.GreaterThan(8));
        string stop = full.Substring(full.Length / 2, 2);
        string expected = full[..full.IndexOf(stop, StringComparison.Ordinal)];

        foreach (object stopValue in new object[] { stop, new[] { "\u0001never", stop } })
        {
            var (_, body) = await _server.PostAsync("/v1/completions", new { prompt = "Once upon a time", max_tokens = 24, temperature = 0, ignore_eos = true, stop = stopValue });
            var choice = body!["choices"]![0]!;
            Assert.That(Text(choice), Is.EqualTo(expected));
            Assert.That(choice["finish_reason"]!.GetValue<string>(), Is.EqualTo("stop"));
        }
        var chunks = await _server.StreamAsync("/v1/completions", new { prompt = "Once upon a time", max_tokens = 24, temperature = 0, ignore_eos = true, stop, stream = true });
        Assert.That(string.Concat(chunks.Select(c => Text(c["choices"]![0]!))), Is.EqualTo(expected));
        Assert.That(chunks[^1]["choices"]![0]!["finish_reason"]!.GetValue<string>(), Is.EqualTo("stop"));
    }

    // ---------------------------------------------------------------- chat

    [Test]
    public async Task ChatRendersTheTemplateAndStreamsTheSameText()
    {
        object[] messages = [new { role = "system", content = "Be brief." }, new { role = "user", content = "Hello!" }];
        var (response, body) = await _server.PostAsync("/v1/chat/completions", new { model = Model, messages, max_tokens = 10, temperature = 0 });
        Assert.That(response.StatusCode, Is.EqualTo(HttpStatusCode.OK), body?.ToJsonString());
        Assert.That(body!["object"]!.GetValue<string>(), Is.EqualTo("chat.completion"));
        var choice = body["choices"]![0]!;
        Assert.That(choice["message"]!["role"]!.GetValue<string>(), Is.EqualTo("assistant"));

        var template = _server.Engine.ChatTemplate;
        string prompt = template.Render([new ChatTurn("system", "Be brief."), new ChatTurn("user", "Hello!")]);
        var result = (await _server.Engine.GenerateAsync([new GenerationRequest { Prompt = prompt, MaxNewTokens = 10, Stop = template.StopStrings }]))[0];
        Assert.That(Text(choice), Is.EqualTo(result.Text));
        Assert.That(choice["finish_reason"]!.GetValue<string>(), Is.EqualTo(result.Finish == FinishReason.Length ? "length" : "stop"));
        foreach (string s in template.StopStrings) Assert.That(Text(choice), Does.Not.Contain(s), "template stop strings are not in the text");
        Assert.That(body["usage"]!["prompt_tokens"]!.GetValue<int>(), Is.EqualTo(result.PromptIds.Count));

        // max_completion_tokens is the newer name of max_tokens.
        var (_, newer) = await _server.PostAsync("/v1/chat/completions", new { messages, max_completion_tokens = 10, temperature = 0 });
        Assert.That(Text(newer!["choices"]![0]!), Is.EqualTo(Text(choice)));

        var chunks = await _server.StreamAsync("/v1/chat/completions", new { messages, max_tokens = 10, temperature = 0, stream = true });
        Assert.That(chunks.Select(c => c["object"]!.GetValue<string>()), Has.All.EqualTo("chat.completion.chunk"));
        var deltas = chunks.Select(c => c["choices"]![0]!["delta"]!).ToList();
        Assert.That(deltas[0]["role"]!.GetValue<string>(), Is.EqualTo("assistant"));
        Assert.That(string.Concat(deltas.Select(d => d["content"]?.GetValue<string>() ?? "")), Is.EqualTo(Text(choice)));
        Assert.That(chunks[^1]["choices"]![0]!["finish_reason"]!.GetValue<string>(), Is.EqualTo(choice["finish_reason"]!.GetValue<string>()));
    }

    [Test]
    public async Task ChatAcceptsContentPartsAndTheDeveloperRole()
    {
        var (response, body) = await _server.PostAsync("/v1/chat/completions", new
        {
            messages = new object[]
            {
                new { role = "developer", content = "Be brief." },
                new { role = "user", content = new object[] { new { type = "text", text = "Hel" }, new { type = "text", text = "lo!" } } },
            },
            max_tokens = 10, temperature = 0,
        });
        Assert.That(response.StatusCode, Is.EqualTo(HttpStatusCode.OK), body?.ToJsonString());
        var (_, plain) = await _server.PostAsync("/v1/chat/completions", new
        {
            messages = new object[] { new { role = "system", content = "Be brief." }, new { role = "user", content = "Hello!" } },
            max_tokens = 10, temperature = 0,
        });
        Assert.That(Text(body!["choices"]![0]!), Is.EqualTo(Text(plain!["choices"]![0]!)));
    }

    // ---------------------------------------------------------------- errors

    private static void AssertError(HttpResponseMessage response, JsonNode? body, HttpStatusCode status, string? param, string? code = null) =>
        TestServer.AssertError(response, body, status, param, code);

    [TestCase("{\"prompt\": \"abc\",", null)]
    [TestCase("not json at all", null)]
    [TestCase("[1, 2]", null)]
    [TestCase("{\"prompt\": 5}", "prompt")]
    [TestCase("{}", "prompt")]
    [TestCase("{\"prompt\": \"abc\", \"max_tokens\": -1}", "max_tokens")]
    [TestCase("{\"prompt\": \"abc\", \"max_tokens\": 1.5}", "max_tokens")]
    [TestCase("{\"prompt\": \"abc\", \"temperature\": -0.5}", "temperature")]
    [TestCase("{\"prompt\": \"abc\", \"temperature\": \"hot\"}", "temperature")]
    [TestCase("{\"prompt\": \"abc\", \"top_p\": 0}", "top_p")]
    [TestCase("{\"prompt\": \"abc\", \"top_p\": 1.5}", "top_p")]
    [TestCase("{\"prompt\": \"abc\", \"n\": 0}", "n")]
    [TestCase("{\"prompt\": \"abc\", \"top_k\": -5}", "top_k")]
    [TestCase("{\"prompt\": \"abc\", \"min_p\": 2}", "min_p")]
    [TestCase("{\"prompt\": \"abc\", \"repetition_penalty\": 0}", "repetition_penalty")]
    [TestCase("{\"prompt\": \"abc\", \"stop\": 7}", "stop")]
    [TestCase("{\"prompt\": \"abc\", \"stop\": [\"\"]}", "stop")]
    [TestCase("{\"prompt\": \"abc\", \"logprobs\": 21}", "logprobs")]
    [TestCase("{\"prompt\": \"abc\", \"logprobs\": -1}", "logprobs")]
    [TestCase("{\"prompt\": \"abc\", \"logprobs\": true}", "logprobs")]
    [TestCase("{\"prompt\": \"abc\", \"echo\": 1}", "echo")]
    [TestCase("{\"prompt\": \"abc\", \"presence_penalty\": 0.5}", "presence_penalty")]
    [TestCase("{\"prompt\": [1, 100000]}", "prompt")]
    public async Task BadCompletionRequestsAre400sNamingTheParameter(string json, string? param)
    {
        var (response, body) = await _server.PostAsync("/v1/completions", json);
        AssertError(response, body, HttpStatusCode.BadRequest, param);
    }

    [TestCase("{\"messages\": []}", "messages")]
    [TestCase("{\"messages\": \"hi\"}", "messages")]
    [TestCase("{\"messages\": [{\"role\": \"robot\", \"content\": \"hi\"}]}", "messages")]
    [TestCase("{\"messages\": [{\"content\": \"hi\"}]}", "messages")]
    [TestCase("{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"max_completion_tokens\": -3}", "max_completion_tokens")]
    [TestCase("{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"logprobs\": 2}", "logprobs")]
    [TestCase("{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"top_logprobs\": 2}", "top_logprobs")]
    [TestCase("{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"logprobs\": true, \"top_logprobs\": 21}", "top_logprobs")]
    [TestCase("{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"tools\": [{\"type\": \"function\"}]}", "tools")]
    [TestCase("{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"image_url\"}]}]}", "messages")]
    public async Task BadChatRequestsAre400sNamingTheParameter(string json, string param)
    {
        var (response, body) = await _server.PostAsync("/v1/chat/completions", json);
        AssertError(response, body, HttpStatusCode.BadRequest, param);
    }

    [Test]
    public async Task PromptBeyondTheContextIs400()
    {
        string longPrompt = new('a', _server.Engine.Config.MaxPositions + 10);
        var (response, body) = await _server.PostAsync("/v1/completions", new { prompt = longPrompt, max_tokens = 4 });
        AssertError(response, body, HttpStatusCode.BadRequest, "prompt", "context_length_exceeded");
        Assert.That(body!["error"]!["message"]!.GetValue<string>(), Does.Contain("context"));

        (response, body) = await _server.PostAsync("/v1/chat/completions", new { messages = new[] { new { role = "user", content = longPrompt } } });
        AssertError(response, body, HttpStatusCode.BadRequest, "messages", "context_length_exceeded");
    }

    [Test]
    public async Task UnknownModelIs404()
    {
        var (response, body) = await _server.PostAsync("/v1/completions", new { model = "gpt-4", prompt = "abc" });
        AssertError(response, body, HttpStatusCode.NotFound, "model", "model_not_found");
        (response, body) = await _server.PostAsync("/v1/chat/completions", new { model = "gpt-4", messages = new[] { new { role = "user", content = "hi" } } });
        AssertError(response, body, HttpStatusCode.NotFound, "model", "model_not_found");
        var get = await _server.Client.GetAsync("/v1/models/gpt-4");
        AssertError(get, JsonNode.Parse(await get.Content.ReadAsStringAsync()), HttpStatusCode.NotFound, "model", "model_not_found");
    }

    [Test]
    public async Task OversizedBodyIs413()
    {
        string huge = "{\"prompt\": \"" + new string('a', 5 << 20) + "\"}";
        // With Expect: 100-continue (what curl sends for large bodies) the server refuses before the upload; a client
        // that sends it anyway sees the connection closed after the 413, which HttpClient reports as a reset.
        using var request = new HttpRequestMessage(HttpMethod.Post, "/v1/completions") { Content = TestServer.Content(huge) };
        request.Headers.ExpectContinue = true;
        using var response = await _server.Client.SendAsync(request);
        AssertError(response, JsonNode.Parse(await response.Content.ReadAsStringAsync()), HttpStatusCode.RequestEntityTooLarge, null, "request_too_large");
    }

    [TestCase(null)]
    [TestCase("Bearer wrong-key")]
    [TestCase("Bearer sk-test-ke")]
    [TestCase("sk-test-key")]
    public async Task WrongOrMissingApiKeyIs401(string? authorization)
    {
        using var client = new HttpClient { BaseAddress = _server.BaseAddress };
        foreach (var (method, path) in new[] { (HttpMethod.Post, "/v1/completions"), (HttpMethod.Post, "/v1/chat/completions"), (HttpMethod.Get, "/v1/models") })
        {
            using var request = new HttpRequestMessage(method, path);
            if (method == HttpMethod.Post) request.Content = TestServer.Content(new { prompt = "abc", max_tokens = 1 });
            if (authorization != null) request.Headers.TryAddWithoutValidation("Authorization", authorization);
            using var response = await client.SendAsync(request);
            AssertError(response, JsonNode.Parse(await response.Content.ReadAsStringAsync()), HttpStatusCode.Unauthorized, null, "invalid_api_key");
            Assert.That(response.Headers.WwwAuthenticate.ToString(), Is.EqualTo("Bearer"));
        }
        // /health and /metrics need no key.
        Assert.That((await client.GetAsync("/health")).StatusCode, Is.EqualTo(HttpStatusCode.OK));
        Assert.That((await client.GetAsync("/metrics")).StatusCode, Is.EqualTo(HttpStatusCode.OK));
    }

    [Test]
    public async Task UnknownV1PathIsAnOpenAiStyle404()
    {
        var response = await _server.Client.GetAsync("/v1/embeddings");
        AssertError(response, JsonNode.Parse(await response.Content.ReadAsStringAsync()), HttpStatusCode.NotFound, null);
    }

    // ---------------------------------------------------------------- models, health, metrics

    [Test]
    public async Task ModelsListsTheLoadedModel()
    {
        var body = JsonNode.Parse(await _server.Client.GetStringAsync("/v1/models"))!;
        Assert.That(body["object"]!.GetValue<string>(), Is.EqualTo("list"));
        var model = body["data"]!.AsArray().Single()!;
        Assert.That(model["id"]!.GetValue<string>(), Is.EqualTo("synthetic:tiny"));
        Assert.That(model["object"]!.GetValue<string>(), Is.EqualTo("model"));
        Assert.That(model["owned_by"], Is.Not.Null);
        var one = JsonNode.Parse(await _server.Client.GetStringAsync("/v1/models/synthetic:tiny"))!;
        Assert.That(one["id"]!.GetValue<string>(), Is.EqualTo("synthetic:tiny"));
    }

    [Test]
    public async Task HealthIsOk()
    {
        using var client = new HttpClient { BaseAddress = _server.BaseAddress };
        var response = await client.GetAsync("/health");
        Assert.That(response.StatusCode, Is.EqualTo(HttpStatusCode.OK));
        Assert.That(JsonNode.Parse(await response.Content.ReadAsStringAsync())!["status"]!.GetValue<string>(), Is.EqualTo("ok"));
    }

    [Test]
    public async Task MetricsArePrometheusText()
    {
        await _server.PostAsync("/v1/completions", new { prompt = "abc", max_tokens = 2, temperature = 0 });
        using var client = new HttpClient { BaseAddress = _server.BaseAddress };
        var response = await client.GetAsync("/metrics");
        Assert.That(response.StatusCode, Is.EqualTo(HttpStatusCode.OK));
        Assert.That(response.Content.Headers.ContentType!.MediaType, Is.EqualTo("text/plain"));
        Assert.That(response.Content.Headers.ContentType.Parameters.Any(p => p.Name == "version" && p.Value == "0.0.4"));
        string text = await response.Content.ReadAsStringAsync();
        var line = text.Split('\n').Single(l => l.StartsWith("kernels_requests_total "));
        Assert.That(long.Parse(line.Split(' ')[1]), Is.GreaterThanOrEqualTo(1));
    }

    // ---------------------------------------------------------------- disconnects

    [Test]
    public async Task ClientDisconnectCancelsTheRequest()
    {
        long cancelledBefore = _server.Engine.Metrics.RequestsCancelled;
        // MaxResponseDrainSize 0: disposing the response closes the connection (by default HttpClient would quietly
        // read the rest of the stream to reuse the connection, and the server would see no disconnect).
        using var client = new HttpClient(new SocketsHttpHandler { MaxResponseDrainSize = 0 }) { BaseAddress = _server.BaseAddress };
        client.DefaultRequestHeaders.Authorization = new System.Net.Http.Headers.AuthenticationHeaderValue("Bearer", TestServer.ApiKey);
        using (var request = new HttpRequestMessage(HttpMethod.Post, "/v1/completions")
               {
                   Content = TestServer.Content(new { prompt = "abc", n = 8, max_tokens = 480, temperature = 0, ignore_eos = true, stream = true }),
               })
        using (var response = await client.SendAsync(request, HttpCompletionOption.ResponseHeadersRead))
        {
            var stream = await response.Content.ReadAsStreamAsync();
            var buffer = new byte[64];
            Assert.That(await stream.ReadAsync(buffer), Is.GreaterThan(0), "the stream started");
        } // closes the connection mid-stream

        var deadline = DateTime.UtcNow.AddSeconds(20);
        while (_server.Engine.Metrics.RequestsCancelled == cancelledBefore && DateTime.UtcNow < deadline) await Task.Delay(20);
        Assert.That(_server.Engine.Metrics.RequestsCancelled, Is.EqualTo(cancelledBefore + 1), "the engine request was cancelled, not run to 400 tokens");
        while (_server.Engine.Metrics.RunningSequences != 0 && DateTime.UtcNow < deadline) await Task.Delay(20);
        Assert.That(_server.Engine.Metrics.RunningSequences, Is.EqualTo(0), "its sequences are gone");
    }
}
