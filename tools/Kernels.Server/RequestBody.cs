// A request's JSON body, read into pooled memory and scanned as it arrives: a body whose "prompt" or "stop" array is
// over its limit is refused after the first bytes past the limit, without reading (or parsing) the rest of it.
using System.Buffers;
using System.IO.Pipelines;
using System.Text.Json;
using Microsoft.AspNetCore.Http;

namespace Kernels.Server;

/// <summary>The parsed body; disposing it returns its buffer to the pool (the document reads from that buffer).</summary>
internal sealed class RequestBody : IDisposable
{
    private byte[]? _buffer;
    public JsonDocument Document { get; }

    private RequestBody(byte[] buffer, JsonDocument document)
    {
        _buffer = buffer;
        Document = document;
    }

    public void Dispose()
    {
        Document.Dispose();
        if (Interlocked.Exchange(ref _buffer, null) is { } b) ArrayPool<byte>.Shared.Return(b);
    }

    /// <summary>
    /// Reads the body (over the size limit: 413; not JSON: 400) into a buffer rented from the shared pool (a large
    /// body is no fresh large-object allocation, so no collection of the whole heap per request), checking the
    /// top-level "prompt" and "stop" arrays against <paramref name="limits"/> chunk by chunk as it comes.
    /// </summary>
    public static async Task<RequestBody> ReadAsync(HttpRequest request, RequestLimits limits)
    {
        long limit = request.HttpContext.Features.Get<Microsoft.AspNetCore.Http.Features.IHttpMaxRequestBodySizeFeature>()?.MaxRequestBodySize ?? long.MaxValue;
        if (request.ContentLength > limit) throw TooLarge(limit);
        var pipe = request.BodyReader;
        byte[] buffer = ArrayPool<byte>.Shared.Rent((int)Math.Clamp(request.ContentLength ?? 16 << 10, 1, Math.Min(limit, 64 << 20)));
        int length = 0;
        var scan = new Scanner(limits);
        try
        {
            while (true)
            {
                ReadResult read;
                try
                {
                    read = await pipe.ReadAsync(request.HttpContext.RequestAborted).ConfigureAwait(false);
                }
                catch (BadHttpRequestException e) when (e.StatusCode == StatusCodes.Status413PayloadTooLarge)
                {
                    throw TooLarge(limit);
                }
                catch (BadHttpRequestException e)
                {
                    throw new ApiException(e.StatusCode, $"bad request: {e.Message}");
                }
                var chunk = read.Buffer;
                if (length + chunk.Length > limit) throw TooLarge(limit);
                if (length + chunk.Length > buffer.Length)
                {
                    var larger = ArrayPool<byte>.Shared.Rent((int)Math.Min(Math.Max(buffer.Length * 2L, length + chunk.Length), int.MaxValue));
                    buffer.AsSpan(0, length).CopyTo(larger);
                    ArrayPool<byte>.Shared.Return(buffer);
                    buffer = larger;
                }
                chunk.CopyTo(buffer.AsSpan(length));
                length += (int)chunk.Length;
                pipe.AdvanceTo(chunk.End);
                // A refusal here leaves the rest of the body unread: Kestrel drains it after the 400 (so the client gets
                // the response) before the connection takes its next request, which also paces a client that sends
                // such bodies back to back. Closing the connection instead would let it open another at once and have
                // several drains run side by side (measured: worse for the other clients).
                scan.Scan(buffer.AsSpan(0, length), read.IsCompleted);
                if (read.IsCompleted) break;
            }
            JsonDocument document;
            try
            {
                document = JsonDocument.Parse(buffer.AsMemory(0, length));
            }
            catch (JsonException e)
            {
                throw new ApiException(StatusCodes.Status400BadRequest, $"the request body is not valid JSON: {e.Message}", code: "invalid_json");
            }
            return new RequestBody(buffer, document);
        }
        catch
        {
            ArrayPool<byte>.Shared.Return(buffer);
            throw;
        }
    }

    private static ApiException TooLarge(long limit) =>
        new(StatusCodes.Status413PayloadTooLarge, $"the request body is larger than the server's limit of {limit} bytes", code: "request_too_large");

    /// <summary>
    /// Counts the items of the top-level "stop" and "prompt" arrays as tokens arrive (a prompt of token ids is one
    /// prompt: numbers directly in "prompt" do not count). Malformed JSON stops the scan; the parser then names it.
    /// </summary>
    private struct Scanner(RequestLimits limits)
    {
        private JsonReaderState _state;
        private int _consumed;
        private bool _done;
        private string? _property; // the top-level property whose value comes next
        private string? _counting; // the top-level array being counted
        private int _items;

        public void Scan(ReadOnlySpan<byte> body, bool final)
        {
            if (_done) return;
            var reader = new Utf8JsonReader(body[_consumed..], final, _state);
            try
            {
                while (reader.Read())
                {
                    int depth = reader.CurrentDepth;
                    var token = reader.TokenType;
                    if (depth == 1 && token == JsonTokenType.PropertyName)
                        _property = reader.ValueTextEquals("stop"u8) ? "stop" : reader.ValueTextEquals("prompt"u8) ? "prompt" : null;
                    else if (depth == 1 && token == JsonTokenType.StartArray && _property != null)
                        (_counting, _items) = (_property, 0);
                    else if (depth == 1 && token == JsonTokenType.EndArray)
                        _counting = null;
                    else if (depth == 2 && _counting != null && token is not (JsonTokenType.EndArray or JsonTokenType.EndObject or JsonTokenType.Comment)
                             && !(_counting == "prompt" && token == JsonTokenType.Number)
                             && ++_items > (_counting == "stop" ? limits.MaxStopStrings : limits.MaxChoices))
                        throw _counting == "stop"
                            ? ApiException.BadRequest("stop", $"holds more stop strings than this server's limit of {limits.MaxStopStrings}")
                            : new ApiException(StatusCodes.Status400BadRequest, $"prompt: holds more prompts than this server's limit of {limits.MaxChoices} choices per request",
                                "prompt", "too_many_choices");
                }
            }
            catch (JsonException)
            {
                _done = true;
                return;
            }
            _consumed += (int)reader.BytesConsumed;
            _state = reader.CurrentState;
        }
    }
}
