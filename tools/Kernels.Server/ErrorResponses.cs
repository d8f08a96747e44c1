// Every error the server answers carries OpenAI's body: request limits checked up front (431 headers, 414 target),
// bodiless statuses filled in (404, 405, ...), unexpected exceptions turned into a 500 without a stack trace, and 503
// while the server drains.
using System.Net;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.Logging;

namespace Kernels.Server;

internal static class ErrorResponses
{
    /// <summary>
    /// Kestrel's own limits sit this far above ours, so that requests over ours reach the middleware and get a body;
    /// beyond Kestrel's (4x ours) Kestrel itself closes the connection with a bare status line.
    /// </summary>
    private const int KestrelHeadroom = 4;

    public static void ConfigureKestrelLimits(KestrelServerLimits kestrel, RequestLimits limits)
    {
        kestrel.MaxRequestHeadersTotalSize = limits.MaxHeaderBytes * KestrelHeadroom;
        kestrel.MaxRequestHeaderCount = limits.MaxHeaderCount * KestrelHeadroom;
        kestrel.MaxRequestLineSize = limits.MaxTargetLength * KestrelHeadroom;
        // What Kestrel reads ahead of the handler (1 MB by default): just enough for the headers, so that a body refused
        // after its first bytes (RequestBody) has not been copied in by the megabyte first.
        kestrel.MaxRequestBufferSize = Math.Max(kestrel.MaxRequestHeadersTotalSize, kestrel.MaxRequestLineSize) + (64 << 10);
    }

    /// <summary>The first middleware: limits, draining, unexpected exceptions, and bodies for bodiless error statuses.</summary>
    public static void Use(WebApplication app, RequestLimits limits, ServerShutdown shutdown, ILogger log)
    {
        var refusals = new RefusalLog();
        app.Use(async (http, next) =>
        {
            if (LimitExceeded(http.Request, limits) is { } refusal)
            {
                if (refusals.TryLog(out int suppressed))
                    log.LogInformation("Refused {Method} from {Remote} with {Status}: {Message}{Suppressed}", http.Request.Method, http.Connection.RemoteIpAddress,
                        refusal.Status, refusal.Message, suppressed > 0 ? $" ({suppressed} more refusals not logged)" : "");
                http.Response.Headers.Connection = "close";
                await refusal.WriteAsync(http.Response).ConfigureAwait(false);
                return;
            }
            if (shutdown.IsDraining && (http.Request.Path.StartsWithSegments("/v1") || http.Request.Path.StartsWithSegments("/health")))
            {
                shutdown.Refused(http.Request.Method, http.Request.Path);
                http.Response.Headers.Connection = "close";
                http.Response.Headers.RetryAfter = "5";
                await new ApiException(StatusCodes.Status503ServiceUnavailable, "The server is shutting down and takes no new requests; retry on another instance",
                    type: "server_error", code: "server_shutting_down").WriteAsync(http.Response).ConfigureAwait(false);
                return;
            }
            try
            {
                await next(http).ConfigureAwait(false);
            }
            catch (Exception e) when (!http.Response.HasStarted && !http.RequestAborted.IsCancellationRequested)
            {
                log.LogError(e, "{Method} {Path} failed", http.Request.Method, http.Request.Path);
                await new ApiException(StatusCodes.Status500InternalServerError, "The server had an error while processing the request",
                    type: "server_error").WriteAsync(http.Response).ConfigureAwait(false);
                return;
            }
            // Routing's 404 and 405 (and any other error status without a body) get OpenAI's error shape.
            if (http.Response.StatusCode >= 400 && !http.Response.HasStarted && http.Response.ContentLength is null or 0)
                await ForStatus(http).WriteAsync(http.Response).ConfigureAwait(false);
        });
    }

    private static ApiException? LimitExceeded(HttpRequest request, RequestLimits limits)
    {
        int target = request.Path.ToUriComponent().Length + (request.QueryString.Value?.Length ?? 0);
        if (target > limits.MaxTargetLength)
            return new ApiException(StatusCodes.Status414UriTooLong, $"The request target is {target} characters; this server takes at most {limits.MaxTargetLength}",
                code: "request_target_too_long");
        long bytes = 0;
        int count = 0;
        foreach (var (name, values) in request.Headers)
        {
            count += Math.Max(1, values.Count);
            bytes += name.Length * Math.Max(1, values.Count);
            foreach (string? v in values) bytes += v?.Length ?? 0;
        }
        if (count > limits.MaxHeaderCount || bytes > limits.MaxHeaderBytes)
            return new ApiException(StatusCodes.Status431RequestHeaderFieldsTooLarge,
                $"The request headers ({count} fields, {bytes} bytes) exceed this server's limit of {limits.MaxHeaderCount} fields and {limits.MaxHeaderBytes} bytes",
                code: "request_headers_too_large");
        return null;
    }

    private static ApiException ForStatus(HttpContext http)
    {
        int status = http.Response.StatusCode;
        string request = $"{http.Request.Method} {http.Request.Path}";
        return status switch
        {
            StatusCodes.Status404NotFound => new ApiException(status, $"Unknown endpoint {request}", code: "unknown_url"),
            StatusCodes.Status405MethodNotAllowed => new ApiException(status, $"Method {http.Request.Method} is not allowed on {http.Request.Path}", code: "method_not_allowed"),
            StatusCodes.Status413PayloadTooLarge => new ApiException(status, "The request body is larger than the server's limit", code: "request_too_large"),
            _ => new ApiException(status, $"{request}: {ReasonPhrase(status)}", type: status >= 500 ? "server_error" : "invalid_request_error"),
        };
    }

    private static string ReasonPhrase(int status) =>
        Enum.IsDefined(typeof(HttpStatusCode), status) ? ((HttpStatusCode)status).ToString() : $"status {status}";
}
