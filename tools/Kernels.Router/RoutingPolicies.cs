// Which replica gets a request: cache-aware (prefix affinity with a least-loaded fallback, after the SGLang model
// gateway's cache_aware policy) or round-robin (the baseline).
namespace Kernels.Router;

/// <summary>Why a replica was chosen (counted in the router's metrics).</summary>
public enum RoutingDecision
{
    PrefixMatch,
    SmallestCache,
    LeastLoaded,
    RoundRobin,
}

public interface IRoutingPolicy
{
    /// <summary>Picks one of <paramref name="candidates"/> (non-empty, healthy, not yet tried for this request) for a prompt.</summary>
    (Replica Replica, RoutingDecision Why) Pick(string promptText, IReadOnlyList<Replica> candidates);

    /// <summary>A replica went down or left (forget its cache) or came back (it starts empty).</summary>
    void ReplicaChanged(Replica replica, bool down);
}

public sealed class RoundRobinPolicy : IRoutingPolicy
{
    private long _next = -1;

    public (Replica Replica, RoutingDecision Why) Pick(string promptText, IReadOnlyList<Replica> candidates) =>
        (candidates[(int)((ulong)Interlocked.Increment(ref _next) % (ulong)candidates.Count)], RoutingDecision.RoundRobin);

    public void ReplicaChanged(Replica replica, bool down) { }
}

/// <summary>
/// If the loads diverge (max - min in-flight requests above the absolute threshold and max above min times the relative
/// one), the least loaded replica gets the request. Otherwise the replica holding the longest prefix of the prompt in
/// the approximate tree gets it when that prefix covers at least the cache threshold of the prompt; failing that, the
/// replica with the least text in the tree (the most room). Either way the prompt is recorded for the chosen replica.
/// A replica that goes down is forgotten; one that returns starts empty, so its old prefixes do not attract traffic.
/// </summary>
public sealed class CacheAwarePolicy(RouterOptions options) : IRoutingPolicy
{
    private readonly PrefixAffinityTree<Replica> _tree = new(options.MaxTreeChars);

    public (Replica Replica, RoutingDecision Why) Pick(string promptText, IReadOnlyList<Replica> candidates)
    {
        var byLoad = candidates.OrderBy(r => r.InFlight).ThenBy(r => r.Address.ToString(), StringComparer.Ordinal).ToList();
        int min = byLoad[0].InFlight, max = byLoad[^1].InFlight;
        (Replica, RoutingDecision) choice;
        if (max - min > options.BalanceAbsThreshold && max > min * options.BalanceRelThreshold)
            choice = (byLoad[0], RoutingDecision.LeastLoaded);
        else
        {
            var set = candidates.ToHashSet();
            var (holder, matched) = _tree.Match(promptText, set.Contains);
            if (holder != null && promptText.Length > 0 && (double)matched / promptText.Length >= options.CacheThreshold)
                choice = (holder, RoutingDecision.PrefixMatch);
            else
                choice = (candidates.OrderBy(_tree.Size).ThenBy(r => r.InFlight).ThenBy(r => r.Address.ToString(), StringComparer.Ordinal).First(), RoutingDecision.SmallestCache);
        }
        _tree.Insert(promptText, choice.Item1);
        return choice;
    }

    public void ReplicaChanged(Replica replica, bool down) => _tree.Remove(replica);

    /// <summary>Characters of prompt text the tree attributes to a replica (tests, metrics).</summary>
    public long CachedChars(Replica replica) => _tree.Size(replica);
}
