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

internal sealed class CompletionHandler(InferenceEngine engine, RequestLimits limits, ServerShutdown shutdown, ILogger log)
{
    private readonly RefusalLog refusals = new();
    private readonly LogprobsJson logprobs = new(engine.Tokenizer);

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
            using var body = await RequestBody.ReadAsync(http.Request, limits).ConfigureAwait(false);
            request = OpenAiRequest.Parse(body.Document.RootElement, endpoint, engine, limits);
        }
        catch (ApiException e)
        {
            if (refusals.TryLog(out int suppressed))
                log.LogInformation("{RequestId} {Route} refused with {Status}: {Message}{Suppressed}", id, route, e.Status, e.Message,
                    suppressed > 0 ? $" ({suppressed} more refusals not logged)" : "");
            await e.WriteAsync(http.Response).ConfigureAwait(false);
            return;
        }

        var outcome = new Outcome(request.Requests.Count * request.N, shutdown.Track(id, route, request.Stream));
        // The generation ends when the client goes, or when the shutdown deadline comes (the response then ends with
        // an error, which needs the connection: so the deadline cancels the generation, not the writes).
        using var generation = CancellationTokenSource.CreateLinkedTokenSource(aborted, shutdown.Deadline);
        try
        {
            if (request.Stream) await StreamAsync(http, request, id, outcome, generation.Token, aborted).ConfigureAwait(false);
            else await RespondAsync(http, request, id, outcome, generation.Token, aborted).ConfigureAwait(false);
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
            shutdown.Finish(outcome.Tracked, RequestOutcome.Failed);
            return;
        }
        if (aborted.IsCancellationRequested) outcome.Disconnected = true;
        shutdown.Finish(outcome.Tracked, outcome.Disconnected ? RequestOutcome.ClientDisconnected : outcome.CutOff ? RequestOutcome.CutOffAtDeadline : RequestOutcome.Completed);

        double ms = Stopwatch.GetElapsedTime(started).TotalMilliseconds;
        if (outcome.Disconnected)
            log.LogInformation("{RequestId} {Route} cancelled: client disconnected after {CompletionTokens} tokens, {Elapsed:F0} ms", id, route, outcome.Tokens, ms);
        else if (outcome.CutOff)
            log.LogInformation("{RequestId} {Route} ended by the shutdown deadline after {CompletionTokens} tokens, {Elapsed:F0} ms", id, route, outcome.Tokens, ms);
        else
            log.LogInformation("{RequestId} {Route} n={N} stream={Stream} prompt_tokens={PromptTokens} completion_tokens={CompletionTokens} finish={Finish} {Elapsed:F0} ms",
                id, route, request.N, request.Stream, request.PromptTokens.Sum(), outcome.CompletionTokens, string.Join(',', outcome.Finish.Distinct()), ms);
    }

    /// <summary>What one request produced, for the response and the log line.</summary>
    private sealed class Outcome(int choices, ServerShutdown.InFlight tracked)
    {
        public readonly StringBuilder[] Text = Enumerable.Range(0, choices).Select(_ => new StringBuilder()).ToArray();
        public readonly string?[] Finish = new string?[choices];
        /// <summary>Per choice, its tokens' log-probabilities and its prompt's (when the request asked for them).</summary>
        public readonly List<TokenLogprobs>[] Logprobs = Enumerable.Range(0, choices).Select(_ => new List<TokenLogprobs>()).ToArray();
        public readonly IReadOnlyList<TokenLogprobs?>?[] PromptLogprobs = new IReadOnlyList<TokenLogprobs?>?[choices];
        /// <summary>Per choice, whether a streamed chunk went out (the echoed prompt goes first) and the text_offset reached.</summary>
        public readonly bool[] Started = new bool[choices];
        public readonly int[] Offset = new int[choices];
        public readonly ServerShutdown.InFlight Tracked = tracked;
        public int CompletionTokens;
        public bool Disconnected;
        /// <summary>Ended by the shutdown deadline before every choice finished.</summary>
        public bool CutOff;

        /// <summary>Tokens generated so far (streamed or not), for the logs.</summary>
        public int Tokens => Tracked.Tokens;
    }

    /// <summary>The error a response ends with when the shutdown deadline cuts it off.</summary>
    private static ApiException ShuttingDown() =>
        new(StatusCodes.Status503ServiceUnavailable, "The server is shutting down: the request was ended before it finished", type: "server_error", code: "server_shutting_down");

    // ---------------------------------------------------------------- one JSON body

    private async Task RespondAsync(HttpContext http, OpenAiRequest request, string id, Outcome outcome, CancellationToken generation, CancellationToken aborted)
    {
        try
        {
            await foreach (var (choice, e) in Events(request, generation).ConfigureAwait(false))
            {
                if (aborted.IsCancellationRequested) return;
                Record(outcome, choice, e);
            }
        }
        catch (OperationCanceledException) when (shutdown.Deadline.IsCancellationRequested && !aborted.IsCancellationRequested)
        {
            outcome.CutOff = true;
            await ShuttingDown().WriteAsync(http.Response).ConfigureAwait(false);
            return;
        }
        if (aborted.IsCancellationRequested) return;

        bool chat = request.Endpoint == ApiEndpoint.ChatCompletions;
        var choices = new JsonArray();
        for (int c = 0; c < outcome.Text.Length; c++)
        {
            var item = new JsonObject { ["index"] = c };
            string echoed = request.Echo ? request.PromptTexts[c / request.N] : "";
            if (chat) item["message"] = new JsonObject { ["role"] = "assistant", ["content"] = outcome.Text[c].ToString() };
            else item["text"] = echoed + outcome.Text[c].ToString();
            JsonObject? scores = null;
            if (request.Logprobs != null && chat) scores = new JsonObject { ["content"] = logprobs.Chat(outcome.Logprobs[c]) };
            else if (request.Logprobs != null)
            {
                scores = new JsonObject();
                if (request.Echo && outcome.PromptLogprobs[c] is { } prompt) logprobs.AppendCompletion(scores, request.Requests[c / request.N].PromptIds!, prompt, 0);
                var generated = outcome.Logprobs[c];
                logprobs.AppendCompletion(scores, generated.Select(t => t.Token).ToArray(), generated, echoed.Length);
            }
            item["logprobs"] = scores;
            item["finish_reason"] = outcome.Finish[c];
            choices.Add(item);
        }
        var response = Envelope(id, chat ? "chat.completion" : "text_completion");
        response["choices"] = choices;
        response["usage"] = UsageJson(request, outcome);
        await ServerApp.WriteJsonAsync(http.Response, response).ConfigureAwait(false);
    }

    // ---------------------------------------------------------------- server-sent events

    private async Task StreamAsync(HttpContext http, OpenAiRequest request, string id, Outcome outcome, CancellationToken generation, CancellationToken aborted)
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

        JsonObject Chunk(int choice, string text, string? finish, bool role = false, JsonNode? scores = null)
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
            item["logprobs"] = scores;
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
            await foreach (var (choice, e) in Events(request, generation).ConfigureAwait(false))
            {
                if (aborted.IsCancellationRequested) return;
                Record(outcome, choice, e);
                if (request.Echo && !outcome.Started[choice])
                {
                    // The prompt first, with its log-probabilities when asked (they come with the choice's first event).
                    string prompt = request.PromptTexts[choice / request.N];
                    JsonObject? promptScores = null;
                    if (request.Logprobs != null && e.PromptLogprobs is { } lp)
                        logprobs.AppendCompletion(promptScores = new JsonObject(), request.Requests[choice / request.N].PromptIds!, lp, 0);
                    outcome.Offset[choice] = prompt.Length;
                    await Send(Chunk(choice, prompt, null, scores: promptScores)).ConfigureAwait(false);
                }
                outcome.Started[choice] = true;
                JsonNode? scores = null;
                if (e.Logprobs is { } token)
                {
                    if (chat) scores = new JsonObject { ["content"] = logprobs.Chat([token]) };
                    else
                    {
                        var completion = new JsonObject();
                        outcome.Offset[choice] = logprobs.AppendCompletion(completion, [token.Token], [token], outcome.Offset[choice]);
                        scores = completion;
                    }
                }
                if (e.Text.Length > 0 || e.Finish != null || scores != null)
                    await Send(Chunk(choice, e.Text, outcome.Finish[choice], scores: scores)).ConfigureAwait(false);
            }
        }
        catch (OperationCanceledException) when (shutdown.Deadline.IsCancellationRequested && !aborted.IsCancellationRequested)
        {
            // The shutdown deadline: the stream ends in band, with OpenAI's error object, then [DONE].
            outcome.CutOff = true;
            await Send(ShuttingDown().ToJson()).ConfigureAwait(false);
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

    /// <summary>Adds an event to its choice's text, the token count and, on its last event, the finish reason.</summary>
    private void Record(Outcome outcome, int choice, GenerationEvent e)
    {
        outcome.Text[choice].Append(e.Text);
        if (e.Logprobs != null) outcome.Logprobs[choice].Add(e.Logprobs);
        if (e.PromptLogprobs != null) outcome.PromptLogprobs[choice] = e.PromptLogprobs;
        if (e.Token != null) Interlocked.Increment(ref outcome.Tracked.Tokens);
        if (e.Finish is { } f) Finished(outcome, choice, f, e);
    }

    private void Finished(Outcome outcome, int choice, FinishReason finish, GenerationEvent e)
    {
        // Cancelled without a client disconnect means the server is shutting down: no honest finish_reason exists.
        if (finish == FinishReason.Cancelled)
        {
            if (shutdown.Deadline.IsCancellationRequested) throw new OperationCanceledException(shutdown.Deadline); // the deadline's cut-off path
            throw new ApiException(StatusCodes.Status503ServiceUnavailable, "the server is shutting down; the request was not completed", type: "server_error");
        }
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

    /// <summary>
    /// Every sample of every prompt as (choice index, event), as the engine produces them. All prompts are one engine
    /// submission (one group for the scheduler's fairness, one cancellation). The engine's stream is pumped into a
    /// channel read with <paramref name="cancellation"/>, so the caller stops waiting at once when it is cancelled
    /// (the engine ends the requests at its next step, however long the step in progress takes).
    /// </summary>
    private async IAsyncEnumerable<(int Choice, GenerationEvent Event)> Events(OpenAiRequest request, [EnumeratorCancellation] CancellationToken cancellation)
    {
        var events = Channel.CreateUnbounded<(int, GenerationEvent)>(new UnboundedChannelOptions { SingleReader = true, SingleWriter = true });
        _ = Task.Run(async () =>
        {
            try
            {
                await foreach (var e in engine.GenerateManyAsync(request.Requests, cancellation).ConfigureAwait(false))
                    events.Writer.TryWrite((e.Request * request.N + e.Sample, e));
                events.Writer.TryComplete();
            }
            catch (Exception e)
            {
                events.Writer.TryComplete(e);
            }
        }, CancellationToken.None);
        await foreach (var item in events.Reader.ReadAllAsync(cancellation).ConfigureAwait(false)) yield return item;
    }
}
