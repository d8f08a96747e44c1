// Graceful shutdown: on SIGTERM / SIGINT stop admitting (503 with a body), let the requests in flight finish up to a
// deadline, then end each stream still running with an error event and [DONE]; log what happened to every request.
using System.Collections.Concurrent;
using System.Diagnostics;
using System.Runtime.InteropServices;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace Kernels.Server;

/// <summary>What became of a request the server was running when it shut down (or that arrived during it).</summary>
public enum RequestOutcome
{
    Completed,
    ClientDisconnected,
    /// <summary>Still running at the shutdown deadline: ended with an error event and [DONE] (503 when nothing was sent yet).</summary>
    CutOffAtDeadline,
    Failed,
}

/// <summary>
/// The server's shutdown state, one per app. <see cref="Begin"/> (a signal, or the host stopping) starts draining:
/// <see cref="IsDraining"/> turns new /v1 requests and /health into 503s, the requests in flight go on, and when the
/// last one ends (or at <see cref="ServerOptions.ShutdownTimeout"/>, when <see cref="Deadline"/> is cancelled and each
/// handler ends its response at once) the application stops. A second signal cuts off at once.
/// </summary>
public sealed class ServerShutdown
{
    /// <summary>A request in flight; its handler counts tokens into it and reports the outcome once.</summary>
    public sealed class InFlight(string id, string route, bool stream)
    {
        public string Id { get; } = id;
        public string Route { get; } = route;
        public bool Stream { get; } = stream;
        public int Tokens;
    }

    private readonly TimeSpan _timeout;
    private readonly ILogger _log;
    private readonly IHostApplicationLifetime _lifetime;
    private readonly CancellationTokenSource _deadline = new();
    private readonly ConcurrentDictionary<InFlight, byte> _inFlight = new();
    private int _draining;
    private long _began;
    private int _completed, _cutOff, _disconnected, _failed, _refused;

    public ServerShutdown(ServerOptions options, ILoggerFactory logging, IHostApplicationLifetime lifetime)
    {
        _timeout = options.ShutdownTimeout;
        _log = logging.CreateLogger("Kernels.Server.Shutdown");
        _lifetime = lifetime;
        // The host stopping for another reason (StopAsync from code) drains too; Kestrel then waits for the handlers.
        lifetime.ApplicationStopping.Register(() => Begin("the host is stopping"));
    }

    public bool IsDraining => Volatile.Read(ref _draining) != 0;

    /// <summary>Cancelled when the drain time is up: every handler still running ends its response now.</summary>
    public CancellationToken Deadline => _deadline.Token;

    /// <summary>Time left before the deadline (zero when not draining or past it); what the engine may still take to stop.</summary>
    public TimeSpan Remaining => IsDraining ? TimeSpan.FromTicks(Math.Max(0, (_timeout - Stopwatch.GetElapsedTime(Volatile.Read(ref _began))).Ticks)) : _timeout;

    public int InFlightCount => _inFlight.Count;

    public InFlight Track(string id, string route, bool stream)
    {
        var request = new InFlight(id, route, stream);
        _inFlight.TryAdd(request, 0);
        return request;
    }

    /// <summary>Records how a tracked request ended; during a shutdown, logs it.</summary>
    public void Finish(InFlight request, RequestOutcome outcome)
    {
        if (!_inFlight.TryRemove(request, out _) || !IsDraining) return;
        switch (outcome)
        {
            case RequestOutcome.Completed: Interlocked.Increment(ref _completed); break;
            case RequestOutcome.CutOffAtDeadline: Interlocked.Increment(ref _cutOff); break;
            case RequestOutcome.ClientDisconnected: Interlocked.Increment(ref _disconnected); break;
            default: Interlocked.Increment(ref _failed); break;
        }
        string what = outcome switch
        {
            RequestOutcome.Completed => "completed during the shutdown",
            RequestOutcome.CutOffAtDeadline => request.Stream ? "cut off at the shutdown deadline: error event and [DONE] sent" : "cut off at the shutdown deadline: 503 sent",
            RequestOutcome.ClientDisconnected => "ended by its client during the shutdown",
            _ => "failed during the shutdown",
        };
        _log.LogInformation("{RequestId} {Route} {Outcome} after {Tokens} tokens", request.Id, request.Route, what, request.Tokens);
    }

    /// <summary>A request that arrived while draining and was answered 503.</summary>
    public void Refused(string method, string path)
    {
        Interlocked.Increment(ref _refused);
        _log.LogInformation("Refused {Method} {Path} with 503: the server is shutting down", method, path);
    }

    /// <summary>Starts draining (once); a second call ends the drain at once.</summary>
    public void Begin(string reason)
    {
        if (Interlocked.Exchange(ref _draining, 1) != 0)
        {
            if (reason != "the host is stopping" && !_deadline.IsCancellationRequested)
            {
                _log.LogWarning("{Reason} again: ending the {Count} request(s) still running now", reason, _inFlight.Count);
                _deadline.Cancel();
            }
            return;
        }
        Volatile.Write(ref _began, Stopwatch.GetTimestamp());
        _log.LogInformation("{Reason}: shutting down; {Count} request(s) in flight may run for up to {Timeout:F0} s, new requests get 503",
            reason, _inFlight.Count, _timeout.TotalSeconds);
        _ = Task.Run(DrainAsync);
    }

    private async Task DrainAsync()
    {
        try
        {
            var clock = Stopwatch.StartNew();
            var cutOff = _timeout - Reserve(_timeout);
            while (!_inFlight.IsEmpty && clock.Elapsed < cutOff && !_deadline.IsCancellationRequested)
                await Task.Delay(TimeSpan.FromMilliseconds(20)).ConfigureAwait(false);
            if (!_inFlight.IsEmpty)
            {
                _log.LogInformation("Shutdown deadline: ending the {Count} request(s) still running", _inFlight.Count);
                _deadline.Cancel();
                // Handlers end their responses at once; give slow clients half the reserve to take the last bytes.
                var grace = Stopwatch.StartNew();
                while (!_inFlight.IsEmpty && grace.Elapsed < Reserve(_timeout) / 2) await Task.Delay(TimeSpan.FromMilliseconds(10)).ConfigureAwait(false);
            }
            _log.LogInformation("Shutdown: {Completed} request(s) completed, {CutOff} cut off at the deadline, {Disconnected} ended by their clients, " +
                                "{Failed} failed, {Refused} refused with 503, {Left} still open; stopping after {Elapsed:F1} s",
                _completed, _cutOff, _disconnected, _failed, _refused, _inFlight.Count, clock.Elapsed.TotalSeconds);
        }
        finally
        {
            _lifetime.StopApplication();
        }
    }

    /// <summary>
    /// The part of the shutdown timeout kept for ending: streams are cut off at timeout - reserve, handlers then have
    /// half of it to write their last bytes, the rest stops the host and the engine, so the process ends within the
    /// timeout. min(timeout / 4, 1.5 s).
    /// </summary>
    public static TimeSpan Reserve(TimeSpan timeout) => TimeSpan.FromTicks(Math.Min(timeout.Ticks / 4, TimeSpan.FromSeconds(1.5).Ticks));
}

/// <summary>
/// The host's lifetime for `kernels serve`: SIGTERM, SIGINT (Ctrl+C) and SIGQUIT start <see cref="ServerShutdown"/>'s
/// drain instead of stopping the host at once (ASP.NET's console lifetime would close the listener and reset the
/// streams after its own 30 s); the drain stops the host when it is done.
/// </summary>
internal sealed class SignalLifetime(ServerShutdown shutdown, ILoggerFactory logging) : IHostLifetime, IDisposable
{
    private readonly List<PosixSignalRegistration> _registrations = new();

    public Task WaitForStartAsync(CancellationToken cancellationToken)
    {
        foreach (var signal in new[] { PosixSignal.SIGTERM, PosixSignal.SIGINT, PosixSignal.SIGQUIT })
        {
            _registrations.Add(PosixSignalRegistration.Create(signal, context =>
            {
                context.Cancel = true; // the drain decides when the process ends
                shutdown.Begin(context.Signal.ToString());
            }));
        }
        logging.CreateLogger("Kernels.Server.Shutdown").LogDebug("SIGTERM, SIGINT and SIGQUIT drain the server");
        return Task.CompletedTask;
    }

    public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public void Dispose()
    {
        foreach (var r in _registrations) r.Dispose();
        _registrations.Clear();
    }
}
