// The router's own counters, as Prometheus text on its GET /metrics.
using System.Globalization;
using System.Text;

namespace Kernels.Router;

public sealed class RouterMetrics
{
    private long _retries, _streamsBroken, _responsesBroken, _unroutable;
    private readonly long[] _decisions = new long[Enum.GetValues<RoutingDecision>().Length];

    /// <summary>Attempts that failed before the replica's first byte and went to another replica.</summary>
    public long Retries => Interlocked.Read(ref _retries);
    /// <summary>Server-sent-event streams whose replica failed midway: they ended with an error event.</summary>
    public long StreamsBroken => Interlocked.Read(ref _streamsBroken);
    /// <summary>Plain (JSON) responses whose replica failed midway: the client's connection was aborted.</summary>
    public long ResponsesBroken => Interlocked.Read(ref _responsesBroken);
    /// <summary>Requests answered 502/503 because no healthy replica (left) could take them.</summary>
    public long Unroutable => Interlocked.Read(ref _unroutable);
    public long Decisions(RoutingDecision why) => Interlocked.Read(ref _decisions[(int)why]);

    internal void Retried() => Interlocked.Increment(ref _retries);
    internal void Decided(RoutingDecision why) => Interlocked.Increment(ref _decisions[(int)why]);
    internal void Unrouted() => Interlocked.Increment(ref _unroutable);

    internal void Finished(RelayOutcome outcome)
    {
        if (outcome == RelayOutcome.StreamBroken) Interlocked.Increment(ref _streamsBroken);
        else if (outcome == RelayOutcome.ResponseBroken) Interlocked.Increment(ref _responsesBroken);
    }

    public string ToPrometheus(IReadOnlyList<Replica> replicas)
    {
        var sb = new StringBuilder();
        void Head(string name, string type, string help) => sb.Append($"# HELP {name} {help}\n# TYPE {name} {type}\n");
        void One(string name, string type, string help, double value)
        {
            Head(name, type, help);
            sb.Append(CultureInfo.InvariantCulture, $"{name} {value}\n");
        }
        void PerReplica(string name, string type, string help, Func<Replica, double> value)
        {
            Head(name, type, help);
            foreach (var r in replicas) sb.Append(CultureInfo.InvariantCulture, $"{name}{{replica=\"{r}\"}} {value(r)}\n");
        }
        PerReplica("kernels_router_replica_healthy", "gauge", "1 while the replica is in rotation.", r => r.Healthy ? 1 : 0);
        PerReplica("kernels_router_replica_in_flight", "gauge", "Requests the router has in flight on the replica.", r => r.InFlight);
        PerReplica("kernels_router_replica_requests_total", "counter", "Attempts sent to the replica.", r => r.Requests);
        One("kernels_router_retries_total", "counter", "Attempts that failed before the replica's first byte, retried on another replica.", Retries);
        One("kernels_router_streams_broken_total", "counter", "Streams whose replica failed midway (ended with an error event).", StreamsBroken);
        One("kernels_router_responses_broken_total", "counter", "Plain responses whose replica failed midway (connection aborted).", ResponsesBroken);
        One("kernels_router_unroutable_total", "counter", "Requests refused because no healthy replica could take them.", Unroutable);
        Head("kernels_router_decisions_total", "counter", "Routing decisions by reason.");
        foreach (var why in Enum.GetValues<RoutingDecision>())
            sb.Append($"kernels_router_decisions_total{{reason=\"{Snake(why)}\"}} {Decisions(why)}\n");
        return sb.ToString();
    }

    private static string Snake(RoutingDecision why) => why switch
    {
        RoutingDecision.PrefixMatch => "prefix_match",
        RoutingDecision.SmallestCache => "smallest_cache",
        RoutingDecision.LeastLoaded => "least_loaded",
        _ => "round_robin",
    };
}
