// The HTTP server: an ASP.NET Core minimal API over one InferenceEngine (OpenAI-compatible /v1, /health, /metrics).
using System.Net;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Kernels.Runtime.Engine;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace Kernels.Server;

/// <summary>
/// Builds the server for an engine the caller owns (and disposes after the app stops). Endpoints:
/// POST /v1/completions, POST /v1/chat/completions, GET /v1/models[/{id}], GET /health, GET /metrics.
/// </summary>
public static class ServerApp
{
    public const string PrometheusContentType = "text/plain; version=0.0.4; charset=utf-8";

    /// <summary>Plain UTF-8 with only JSON's required escapes (the default also escapes ' &lt; &gt; for HTML embedding).</summary>
    internal static readonly JsonSerializerOptions Json = new() { Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

    public static WebApplication Build(InferenceEngine engine, ServerOptions options)
    {
        options.Validate();
        var builder = WebApplication.CreateSlimBuilder(new WebApplicationOptions { Args = [], ApplicationName = typeof(ServerApp).Assembly.GetName().Name });
        builder.Logging.ClearProviders();
        ConfigureLogging(builder.Logging, options);
        builder.WebHost.ConfigureKestrel(kestrel =>
        {
            kestrel.AddServerHeader = false;
            kestrel.Limits.MaxRequestBodySize = options.MaxRequestBodyBytes;
            ErrorResponses.ConfigureKestrelLimits(kestrel.Limits, options.Limits);
            Listen(kestrel, options);
        });
        // Signals drain (ServerShutdown) instead of stopping at once; a host stopped from code waits for the handlers,
        // which end by the drain deadline.
        builder.Services.AddSingleton(options);
        builder.Services.AddSingleton<ServerShutdown>();
        if (options.DrainOnSignals) builder.Services.AddSingleton<IHostLifetime, SignalLifetime>();
        builder.Services.Configure<HostOptions>(h => h.ShutdownTimeout = options.ShutdownTimeout + TimeSpan.FromSeconds(1));

        var app = builder.Build();
        var log = app.Services.GetRequiredService<ILoggerFactory>().CreateLogger("Kernels.Server");
        var shutdown = app.Services.GetRequiredService<ServerShutdown>();
        var completions = new CompletionHandler(engine, options.Limits, shutdown, log);
        long created = DateTimeOffset.UtcNow.ToUnixTimeSeconds();

        ErrorResponses.Use(app, options.Limits, shutdown, log);
        if (options.ApiKey is { } key) app.Use(RequireApiKey(key, log));
        else if (!options.IsLoopbackOnly) log.LogWarning("Listening on {Host} without --api-key: anyone who can reach this port can run the model", options.Host);

        app.MapPost("/v1/completions", http => completions.HandleAsync(http, ApiEndpoint.Completions));
        app.MapPost("/v1/chat/completions", http => completions.HandleAsync(http, ApiEndpoint.ChatCompletions));
        app.MapGet("/v1/models", http => WriteJsonAsync(http.Response, new JsonObject
        {
            ["object"] = "list",
            ["data"] = new JsonArray(ModelJson(engine, created)),
        }));
        app.MapGet("/v1/models/{**id}", (HttpContext http, string id) => id == engine.ModelName
            ? WriteJsonAsync(http.Response, ModelJson(engine, created))
            : ModelNotFound(id, engine).WriteAsync(http.Response));
        app.MapGet("/health", http => WriteJsonAsync(http.Response, new JsonObject { ["status"] = "ok" }));
        app.MapGet("/metrics", async http =>
        {
            http.Response.ContentType = PrometheusContentType;
            // Ours, then the same state under vLLM's names for the routers that read those (docs/deploy.md).
            await http.Response.WriteAsync(engine.Metrics.ToPrometheus() + engine.Metrics.ToVllmPrometheus(engine.ModelName, engine.CacheInfo)).ConfigureAwait(false);
        });
        // Unknown paths (404) and methods (405) get their OpenAI-shaped bodies from ErrorResponses.
        return app;
    }

    /// <summary>The app's shutdown: <see cref="ServerShutdown.Begin"/> drains it as SIGTERM does.</summary>
    public static ServerShutdown Shutdown(WebApplication app) => app.Services.GetRequiredService<ServerShutdown>();

    /// <summary>The address the started app listens on, e.g. http://127.0.0.1:8000 (the real port when Port was 0).</summary>
    public static Uri BaseAddress(WebApplication app) =>
        new(app.Urls.FirstOrDefault() ?? throw new InvalidOperationException("the server is not started"));

    /// <summary>The same logging the server uses, for the engine created before it (one console format for both).</summary>
    public static ILoggerFactory CreateLoggerFactory(ServerOptions options) => LoggerFactory.Create(b => ConfigureLogging(b, options));

    private static void ConfigureLogging(ILoggingBuilder logging, ServerOptions options)
    {
        logging.AddSimpleConsole(o =>
        {
            o.SingleLine = true;
            o.TimestampFormat = "HH:mm:ss.fff ";
        });
        logging.SetMinimumLevel(options.MinimumLogLevel);
        // ASP.NET's own per-request lines duplicate ours; keep its warnings and the "listening on" line.
        logging.AddFilter("Microsoft.AspNetCore", LogLevel.Warning);
    }

    private static void Listen(Microsoft.AspNetCore.Server.Kestrel.Core.KestrelServerOptions kestrel, ServerOptions options)
    {
        switch (options.Host)
        {
            case "localhost":
                kestrel.Listen(IPAddress.Loopback, options.Port); // ListenLocalhost refuses port 0
                break;
            case "*" or "0.0.0.0":
                kestrel.ListenAnyIP(options.Port);
                break;
            default:
                kestrel.Listen(IPAddress.Parse(options.Host), options.Port); // checked by ServerOptions.Validate
                break;
        }
    }

    private static Func<HttpContext, RequestDelegate, Task> RequireApiKey(string key, ILogger log)
    {
        byte[] expected = Encoding.UTF8.GetBytes(key);
        return async (http, next) =>
        {
            if (http.Request.Path.StartsWithSegments("/v1"))
            {
                // "Bearer KEY": the scheme is case-insensitive (RFC 9110 11.1), the key is compared exactly.
                string authorization = http.Request.Headers.Authorization.ToString();
                int space = authorization.IndexOf(' ');
                bool bearer = space > 0 && authorization.AsSpan(0, space).Equals("Bearer", StringComparison.OrdinalIgnoreCase);
                byte[] given = Encoding.UTF8.GetBytes(bearer ? authorization[(space + 1)..].TrimStart(' ') : "");
                if (!bearer | !CryptographicOperations.FixedTimeEquals(given, expected)) // no timing hint about the key
                {
                    log.LogWarning("Refused {Method} {Path} from {Remote}: missing or wrong API key", http.Request.Method, http.Request.Path, http.Connection.RemoteIpAddress);
                    await new ApiException(StatusCodes.Status401Unauthorized, "Incorrect or missing API key: send 'Authorization: Bearer KEY'", code: "invalid_api_key")
                        .WriteAsync(http.Response).ConfigureAwait(false);
                    return;
                }
            }
            await next(http).ConfigureAwait(false);
        };
    }

    private static JsonObject ModelJson(InferenceEngine engine, long created) => new()
    {
        ["id"] = engine.ModelName,
        ["object"] = "model",
        ["created"] = created,
        ["owned_by"] = "kernels",
        ["max_model_len"] = engine.Config.MaxPositions,
    };

    private static ApiException ModelNotFound(string model, InferenceEngine engine) =>
        new(StatusCodes.Status404NotFound, $"The model '{model}' does not exist; this server serves '{engine.ModelName}'", "model", "model_not_found");

    internal static async Task WriteJsonAsync(HttpResponse response, JsonNode body, int status = StatusCodes.Status200OK)
    {
        response.StatusCode = status;
        response.ContentType = "application/json; charset=utf-8";
        await response.WriteAsync(body.ToJsonString(Json)).ConfigureAwait(false);
    }
}
