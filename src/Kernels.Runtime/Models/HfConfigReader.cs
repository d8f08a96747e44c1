// Reads a Hugging Face config.json (Llama, Mistral, Qwen2) into a ModelConfig; RoPE settings from either place.
using System.Text.Json;
using Kernels.Runtime.Numerics;

namespace Kernels.Runtime.Models;

internal static class HfConfigReader
{
    public static ModelConfig Read(string configPath)
    {
        if (!File.Exists(configPath)) throw new ModelFormatException(configPath, "config.json not found");
        using var doc = JsonFields.ParseFile(configPath);
        var config = Parse(new JsonFields(doc.RootElement, configPath), configPath);
        config.Validate(configPath);
        return config;
    }

    private static ModelConfig Parse(JsonFields root, string path)
    {
        var arch = ParseArchitecture(root, path);
        // Every size is bounded here, under its own name, before anything is sized by it.
        int hidden = root.RequireInt("hidden_size", 1, ModelConfig.MaxWidth);
        int heads = root.RequireInt("num_attention_heads", 1, ModelConfig.MaxWidth);
        int headDim = root.Int("head_dim", 1, ModelConfig.MaxHeadDim) ?? hidden / heads;

        // transformers 5 writes rope_theta/rope_type/scaling under rope_parameters; older configs use the top level
        // (rope_theta) and rope_scaling. Read both, rope_parameters winning.
        var ropeParams = root.Object("rope_parameters");
        var ropeScaling = root.Object("rope_scaling");
        double theta = ropeParams?.Positive("rope_theta") ?? root.Positive("rope_theta") ?? 10000.0;
        var scaling = ParseScaling(ropeParams) is { Type: not RopeScalingType.None } a ? a : ParseScaling(ropeScaling);

        bool isQwen = arch == ModelArchitecture.Qwen2;
        int? sliding = root.Int("sliding_window", 1, int.MaxValue);
        if (root.Bool("use_sliding_window") == false) sliding = null;

        return new ModelConfig
        {
            Architecture = arch,
            HiddenSize = hidden,
            IntermediateSize = root.RequireInt("intermediate_size", 1, ModelConfig.MaxWidth),
            NumLayers = root.RequireInt("num_hidden_layers", 1, ModelConfig.MaxLayers),
            NumHeads = heads,
            NumKvHeads = root.Int("num_key_value_heads", 1, heads) ?? heads,
            HeadDim = headDim,
            VocabSize = root.RequireInt("vocab_size", 1, ModelConfig.MaxVocab),
            MaxPositions = root.Int("max_position_embeddings", 1, ModelConfig.MaxContext) ?? 2048,
            RmsNormEps = root.Positive("rms_norm_eps") ?? 1e-6,
            RopeTheta = theta,
            RopeScaling = scaling,
            TieWordEmbeddings = root.Bool("tie_word_embeddings") ?? isQwen,
            AttentionBias = isQwen || root.Bool("attention_bias") == true,
            SlidingWindow = sliding,
            RopeInvFreqDType = (root.String("dtype") ?? root.String("torch_dtype")) switch
            {
                "bfloat16" => TensorDType.BF16,
                "float16" => TensorDType.F16,
                _ => TensorDType.F32,
            },
            BosTokenId = root.Int("bos_token_id", 0, ModelConfig.MaxVocab - 1),
            EosTokenIds = IntList(root, "eos_token_id"),
        };
    }

    private static ModelArchitecture ParseArchitecture(JsonFields root, string path)
    {
        string? name = null;
        if (root.Raw("architectures") is { } archs)
        {
            if (archs.ValueKind != JsonValueKind.Array) throw root.Wrong("architectures", archs, "an array of class names");
            if (archs.GetArrayLength() > 0)
                name = archs[0].ValueKind == JsonValueKind.String ? root.Text(archs[0], "architectures[0]") : throw root.Wrong("architectures[0]", archs[0], "a class name string");
        }
        string? modelType = root.String("model_type");
        return (name, modelType) switch
        {
            ("LlamaForCausalLM", _) or (null, "llama") => ModelArchitecture.Llama,
            ("MistralForCausalLM", _) or (null, "mistral") => ModelArchitecture.Mistral,
            ("Qwen2ForCausalLM", _) or (null, "qwen2") => ModelArchitecture.Qwen2,
            _ => throw new ModelFormatException(path,
                $"unknown architecture '{name ?? modelType ?? "(none)"}'; supported: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM"),
        };
    }

    private static RopeScaling ParseScaling(JsonFields? element)
    {
        if (element is not { } e) return new RopeScaling(RopeScalingType.None);
        string? type = e.String("rope_type") ?? e.String("type");
        return type switch
        {
            null or "default" => new RopeScaling(RopeScalingType.None),
            "linear" => new RopeScaling(RopeScalingType.Linear, e.Positive("factor") ?? 1.0),
            "llama3" => new RopeScaling(RopeScalingType.Llama3, e.Positive("factor") ?? 1.0,
                e.Positive("low_freq_factor") ?? 1.0,
                e.Positive("high_freq_factor") ?? 4.0,
                e.Int("original_max_position_embeddings", 1, ModelConfig.MaxContext) ?? 8192),
            _ => throw new ModelFormatException(e.Path, $"unsupported rope scaling type '{type}' in '{e.Prefix}'; supported: default, linear, llama3"),
        };
    }

    /// <summary>An id or a list of ids (eos_token_id may be either); each a token id.</summary>
    private static IReadOnlyList<int> IntList(JsonFields e, string name)
    {
        if (e.Raw(name) is not { } v) return [];
        if (v.ValueKind == JsonValueKind.Array)
            return v.EnumerateArray().Select((x, i) => e.Int(x, $"{name}[{i}]", 0, ModelConfig.MaxVocab - 1)).ToArray();
        return [e.Int(v, name, 0, ModelConfig.MaxVocab - 1)];
    }
}
