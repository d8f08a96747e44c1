// POST /v1/completions and /v1/chat/completions: runs the parsed request on the engine and answers in one JSON body
// or as server-sent events (one chunk per generated piece of text, then "data: [DONE]").
using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Threading.Channels;
using Kernels.Runtime.Engine;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Logging;

namespace Kernels.Server;

internal sealed class CompletionHandler(InferenceEngine engine, ILogger log)
{
    public async Task HandleAsync(HttpContext http, ApiEndpoint endpoint)
    {
        long started = Stopwatch.GetTimestamp();
        bool chat = endpoint == ApiEndpoint.ChatCompletions;
        string id = (chat ? "chatcmpl-" : "cmpl-") + Guid.NewGuid().ToString("N")[..24];
        string route = chat ? "chat" : "completions";
        http.Response.Headers["X-Request-Id"] = id;
        var aborted = http.RequestAborted;

        OpenAiRequest request;
        try
        {
            using var body = await ServerApp.ReadJsonAsync(http.Request).ConfigureAwait(false);
            request = OpenAiRequest.Parse(body.RootElement, endpoint, engine);
        }
        catch (ApiException e)
        {
            log.LogInformation("{RequestId} {Route} refused with {Status}: {Message}", id, route, e.Status, e.Message);
            await e.WriteAsync(http.Response).ConfigureAwait(false);
            return;
        }

        var outcome = new Outcome(request.Requests.Count * request.N);
        try
        {
            if (request.Stream) await StreamAsync(http, request, id, outcome, aborted).ConfigureAwait(false);
            else await RespondAsync(http, request, id, outcome, aborted).ConfigureAwait(false);
        }
        catch (Exception e) when (aborted.IsCancellationRequested && e is OperationCanceledException or IOException)
        {
            outcome.Disconnected = true;
        }
        catch (Exception e) when (!http.Response.HasStarted)
        {
            log.LogError(e, "{RequestId} {Route} failed", id, route);
            var error = e as ApiException ?? new ApiException(StatusCodes.Status500InternalServerError, $"generation failed: {e.Message}", type: "server_error");
            await error.WriteAsync(http.Response).ConfigureAwait(false);
            return;
        }
        if (aborted.IsCancellationRequested) outcome.Disconnected = true;

        double ms = Stopwatch.GetElapsedTime(started).TotalMilliseconds;
        if (outcome.Disconnected)
            log.LogInformation("{RequestId} {Route} cancelled: client disconnected after {CompletionTokens} tokens, {Elapsed:F0} ms", id, route, outcome.CompletionTokens, ms);
        else
            log.LogInformation("{RequestId} {Route} n={N} stream={Stream} prompt_tokens={PromptTokens} completion_tokens={CompletionTokens} finish={Finish} {Elapsed:F0} ms",
                id, route, request.N, request.Stream, request.PromptTokens.Sum(), outcome.CompletionTokens, string.Join(',', outcome.Finish.Distinct()), ms);
    }

    /// <summary>What one request produced, for the response and the log line.</summary>
    private sealed class Outcome(int choices)
    {
        public readonly StringBuilder[] Text = Enumerable.Range(0, choices).Select(_ => new StringBuilder()).ToArray();
        public readonly string?[] Finish = new string?[choices];
        public int CompletionTokens;
        public bool Disconnected;
    }

    // ---------------------------------------------------------------- one JSON body

    private async Task RespondAsync(HttpContext http, OpenAiRequest request, string id, Outcome outcome, CancellationToken aborted)
    {
        await foreach (var (choice, e) in Events(request, aborted).ConfigureAwait(false))
        {
            if (aborted.IsCancellationRequested) return;
            outcome.Text[choice].Append(e.Text);
            if (e.Finish is { } f) Finished(outcome, choice, f, e);
        }
        if (aborted.IsCancellationRequested) return;

        bool chat = request.Endpoint == ApiEndpoint.ChatCompletions;
        var choices = new JsonArray();
        for (int c = 0; c < outcome.Text.Length; c++)
        {
            var item = new JsonObject { ["index"] = c };
            if (chat) item["message"] = new JsonObject { ["role"] = "assistant", ["content"] = outcome.Text[c].ToString() };
            else item["text"] = outcome.Text[c].ToString();
            item["logprobs"] = null;
            item["finish_reason"] = outcome.Finish[c];
            choices.Add(item);
        }
        var response = Envelope(id, chat ? "chat.completion" : "text_completion");
        response["choices"] = choices;
        response["usage"] = UsageJson(request, outcome);
        await ServerApp.WriteJsonAsync(http.Response, response).ConfigureAwait(false);
    }

    // ---------------------------------------------------------------- server-sent events

    private async Task StreamAsync(HttpContext http, OpenAiRequest request, string id, Outcome outcome, CancellationToken aborted)
    {
        bool chat = request.Endpoint == ApiEndpoint.ChatCompletions;
        var response = http.Response;
        response.StatusCode = StatusCodes.Status200OK;
        response.ContentType = "text/event-stream";
        response.Headers.CacheControl = "no-cache";
        response.Headers["X-Accel-Buffering"] = "no"; // proxies (nginx) must not hold the stream back
        await response.StartAsync(aborted).ConfigureAwait(false);

        async Task Send(JsonNode chunk)
        {
            await response.WriteAsync($"data: {chunk.ToJsonString(ServerApp.Json)}\n\n", aborted).ConfigureAwait(false);
            await response.Body.FlushAsync(aborted).ConfigureAwait(false);
        }

        JsonObject Chunk(int choice, string text, string? finish, bool role = false)
        {
            var item = new JsonObject { ["index"] = choice };
            if (chat)
            {
                var delta = new JsonObject();
                if (role) delta["role"] = "assistant";
                if (role || text.Length > 0) delta["content"] = text;
                item["delta"] = delta;
            }
            else item["text"] = text;
            item["logprobs"] = null;
            item["finish_reason"] = finish;
            var chunk = Envelope(id, chat ? "chat.completion.chunk" : "text_completion");
            chunk["choices"] = new JsonArray(item);
            if (request.IncludeUsage) chunk["usage"] = null;
            return chunk;
        }

        if (chat)
            for (int c = 0; c < outcome.Text.Length; c++) await Send(Chunk(c, "", null, role: true)).ConfigureAwait(false);
        try
        {
            await foreach (var (choice, e) in Events(request, aborted).ConfigureAwait(false))
            {
                if (aborted.IsCancellationRequested) return;
                outcome.Text[choice].Append(e.Text);
                if (e.Finish is { } f) Finished(outcome, choice, f, e);
                if (e.Text.Length > 0 || e.Finish != null) await Send(Chunk(choice, e.Text, outcome.Finish[choice])).ConfigureAwait(false);
            }
        }
        catch (Exception e) when (!aborted.IsCancellationRequested)
        {
            // Headers are gone: the failure travels in band, as OpenAI's streams report errors.
            log.LogError(e, "{RequestId} failed while streaming", id);
            var error = e as ApiException ?? new ApiException(StatusCodes.Status500InternalServerError, $"generation failed: {e.Message}", type: "server_error");
            await Send(error.ToJson()).ConfigureAwait(false);
        }
        if (request.IncludeUsage)
        {
            var last = Envelope(id, chat ? "chat.completion.chunk" : "text_completion");
            last["choices"] = new JsonArray();
            last["usage"] = UsageJson(request, outcome);
            await Send(last).ConfigureAwait(false);
        }
        await response.WriteAsync("data: [DONE]\n\n", aborted).ConfigureAwait(false);
        await response.Body.FlushAsync(aborted).ConfigureAwait(false);
    }

    // ---------------------------------------------------------------- shared pieces

    private static void Finished(Outcome outcome, int choice, FinishReason finish, GenerationEvent e)
    {
        // Cancelled without a client disconnect means the engine is shutting down: no honest finish_reason exists.
        if (finish == FinishReason.Cancelled)
            throw new ApiException(StatusCodes.Status503ServiceUnavailable, "the server is shutting down; the request was not completed", type: "server_error");
        outcome.Finish[choice] = finish == FinishReason.Length ? "length" : "stop"; // EOS and stop strings are both "stop"
        outcome.CompletionTokens += e.Usage?.CompletionTokens ?? 0;
    }

    private JsonObject Envelope(string id, string kind) => new()
    {
        ["id"] = id,
        ["object"] = kind,
        ["created"] = DateTimeOffset.UtcNow.ToUnixTimeSeconds(),
        ["model"] = engine.ModelName,
    };

    private static JsonObject UsageJson(OpenAiRequest request, Outcome outcome)
    {
        int prompt = request.PromptTokens.Sum(); // once per prompt, however many samples share it (OpenAI counts it so)
        return new JsonObject
        {
            ["prompt_tokens"] = prompt,
            ["completion_tokens"] = outcome.CompletionTokens,
            ["total_tokens"] = prompt + outcome.CompletionTokens,
        };
    }

    /// <summary>Every sample of every prompt as (choice index, event), as the engine produces them.</summary>
    private async IAsyncEnumerable<(int Choice, GenerationEvent Event)> Events(OpenAiRequest request, [EnumeratorCancellation] CancellationToken aborted)
    {
        // The client's disconnect cancels the engine request, which frees its KV blocks at the next step.
        if (request.Requests.Count == 1)
        {
            await foreach (var e in engine.GenerateAsync(request.Requests[0], aborted).ConfigureAwait(false)) yield return (e.Sample, e);
            yield break;
        }
        // Several prompts run as concurrent engine requests (batched together by the scheduler), merged here.
        var merged = Channel.CreateUnbounded<(int, GenerationEvent)>(new UnboundedChannelOptions { SingleReader = true });
        var stop = CancellationTokenSource.CreateLinkedTokenSource(aborted);
        var pumps = request.Requests.Select(async (r, i) =>
        {
            await foreach (var e in engine.GenerateAsync(r, stop.Token).ConfigureAwait(false))
                await merged.Writer.WriteAsync((i * request.N + e.Sample, e), CancellationToken.None).ConfigureAwait(false);
        }).ToArray();
        _ = Task.WhenAll(pumps).ContinueWith(t => merged.Writer.TryComplete(t.Exception?.InnerException), TaskScheduler.Default);
        try
        {
            await foreach (var item in merged.Reader.ReadAllAsync(CancellationToken.None).ConfigureAwait(false)) yield return item;
        }
        finally
        {
            stop.Cancel(); // the reader stopped early (error, disconnect): end the other prompts too
        }
    }
}
