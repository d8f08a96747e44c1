// A real server on a free loopback port over synthetic:tiny, and helpers to call it and read its SSE streams.
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

    public static async Task<TestServer> StartAsync()
    {
        var engine = InferenceEngine.Create("synthetic:tiny");
        var app = ServerApp.Build(engine, new ServerOptions { Port = 0, ApiKey = ApiKey, MinimumLogLevel = LogLevel.Warning });
        await app.StartAsync();
        return new TestServer(engine, app);
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

    public async ValueTask DisposeAsync()
    {
        Client.Dispose();
        await App.StopAsync();
        await App.DisposeAsync();
        Engine.Dispose();
    }
}
