// The router's guess of what each replica has cached: a radix tree over the text of the prompts it sent to each one
// (SGLang model gateway's approximate tree). The router never sees the replicas' caches; a prompt it sent recently
// to a replica is likely still cached there.
namespace Kernels.Router;

/// <summary>
/// A character-level radix tree whose nodes record, per tenant (replica), when a prompt through that node was last
/// sent there. <see cref="Match"/> finds the tenant with the longest cached prefix of a text; each tenant keeps at most
/// a given number of characters, least recently used leaves forgotten first. Thread-safe (one lock).
/// </summary>
public sealed class PrefixAffinityTree<TTenant> where TTenant : notnull
{
    private sealed class Node(string edge, Node? parent)
    {
        public string Edge = edge;             // the characters from the parent to this node
        public Node? Parent = parent;
        public readonly Dictionary<char, Node> Children = new();
        public readonly Dictionary<TTenant, long> Tenants = new(); // tenant -> last use (the tree's clock)
    }

    private readonly Node _root = new("", null);
    private readonly Dictionary<TTenant, long> _chars = new();
    private readonly int _maxCharsPerTenant;
    private long _clock;

    public PrefixAffinityTree(int maxCharsPerTenant)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(maxCharsPerTenant, 1);
        _maxCharsPerTenant = maxCharsPerTenant;
    }

    /// <summary>Characters of text the tree holds for <paramref name="tenant"/> (0 when unknown).</summary>
    public long Size(TTenant tenant)
    {
        lock (_root) return _chars.GetValueOrDefault(tenant);
    }

    /// <summary>
    /// The longest prefix of <paramref name="text"/> some tenant accepted by <paramref name="eligible"/> holds, and the
    /// most recently used such tenant (default when none holds even one character).
    /// </summary>
    public (TTenant? Tenant, int Matched) Match(string text, Func<TTenant, bool> eligible)
    {
        lock (_root)
        {
            TTenant? best = default;
            int bestLength = 0, depth = 0;
            var node = _root;
            while (depth < text.Length && node.Children.TryGetValue(text[depth], out var child))
            {
                int common = Common(child.Edge, text, depth);
                var holder = MostRecent(child, eligible);
                if (holder is { } h)
                {
                    best = h.Tenant;
                    bestLength = depth + common;
                }
                else break; // deeper nodes are held by a subset of this one's tenants: none eligible there either
                if (common < child.Edge.Length) break;
                depth += common;
                node = child;
            }
            return (best, bestLength);
        }
    }

    /// <summary>Records that <paramref name="text"/> was sent to <paramref name="tenant"/>; evicts its oldest text beyond the limit.</summary>
    public void Insert(string text, TTenant tenant)
    {
        lock (_root)
        {
            long now = ++_clock;
            var node = _root;
            int depth = 0;
            while (depth < text.Length)
            {
                if (!node.Children.TryGetValue(text[depth], out var child))
                {
                    child = new Node(text[depth..], node);
                    node.Children[text[depth]] = child;
                }
                int common = Common(child.Edge, text, depth);
                if (common < child.Edge.Length) child = Split(child, common);
                if (!child.Tenants.ContainsKey(tenant)) _chars[tenant] = _chars.GetValueOrDefault(tenant) + child.Edge.Length;
                child.Tenants[tenant] = now;
                depth += common;
                node = child;
            }
            if (_chars.GetValueOrDefault(tenant) > _maxCharsPerTenant) Evict(tenant);
        }
    }

    /// <summary>Forgets everything about <paramref name="tenant"/> (it left, or came back with an empty cache).</summary>
    public void Remove(TTenant tenant)
    {
        lock (_root)
        {
            void Walk(Node n)
            {
                foreach (var c in n.Children.Values.ToArray())
                {
                    Walk(c);
                    c.Tenants.Remove(tenant);
                    if (c.Tenants.Count == 0 && c.Children.Count == 0) n.Children.Remove(c.Edge[0]);
                }
            }
            Walk(_root);
            _chars.Remove(tenant);
        }
    }

    /// <summary>Drops the tenant's least recently used leaves (nodes it holds with no child it holds) until it fits.</summary>
    private void Evict(TTenant tenant)
    {
        var leaves = new PriorityQueue<Node, long>();
        void Collect(Node n)
        {
            foreach (var c in n.Children.Values)
            {
                if (!c.Tenants.ContainsKey(tenant)) continue;
                if (c.Children.Values.Any(g => g.Tenants.ContainsKey(tenant))) Collect(c);
                else leaves.Enqueue(c, c.Tenants[tenant]);
            }
        }
        Collect(_root);
        while (_chars[tenant] > _maxCharsPerTenant && leaves.TryDequeue(out var leaf, out _))
        {
            leaf.Tenants.Remove(tenant);
            _chars[tenant] -= leaf.Edge.Length;
            var parent = leaf.Parent!;
            if (leaf.Tenants.Count == 0 && leaf.Children.Count == 0) parent.Children.Remove(leaf.Edge[0]);
            if (parent != _root && parent.Tenants.ContainsKey(tenant) && !parent.Children.Values.Any(g => g.Tenants.ContainsKey(tenant)))
                leaves.Enqueue(parent, parent.Tenants[tenant]);
        }
    }

    /// <summary>Cuts <paramref name="node"/>'s edge after <paramref name="at"/> characters; returns the new upper node.</summary>
    private static Node Split(Node node, int at)
    {
        var parent = node.Parent!;
        var upper = new Node(node.Edge[..at], parent);
        foreach (var (t, used) in node.Tenants) upper.Tenants[t] = used; // whoever holds the longer text holds its prefix
        parent.Children[upper.Edge[0]] = upper;
        node.Edge = node.Edge[at..];
        node.Parent = upper;
        upper.Children[node.Edge[0]] = node;
        return upper;
    }

    private static int Common(string edge, string text, int from)
    {
        int n = Math.Min(edge.Length, text.Length - from), i = 0;
        while (i < n && edge[i] == text[from + i]) i++;
        return i;
    }

    private static (TTenant Tenant, long Used)? MostRecent(Node node, Func<TTenant, bool> eligible)
    {
        (TTenant, long)? best = null;
        foreach (var (t, used) in node.Tenants)
            if (eligible(t) && (best == null || used > best.Value.Item2)) best = (t, used);
        return best;
    }
}
