// The engine's state under vLLM's metric names, label sets and histogram buckets (vllm/v1/metrics/loggers.py), so
// routers and dashboards built for vLLM (the Gateway API Inference Extension's endpoint picker, llm-d, the SGLang
// model gateway, vLLM's production stack) read a replica of ours without configuration.
using System.Globalization;
using System.Text;

namespace Kernels.Runtime.Engine;

/// <summary>What vllm:cache_config_info reports: tokens per KV block, blocks in the pool, whether prefixes are cached.</summary>
public sealed record KvCacheInfo(int BlockSize, int Blocks, bool PrefixCaching);

public sealed partial class EngineMetrics
{
    /// <summary>vLLM's buckets for vllm:time_to_first_token_seconds.</summary>
    public static IReadOnlyList<double> VllmTtftBuckets { get; } =
        [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0];
    /// <summary>vLLM's buckets for inter-token latency and time per output token.</summary>
    public static IReadOnlyList<double> VllmTokenLatencyBuckets { get; } =
        [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0];
    /// <summary>vLLM's buckets for whole-request latencies (end to end).</summary>
    public static IReadOnlyList<double> VllmRequestLatencyBuckets { get; } =
        [0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0];

    private long _prefixQueries, _prefixHits, _finishedStop, _finishedLength, _finishedAbort;
    private double _kvUsage;

    /// <summary>Requests submitted and not yet running (vllm:num_requests_waiting).</summary>
    public int RequestsWaiting { get; internal set; }
    /// <summary>Requests with a sequence being prefilled or decoded (vllm:num_requests_running).</summary>
    public int RequestsRunning { get; internal set; }
    /// <summary>Share of the KV budget sequences hold, 0..1; cached prefixes nobody uses count as free (vllm:kv_cache_usage_perc).</summary>
    public double KvCacheUsage { get => Volatile.Read(ref _kvUsage); internal set => Volatile.Write(ref _kvUsage, value); }
    /// <summary>Prompt tokens looked up in the prefix cache at admission (vllm:prefix_cache_queries).</summary>
    public long PrefixCacheQueries { get => Interlocked.Read(ref _prefixQueries); internal set => Interlocked.Exchange(ref _prefixQueries, value); }
    /// <summary>Of those, tokens found cached (vllm:prefix_cache_hits).</summary>
    public long PrefixCacheHits { get => Interlocked.Read(ref _prefixHits); internal set => Interlocked.Exchange(ref _prefixHits, value); }

    /// <summary>Seconds from submission to the first token, in vLLM's buckets.</summary>
    public Histogram VllmTimeToFirstToken { get; } = new([.. VllmTtftBuckets]);
    /// <summary>Seconds between consecutive tokens of a sample, in vLLM's buckets.</summary>
    public Histogram InterTokenLatency { get; } = new([.. VllmTokenLatencyBuckets]);
    /// <summary>Per finished sample: (last token - first token) / (tokens - 1), in vLLM's buckets.</summary>
    public Histogram RequestTimePerOutputToken { get; } = new([.. VllmTokenLatencyBuckets]);
    /// <summary>Seconds from submission to the last sample's end, in vLLM's buckets.</summary>
    public Histogram EndToEndLatency { get; } = new([.. VllmRequestLatencyBuckets]);

    /// <summary>Samples finished per reason, as vLLM's finished_reason label names them (stop, length, abort).</summary>
    public long FinishedSamples(FinishReason reason) => reason switch
    {
        FinishReason.EndOfSequence or FinishReason.Stop => Interlocked.Read(ref _finishedStop),
        FinishReason.Length => Interlocked.Read(ref _finishedLength),
        _ => Interlocked.Read(ref _finishedAbort),
    };

    internal void SampleFinished(FinishReason reason)
    {
        switch (reason)
        {
            case FinishReason.EndOfSequence or FinishReason.Stop: Interlocked.Increment(ref _finishedStop); break;
            case FinishReason.Length: Interlocked.Increment(ref _finishedLength); break;
            default: Interlocked.Increment(ref _finishedAbort); break;
        }
    }

    /// <summary>
    /// Prometheus text (0.0.4) under vLLM's names. Every series carries vLLM's labels model_name and engine ("0": one
    /// engine per server); counters end in _total as prometheus_client writes them.
    /// </summary>
    public string ToVllmPrometheus(string modelName, KvCacheInfo cache)
    {
        var sb = new StringBuilder();
        string labels = $"model_name=\"{Escape(modelName)}\",engine=\"0\"";
        void Head(string name, string type, string help) => sb.Append($"# HELP {name} {help}\n# TYPE {name} {type}\n");
        void Series(string name, string type, string help, double value)
        {
            Head(name, type, help);
            sb.Append(CultureInfo.InvariantCulture, $"{name}{{{labels}}} {value:R}\n");
        }
        void Hist(string name, string help, Histogram h)
        {
            Head(name, "histogram", help);
            h.Write(sb, name, labels);
        }

        Series("vllm:num_requests_running", "gauge", "Number of requests in model execution batches.", RequestsRunning);
        Series("vllm:num_requests_waiting", "gauge", "Number of requests waiting to be processed.", RequestsWaiting);
        Series("vllm:kv_cache_usage_perc", "gauge", "KV-cache usage. 1 means 100 percent usage.", KvCacheUsage);
        Series("vllm:prefix_cache_queries_total", "counter", "Prefix cache queries, in terms of number of queried tokens.", PrefixCacheQueries);
        Series("vllm:prefix_cache_hits_total", "counter", "Prefix cache hits, in terms of number of cached tokens.", PrefixCacheHits);
        Series("vllm:num_preemptions_total", "counter", "Cumulative number of preemption from the engine.", Preemptions);
        Series("vllm:prompt_tokens_total", "counter", "Number of prefill tokens processed.", PromptTokensTotal);
        Series("vllm:generation_tokens_total", "counter", "Number of generation tokens processed.", GeneratedTokensTotal);
        Head("vllm:request_success_total", "counter", "Count of successfully processed requests.");
        foreach (var (reason, kind) in new[] { ("stop", FinishReason.Stop), ("length", FinishReason.Length), ("abort", FinishReason.Cancelled) })
            sb.Append($"vllm:request_success_total{{{labels},finished_reason=\"{reason}\"}} {FinishedSamples(kind)}\n");
        Head("vllm:cache_config_info", "gauge", "Information of the LLMEngine CacheConfig");
        sb.Append($"vllm:cache_config_info{{block_size=\"{cache.BlockSize}\",enable_prefix_caching=\"{(cache.PrefixCaching ? "True" : "False")}\",engine=\"0\"," +
                  $"num_gpu_blocks=\"{cache.Blocks}\",prefix_caching_hash_algo=\"sha256_cbor\"}} 1.0\n");
        Hist("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", VllmTimeToFirstToken);
        Hist("vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.", InterTokenLatency);
        // The name before vLLM 0.11 (same observations): older dashboards and routers still read it.
        Hist("vllm:time_per_output_token_seconds", "Histogram of time per output token in seconds.", InterTokenLatency);
        Hist("vllm:request_time_per_output_token_seconds", "Histogram of time_per_output_token_seconds per request.", RequestTimePerOutputToken);
        Hist("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", EndToEndLatency);
        return sb.ToString();
    }

    private static string Escape(string label) => label.Replace("\\", "\\\\").Replace("\"", "\\\"").Replace("\n", "\\n");
}
