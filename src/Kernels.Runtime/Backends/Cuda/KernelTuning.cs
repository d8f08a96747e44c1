// Which kernel variant the CUDA backend runs on a given GPU, decided by measurement (issue 16, item 6): `kernels-bench
// tune` reads a device check's timings and verification and writes a table per GPU name into kernels/tuning/, which is
// embedded here. A GPU without a table, and every variant a table does not vouch for, runs the verified defaults.
// CudaBackendOptions' switches override the table when they are set.
using System.Text.Json;
using System.Text.Json.Serialization;

namespace Kernels.Runtime.Backends.Cuda;

/// <summary>
/// One GPU's choices: tiled decode attention, the radix sampler, the smallest GEMM row count from which cuBLASLt
/// beats our kernels (int.MaxValue: never), and the tensor-core attention (paged_attention_mma for prefill and
/// Hydragen levels, with its keys per tile). <see cref="Source"/> says where the choices came from.
/// </summary>
internal sealed record KernelTuning(
    [property: JsonPropertyName("device")] string Device,
    [property: JsonPropertyName("tiledDecodeAttention")] bool TiledDecodeAttention,
    [property: JsonPropertyName("radixSampling")] bool RadixSampling,
    [property: JsonPropertyName("cublasLtMinRows")] int CublasLtMinRows,
    [property: JsonPropertyName("evidence")] string Evidence)
{
    [JsonIgnore]
    public string Source { get; init; } = "";

    /// <summary>paged_attention_mma for prefill and shared-prefix steps (absent from older tables: off).</summary>
    [JsonPropertyName("tensorCoreAttention")]
    public bool TensorCoreAttention { get; init; }

    /// <summary>W4A8 layers at M &lt;= 16 through w4a8_gemm_*_splitk (absent from older tables: off).</summary>
    [JsonPropertyName("w4a8SplitK")]
    public bool W4A8SplitK { get; init; }

    /// <summary>
    /// Decode rows' dense projections through the fused GEMVs (the norm, q|k|v in one launch; the norm, gate|up with the
    /// SwiGLU; the o and down projections adding into the residual): dense_gemv's tile code, eight launches fewer per
    /// layer. Absent from a table, and without one: on; `tune` turns it off when verify fails for one of them.
    /// </summary>
    [JsonPropertyName("fusedGemv")]
    public bool FusedGemv { get; init; } = true;

    /// <summary>
    /// RoPE and kv_append in one launch per layer (rope_kv_append_*: rope_f32's and kv_append's code, the same bits).
    /// Absent from a table, and without one: on; `tune` turns it off when verify fails for it.
    /// </summary>
    [JsonPropertyName("fusedRopeAppend")]
    public bool FusedRopeAppend { get; init; } = true;

    /// <summary>Keys per K/V tile of paged_attention_mma: 32 or 64.</summary>
    [JsonPropertyName("attentionTileKeys")]
    public int AttentionTileKeys { get; init; } = 64;

    /// <summary>The verified defaults: the CUDA-core decode and prefill attention, the bisection sampler, our GEMMs.</summary>
    public static KernelTuning Defaults(string device) =>
        new(device, false, false, int.MaxValue, "no measurements") { Source = $"no tuning table for {device}: the verified defaults" };

    private static readonly JsonSerializerOptions Json = new() { WriteIndented = true };

    /// <summary>Reads a table; throws InvalidDataException naming <paramref name="source"/> and what is wrong.</summary>
    public static KernelTuning Parse(string json, string source)
    {
        KernelTuning? t;
        try
        {
            t = JsonSerializer.Deserialize<KernelTuning>(json, Json);
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"{source}: not a tuning table: {e.Message}", e);
        }
        if (t == null || string.IsNullOrWhiteSpace(t.Device)) throw new InvalidDataException($"{source}: the tuning table names no device");
        if (t.CublasLtMinRows < 1) throw new InvalidDataException($"{source}: cublasLtMinRows must be >= 1, got {t.CublasLtMinRows}");
        if (Array.IndexOf(OpsLaunchPlans.MmaAttentionTileKeys, t.AttentionTileKeys) < 0)
            throw new InvalidDataException($"{source}: attentionTileKeys must be {string.Join(" or ", OpsLaunchPlans.MmaAttentionTileKeys)}, got {t.AttentionTileKeys}");
        return t with { Evidence = t.Evidence ?? "", Source = source };
    }

    public string ToJson() => JsonSerializer.Serialize(this, Json);

    /// <summary>The file name a table for <paramref name="device"/> takes: "NVIDIA H200" -> "nvidia-h200.json".</summary>
    public static string FileName(string device) =>
        string.Concat(device.Trim().ToLowerInvariant().Select(c => char.IsLetterOrDigit(c) ? c : '-')).Trim('-') + ".json";

    /// <summary>The embedded table whose device is <paramref name="device"/> (ignoring case), or the defaults.</summary>
    public static KernelTuning For(string device)
    {
        var assembly = typeof(KernelTuning).Assembly;
        string resource = "tuning/" + FileName(device);
        using var stream = assembly.GetManifestResourceStream(resource);
        if (stream == null) return Defaults(device);
        using var reader = new StreamReader(stream);
        var table = Parse(reader.ReadToEnd(), $"embedded {resource}");
        return string.Equals(table.Device, device, StringComparison.OrdinalIgnoreCase) ? table : Defaults(device);
    }
}
