// Finds stop strings in one sample's streamed text, holding back any tail that could still grow into one.
namespace Kernels.Runtime.Engine;

/// <summary>
/// One sample's position in its request's <see cref="StopStrings"/> automaton plus the text it holds back. The text
/// held back is exactly the automaton state's string (the longest tail that may still become a stop string), so a
/// push costs time in proportion to the new text, whatever the number of stop strings.
/// </summary>
internal sealed class StopStringMatcher
{
    private readonly StopStrings _stops;
    private int _node;
    private string _pending = "";

    public StopStringMatcher(StopStrings stops)
    {
        _stops = stops;
    }

    /// <summary>A matcher with its own automaton (callers with many samples share one <see cref="StopStrings"/>).</summary>
    public StopStringMatcher(IReadOnlyList<string> stops) : this(new StopStrings(stops))
    {
    }

    /// <summary>
    /// Adds text; returns what can be released now and whether a stop string was found. On a find, the text before
    /// the earliest-starting occurrence of any stop string is released and everything from it on is dropped.
    /// </summary>
    public (string Release, bool Stopped) Push(string text)
    {
        if (_stops.IsEmpty)
        {
            var all = _pending + text;
            _pending = "";
            return (all, false);
        }
        string pending = _pending + text;
        int node = _node, best = int.MaxValue;
        for (int i = _pending.Length; i < pending.Length; i++)
        {
            // A match ending at i starts at i - length + 1 or later; once that cannot beat the best start, stop.
            if (best != int.MaxValue && i - _stops.MaxLength + 1 >= best) break;
            node = _stops.Next(node, pending[i]);
            int length = _stops.LongestMatch(node);
            if (length > 0) best = Math.Min(best, i - length + 1);
        }
        if (best != int.MaxValue)
        {
            _node = 0;
            _pending = "";
            return (pending[..best], true);
        }
        _node = node;
        int hold = _stops.Depth(node);
        _pending = pending[^hold..];
        return (pending[..^hold], false);
    }

    /// <summary>Releases what was held back (the sequence ended without completing a stop string).</summary>
    public string Flush()
    {
        var rest = _pending;
        _pending = "";
        _node = 0;
        return rest;
    }
}
