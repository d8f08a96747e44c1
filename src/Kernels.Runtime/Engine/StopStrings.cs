// A request's stop strings compiled once into an Aho-Corasick automaton, shared by all its samples: finding them in
// streamed text costs per character, however many stop strings there are.
namespace Kernels.Runtime.Engine;

/// <summary>
/// The trie of the stop strings with failure links (Aho-Corasick). A state is the longest suffix of the text read so
/// far that is a prefix of some stop string; <see cref="LongestMatch"/> says whether a stop string ends there. Built
/// in time and memory linear in the total length of the strings; immutable afterwards, so any number of
/// <see cref="StopStringMatcher"/>s (one per sample) may walk it from any thread.
/// </summary>
internal sealed class StopStrings
{
    public static readonly StopStrings None = new([]);

    // Node 0 is the root. Edges live in one dictionary keyed by (node, char): compact for long, sparse strings.
    private readonly Dictionary<long, int> _edges = new();
    private readonly List<int> _fail = [0];
    private readonly List<int> _depth = [0];
    private readonly List<int> _longest = [0];

    /// <summary>The (non-empty) strings, as given.</summary>
    public IReadOnlyList<string> Strings { get; }
    /// <summary>Length of the longest stop string (0 when there is none).</summary>
    public int MaxLength { get; }
    public bool IsEmpty => Strings.Count == 0;

    public StopStrings(IReadOnlyList<string> stops)
    {
        Strings = stops.Where(s => s.Length > 0).Distinct(StringComparer.Ordinal).ToArray();
        foreach (string s in Strings)
        {
            int node = 0;
            foreach (char c in s)
            {
                if (!_edges.TryGetValue(Key(node, c), out int next))
                {
                    next = _fail.Count;
                    _edges[Key(node, c)] = next;
                    _fail.Add(0);
                    _depth.Add(_depth[node] + 1);
                    _longest.Add(0);
                }
                node = next;
            }
            _longest[node] = s.Length;
            MaxLength = Math.Max(MaxLength, s.Length);
        }
        BuildFailureLinks();
    }

    private static long Key(int node, char c) => ((long)node << 16) | c;

    /// <summary>Breadth-first: a node's failure link is the longest proper suffix of its string that is also in the trie.</summary>
    private void BuildFailureLinks()
    {
        var children = new List<(char C, int Child)>[_fail.Count];
        foreach (var (key, child) in _edges)
            (children[(int)(key >> 16)] ??= []).Add(((char)(key & 0xFFFF), child));
        var queue = new Queue<int>();
        foreach (var (_, child) in children[0] ?? []) queue.Enqueue(child); // depth 1 fails to the root
        while (queue.TryDequeue(out int node))
        {
            // A stop string ending at a suffix of this node's string ends here too.
            if (_longest[node] == 0) _longest[node] = _longest[_fail[node]];
            foreach (var (c, child) in children[node] ?? [])
            {
                int f = _fail[node];
                while (f != 0 && !_edges.ContainsKey(Key(f, c))) f = _fail[f];
                _fail[child] = _edges.TryGetValue(Key(f, c), out int target) && target != child ? target : 0;
                queue.Enqueue(child);
            }
        }
    }

    /// <summary>The state after reading <paramref name="c"/> in <paramref name="node"/>.</summary>
    internal int Next(int node, char c)
    {
        while (true)
        {
            if (_edges.TryGetValue(Key(node, c), out int next)) return next;
            if (node == 0) return 0;
            node = _fail[node];
        }
    }

    /// <summary>Length of the prefix of some stop string that state <paramref name="node"/> stands for.</summary>
    internal int Depth(int node) => _depth[node];

    /// <summary>Length of the longest stop string ending at state <paramref name="node"/>; 0 when none does.</summary>
    internal int LongestMatch(int node) => _longest[node];
}
