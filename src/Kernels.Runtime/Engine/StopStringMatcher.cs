// Finds stop strings in streamed text, holding back any tail that could still grow into one.
namespace Kernels.Runtime.Engine;

public sealed class StopStringMatcher
{
    private readonly IReadOnlyList<string> _stops;
    private string _pending = "";

    public StopStringMatcher(IReadOnlyList<string> stops)
    {
        _stops = stops.Where(s => s.Length > 0).ToArray();
    }

    /// <summary>
    /// Adds text; returns what can be released now and whether a stop string was found (text after it is dropped).
    /// </summary>
    public (string Release, bool Stopped) Push(string text)
    {
        _pending += text;
        if (_stops.Count == 0)
        {
            var all = _pending;
            _pending = "";
            return (all, false);
        }
        int first = -1;
        foreach (var s in _stops)
        {
            int i = _pending.IndexOf(s, StringComparison.Ordinal);
            if (i >= 0 && (first < 0 || i < first)) first = i;
        }
        if (first >= 0)
        {
            var before = _pending[..first];
            _pending = "";
            return (before, true);
        }
        // Hold back the longest suffix that is a proper prefix of some stop string.
        int hold = 0;
        foreach (var s in _stops)
            for (int len = Math.Min(s.Length - 1, _pending.Length); len > hold; len--)
                if (_pending.AsSpan(_pending.Length - len).SequenceEqual(s.AsSpan(0, len))) { hold = len; break; }
        var release = _pending[..^hold];
        _pending = _pending[^hold..];
        return (release, false);
    }

    /// <summary>Releases what was held back (the sequence ended without completing a stop string).</summary>
    public string Flush()
    {
        var rest = _pending;
        _pending = "";
        return rest;
    }
}
