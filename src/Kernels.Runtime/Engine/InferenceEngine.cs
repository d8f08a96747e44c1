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
    private sealed class Submission
    {
        public required int Id;
        public required GenerationRequest Request;
        public required int[] Prompt;
        public required Channel<GenerationEvent> Events;
        public required long SubmittedAt;
        public int Remaining;          // samples not finished yet
        public long[] LastTokenAt = []; // per sample, Stopwatch ticks of the last token (for TPOT)
        public long[] FirstTokenAt = [];
        public int[] Tokens = [];
    }

    private readonly LoadedModel _model;
    private readonly IBackend _backend;
    private readonly Scheduler _scheduler;
    private readonly ILogger _log;
    private readonly Thread _loop;
    private readonly object _gate = new();
    private readonly Queue<Submission> _incoming = new();
    private readonly HashSet<int> _cancels = new();
    private readonly Dictionary<int, Submission> _running = new();
    private int _nextId;
    private readonly IKvEventSink? _kvSink;
    private readonly List<KvCacheEvent> _kvEvents = new(); // this step's, published after it
    private bool _stopping;
    private Exception? _fault;

    public string ModelName { get; }
    public ModelConfig Config => _model.Config;
    public ITextTokenizer Tokenizer => _model.Tokenizer;
    public ChatTemplate ChatTemplate { get; }
    public EngineMetrics Metrics { get; } = new();
    public string BackendDescription { get; }

    /// <summary>The KV memory of the engine's backend (blocks in use, capacity, cached prefixes).</summary>
    public KvBlockPool KvPool => _backend.KvPool;

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
    /// Streams the events of every sample of <paramref name="request"/> (Request = 0, Sample = 0..n-1) as they are
    /// generated. Cancellation ends the stream with Cancelled events and frees the request's memory.
    /// </summary>
    public async IAsyncEnumerable<GenerationEvent> GenerateAsync(GenerationRequest request, [EnumeratorCancellation] CancellationToken cancellation = default)
    {
        // A token cancelled before the call never submits (otherwise a short request could finish before the
        // cancellation reached the engine loop, and the caller would get a response instead of the exception).
        cancellation.ThrowIfCancellationRequested();
        var sub = Submit(request);
        using var registration = cancellation.Register(() => Cancel(sub.Id));
        bool completed = false;
        try
        {
            await foreach (var e in sub.Events.Reader.ReadAllAsync(CancellationToken.None).ConfigureAwait(false))
            {
                yield return e with { Request = 0 };
            }
            completed = true;
        }
        finally
        {
            if (!completed) Cancel(sub.Id); // the caller stopped reading: free the request
        }
        if (_fault != null) throw new InvalidOperationException("the engine loop failed", _fault);
    }

    /// <summary>Runs several requests together and returns every sample's result (Request = index in the list).</summary>
    public async Task<IReadOnlyList<GenerationResult>> GenerateAsync(IReadOnlyList<GenerationRequest> requests, CancellationToken cancellation = default)
    {
        var prompts = requests.Select(PromptIds).ToArray();
        var collector = new GenerationResultCollector(prompts);
        await Task.WhenAll(requests.Select(async (r, i) =>
        {
            await foreach (var e in GenerateAsync(r, cancellation).ConfigureAwait(false)) collector.Add(e, request: i);
        })).ConfigureAwait(false);
        return collector.Results;
    }

    private Submission Submit(GenerationRequest request)
    {
        var prompt = _scheduler.PromptIds(request); // validation errors surface in the caller's thread
        var sub = new Submission
        {
            Id = Interlocked.Increment(ref _nextId),
            Request = request,
            Prompt = prompt,
            Events = Channel.CreateUnbounded<GenerationEvent>(new UnboundedChannelOptions { SingleReader = true, SingleWriter = true }),
            SubmittedAt = Stopwatch.GetTimestamp(),
            Remaining = request.N,
            LastTokenAt = new long[request.N],
            FirstTokenAt = new long[request.N],
            Tokens = new int[request.N],
        };
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_stopping, this);
            if (_fault != null) throw new InvalidOperationException("the engine loop failed", _fault);
            _incoming.Enqueue(sub);
            Monitor.Pulse(_gate);
        }
        Metrics.RequestSubmitted();
        Metrics.PromptTokens(prompt.Length);
        return sub;
    }

    private void Cancel(int id)
    {
        lock (_gate)
        {
            _cancels.Add(id);
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
                        _running[sub.Id] = sub;
                        _scheduler.Submit(sub.Id, sub.Request, sub.Prompt);
                    }
                    foreach (int id in _cancels) _scheduler.Cancel(id);
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
                foreach (var sub in _running.Values.Concat(_incoming))
                {
                    for (int n = 0; n < sub.Request.N; n++)
                        sub.Events.Writer.TryWrite(new GenerationEvent(sub.Id, n, null, "", FinishReason.Cancelled, new Usage(sub.Prompt.Length, 0)));
                    sub.Events.Writer.TryComplete(_fault);
                }
                _running.Clear();
                _incoming.Clear();
            }
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
        foreach (var sub in _running.Values)
        {
            sub.Events.Writer.TryComplete(new InvalidOperationException($"generation failed: {error.Message}", error));
            Metrics.RequestFinished(cancelled: false);
        }
        _running.Clear();
    }

    private void Deliver(GenerationEvent e, long now)
    {
        if (!_running.TryGetValue(e.Request, out var sub)) return;
        if (e.Token != null)
        {
            Metrics.TokenGenerated();
            long last = sub.LastTokenAt[e.Sample];
            if (last == 0)
            {
                double ttft = Stopwatch.GetElapsedTime(sub.SubmittedAt, now).TotalSeconds;
                Metrics.TimeToFirstToken.Observe(ttft);
                Metrics.VllmTimeToFirstToken.Observe(ttft);
                sub.FirstTokenAt[e.Sample] = now;
            }
            else
            {
                double gap = Stopwatch.GetElapsedTime(last, now).TotalSeconds;
                Metrics.TimePerOutputToken.Observe(gap);
                Metrics.InterTokenLatency.Observe(gap);
            }
            sub.LastTokenAt[e.Sample] = now;
            sub.Tokens[e.Sample]++;
        }
        sub.Events.Writer.TryWrite(e);
        if (e.Finish is { } finish)
        {
            Metrics.SampleFinished(finish);
            if (sub.Tokens[e.Sample] > 1)
                Metrics.RequestTimePerOutputToken.Observe(Stopwatch.GetElapsedTime(sub.FirstTokenAt[e.Sample], sub.LastTokenAt[e.Sample]).TotalSeconds / (sub.Tokens[e.Sample] - 1));
        }
        if (e.Finish != null && --sub.Remaining == 0)
        {
            sub.Events.Writer.TryComplete();
            _running.Remove(sub.Id);
            Metrics.RequestFinished(e.Finish == FinishReason.Cancelled);
            Metrics.EndToEndLatency.Observe(Stopwatch.GetElapsedTime(sub.SubmittedAt, now).TotalSeconds);
        }
    }

    public void Dispose()
    {
        lock (_gate)
        {
            if (_stopping) return;
            _stopping = true;
            Monitor.Pulse(_gate);
        }
        _loop.Join();
        _backend.Dispose();
        _model.Dispose();
    }
}
