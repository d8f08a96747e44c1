// How one attempt's response reaches the client: YARP sends the request and copies the status and headers; the body is
// copied here, so that a replica that fails before its first byte leaves the client untouched (the request is retried
// on another replica) and a stream that breaks midway ends with an error event instead of a truncated connection.
using System.Buffers;
using System.Text;
using System.Text.Json.Nodes;
using Microsoft.AspNetCore.Http;
using Yarp.ReverseProxy.Forwarder;

namespace Kernels.Router;

public enum RelayOutcome
{
    /// <summary>No answer yet (the forwarder failed before calling the transformer).</summary>
    None,
    /// <summary>The whole response reached the client.</summary>
    Relayed,
    /// <summary>The replica failed before its first byte; nothing reached the client: retry elsewhere.</summary>
    FailedBeforeFirstByte,
    /// <summary>The replica failed in the middle of a server-sent-event stream; the client got an error event and [DONE].</summary>
    StreamBroken,
    /// <summary>The replica failed in the middle of a plain body; the client's connection was aborted (a truncated JSON body must not look complete).</summary>
    ResponseBroken,
    /// <summary>The client went away.</summary>
    ClientGone,
}

internal sealed class RelayTransformer(bool canRetry) : HttpTransformer
{
    public RelayOutcome Outcome { get; private set; }
    public string? Failure { get; private set; }

    private static readonly byte[] Done = "data: [DONE]"u8.ToArray();

    public override async ValueTask<bool> TransformResponseAsync(HttpContext http, HttpResponseMessage? upstream, CancellationToken cancellationToken)
    {
        if (upstream == null)
        {
            Outcome = RelayOutcome.FailedBeforeFirstByte;
            return false;
        }
        if (upstream.StatusCode == System.Net.HttpStatusCode.ServiceUnavailable && canRetry)
        {
            Failure = "answered 503";
            Outcome = RelayOutcome.FailedBeforeFirstByte; // shutting down or overloaded: another replica may serve it
            return false;
        }
        await base.TransformResponseAsync(http, upstream, cancellationToken); // status and headers, not sent yet
        var aborted = http.RequestAborted;
        bool sse = upstream.Content.Headers.ContentType?.MediaType == "text/event-stream";
        byte[] buffer = ArrayPool<byte>.Shared.Rent(16 << 10);
        try
        {
            Stream source;
            int n;
            try
            {
                source = await upstream.Content.ReadAsStreamAsync(aborted);
                n = await source.ReadAsync(buffer, aborted);
            }
            catch (Exception e) when (!aborted.IsCancellationRequested && IsTransportFailure(e))
            {
                Failure = e.Message;
                http.Response.Clear();
                if (canRetry)
                {
                    Outcome = RelayOutcome.FailedBeforeFirstByte;
                    return false;
                }
                Outcome = RelayOutcome.ResponseBroken;
                await RouterApp.WriteErrorAsync(http.Response, StatusCodes.Status502BadGateway, $"the replica failed before answering: {e.Message}", "replica_failed");
                return false;
            }

            // From the first byte on, the response belongs to this replica: no retry can undo what the client saw.
            var tail = new TailWindow(Done.Length + 4);
            try
            {
                while (n > 0)
                {
                    await http.Response.Body.WriteAsync(buffer.AsMemory(0, n), aborted);
                    await http.Response.Body.FlushAsync(aborted); // server-sent events pass through as they come
                    tail.Push(buffer.AsSpan(0, n));
                    n = await source.ReadAsync(buffer, aborted);
                }
                if (sse && !tail.Contains(Done))
                    throw new IOException("the replica closed the stream before data: [DONE]");
                Outcome = RelayOutcome.Relayed;
            }
            catch (Exception) when (aborted.IsCancellationRequested)
            {
                Outcome = RelayOutcome.ClientGone;
            }
            catch (Exception e) when (IsTransportFailure(e))
            {
                Failure = e.Message;
                if (sse)
                {
                    Outcome = RelayOutcome.StreamBroken;
                    await WriteStreamErrorAsync(http, e.Message);
                }
                else
                {
                    Outcome = RelayOutcome.ResponseBroken;
                    http.Abort();
                }
            }
            return false;
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    private static bool IsTransportFailure(Exception e) => e is IOException or HttpRequestException or OperationCanceledException or ObjectDisposedException;

    /// <summary>An OpenAI-style error chunk, then [DONE], so the client's stream ends cleanly and says why.</summary>
    private static async Task WriteStreamErrorAsync(HttpContext http, string reason)
    {
        var error = new JsonObject
        {
            ["error"] = new JsonObject
            {
                ["message"] = $"the replica serving this stream failed: {reason}",
                ["type"] = "server_error",
                ["param"] = null,
                ["code"] = "replica_failed",
            },
        };
        try
        {
            // The replica's last event may have been cut mid-line: a blank line first ends it.
            await http.Response.WriteAsync($"\n\ndata: {error.ToJsonString()}\n\ndata: [DONE]\n\n", Encoding.UTF8, http.RequestAborted);
            await http.Response.Body.FlushAsync(http.RequestAborted);
        }
        catch (Exception e) when (e is IOException or OperationCanceledException)
        {
        }
    }

    /// <summary>The last few bytes of the stream, to see whether it ended with [DONE].</summary>
    private sealed class TailWindow(int size)
    {
        private byte[] _bytes = [];

        public void Push(ReadOnlySpan<byte> chunk)
        {
            _bytes = [.. _bytes, .. chunk.Length > size ? chunk[^size..] : chunk];
            if (_bytes.Length > size) _bytes = _bytes[^size..];
        }

        public bool Contains(byte[] marker) => _bytes.AsSpan().IndexOf(marker) >= 0;
    }
}
