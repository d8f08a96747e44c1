// The replicas behind the router: their health (probed, and marked down the moment a request cannot reach one), the
// requests each has in flight, and joins and leaves at run time.
using Microsoft.Extensions.Logging;

namespace Kernels.Router;

/// <summary>One `kernels serve` (or any OpenAI-compatible server) behind the router.</summary>
public sealed class Replica(Uri address)
{
    private int _inFlight;
    private long _requests;
    private volatile bool _healthy = true;

    public Uri Address { get; } = address;
    /// <summary>Requests sent to it that have not finished (the load the policies compare).</summary>
    public int InFlight => Volatile.Read(ref _inFlight);
    /// <summary>Requests (attempts) sent to it so far.</summary>
    public long Requests => Interlocked.Read(ref _requests);
    public bool Healthy => _healthy;
    /// <summary>Health probes failed in a row (reset by one that answers).</summary>
    internal int ProbeFailures;

    /// <summary>Bumped every time the replica goes down, so a policy can tell a returned replica (empty cache) from the old one.</summary>
    public int Generation { get; private set; }

    internal void Begin()
    {
        Interlocked.Increment(ref _inFlight);
        Interlocked.Increment(ref _requests);
    }

    internal void End() => Interlocked.Decrement(ref _inFlight);

    /// <summary>Sets the health; true when it changed.</summary>
    internal bool SetHealthy(bool healthy)
    {
        lock (this)
        {
            if (_healthy == healthy) return false;
            _healthy = healthy;
            if (!healthy) Generation++;
            return true;
        }
    }

    public override string ToString() => Address.GetLeftPart(UriPartial.Authority);
}

/// <summary>
/// The set of replicas and the health loop: every <see cref="RouterOptions.HealthInterval"/> each replica's GET /health
/// is probed; <see cref="RouterOptions.HealthFailures"/> failed probes in a row, or one request that could not reach it,
/// mark it down (the policy forgets what it cached); the first successful probe readmits it.
/// </summary>
public sealed class ReplicaSet : IAsyncDisposable
{
    private readonly RouterOptions _options;
    private readonly ILogger _log;
    private readonly HttpClient _probe;
    private readonly CancellationTokenSource _stop = new();
    private readonly object _gate = new();
    private List<Replica> _all;
    private Task? _loop;

    /// <summary>A replica went down (true) or came back / joined (false); the policies listen.</summary>
    public event Action<Replica, bool>? Changed;

    public ReplicaSet(RouterOptions options, ILogger log)
    {
        _options = options;
        _log = log;
        _all = options.Workers.Select(w => new Replica(w)).ToList();
        _probe = new HttpClient(new SocketsHttpHandler { UseProxy = false, ConnectTimeout = options.HealthTimeout }) { Timeout = options.HealthTimeout };
    }

    public IReadOnlyList<Replica> All
    {
        get { lock (_gate) return _all; }
    }

    public IReadOnlyList<Replica> Healthy => All.Where(r => r.Healthy).ToList();

    /// <summary>Probes every replica once, then keeps probing in the background.</summary>
    public async Task StartAsync()
    {
        await Task.WhenAll(All.Select(ProbeAsync));
        _loop = Task.Run(LoopAsync);
    }

    private async Task LoopAsync()
    {
        using var timer = new PeriodicTimer(_options.HealthInterval);
        try
        {
            while (await timer.WaitForNextTickAsync(_stop.Token)) await Task.WhenAll(All.Select(ProbeAsync));
        }
        catch (OperationCanceledException) when (_stop.IsCancellationRequested)
        {
        }
    }

    private async Task ProbeAsync(Replica replica)
    {
        bool ok;
        try
        {
            using var response = await _probe.GetAsync(new Uri(replica.Address, "health"), _stop.Token);
            ok = response.IsSuccessStatusCode;
        }
        catch (Exception e) when (e is HttpRequestException or TaskCanceledException or IOException)
        {
            ok = false;
        }
        if (_stop.IsCancellationRequested) return;
        if (ok)
        {
            replica.ProbeFailures = 0;
            MarkUp(replica);
        }
        else if (++replica.ProbeFailures >= _options.HealthFailures)
            MarkDown(replica, $"{replica.ProbeFailures} /health probes in a row failed");
    }

    /// <summary>Takes a replica out of rotation (a probe or a request failed); the next successful probe readmits it.</summary>
    public void MarkDown(Replica replica, string why)
    {
        if (!replica.SetHealthy(false)) return;
        _log.LogWarning("Replica {Replica} is down ({Why}); routing around it", replica, why);
        Changed?.Invoke(replica, true);
    }

    private void MarkUp(Replica replica)
    {
        if (!replica.SetHealthy(true)) return;
        _log.LogInformation("Replica {Replica} is healthy again: readmitted", replica);
        Changed?.Invoke(replica, false);
    }

    /// <summary>Adds a replica (healthy once its first probe answers); false when it is already there.</summary>
    public async Task<bool> AddAsync(Uri address)
    {
        Replica replica;
        lock (_gate)
        {
            if (_all.Any(r => r.Address == address)) return false;
            replica = new Replica(address);
            replica.SetHealthy(false);
            _all = [.. _all, replica];
        }
        _log.LogInformation("Replica {Replica} joined", replica);
        await ProbeAsync(replica);
        return true;
    }

    /// <summary>Removes a replica (requests in flight on it finish); false when it is not there.</summary>
    public bool Remove(Uri address)
    {
        Replica? replica;
        lock (_gate)
        {
            replica = _all.FirstOrDefault(r => r.Address == address);
            if (replica == null) return false;
            _all = _all.Where(r => r != replica).ToList();
        }
        _log.LogInformation("Replica {Replica} left", replica);
        Changed?.Invoke(replica, true);
        return true;
    }

    public async ValueTask DisposeAsync()
    {
        _stop.Cancel();
        if (_loop != null) await _loop;
        _probe.Dispose();
        _stop.Dispose();
    }
}
