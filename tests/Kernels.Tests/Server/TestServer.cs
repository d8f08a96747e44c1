// A real server on a free loopback port over synthetic:tiny, and helpers to call it and read its SSE streams.
using System.Net;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json.Nodes;
using Kernels.Runtime.Engine;
using Kernels.Server;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.Logging;

namespace Kernels.Tests.Server;

public sealed class TestServer : IAsyncDisposable
{
    public const string ApiKey = "sk-test-key";

    public InferenceEngine Engine { get; }
    public WebApplication App { get; }
    public Uri BaseAddress { get; }
    /// <summary>Sends the right API key on every request.</summary>
    public HttpClient Client { get; }

    private TestServer(InferenceEngine engine, WebApplication app)
    {
        Engine = engine;
        App = app;
        BaseAddress = ServerApp.BaseAddress(app);
        Client = new HttpClient { BaseAddress = BaseAddress, Timeout = TimeSpan.FromSeconds(60) };
        Client.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", ApiKey);
    }

    /// <summary>
    /// Starts a server over synthetic:tiny (or the engine <paramref name="engine"/> makes) with the test API key;
    /// <paramref name="configure"/> may change the other options.
    /// </summary>
    public static async Task<TestServer> StartAsync(Func<ServerOptions, ServerOptions>? configure = null, Func<InferenceEngine>? engine = null)
    {
        var e = engine?.Invoke() ?? InferenceEngine.Create("synthetic:tiny");
        var options = new ServerOptions { Port = 0, ApiKey = ApiKey, MinimumLogLevel = LogLevel.Warning };
        var app = ServerApp.Build(e, configure?.Invoke(options) ?? options);
        await app.StartAsync();
        return new TestServer(e, app);
    }

    public async Task<(HttpResponseMessage Response, JsonNode? Body)> PostAsync(string path, object body)
    {
        var response = await Client.PostAsync(path, Content(body));
        string text = await response.Content.ReadAsStringAsync();
        return (response, text.Length == 0 ? null : JsonNode.Parse(text));
    }

    public static StringContent Content(object body) =>
        new(body as string ?? System.Text.Json.JsonSerializer.Serialize(body), Encoding.UTF8, "application/json");

    /// <summary>POSTs with stream: true and returns the parsed "data:" chunks; asserts the stream ends with [DONE].</summary>
    public async Task<List<JsonNode>> StreamAsync(string path, object body)
    {
        using var request = new HttpRequestMessage(HttpMethod.Post, path) { Content = Content(body) };
        using var response = await Client.SendAsync(request, HttpCompletionOption.ResponseHeadersRead);
        Assert.That(response.StatusCode, Is.EqualTo(System.Net.HttpStatusCode.OK), await response.Content.ReadAsStringAsync());
        Assert.That(response.Content.Headers.ContentType?.MediaType, Is.EqualTo("text/event-stream"));
        return ParseSse(await response.Content.ReadAsStringAsync());
    }

    public static List<JsonNode> ParseSse(string text)
    {
        var events = text.Split("\n\n", StringSplitOptions.RemoveEmptyEntries);
        Assert.That(events, Is.Not.Empty);
        Assert.That(events[^1], Is.EqualTo("data: [DONE]"), "the stream ends with [DONE]");
        var chunks = new List<JsonNode>();
        foreach (string e in events[..^1])
        {
            Assert.That(e, Does.StartWith("data: "));
            chunks.Add(JsonNode.Parse(e["data: ".Length..])!);
        }
        return chunks;
    }

    /// <summary>The engine's own greedy text for a prompt, to compare the server's against.</summary>
    public async Task<string> EngineTextAsync(GenerationRequest request)
    {
        var results = await Engine.GenerateAsync([request]);
        return results[0].Text;
    }

    /// <summary>The response has <paramref name="status"/> and OpenAI's error body naming <paramref name="param"/> (and <paramref name="code"/>).</summary>
    public static void AssertError(HttpResponseMessage response, JsonNode? body, HttpStatusCode status, string? param, string? code = null)
    {
        Assert.That(response.StatusCode, Is.EqualTo(status), body?.ToJsonString());
        var error = body?["error"];
        Assert.That(error, Is.Not.Null, "OpenAI-style {\"error\": {...}} body");
        Assert.That(error!["message"]!.GetValue<string>(), Is.Not.Empty);
        Assert.That(error["type"]!.GetValue<string>(), Is.Not.Empty);
        Assert.That(error.AsObject().ContainsKey("param") && error.AsObject().ContainsKey("code"), "param and code are present (maybe null)");
        Assert.That(error["param"]?.GetValue<string>(), Is.EqualTo(param));
        if (code != null) Assert.That(error["code"]?.GetValue<string>(), Is.EqualTo(code));
    }

    /// <summary>Reads a response's body as JSON (null when empty).</summary>
    public static async Task<JsonNode?> BodyAsync(HttpResponseMessage response)
    {
        string text = await response.Content.ReadAsStringAsync();
        return text.Length == 0 ? null : JsonNode.Parse(text);
    }

    public async ValueTask DisposeAsync()
    {
        Client.Dispose();
        await App.StopAsync();
        await App.DisposeAsync();
        Engine.Dispose();
    }
}
