// Issue 21's hostile requests against a real server: fan-outs, stop lists and token asks over the limits, invalid
// UTF-8 and lone surrogates in every text field, oversized headers and targets, unknown paths and methods: each a
// 4xx with OpenAI's error body naming the parameter; a multi-prompt request's disconnect cancels every prompt.
using System.Net;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json.Nodes;

namespace Kernels.Tests.Server;

[CancelAfter(120_000)]
public class HostileRequestTests
{
    private TestServer _server = null!;

    [OneTimeSetUp]
    public async Task Start() => _server = await TestServer.StartAsync();

    [OneTimeTearDown]
    public async Task Stop() => await _server.DisposeAsync();

    private async Task<(HttpResponseMessage, JsonNode?)> PostRaw(string path, byte[] body)
    {
        var content = new ByteArrayContent(body);
        content.Headers.ContentType = new MediaTypeHeaderValue("application/json");
        var response = await _server.Client.PostAsync(path, content);
        return (response, await TestServer.BodyAsync(response));
    }

    private Task<(HttpResponseMessage, JsonNode?)> PostText(string path, string json) => PostRaw(path, Encoding.UTF8.GetBytes(json));

    // ---------------------------------------------------------------- fan-out, stop lists, tokens

    [Test]
    public async Task TheIssuesFanOutIsRefusedBeforeAnyWork()
    {
        // 20,000 prompts x n = 128 (80 KB): 2.56 million sequences asked for.
        string prompts = string.Join(",", Enumerable.Repeat("[1]", 20_000));
        long before = _server.Engine.Metrics.RequestsTotal;
        var (response, body) = await PostText("/v1/completions", $"{{\"prompt\": [{prompts}], \"n\": 128, \"max_tokens\": 16}}");
        TestServer.AssertError(response, body, HttpStatusCode.BadRequest, "prompt", "too_many_choices");
        Assert.That(body!["error"]!["message"]!.GetValue<string>(), Does.Contain("limit of 128"));
        Assert.That(_server.Engine.Metrics.RequestsTotal, Is.EqualTo(before), "nothing reached the engine");
    }

    [TestCase(2, 100, "prompt")]
    [TestCase(1000, 1, "prompt")]
    [TestCase(1, 129, "n")]
    public async Task MoreChoicesThanTheLimitAre400(int prompts, int n, string param)
    {
        var body = new { prompt = Enumerable.Repeat("abc", prompts).ToArray(), n, max_tokens = 1 };
        var (response, json) = await _server.PostAsync("/v1/completions", body);
        TestServer.AssertError(response, json, HttpStatusCode.BadRequest, param);
    }

    [Test]
    public async Task ChoicesAtTheLimitRun()
    {
        var (response, body) = await _server.PostAsync("/v1/completions", new { prompt = Enumerable.Repeat("ab", 32).ToArray(), n = 4, max_tokens = 2, ignore_eos = true });
        Assert.That(response.StatusCode, Is.EqualTo(HttpStatusCode.OK), body?.ToJsonString());
        Assert.That(body!["choices"]!.AsArray(), Has.Count.EqualTo(128));
    }

    [Test]
    public async Task StopListsOverTheLimitsAre400()
    {
        var (response, body) = await _server.PostAsync("/v1/completions", new { prompt = "abc", stop = Enumerable.Range(0, 17).Select(i => $"s{i}").ToArray() });
        TestServer.AssertError(response, body, HttpStatusCode.BadRequest, "stop");
        (response, body) = await _server.PostAsync("/v1/completions", new { prompt = "abc", stop = new[] { new string('x', 257) } });
        TestServer.AssertError(response, body, HttpStatusCode.BadRequest, "stop");
        // Issue 21: 800,000 stop strings with n = 128 (under the 4 MB body limit).
        string stops = string.Join(",", Enumerable.Repeat("\"a\"", 800_000));
        (response, body) = await PostText("/v1/completions", $"{{\"prompt\": \"abc\", \"n\": 128, \"stop\": [{stops}]}}");
        TestServer.AssertError(response, body, HttpStatusCode.BadRequest, "stop");
        Assert.That(body!["error"]!["message"]!.GetValue<string>(), Does.Contain("limit of 16"));
        // At the limits it runs.
        (response, body) = await _server.PostAsync("/v1/completions", new { prompt = "abc", max_tokens = 3, stop = Enumerable.Range(0, 16).Select(i => new string((char)('A' + i), 256)).ToArray() });
        Assert.That(response.StatusCode, Is.EqualTo(HttpStatusCode.OK), body?.ToJsonString());
    }

    [Test]
    public async Task AskingForMoreTokensThanTheLimitIs400()
    {
        await using var server = await TestServer.StartAsync(o => o with { Limits = o.Limits with { MaxRequestTokens = 1000 } });
        var (response, body) = await server.PostAsync("/v1/completions", new { prompt = "abc", n = 4, max_tokens = 300 });
        TestServer.AssertError(response, body, HttpStatusCode.BadRequest, "max_tokens", "request_too_large");
        (response, body) = await server.PostAsync("/v1/chat/completions", new { messages = new[] { new { role = "user", content = "hi" } }, n = 2 }); // default: up to the context
        TestServer.AssertError(response, body, HttpStatusCode.BadRequest, "max_tokens", "request_too_large");
        (response, body) = await server.PostAsync("/v1/completions", new { prompt = "abc", n = 3, max_tokens = 300 });
        Assert.That(response.StatusCode, Is.EqualTo(HttpStatusCode.OK), body?.ToJsonString());
    }

    // ---------------------------------------------------------------- text that is not Unicode

    // JSON escapes of lone surrogates (valid JSON, invalid text) in every text field.
    [TestCase("/v1/completions", """{"prompt": "a\ud800b"}""", "prompt")]
    [TestCase("/v1/completions", """{"prompt": ["fine", "a\udc00"]}""", "prompt[1]")]
    [TestCase("/v1/completions", """{"prompt": "abc", "stop": "\ud800"}""", "stop")]
    [TestCase("/v1/completions", """{"prompt": "abc", "stop": ["x", "y\udbff"]}""", "stop[1]")]
    [TestCase("/v1/completions", """{"prompt": "abc", "model": "\ud800"}""", "model")]
    [TestCase("/v1/chat/completions", """{"messages": [{"role": "user", "content": "a\ud800b"}]}""", "messages[0].content")]
    [TestCase("/v1/chat/completions", """{"messages": [{"role": "us\ud800er", "content": "hi"}]}""", "messages[0].role")]
    [TestCase("/v1/chat/completions", """{"messages": [{"role": "user", "content": [{"type": "text", "text": "\udfff"}]}]}""", "messages[0].content[0].text")]
    public async Task LoneSurrogatesAre400NamingTheField(string path, string json, string param)
    {
        var (response, body) = await PostText(path, json);
        TestServer.AssertError(response, body, HttpStatusCode.BadRequest, param);
        Assert.That(body!["error"]!["message"]!.GetValue<string>(), Does.Contain("Unicode"));
    }

    [TestCase("/v1/completions", "{\"prompt\": \"a", "\"}", "prompt")]
    [TestCase("/v1/completions", "{\"prompt\": \"abc\", \"stop\": [\"", "\"]}", "stop[0]")]
    [TestCase("/v1/chat/completions", "{\"messages\": [{\"role\": \"user\", \"content\": \"", "\"}]}", "messages[0].content")]
    public async Task InvalidUtf8Is400NamingTheField(string path, string before, string after, string param)
    {
        foreach (var bad in new byte[][] { [0xFF], [0xC3], [0xED, 0xA0, 0x80], [0xF4, 0x90, 0x80, 0x80] }) // stray byte, cut sequence, encoded surrogate, > U+10FFFF
        {
            var bytes = Encoding.UTF8.GetBytes(before).Concat(bad).Concat(Encoding.UTF8.GetBytes(after)).ToArray();
            var (response, body) = await PostRaw(path, bytes);
            Assert.That((int)response.StatusCode, Is.EqualTo(400), $"{Convert.ToHexString(bad)}: {body?.ToJsonString()}");
            Assert.That(body?["error"], Is.Not.Null, "OpenAI's error body");
            // The JSON parser itself may reject the bytes (param null) or the field read may (param named): never a 500.
            string? named = body!["error"]!["param"]?.GetValue<string>();
            Assert.That(named, Is.Null.Or.EqualTo(param), Convert.ToHexString(bad));
        }
    }

    // ---------------------------------------------------------------- chat content parts

    [TestCase("""[5]""")]
    [TestCase("""["text"]""")]
    [TestCase("""[{"type": "text"}]""")]
    [TestCase("""[{"type": "text", "text": 5}]""")]
    public async Task AContentPartThatIsNotTextIs400(string parts)
    {
        var (response, body) = await PostText("/v1/chat/completions", $"{{\"messages\": [{{\"role\": \"user\", \"content\": {parts}}}]}}");
        Assert.That(response.StatusCode, Is.EqualTo(HttpStatusCode.BadRequest), body?.ToJsonString());
        Assert.That(body!["error"]!["param"]!.GetValue<string>(), Does.StartWith("messages"));
    }

    // ---------------------------------------------------------------- protocol errors have OpenAI's body too

    [TestCase("GET", "/")]
    [TestCase("GET", "/nothing/here")]
    [TestCase("POST", "/v2/completions")]
    public async Task UnknownPathsAre404WithABody(string method, string path)
    {
        using var response = await _server.Client.SendAsync(new HttpRequestMessage(new HttpMethod(method), path));
        TestServer.AssertError(response, await TestServer.BodyAsync(response), HttpStatusCode.NotFound, null);
    }

    [TestCase("GET", "/v1/completions")]
    [TestCase("PUT", "/v1/chat/completions")]
    [TestCase("DELETE", "/health")]
    public async Task WrongMethodsAre405WithABody(string method, string path)
    {
        using var response = await _server.Client.SendAsync(new HttpRequestMessage(new HttpMethod(method), path));
        TestServer.AssertError(response, await TestServer.BodyAsync(response), HttpStatusCode.MethodNotAllowed, null, "method_not_allowed");
    }

    [Test]
    public async Task OversizedHeadersAre431AndLongTargetsAre414WithABody()
    {
        using (var request = new HttpRequestMessage(HttpMethod.Get, "/v1/models"))
        {
            request.Headers.TryAddWithoutValidation("X-Padding", new string('x', 40 << 10));
            using var response = await _server.Client.SendAsync(request);
            TestServer.AssertError(response, await TestServer.BodyAsync(response), HttpStatusCode.RequestHeaderFieldsTooLarge, null, "request_headers_too_large");
        }
        using (var request = new HttpRequestMessage(HttpMethod.Get, "/v1/models"))
        {
            for (int i = 0; i < 150; i++) request.Headers.TryAddWithoutValidation($"X-H{i}", "v");
            using var response = await _server.Client.SendAsync(request);
            TestServer.AssertError(response, await TestServer.BodyAsync(response), HttpStatusCode.RequestHeaderFieldsTooLarge, null, "request_headers_too_large");
        }
        using (var response = await _server.Client.GetAsync("/v1/models/" + new string('m', 9000)))
            TestServer.AssertError(response, await TestServer.BodyAsync(response), HttpStatusCode.RequestUriTooLong, null, "request_target_too_long");
    }

    // ---------------------------------------------------------------- authorization

    [TestCase("bearer")]
    [TestCase("BEARER")]
    [TestCase("Bearer")]
    [TestCase("bEaReR")]
    public async Task TheBearerSchemeIsCaseInsensitive(string scheme)
    {
        using var client = new HttpClient { BaseAddress = _server.BaseAddress };
        using var request = new HttpRequestMessage(HttpMethod.Get, "/v1/models");
        request.Headers.TryAddWithoutValidation("Authorization", $"{scheme} {TestServer.ApiKey}");
        using var response = await client.SendAsync(request);
        Assert.That(response.StatusCode, Is.EqualTo(HttpStatusCode.OK));
        using var wrong = new HttpRequestMessage(HttpMethod.Get, "/v1/models");
        wrong.Headers.TryAddWithoutValidation("Authorization", $"{scheme} {TestServer.ApiKey.ToUpperInvariant()}");
        using var refused = await client.SendAsync(wrong);
        Assert.That(refused.StatusCode, Is.EqualTo(HttpStatusCode.Unauthorized), "the key itself is compared exactly");
    }

    // ---------------------------------------------------------------- disconnects

    [Test]
    public async Task DisconnectingCancelsEveryPromptOfAMultiPromptRequest()
    {
        long cancelledBefore = _server.Engine.Metrics.RequestsCancelled;
        using var client = new HttpClient(new SocketsHttpHandler { MaxResponseDrainSize = 0 }) { BaseAddress = _server.BaseAddress };
        client.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", TestServer.ApiKey);
        using (var request = new HttpRequestMessage(HttpMethod.Post, "/v1/completions")
               {
                   Content = TestServer.Content(new { prompt = new[] { "abc", "def", "ghi", "jkl" }, n = 2, max_tokens = 480, temperature = 0, ignore_eos = true, stream = true }),
               })
        using (var response = await client.SendAsync(request, HttpCompletionOption.ResponseHeadersRead))
        {
            var stream = await response.Content.ReadAsStreamAsync();
            Assert.That(await stream.ReadAsync(new byte[64]), Is.GreaterThan(0), "the stream started");
        } // closes the connection mid-stream

        var deadline = DateTime.UtcNow.AddSeconds(20);
        while (_server.Engine.Metrics.RequestsCancelled < cancelledBefore + 4 && DateTime.UtcNow < deadline) await Task.Delay(20);
        Assert.That(_server.Engine.Metrics.RequestsCancelled, Is.EqualTo(cancelledBefore + 4), "all four prompts were cancelled, none ran to 480 tokens");
        while (_server.Engine.Metrics.RunningSequences != 0 && DateTime.UtcNow < deadline) await Task.Delay(20);
        Assert.That(_server.Engine.Metrics.RunningSequences, Is.EqualTo(0), "their sequences are gone");
    }
}
