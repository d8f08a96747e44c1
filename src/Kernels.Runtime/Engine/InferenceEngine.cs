// The library's front door: load a model, submit requests from any thread, stream their tokens asynchronously.
using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Threading.Channels;
using Kernels.Runtime.Backends;
using Kernels.Runtime.Backends.Cpu;
using Kernels.Runtime.Engine.Chat;
using Kernels.Runtime.KvCache;
using Kernels.Runtime.Models;
using Kernels.Runtime.Tokenization;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace Kernels.Runtime.Engine;

public sealed record InferenceEngineOptions
{
    public ModelLoadOptions Load { get; init; } = new();
    public CpuBackendOptions Cpu { get; init; } = new();
    /// <summary>Which backend Create picks (Auto: CUDA when usable, else the CPU).</summary>
    public Backends.BackendKind Backend { get; init; } = Backends.BackendKind.Auto;
    /// <summary>Options of the CUDA backend when it is chosen.</summary>
    public Backends.Cuda.CudaBackendOptions? Cuda { get; init; }
    public GeneratorOptions Scheduling { get; init; } = new();
    public ILoggerFactory? LoggerFactory { get; init; }
    /// <summary>Publish the prefix cache's changes as vLLM-style KV events after every step; null (default): off.</summary>
    public KvEventOptions? KvEvents { get; init; }
}

/// <summary>
/// Owns a model, its backend and one scheduler loop on a dedicated thread. <see cref="GenerateAsync(GenerationRequest,
/// CancellationToken)"/> may be called concurrently from any thread; all requests in flight share every forward step
/// (continuous batching). Cancelling a request's token frees its KV blocks at the next step. Dispose stops the loop,
/// ends every request still running with <see cref="FinishReason.Cancelled"/> and releases the model.
/// </summary>
public sealed class InferenceEngine : IDisposable
{
    /// <summary>One caller's submission: one or several prompts (each with N samples), one scheduler group, one stream.</summary>
    private sealed class Submission
    {
        public required int Group;
        public required GenerationRequest[] Requests;
        public required int[][] Prompts;
        public required StopStrings[] Stops;
        public required int[] SchedulerIds;    // per request: its id in the scheduler
        public required Channel<GenerationEvent> Events;
        public required long SubmittedAt;
        public required int[] Remaining;       // per request: samples not finished yet
        public required long[][] LastTokenAt;  // per request and sample, Stopwatch ticks of the last token (for TPOT)
        public required long[][] FirstTokenAt; // per request and sample, Stopwatch ticks of the first token
        public required int[][] Tokens;        // per request and sample, tokens generated
        public int Unfinished;                 // requests with samples still running
    }

    private readonly LoadedModel _model;
    private readonly IBackend _backend;
    private readonly Scheduler _scheduler;
    private readonly ILogger _log;
    private readonly Thread _loop;
    private readonly object _gate = new();
    private readonly Queue<Submission> _incoming = new();
    private readonly HashSet<Submission> _cancels = new();
    private readonly Dictionary<int, (Submission Sub, int Index)> _running = new(); // by scheduler id
    private int _nextId;
    private readonly IKvEventSink? _kvSink;
    private readonly List<KvCacheEvent> _kvEvents = new(); // this step's, published after it
    private bool _stopping;
    private Exception? _fault;
    private int _released;  // 1 once the backend and model are disposed
    private bool _abandoned; // Shutdown timed out during a step: the loop releases the resources when it ends
    private bool _loopEnded;

    public string ModelName { get; }
    public ModelConfig Config => _model.Config;
    public ITextTokenizer Tokenizer => _model.Tokenizer;
    public ChatTemplate ChatTemplate { get; }
    public EngineMetrics Metrics { get; } = new();
    public string BackendDescription { get; }

    /// <summary>The KV memory of the engine's backend (blocks in use, capacity, cached prefixes).</summary>
    internal KvBlockPool KvPool => _backend.KvPool;

    /// <summary>The KV cache's shape as vllm:cache_config_info reports it.</summary>
    public KvCacheInfo CacheInfo { get; }

    private InferenceEngine(LoadedModel model, IBackend backend, string backendDescription, InferenceEngineOptions options)
    {
        _model = model;
        _backend = backend;
        BackendDescription = backendDescription;
        _log = (options.LoggerFactory ?? NullLoggerFactory.Instance).CreateLogger<InferenceEngine>();
        _scheduler = new Scheduler(backend, model.Tokenizer, options.Scheduling);
        ModelName = SyntheticModels.IsSynthetic(model.Source) ? model.Source : Path.GetFileName(model.Source.TrimEnd('/', '\\'));
        ChatTemplate = ChatTemplate.ForModel(model);
        Metrics.KvBlocksTotal = backend.KvPool.Capacity;
        CacheInfo = new KvCacheInfo(backend.KvPool.BlockSize, backend.KvPool.Capacity,
            options.Scheduling.PrefixSharing && backend.Config.SlidingWindow == null);
        _scheduler.BeforeForward = PublishState;
        if (options.KvEvents is { } kvEvents)
        {
            _kvSink = kvEvents.Sink;
            backend.KvPool.Prefixes.Hasher = new VllmBlockHasher(kvEvents.HashSeed);
            backend.KvPool.Prefixes.Observer = _kvEvents.Add;
            _kvEvents.Add(new KvAllBlocksCleared()); // a subscriber that knew an earlier run at this address starts over
            PublishKvEvents();
        }
        _loop = new Thread(Loop) { IsBackground = true, Name = "kernels-engine" };
        _loop.Start();
    }

    /// <summary>Loads <paramref name="model"/> (a path or synthetic:NAME) on the best backend present.</summary>
    public static InferenceEngine Create(string model, InferenceEngineOptions? options = null)
    {
        options ??= new InferenceEngineOptions();
        var loaded = ModelLoader.Load(model, options.Load);
        try
        {
            _ = loaded.Tokenizer; // a missing tokenizer is reported now, not at the first request
            var (backend, description) = BackendSelector.Create(loaded, options.Cpu, options.Backend, options.Cuda);
            var engine = new InferenceEngine(loaded, backend, description, options);
            engine._log.LogInformation("Loaded {Model} ({Parameters:F1}M parameters) on {Backend}", model, loaded.Config.ParameterCount / 1e6, description);
            return engine;
        }
        catch
        {
            loaded.Dispose();
            throw;
        }
    }

    /// <summary>An engine over a backend made by the caller (tests wrap the CPU backend); the engine owns both.</summary>
    internal static InferenceEngine Create(LoadedModel model, IBackend backend, InferenceEngineOptions? options = null) =>
        new(model, backend, backend.Name, options ?? new InferenceEngineOptions());

    /// <summary>Encodes a request's prompt and checks it (throws <see cref="RequestValidationException"/>).</summary>
    public int[] PromptIds(GenerationRequest request) => _scheduler.PromptIds(request);

    /// <summary>
    /// Encodes and checks each of several requests (throws <see cref="RequestValidationException"/> or
    /// <see cref="KvCacheExhaustedException"/> for the first that cannot run). Together they may need more KV memory
    /// than there is: the scheduler then runs them as memory frees up.
    /// </summary>
    public int[][] PromptIds(IReadOnlyList<GenerationRequest> requests) => requests.Select(_scheduler.PromptIds).ToArray();

    /// <summary>
    /// Streams the events of every sample of <paramref name="request"/> (Request = 0, Sample = 0..n-1) as they are
    /// generated. Cancellation ends the stream with Cancelled events and frees the request's memory.
    /// </summary>
    public IAsyncEnumerable<GenerationEvent> GenerateAsync(GenerationRequest request, CancellationToken cancellation = default) =>
        GenerateManyAsync([request], cancellation);

    /// <summary>
    /// Runs several requests as one submission and streams all their events (Request = index in the list). They are
    /// one group for the scheduler's fairness (together they get one client's share of each step; those that do not fit
    /// the KV memory at once wait for it) and one cancellation: cancelling the token ends every one of them at the
    /// next step.
    /// </summary>
    public async IAsyncEnumerable<GenerationEvent> GenerateManyAsync(IReadOnlyList<GenerationRequest> requests,
        [EnumeratorCancellation] CancellationToken cancellation = default)
    {
        // A token cancelled before the call never submits (otherwise a short request could finish before the
        // cancellation reached the engine loop, and the caller would get a response instead of the exception).
        cancellation.ThrowIfCancellationRequested();
        var sub = Submit(requests);
        using var registration = cancellation.Register(() => Cancel(sub));
        bool completed = false;
        try
        {
            await foreach (var e in sub.Events.Reader.ReadAllAsync(CancellationToken.None).ConfigureAwait(false))
            {
                yield return e;
            }
            completed = true;
        }
        finally
        {
            if (!completed) Cancel(sub); // the caller stopped reading: free the requests
        }
        if (_fault != null) throw new InvalidOperationException("the engine loop failed", _fault);
    }

    /// <summary>Runs several requests together and returns every sample's result (Request = index in the list).</summary>
    public async Task<IReadOnlyList<GenerationResult>> GenerateAsync(IReadOnlyList<GenerationRequest> requests, CancellationToken cancellation = default)
    {
        var prompts = PromptIds(requests);
        var collector = new GenerationResultCollector(requests, prompts);
        await foreach (var e in GenerateManyAsync(requests, cancellation).ConfigureAwait(false)) collector.Add(e);
        return collector.Results;
    }

    private Submission Submit(IReadOnlyList<GenerationRequest> requests)
    {
        if (requests.Count == 0) throw new ArgumentException("no requests given", nameof(requests));
        var prompts = PromptIds(requests); // validation errors surface in the caller's thread
        int group = Interlocked.Increment(ref _nextId);
        var sub = new Submission
        {
            Group = group,
            Requests = requests.ToArray(),
            Prompts = prompts,
            Stops = requests.Select(r => new StopStrings(r.Stop)).ToArray(), // compiled here, off the engine thread
            SchedulerIds = requests.Select(_ => Interlocked.Increment(ref _nextId)).ToArray(),
            Events = Channel.CreateUnbounded<GenerationEvent>(new UnboundedChannelOptions { SingleReader = true, SingleWriter = true }),
            SubmittedAt = Stopwatch.GetTimestamp(),
            Remaining = requests.Select(r => r.N).ToArray(),
            LastTokenAt = requests.Select(r => new long[r.N]).ToArray(),
            FirstTokenAt = requests.Select(r => new long[r.N]).ToArray(),
            Tokens = requests.Select(r => new int[r.N]).ToArray(),
            Unfinished = requests.Count,
        };
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_stopping, this);
            if (_fault != null) throw new InvalidOperationException("the engine loop failed", _fault);
            _incoming.Enqueue(sub);
            Monitor.Pulse(_gate);
        }
        foreach (var prompt in prompts)
        {
            Metrics.RequestSubmitted();
            Metrics.PromptTokens(prompt.Length);
        }
        return sub;
    }

    private void Cancel(Submission sub)
    {
        lock (_gate)
        {
            _cancels.Add(sub);
            Monitor.Pulse(_gate);
        }
    }

    private void Loop()
    {
        try
        {
            while (true)
            {
                lock (_gate)
                {
                    while (!_stopping && _incoming.Count == 0 && _cancels.Count == 0 && !_scheduler.HasWork) Monitor.Wait(_gate);
                    if (_stopping) break;
                    while (_incoming.TryDequeue(out var sub))
                    {
                        for (int i = 0; i < sub.Requests.Length; i++)
                        {
                            _running[sub.SchedulerIds[i]] = (sub, i);
                            _scheduler.Submit(sub.SchedulerIds[i], sub.Requests[i], sub.Prompts[i], sub.Group, sub.Stops[i]);
                        }
                    }
                    foreach (var sub in _cancels)
                        foreach (int id in sub.SchedulerIds) _scheduler.Cancel(id);
                    _cancels.Clear();
                }
                List<GenerationEvent> events;
                try
                {
                    events = _scheduler.Step();
                }
                catch (Exception e) when (e is not OutOfMemoryException)
                {
                    FailRunning(e);
                    continue;
                }
                long now = Stopwatch.GetTimestamp();
                foreach (var e in events) Deliver(e, now);
                PublishState();
                PublishKvEvents();
            }
        }
        catch (Exception e)
        {
            _fault = e;
            _log.LogError(e, "The engine loop failed; every running request is ended");
        }
        finally
        {
            _scheduler.Clear();
            if (_kvSink != null)
            {
                _kvEvents.Add(new KvAllBlocksCleared()); // the engine and its cache are going away
                PublishKvEvents();
            }
            lock (_gate)
            {
                // Every sample still running ends with Cancelled: the engine is stopping (or its loop failed).
                foreach (var sub in _running.Values.Select(r => r.Sub).Concat(_incoming).Distinct())
                {
                    for (int i = 0; i < sub.Requests.Length; i++)
                        for (int n = 0; n < sub.Requests[i].N && sub.Remaining[i] > 0; n++)
                            sub.Events.Writer.TryWrite(new GenerationEvent(i, n, null, "", FinishReason.Cancelled, new Usage(sub.Prompts[i].Length, 0)));
                    sub.Events.Writer.TryComplete(_fault);
                }
                _running.Clear();
                _incoming.Clear();
            }
            bool release;
            lock (_gate)
            {
                _loopEnded = true;
                release = _abandoned; // Shutdown stopped waiting for this step: the resources are ours to release
            }
            if (release) ReleaseResources();
        }
    }

    /// <summary>The scheduler's state into the metrics (after admission, before each forward, and after each step).</summary>
    private void PublishState()
    {
        int incoming;
        lock (_gate) incoming = _incoming.Count;
        var pool = _backend.KvPool;
        Metrics.QueueLength = _scheduler.Waiting;
        Metrics.RunningSequences = _scheduler.RunningSequences;
        Metrics.KvBlocksUsed = pool.Capacity - pool.FreeBlocks;
        Metrics.Preempted((int)(_scheduler.Preemptions - Metrics.Preemptions));
        Metrics.RequestsWaiting = _scheduler.Waiting + incoming;
        Metrics.RequestsRunning = _scheduler.RunningRequests;
        Metrics.KvCacheUsage = pool.ActiveUsage;
        Metrics.PrefixCacheQueries = _scheduler.PrefixCacheQueries;
        Metrics.PrefixCacheHits = _scheduler.PrefixCacheHits;
    }

    /// <summary>This step's prefix-cache changes as one batch to the KV event sink (nothing when off or unchanged).</summary>
    private void PublishKvEvents()
    {
        if (_kvSink == null || _kvEvents.Count == 0) return;
        var batch = new KvEventBatch(DateTimeOffset.UtcNow.ToUnixTimeMilliseconds() / 1000.0, _kvEvents.ToArray());
        _kvEvents.Clear();
        try
        {
            _kvSink.Publish(batch);
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            _log.LogError(e, "Publishing KV events failed; generation goes on");
        }
    }

    /// <summary>
    /// A step failed (a backend error, KV memory that could not be found): the requests in flight end with that
    /// error (their streams throw it), their memory is released, and the engine goes on serving new requests.
    /// </summary>
    private void FailRunning(Exception error)
    {
        _log.LogError(error, "A step failed; the {Count} request(s) in flight end with its error", _running.Count);
        _scheduler.Clear();
        foreach (var (sub, index) in _running.Values)
        {
            sub.Events.Writer.TryComplete(new InvalidOperationException($"generation failed: {error.Message}", error));
            if (sub.Remaining[index] > 0) Metrics.RequestFinished(cancelled: false);
        }
        _running.Clear();
    }

    private void Deliver(GenerationEvent e, long now)
    {
        if (!_running.TryGetValue(e.Request, out var entry)) return;
        var (sub, index) = entry;
        if (e.Token != null)
        {
            Metrics.TokenGenerated();
            long last = sub.LastTokenAt[index][e.Sample];
            if (last == 0)
            {
                double ttft = Stopwatch.GetElapsedTime(sub.SubmittedAt, now).TotalSeconds;
                Metrics.TimeToFirstToken.Observe(ttft);
                Metrics.VllmTimeToFirstToken.Observe(ttft);
                sub.FirstTokenAt[index][e.Sample] = now;
            }
            else
            {
                double gap = Stopwatch.GetElapsedTime(last, now).TotalSeconds;
                Metrics.TimePerOutputToken.Observe(gap);
                Metrics.InterTokenLatency.Observe(gap);
            }
            sub.LastTokenAt[index][e.Sample] = now;
            sub.Tokens[index][e.Sample]++;
        }
        // The metrics first, the event after: a client that has its last event and reads /metrics finds it counted.
        if (e.Finish is { } finish)
        {
            Metrics.SampleFinished(finish);
            if (sub.Tokens[index][e.Sample] > 1)
                Metrics.RequestTimePerOutputToken.Observe(
                    Stopwatch.GetElapsedTime(sub.FirstTokenAt[index][e.Sample], sub.LastTokenAt[index][e.Sample]).TotalSeconds / (sub.Tokens[index][e.Sample] - 1));
        }
        bool requestDone = e.Finish != null && --sub.Remaining[index] == 0;
        if (requestDone)
        {
            _running.Remove(e.Request);
            Metrics.RequestFinished(e.Finish == FinishReason.Cancelled);
            Metrics.EndToEndLatency.Observe(Stopwatch.GetElapsedTime(sub.SubmittedAt, now).TotalSeconds);
        }
        sub.Events.Writer.TryWrite(e with { Request = index });
        if (requestDone && --sub.Unfinished == 0) sub.Events.Writer.TryComplete();
    }

    /// <summary>Stops the loop (requests still running end with Cancelled) and releases the model; waits as long as it takes.</summary>
    public void Dispose() => Shutdown(Timeout.InfiniteTimeSpan);

    /// <summary>
    /// Stops the engine: no new requests, every running one ends with <see cref="FinishReason.Cancelled"/> after the
    /// step in progress. Waits up to <paramref name="timeout"/> for that step; returns true when the engine stopped
    /// and released its backend and model within it. When a step outlasts the timeout, returns false at once and the
    /// loop releases them itself when the step ends (nothing is freed while a step still reads it).
    /// </summary>
    public bool Shutdown(TimeSpan timeout)
    {
        lock (_gate)
        {
            if (!_stopping)
            {
                _stopping = true;
                Monitor.Pulse(_gate);
            }
        }
        if (_loop.Join(timeout))
        {
            ReleaseResources();
            return true;
        }
        bool release;
        lock (_gate)
        {
            _abandoned = true;
            release = _loopEnded; // it ended just now, before it could see the flag
        }
        if (release) ReleaseResources();
        _log.LogWarning("The engine's step outlasted the shutdown timeout of {Timeout}; it releases the model when the step ends", timeout);
        return false;
    }

    private void ReleaseResources()
    {
        if (Interlocked.Exchange(ref _released, 1) != 0) return;
        _backend.Dispose();
        _model.Dispose();
    }
}
