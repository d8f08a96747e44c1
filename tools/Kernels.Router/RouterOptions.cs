// The router's settings, parsed once by `kernels route` (or set by tests and the bench) and passed to RouterApp.Build.
using Microsoft.Extensions.Logging;

namespace Kernels.Router;

public enum RoutingPolicyKind
{
    /// <summary>Prompts that share a prefix go where that prefix went before, unless loads diverge (SGLang's cache_aware).</summary>
    CacheAware,
    /// <summary>Each request to the next healthy replica in turn (the baseline).</summary>
    RoundRobin,
}

public sealed record RouterOptions
{
    /// <summary>Base addresses of the replicas (http://host:port); more can join at run time (POST /add_worker).</summary>
    public IReadOnlyList<Uri> Workers { get; init; } = [];
    public RoutingPolicyKind Policy { get; init; } = RoutingPolicyKind.CacheAware;
    public string Host { get; init; } = "127.0.0.1";
    /// <summary>TCP port; 0 picks a free one.</summary>
    public int Port { get; init; } = 8080;

    /// <summary>A prefix match covering at least this share of the prompt routes to its replica (SGLang's --cache-threshold).</summary>
    public double CacheThreshold { get; init; } = 0.3;
    /// <summary>Loads diverge when max - min exceeds this many requests in flight ... (SGLang's --balance-abs-threshold)</summary>
    public int BalanceAbsThreshold { get; init; } = 64;
    /// <summary>... and max exceeds min times this (SGLang's --balance-rel-threshold); then the least loaded replica gets the request.</summary>
    public double BalanceRelThreshold { get; init; } = 1.5;
    /// <summary>Characters of prompt text the approximate tree keeps per replica before it forgets the least recently used.</summary>
    public int MaxTreeChars { get; init; } = 1 << 24;

    /// <summary>How often each replica's GET /health is probed (a dead one is readmitted by the first probe that succeeds).</summary>
    public TimeSpan HealthInterval { get; init; } = TimeSpan.FromSeconds(1);
    public TimeSpan HealthTimeout { get; init; } = TimeSpan.FromSeconds(2);
    /// <summary>Consecutive failed probes that take a replica out (a busy replica may miss one); a request that cannot reach it takes it out at once.</summary>
    public int HealthFailures { get; init; } = 3;
    /// <summary>Most replicas one request is sent to when the earlier ones fail before answering a byte.</summary>
    public int MaxAttempts { get; init; } = 3;
    /// <summary>Longest silence from a replica while it answers (a non-streamed completion is silent until it is done).</summary>
    public TimeSpan ActivityTimeout { get; init; } = TimeSpan.FromMinutes(10);
    public long MaxRequestBodyBytes { get; init; } = 4 << 20;
    public LogLevel MinimumLogLevel { get; init; } = LogLevel.Information;

    /// <summary>Throws ArgumentException naming the option when a value is out of range.</summary>
    public void Validate()
    {
        if (Workers.Count == 0) throw new ArgumentException("--worker-urls: give at least one replica address (http://host:port)");
        foreach (var w in Workers) CheckWorker(w);
        if (Workers.Distinct().Count() != Workers.Count) throw new ArgumentException("--worker-urls: an address is listed twice");
        if (Port is < 0 or > 65535) throw new ArgumentException($"--port: must be in 0..65535, got {Port}");
        if (Host is not ("localhost" or "*" or "0.0.0.0") && !System.Net.IPAddress.TryParse(Host, out _))
            throw new ArgumentException($"--host: '{Host}' is not an IP address, localhost, 0.0.0.0 or *");
        if (CacheThreshold is < 0 or > 1) throw new ArgumentException($"--cache-threshold: must be in 0..1, got {CacheThreshold}");
        if (BalanceAbsThreshold < 0) throw new ArgumentException($"--balance-abs-threshold: must be >= 0, got {BalanceAbsThreshold}");
        if (BalanceRelThreshold < 1) throw new ArgumentException($"--balance-rel-threshold: must be >= 1, got {BalanceRelThreshold}");
        if (MaxTreeChars < 1) throw new ArgumentException($"--max-tree-chars: must be positive, got {MaxTreeChars}");
        if (HealthInterval <= TimeSpan.Zero) throw new ArgumentException($"--health-interval-ms: must be positive, got {HealthInterval.TotalMilliseconds}");
        if (HealthFailures < 1) throw new ArgumentException($"--health-failures: must be at least 1, got {HealthFailures}");
        if (MaxAttempts < 1) throw new ArgumentException($"--max-attempts: must be at least 1, got {MaxAttempts}");
    }

    /// <summary>A replica address must be absolute http(s) with no path, query or fragment.</summary>
    public static void CheckWorker(Uri worker)
    {
        if (!worker.IsAbsoluteUri || worker.Scheme is not ("http" or "https") || worker.AbsolutePath != "/" || worker.Query.Length > 0 || worker.Fragment.Length > 0)
            throw new ArgumentException($"--worker-urls: '{worker}' is not a replica base address like http://127.0.0.1:8000");
    }

    /// <summary>Parses "http://host:port" (a trailing slash allowed) or throws ArgumentException naming it.</summary>
    public static Uri ParseWorker(string text)
    {
        if (!Uri.TryCreate(text.Trim(), UriKind.Absolute, out var uri))
            throw new ArgumentException($"--worker-urls: '{text}' is not a URL like http://127.0.0.1:8000");
        CheckWorker(uri);
        return new Uri(uri.GetLeftPart(UriPartial.Authority) + "/");
    }
}
