// The server's settings, parsed once by `kernels serve` (or set by tests) and passed to ServerApp.Build.
using Microsoft.Extensions.Logging;

namespace Kernels.Server;

public sealed record ServerOptions
{
    /// <summary>Address to listen on: an IP, "localhost", or "0.0.0.0"/"*" for every interface. Loopback by default.</summary>
    public string Host { get; init; } = "127.0.0.1";
    /// <summary>TCP port; 0 picks a free one (read it back with ServerApp.BoundAddress after start).</summary>
    public int Port { get; init; } = 8000;
    /// <summary>When set, every /v1/* request must carry "Authorization: Bearer KEY"; /health and /metrics stay open.</summary>
    public string? ApiKey { get; init; }
    /// <summary>Larger request bodies are refused with 413 before they are read.</summary>
    public long MaxRequestBodyBytes { get; init; } = 4 << 20;
    public LogLevel MinimumLogLevel { get; init; } = LogLevel.Information;
    /// <summary>What one request may ask for (fan-out, stop strings, tokens, headers).</summary>
    public RequestLimits Limits { get; init; } = new();
    /// <summary>
    /// On SIGTERM / SIGINT (or <see cref="ServerShutdown.Begin"/>): how long running requests may go on finishing
    /// while new ones get 503; at the deadline each stream still running ends with an error event and [DONE].
    /// </summary>
    public TimeSpan ShutdownTimeout { get; init; } = TimeSpan.FromSeconds(30);
    /// <summary>
    /// SIGTERM, SIGINT and SIGQUIT start the drain (what `kernels serve` does). Off for servers inside another
    /// process (tests, benchmarks), where the host's own console lifetime keeps handling signals.
    /// </summary>
    public bool DrainOnSignals { get; init; }

    public bool IsLoopbackOnly => Host == "localhost" || (System.Net.IPAddress.TryParse(Host, out var ip) && System.Net.IPAddress.IsLoopback(ip));

    /// <summary>Throws ArgumentException naming the setting when a value is out of range.</summary>
    public void Validate()
    {
        if (Port is < 0 or > 65535) throw new ArgumentException($"--port: must be in 0..65535, got {Port}");
        if (Host is not ("localhost" or "*" or "0.0.0.0") && !System.Net.IPAddress.TryParse(Host, out _))
            throw new ArgumentException($"--host: '{Host}' is not an IP address, localhost, 0.0.0.0 or *");
        if (ApiKey is { Length: 0 }) throw new ArgumentException("--api-key: is empty");
        if (MaxRequestBodyBytes < 1) throw new ArgumentException($"max request body: must be positive, got {MaxRequestBodyBytes}");
        if (ShutdownTimeout < TimeSpan.Zero || ShutdownTimeout > TimeSpan.FromHours(1))
            throw new ArgumentException($"--shutdown-timeout: must be between 0 and 3600 seconds, got {ShutdownTimeout.TotalSeconds}");
        Limits.Validate();
    }
}
