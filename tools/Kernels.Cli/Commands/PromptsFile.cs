// Reads `--prompts FILE`: JSON lines, one request per line ({"prompt": ...} plus optional per-request settings).
using System.Text.Json;
using Kernels.Runtime.Engine;

namespace Kernels.Cli.Commands;

public static class PromptsFile
{
    /// <summary>
    /// Each non-empty line is an object with "prompt" (required) and optionally "n", "max_tokens", "temperature",
    /// "top_p", "top_k", "min_p", "seed", "stop" (string or array); missing fields take the command line's values.
    /// </summary>
    public static GenerationRequest[] Read(string path, GenerationRequest defaults)
    {
        if (!File.Exists(path)) throw new CliUsageException($"--prompts: {path}: file not found");
        var requests = new List<GenerationRequest>();
        int lineNumber = 0;
        foreach (var line in File.ReadLines(path))
        {
            lineNumber++;
            if (string.IsNullOrWhiteSpace(line)) continue;
            string where = $"--prompts: {path}:{lineNumber}";
            try
            {
                using var doc = JsonDocument.Parse(line);
                var o = doc.RootElement;
                if (o.ValueKind != JsonValueKind.Object) throw new CliUsageException($"{where}: expected a JSON object");
                if (!o.TryGetProperty("prompt", out var p) || p.ValueKind != JsonValueKind.String)
                    throw new CliUsageException($"{where}: missing string field \"prompt\"");
                var sampling = defaults.Sampling;
                if (o.TryGetProperty("temperature", out var t)) sampling = sampling with { Temperature = t.GetSingle() };
                if (o.TryGetProperty("top_p", out var tp)) sampling = sampling with { TopP = tp.GetSingle() };
                if (o.TryGetProperty("top_k", out var tk)) sampling = sampling with { TopK = tk.GetInt32() };
                if (o.TryGetProperty("min_p", out var mp)) sampling = sampling with { MinP = mp.GetSingle() };
                if (o.TryGetProperty("seed", out var sd)) sampling = sampling with { Seed = sd.GetUInt64() };
                IReadOnlyList<string> stop = defaults.Stop;
                if (o.TryGetProperty("stop", out var st))
                    stop = st.ValueKind == JsonValueKind.Array ? st.EnumerateArray().Select(x => x.GetString() ?? "").ToArray() : [st.GetString() ?? ""];
                requests.Add(defaults with
                {
                    Prompt = p.GetString(),
                    N = o.TryGetProperty("n", out var n) ? n.GetInt32() : defaults.N,
                    MaxNewTokens = o.TryGetProperty("max_tokens", out var m) ? m.GetInt32() : defaults.MaxNewTokens,
                    Sampling = sampling,
                    Stop = stop,
                });
            }
            catch (Exception e) when (e is JsonException or FormatException or InvalidOperationException)
            {
                throw new CliUsageException($"{where}: {e.Message}");
            }
        }
        if (requests.Count == 0) throw new CliUsageException($"--prompts: {path}: no prompts");
        return requests.ToArray();
    }
}
