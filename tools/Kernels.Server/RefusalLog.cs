// Log lines for refused requests, at most a few a second: a client sending bad requests back to back must not turn
// the log into the server's busiest work (every line is formatted and written to the console).
using System.Diagnostics;

namespace Kernels.Server;

internal sealed class RefusalLog(int perSecond = 20)
{
    private readonly object _gate = new();
    private long _windowStart = Stopwatch.GetTimestamp();
    private int _inWindow;
    private int _suppressed;

    /// <summary>
    /// Whether this refusal may be logged now; <paramref name="suppressed"/> is then how many were left out since the
    /// last logged one (the caller puts it in its line).
    /// </summary>
    public bool TryLog(out int suppressed)
    {
        lock (_gate)
        {
            long now = Stopwatch.GetTimestamp();
            if (Stopwatch.GetElapsedTime(_windowStart, now) >= TimeSpan.FromSeconds(1))
            {
                _windowStart = now;
                _inWindow = 0;
            }
            if (_inWindow < perSecond)
            {
                _inWindow++;
                suppressed = _suppressed;
                _suppressed = 0;
                return true;
            }
            _suppressed++;
            suppressed = 0;
            return false;
        }
    }
}
