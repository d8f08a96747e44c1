// `kernels route`: an OpenAI-compatible front door for several replicas. Completions and chat completions are
// routed by the policy and forwarded with YARP's forwarder (streams pass through as they come); a request whose
// replica fails before its first byte is retried on another one; the replicas' health is probed and a dead one is
// readmitted when it answers again.
using System.Net;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Yarp.ReverseProxy.Forwarder;

namespace Kernels.Router;

/// <summary>
/// Endpoints: POST /v1/completions, POST /v1/chat/completions (routed), GET /v1/models (any healthy replica),
/// GET /health (200 while a replica is healthy), GET /metrics (the router's counters), and the SGLang gateway's
/// worker management: GET /list_workers, POST /add_worker?url=URL, POST /remove_worker?url=URL.
/// </summary>
public sealed class RouterApp : IAsyncDisposable
{
    private readonly RouterOptions _options;
    private readonly IHttpForwarder _forwarder;
    private readonly HttpMessageInvoker _client;
    private readonly ForwarderRequestConfig _requestConfig;
    private readonly ILogger _log;

    public WebApplication App { get; }
    public ReplicaSet Replicas { get; }
    public IRoutingPolicy Policy { get; }
    public RouterMetrics Metrics { get; } = new();

    private RouterApp(RouterOptions options)
    {
        options.Validate();
        _options = options;
        var builder = WebApplication.CreateSlimBuilder(new WebApplicationOptions { Args = [], ApplicationName = typeof(RouterApp).Assembly.GetName().Name });
        builder.Logging.ClearProviders();
        builder.Logging.AddSimpleConsole(o =>
        {
            o.SingleLine = true;
            o.TimestampFormat = "HH:mm:ss.fff ";
        });
        builder.Logging.SetMinimumLevel(options.MinimumLogLevel);
        builder.Logging.AddFilter("Microsoft.AspNetCore", LogLevel.Warning);
        builder.Logging.AddFilter("Yarp", LogLevel.Error); // a replica failing is reported once, by our own line, without a stack trace
        builder.Services.AddHttpForwarder();
        builder.WebHost.ConfigureKestrel(kestrel =>
        {
            kestrel.AddServerHeader = false;
            kestrel.Limits.MaxRequestBodySize = options.MaxRequestBodyBytes;
            switch (options.Host)
            {
                case "localhost": kestrel.Listen(IPAddress.Loopback, options.Port); break;
                case "*" or "0.0.0.0": kestrel.ListenAnyIP(options.Port); break;
                default: kestrel.Listen(IPAddress.Parse(options.Host), options.Port); break;
            }
        });
        App = builder.Build();
        _log = App.Services.GetRequiredService<ILoggerFactory>().CreateLogger("Kernels.Router");
        _forwarder = App.Services.GetRequiredService<IHttpForwarder>();
        _client = new HttpMessageInvoker(new SocketsHttpHandler
        {
            UseProxy = false,
            AllowAutoRedirect = false,
            AutomaticDecompression = DecompressionMethods.None,
            UseCookies = false,
            ConnectTimeout = TimeSpan.FromSeconds(5),
            ActivityHeadersPropagator = null,
        });
        _requestConfig = new ForwarderRequestConfig
        {
            ActivityTimeout = options.ActivityTimeout,
            Version = HttpVersion.Version11,
            VersionPolicy = HttpVersionPolicy.RequestVersionOrLower,
        };
        Replicas = new ReplicaSet(options, _log);
        Policy = options.Policy == RoutingPolicyKind.CacheAware ? new CacheAwarePolicy(options) : new RoundRobinPolicy();
        Replicas.Changed += Policy.ReplicaChanged;

        App.MapPost("/v1/completions", http => RouteAsync(http, chat: false));
        App.MapPost("/v1/chat/completions", http => RouteAsync(http, chat: true));
        App.MapGet("/v1/models", http => ForwardAsync(http, null, candidates => (candidates.MinBy(r => r.InFlight)!, null)));
        App.MapGet("/health", http =>
        {
            int healthy = Replicas.Healthy.Count;
            var body = new JsonObject { ["status"] = healthy > 0 ? "ok" : "unavailable", ["healthy_replicas"] = healthy, ["replicas"] = Replicas.All.Count };
            return WriteJsonAsync(http.Response, body, healthy > 0 ? StatusCodes.Status200OK : StatusCodes.Status503ServiceUnavailable);
        });
        App.MapGet("/metrics", async http =>
        {
            http.Response.ContentType = "text/plain; version=0.0.4; charset=utf-8";
            await http.Response.WriteAsync(Metrics.ToPrometheus(Replicas.All));
        });
        App.MapGet("/list_workers", http => WriteJsonAsync(http.Response, new JsonObject
        {
            ["workers"] = new JsonArray(Replicas.All.Select(r => (JsonNode)new JsonObject
            {
                ["url"] = r.ToString(),
                ["healthy"] = r.Healthy,
                ["in_flight"] = r.InFlight,
                ["requests"] = r.Requests,
            }).ToArray()),
        }));
        App.MapPost("/add_worker", async http =>
        {
            if (WorkerArgument(http) is not { } uri) { await WriteErrorAsync(http.Response, 400, "url: give ?url=http://host:port", "invalid_worker"); return; }
            bool added = await Replicas.AddAsync(uri);
            await WriteJsonAsync(http.Response, new JsonObject { ["added"] = added, ["url"] = uri.ToString(), ["healthy"] = Replicas.All.First(r => r.Address == uri).Healthy });
        });
        App.MapPost("/remove_worker", async http =>
        {
            if (WorkerArgument(http) is not { } uri) { await WriteErrorAsync(http.Response, 400, "url: give ?url=http://host:port", "invalid_worker"); return; }
            await WriteJsonAsync(http.Response, new JsonObject { ["removed"] = Replicas.Remove(uri), ["url"] = uri.ToString() });
        });
        App.MapFallback("/v1/{**rest}", http => WriteErrorAsync(http.Response, 404, $"unknown endpoint {http.Request.Method} {http.Request.Path}", "unknown_url"));
    }

    public static RouterApp Build(RouterOptions options) => new(options);

    /// <summary>Probes the replicas once, then starts listening (and probing in the background).</summary>
    public async Task StartAsync(CancellationToken cancellation = default)
    {
        await Replicas.StartAsync();
        await App.StartAsync(cancellation);
        _log.LogInformation("Routing {Policy} over {Replicas} ({Healthy} healthy)", _options.Policy, string.Join(", ", Replicas.All), Replicas.Healthy.Count);
    }

    /// <summary>Waits until Ctrl+C / SIGTERM (ASP.NET's console lifetime) or <paramref name="cancellation"/> stops the router.</summary>
    public Task WaitForShutdownAsync(CancellationToken cancellation = default) =>
        Microsoft.Extensions.Hosting.HostingAbstractionsHostExtensions.WaitForShutdownAsync(App, cancellation);

    /// <summary>The address the started router listens on (the real port when Port was 0).</summary>
    public Uri BaseAddress => new(App.Urls.FirstOrDefault() ?? throw new InvalidOperationException("the router is not started"));

    private static Uri? WorkerArgument(HttpContext http)
    {
        try
        {
            return http.Request.Query["url"].FirstOrDefault() is { } url ? RouterOptions.ParseWorker(url) : null;
        }
        catch (ArgumentException)
        {
            return null;
        }
    }

    // ---------------------------------------------------------------- routing

    private async Task RouteAsync(HttpContext http, bool chat)
    {
        byte[] body;
        string text;
        try
        {
            body = await ReadBodyAsync(http.Request);
            text = PromptText(body, chat);
        }
        catch (RouterRequestException e)
        {
            await WriteErrorAsync(http.Response, e.Status, e.Message, e.Code);
            return;
        }
        await ForwardAsync(http, body, candidates =>
        {
            var (replica, why) = Policy.Pick(text, candidates);
            return (replica, why);
        });
    }

    /// <summary>Tries replicas until one answers: each failure before a byte reached the client marks that replica down and moves on.</summary>
    private async Task ForwardAsync(HttpContext http, byte[]? body, Func<IReadOnlyList<Replica>, (Replica, RoutingDecision?)> pick)
    {
        var tried = new HashSet<Replica>();
        string? lastFailure = null;
        for (int attempt = 1; attempt <= _options.MaxAttempts; attempt++)
        {
            var candidates = Replicas.Healthy.Where(r => !tried.Contains(r)).ToList();
            if (candidates.Count == 0) break;
            var (replica, why) = pick(candidates);
            if (why is { } decision) Metrics.Decided(decision);
            tried.Add(replica);
            if (body != null)
            {
                http.Request.Body = new MemoryStream(body, writable: false);
                http.Request.ContentLength = body.Length;
            }
            var relay = new RelayTransformer(canRetry: attempt < _options.MaxAttempts);
            replica.Begin();
            ForwarderError error;
            try
            {
                error = await _forwarder.SendAsync(http, replica.Address.ToString(), _client, _requestConfig, relay);
            }
            finally
            {
                replica.End();
            }
            if (http.RequestAborted.IsCancellationRequested) return;
            bool beforeFirstByte = relay.Outcome == RelayOutcome.FailedBeforeFirstByte || (relay.Outcome == RelayOutcome.None && error != ForwarderError.None && !http.Response.HasStarted);
            if (beforeFirstByte)
            {
                lastFailure = relay.Failure ?? http.Features.Get<IForwarderErrorFeature>()?.Exception?.Message ?? error.ToString();
                Replicas.MarkDown(replica, $"a request failed before its first byte: {lastFailure}");
                if (http.Response.HasStarted) return;
                http.Response.Clear();
                if (attempt < _options.MaxAttempts) Metrics.Retried();
                continue;
            }
            Metrics.Finished(relay.Outcome);
            if (relay.Outcome is RelayOutcome.StreamBroken or RelayOutcome.ResponseBroken)
            {
                Replicas.MarkDown(replica, $"it failed in the middle of a response: {relay.Failure}");
                _log.LogWarning("A response from {Replica} broke midway ({Failure}); the client was told", replica, relay.Failure);
            }
            return;
        }
        Metrics.Unrouted();
        if (http.Response.HasStarted) return;
        http.Response.Clear();
        if (lastFailure == null)
            await WriteErrorAsync(http.Response, StatusCodes.Status503ServiceUnavailable, "no healthy replica can take the request", "no_healthy_replica");
        else
            await WriteErrorAsync(http.Response, StatusCodes.Status502BadGateway, $"every replica tried failed; the last: {lastFailure}", "replica_failed");
    }

    private async Task<byte[]> ReadBodyAsync(HttpRequest request)
    {
        if (request.ContentLength > _options.MaxRequestBodyBytes) throw TooLarge();
        try
        {
            using var copy = new MemoryStream();
            await request.Body.CopyToAsync(copy, request.HttpContext.RequestAborted);
            return copy.ToArray();
        }
        catch (BadHttpRequestException e) when (e.StatusCode == StatusCodes.Status413PayloadTooLarge)
        {
            throw TooLarge();
        }

        RouterRequestException TooLarge() =>
            new(StatusCodes.Status413PayloadTooLarge, $"the request body is larger than the router's limit of {_options.MaxRequestBodyBytes} bytes", "request_too_large");
    }

    /// <summary>
    /// The text the cache-aware policy routes on: the prompt of a completion (strings joined, token ids as numbers),
    /// or every chat message as "role: content" lines, in order, so that requests sharing a system prompt share a prefix.
    /// </summary>
    internal static string PromptText(byte[] body, bool chat)
    {
        JsonNode? json;
        try
        {
            json = JsonNode.Parse(body);
        }
        catch (JsonException e)
        {
            throw new RouterRequestException(StatusCodes.Status400BadRequest, $"the request body is not valid JSON: {e.Message}", "invalid_json");
        }
        var text = new StringBuilder();
        void Content(JsonNode? node)
        {
            switch (node)
            {
                case JsonValue v when v.TryGetValue<string>(out var s): text.Append(s); break;
                case JsonValue v: text.Append(v.ToJsonString()).Append(' '); break;
                case JsonArray a: foreach (var item in a) Content(item is JsonObject part ? part["text"] : item); break;
            }
        }
        if (chat)
        {
            if (json?["messages"] is JsonArray messages)
                foreach (var m in messages)
                {
                    text.Append(m?["role"]?.ToString()).Append(": ");
                    Content(m?["content"]);
                    text.Append('\n');
                }
        }
        else Content(json?["prompt"]);
        return text.ToString();
    }

    // ---------------------------------------------------------------- responses

    internal static async Task WriteJsonAsync(HttpResponse response, JsonNode body, int status = StatusCodes.Status200OK)
    {
        response.StatusCode = status;
        response.ContentType = "application/json; charset=utf-8";
        await response.WriteAsync(body.ToJsonString());
    }

    /// <summary>OpenAI's error body, as the replicas write it.</summary>
    internal static Task WriteErrorAsync(HttpResponse response, int status, string message, string code) =>
        WriteJsonAsync(response, new JsonObject
        {
            ["error"] = new JsonObject
            {
                ["message"] = message,
                ["type"] = status >= 500 ? "server_error" : "invalid_request_error",
                ["param"] = null,
                ["code"] = code,
            },
        }, status);

    public async ValueTask DisposeAsync()
    {
        await App.StopAsync();
        await App.DisposeAsync();
        await Replicas.DisposeAsync();
        _client.Dispose();
    }
}

internal sealed class RouterRequestException(int status, string message, string code) : Exception(message)
{
    public int Status { get; } = status;
    public string Code { get; } = code;
}
