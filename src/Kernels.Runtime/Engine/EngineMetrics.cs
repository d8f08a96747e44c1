// Counters and latency histograms of an InferenceEngine, readable at any time and printable as Prometheus text.
using System.Globalization;
using System.Text;

namespace Kernels.Runtime.Engine;

public sealed partial class EngineMetrics
{
    /// <summary>A cumulative histogram (Prometheus semantics): counts of observations at or below each bound.</summary>
    public sealed class Histogram(params double[] bounds)
    {
        private readonly long[] _counts = new long[bounds.Length + 1];
        private double _sum;
        private long _count;

        public IReadOnlyList<double> Bounds => bounds;
        public long Count { get { lock (_counts) return _count; } }
        public double Sum { get { lock (_counts) return _sum; } }

        public void Observe(double value)
        {
            lock (_counts)
            {
                int i = 0;
                while (i < bounds.Length && value > bounds[i]) i++;
                _counts[i]++;
                _sum += value;
                _count++;
            }
        }

        /// <summary>Writes the series; <paramref name="labels"/> (e.g. <c>model_name="m",engine="0"</c>) go on every line.</summary>
        internal void Write(StringBuilder sb, string name, string labels = "")
        {
            string prefix = labels.Length == 0 ? "" : labels + ",";
            string own = labels.Length == 0 ? "" : "{" + labels + "}";
            lock (_counts)
            {
                long cumulative = 0;
                for (int i = 0; i < bounds.Length; i++)
                {
                    cumulative += _counts[i];
                    sb.Append(CultureInfo.InvariantCulture, $"{name}_bucket{{{prefix}le=\"{bounds[i]:G}\"}} {cumulative}\n");
                }
                sb.Append(CultureInfo.InvariantCulture, $"{name}_bucket{{{prefix}le=\"+Inf\"}} {_count}\n{name}_sum{own} {_sum:G}\n{name}_count{own} {_count}\n");
            }
        }

    }

    private long _requests, _finished, _cancelled, _promptTokens, _generatedTokens, _preemptions;

    public long RequestsTotal => Interlocked.Read(ref _requests);
    public long RequestsFinished => Interlocked.Read(ref _finished);
    public long RequestsCancelled => Interlocked.Read(ref _cancelled);
    public long PromptTokensTotal => Interlocked.Read(ref _promptTokens);
    public long GeneratedTokensTotal => Interlocked.Read(ref _generatedTokens);
    /// <summary>Sequences whose KV blocks were taken back (to be recomputed) because memory ran out.</summary>
    public long Preemptions => Interlocked.Read(ref _preemptions);
    public int QueueLength { get; internal set; }
    public int RunningSequences { get; internal set; }
    public int KvBlocksUsed { get; internal set; }
    public int KvBlocksTotal { get; internal set; }

    /// <summary>Seconds from submission to the first token.</summary>
    public Histogram TimeToFirstToken { get; } = new(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30);
    /// <summary>Seconds per output token after the first.</summary>
    public Histogram TimePerOutputToken { get; } = new(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1);

    internal void RequestSubmitted() => Interlocked.Increment(ref _requests);
    internal void RequestFinished(bool cancelled)
    {
        Interlocked.Increment(ref _finished);
        if (cancelled) Interlocked.Increment(ref _cancelled);
    }
    internal void PromptTokens(int n) => Interlocked.Add(ref _promptTokens, n);
    internal void TokenGenerated() => Interlocked.Increment(ref _generatedTokens);
    internal void Preempted(int sequences) => Interlocked.Add(ref _preemptions, sequences);

    /// <summary>Prometheus text exposition format (version 0.0.4).</summary>
    public string ToPrometheus(string prefix = "kernels")
    {
        var sb = new StringBuilder();
        void Metric(string name, string type, string help, double value)
        {
            sb.Append($"# HELP {prefix}_{name} {help}\n# TYPE {prefix}_{name} {type}\n");
            sb.Append(CultureInfo.InvariantCulture, $"{prefix}_{name} {value:G}\n");
        }
        Metric("requests_total", "counter", "Requests submitted.", RequestsTotal);
        Metric("requests_finished_total", "counter", "Requests finished (any reason).", RequestsFinished);
        Metric("requests_cancelled_total", "counter", "Requests cancelled by the caller.", RequestsCancelled);
        Metric("prompt_tokens_total", "counter", "Prompt tokens of submitted requests.", PromptTokensTotal);
        Metric("generation_tokens_total", "counter", "Tokens generated.", GeneratedTokensTotal);
        Metric("preemptions_total", "counter", "Sequences preempted for KV memory (recomputed later).", Preemptions);
        Metric("queue_length", "gauge", "Requests waiting for admission.", QueueLength);
        Metric("running_sequences", "gauge", "Sequences being prefilled or decoded.", RunningSequences);
        Metric("kv_blocks_used", "gauge", "KV cache blocks in use (including cached prefixes).", KvBlocksUsed);
        Metric("kv_blocks_total", "gauge", "KV cache blocks in the pool.", KvBlocksTotal);
        sb.Append($"# HELP {prefix}_time_to_first_token_seconds Time from submission to the first token.\n# TYPE {prefix}_time_to_first_token_seconds histogram\n");
        TimeToFirstToken.Write(sb, $"{prefix}_time_to_first_token_seconds");
        sb.Append($"# HELP {prefix}_time_per_output_token_seconds Time between output tokens.\n# TYPE {prefix}_time_per_output_token_seconds histogram\n");
        TimePerOutputToken.Write(sb, $"{prefix}_time_per_output_token_seconds");
        return sb.ToString();
    }
}
