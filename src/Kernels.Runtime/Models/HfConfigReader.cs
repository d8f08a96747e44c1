// Reads a Hugging Face config.json (Llama, Mistral, Qwen2) into a ModelConfig; RoPE settings from either place.
using System.Text.Json;

namespace Kernels.Runtime.Models;

public static class HfConfigReader
{
    public static ModelConfig Read(string configPath)
    {
        if (!File.Exists(configPath)) throw new ModelFormatException(configPath, "config.json not found");
        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(File.ReadAllBytes(configPath), new JsonDocumentOptions { AllowTrailingCommas = true });
        }
        catch (JsonException e)
        {
            throw new ModelFormatException(configPath, $"malformed JSON: {e.Message}", e);
        }
        using (doc)
        {
            var root = doc.RootElement;
            if (root.ValueKind != JsonValueKind.Object) throw new ModelFormatException(configPath, "expected a JSON object");
            var config = Parse(root, configPath);
            config.Validate(configPath);
            return config;
        }
    }

    private static ModelConfig Parse(JsonElement root, string path)
    {
        var arch = ParseArchitecture(root, path);
        int hidden = Int(root, "hidden_size", path);
        int heads = Int(root, "num_attention_heads", path);
        int? headDimOpt = OptInt(root, "head_dim");
        int headDim = headDimOpt ?? (heads > 0 ? hidden / heads : 0);

        // transformers 5 writes rope_theta/rope_type/scaling under rope_parameters; older configs use the top level
        // (rope_theta) and rope_scaling. Read both, rope_parameters winning.
        JsonElement? ropeParams = root.TryGetProperty("rope_parameters", out var rp) && rp.ValueKind == JsonValueKind.Object ? rp : null;
        JsonElement? ropeScaling = root.TryGetProperty("rope_scaling", out var rs) && rs.ValueKind == JsonValueKind.Object ? rs : null;
        double theta = (ropeParams is { } p1 ? OptDouble(p1, "rope_theta") : null) ?? OptDouble(root, "rope_theta") ?? 10000.0;
        var scaling = ParseScaling(ropeParams, path) is { Type: not RopeScalingType.None } a ? a : ParseScaling(ropeScaling, path);

        bool isQwen = arch == ModelArchitecture.Qwen2;
        bool? useSliding = root.TryGetProperty("use_sliding_window", out var us) && us.ValueKind is JsonValueKind.True or JsonValueKind.False ? us.GetBoolean() : null;
        int? sliding = OptInt(root, "sliding_window");
        if (useSliding == false) sliding = null;

        return new ModelConfig
        {
            Architecture = arch,
            HiddenSize = hidden,
            IntermediateSize = Int(root, "intermediate_size", path),
            NumLayers = Int(root, "num_hidden_layers", path),
            NumHeads = heads,
            NumKvHeads = OptInt(root, "num_key_value_heads") ?? heads,
            HeadDim = headDim,
            VocabSize = Int(root, "vocab_size", path),
            MaxPositions = OptInt(root, "max_position_embeddings") ?? 2048,
            RmsNormEps = OptDouble(root, "rms_norm_eps") ?? 1e-6,
            RopeTheta = theta,
            RopeScaling = scaling,
            TieWordEmbeddings = root.TryGetProperty("tie_word_embeddings", out var tie) ? tie.ValueKind == JsonValueKind.True : isQwen,
            AttentionBias = isQwen || (root.TryGetProperty("attention_bias", out var ab) && ab.ValueKind == JsonValueKind.True),
            SlidingWindow = sliding,
            RopeInvFreqDType = ((root.TryGetProperty("dtype", out var dt) ? dt.GetString() : null)
                                ?? (root.TryGetProperty("torch_dtype", out var tdt) ? tdt.GetString() : null)) switch
            {
                "bfloat16" => TensorDType.BF16,
                "float16" => TensorDType.F16,
                _ => TensorDType.F32,
            },
            BosTokenId = OptInt(root, "bos_token_id"),
            EosTokenIds = IntList(root, "eos_token_id"),
        };
    }

    private static ModelArchitecture ParseArchitecture(JsonElement root, string path)
    {
        string? name = null;
        if (root.TryGetProperty("architectures", out var archs) && archs.ValueKind == JsonValueKind.Array && archs.GetArrayLength() > 0)
            name = archs[0].GetString();
        string? modelType = root.TryGetProperty("model_type", out var mt) ? mt.GetString() : null;
        return (name, modelType) switch
        {
            ("LlamaForCausalLM", _) or (null, "llama") => ModelArchitecture.Llama,
            ("MistralForCausalLM", _) or (null, "mistral") => ModelArchitecture.Mistral,
            ("Qwen2ForCausalLM", _) or (null, "qwen2") => ModelArchitecture.Qwen2,
            _ => throw new ModelFormatException(path,
                $"unknown architecture '{name ?? modelType ?? "(none)"}'; supported: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM"),
        };
    }

    private static RopeScaling ParseScaling(JsonElement? element, string path)
    {
        if (element is not { } e) return new RopeScaling(RopeScalingType.None);
        string? type = (e.TryGetProperty("rope_type", out var t) ? t.GetString() : null)
                       ?? (e.TryGetProperty("type", out var t2) ? t2.GetString() : null);
        double factor = OptDouble(e, "factor") ?? 1.0;
        return type switch
        {
            null or "default" => new RopeScaling(RopeScalingType.None),
            "linear" => new RopeScaling(RopeScalingType.Linear, factor),
            "llama3" => new RopeScaling(RopeScalingType.Llama3, factor,
                OptDouble(e, "low_freq_factor") ?? 1.0,
                OptDouble(e, "high_freq_factor") ?? 4.0,
                OptInt(e, "original_max_position_embeddings") ?? 8192),
            _ => throw new ModelFormatException(path, $"unsupported rope scaling type '{type}'; supported: default, linear, llama3"),
        };
    }

    private static int Int(JsonElement e, string name, string path) =>
        OptInt(e, name) ?? throw new ModelFormatException(path, $"missing integer field '{name}'");

    private static int? OptInt(JsonElement e, string name) =>
        e.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.Number && v.TryGetInt32(out int i) ? i : null;

    private static double? OptDouble(JsonElement e, string name) =>
        e.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.Number ? v.GetDouble() : null;

    private static IReadOnlyList<int> IntList(JsonElement e, string name)
    {
        if (!e.TryGetProperty(name, out var v)) return [];
        return v.ValueKind switch
        {
            JsonValueKind.Number => v.TryGetInt32(out int one) ? [one] : [],
            JsonValueKind.Array => v.EnumerateArray().Where(x => x.ValueKind == JsonValueKind.Number && x.TryGetInt32(out _)).Select(x => x.GetInt32()).ToArray(),
            _ => [],
        };
    }
}
