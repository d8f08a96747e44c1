// Maps a GGUF file (llama.cpp naming, "llama" and "qwen2" architectures) onto ModelConfig and Hugging Face tensor names.
using Kernels.Runtime.Numerics;

namespace Kernels.Runtime.Models;

internal static class GgufModel
{
    public static (ModelConfig Config, ModelWeights Weights) Load(GgufFile gguf)
    {
        string path = gguf.Path;
        string arch = gguf.GetString("general.architecture") ?? throw new ModelFormatException(path, "metadata has no general.architecture");
        var architecture = arch switch
        {
            "llama" => ModelArchitecture.Llama, // Mistral GGUFs are written as "llama" too
            "qwen2" => ModelArchitecture.Qwen2,
            _ => throw new ModelFormatException(path, $"unknown architecture '{arch}'; supported: llama, qwen2"),
        };
        // Every count is checked against its bound before anything is sized by it.
        int Count(string key, long max, long? fallback = null)
        {
            string full = $"{arch}.{key}";
            long value = gguf.GetInteger(full) ?? fallback ?? throw new ModelFormatException(path, $"metadata has no {full}");
            if (value < 1 || value > max) throw new ModelFormatException(path, $"metadata '{full}' = {value} is outside 1..{max}");
            return (int)value;
        }
        double Real(string key, double fallback)
        {
            string full = $"{arch}.{key}";
            double value = gguf.GetReal(full) ?? fallback;
            if (!double.IsFinite(value) || value <= 0)
                throw new ModelFormatException(path, $"metadata '{full}' = {FieldValues.Format(value)} must be a positive finite number");
            return value;
        }
        int? TokenId(string key)
        {
            long? id = gguf.GetInteger(key);
            if (id is null or < 0) return null; // absent, or llama.cpp's -1 for "none"
            if (id >= ModelConfig.MaxVocab) throw new ModelFormatException(path, $"metadata '{key}' = {id} is outside the vocabulary");
            return (int)id;
        }

        int blocks = Count("block_count", ModelConfig.MaxLayers);
        if ((long)blocks * ModelLoader.MinTensorsPerLayer > gguf.Tensors.Count)
            throw new ModelFormatException(path, $"metadata '{arch}.block_count' = {blocks} needs at least {(long)blocks * ModelLoader.MinTensorsPerLayer} tensors; the file has {gguf.Tensors.Count}");
        int hidden = Count("embedding_length", ModelConfig.MaxWidth);
        int heads = Count("attention.head_count", ModelConfig.MaxWidth);
        var embd = gguf.Tensors.TryGetValue("token_embd.weight", out var e) ? e : throw new ModelFormatException(path, "missing tensor 'token_embd.weight'");
        int vocab = Count("vocab_size", ModelConfig.MaxVocab, embd.Shape[0]);
        string? scalingType = gguf.GetString($"{arch}.rope.scaling.type");
        var scaling = scalingType switch
        {
            null or "none" => new RopeScaling(RopeScalingType.None),
            "linear" => new RopeScaling(RopeScalingType.Linear, Real("rope.scaling.factor", 1.0)),
            _ => throw new ModelFormatException(path, $"metadata '{arch}.rope.scaling.type' = '{scalingType}' is not supported; supported: none, linear"),
        };
        var owners = new List<IDisposable> { gguf };
        var factors = RopeFactors(gguf);

        var config = new ModelConfig
        {
            Architecture = architecture,
            HiddenSize = hidden,
            IntermediateSize = Count("feed_forward_length", ModelConfig.MaxWidth),
            NumLayers = blocks,
            NumHeads = heads,
            NumKvHeads = Count("attention.head_count_kv", heads, heads),
            HeadDim = Count("attention.key_length", ModelConfig.MaxHeadDim, hidden / heads),
            VocabSize = vocab,
            MaxPositions = Count("context_length", ModelConfig.MaxContext, 2048),
            RmsNormEps = Real("attention.layer_norm_rms_epsilon", 1e-5),
            RopeTheta = Real("rope.freq_base", 10000.0),
            RopeScaling = scaling,
            RopeFrequencyFactors = factors,
            TieWordEmbeddings = !gguf.Tensors.ContainsKey("output.weight"),
            AttentionBias = architecture == ModelArchitecture.Qwen2,
            BosTokenId = TokenId("tokenizer.ggml.bos_token_id"),
            EosTokenIds = TokenId("tokenizer.ggml.eos_token_id") is int eos ? [eos] : [],
        };
        config.Validate(path);

        var map = new Dictionary<string, string>
        {
            ["model.embed_tokens.weight"] = "token_embd.weight",
            ["model.norm.weight"] = "output_norm.weight",
            ["lm_head.weight"] = "output.weight",
        };
        for (int i = 0; i < config.NumLayers; i++)
        {
            string p = $"model.layers.{i}.", b = $"blk.{i}.";
            map[p + "input_layernorm.weight"] = b + "attn_norm.weight";
            map[p + "post_attention_layernorm.weight"] = b + "ffn_norm.weight";
            foreach (var (hf, gg) in new[] { ("q_proj", "attn_q"), ("k_proj", "attn_k"), ("v_proj", "attn_v"), ("o_proj", "attn_output") })
            {
                map[p + $"self_attn.{hf}.weight"] = b + gg + ".weight";
                map[p + $"self_attn.{hf}.bias"] = b + gg + ".bias";
            }
            map[p + "mlp.gate_proj.weight"] = b + "ffn_gate.weight";
            map[p + "mlp.up_proj.weight"] = b + "ffn_up.weight";
            map[p + "mlp.down_proj.weight"] = b + "ffn_down.weight";
        }

        var byName = new Dictionary<string, WeightTensor>();
        foreach (var (hf, gg) in map)
            if (gguf.TryGetWeight(gg, hf) is { } t) byName[hf] = t;

        try
        {
            // llama.cpp's converter permutes Llama's q/k rows into GGML's adjacent-pair RoPE order; undo it (Qwen2 uses
            // GGML's NEOX mode, which is already rotate-half).
            if (architecture == ModelArchitecture.Llama)
            {
                for (int i = 0; i < config.NumLayers; i++)
                {
                    foreach (var (kind, h) in new[] { ("q_proj", config.NumHeads), ("k_proj", config.NumKvHeads) })
                        foreach (var suffix in new[] { "weight", "bias" })
                        {
                            string n = $"model.layers.{i}.self_attn.{kind}.{suffix}";
                            if (byName.TryGetValue(n, out var w)) byName[n] = RopeLayout.AdjacentPairsToHalves(w, h, config.HeadDim, owners);
                        }
                }
            }
            return (config, ModelWeights.Build(config, n => byName.GetValueOrDefault(n), path, owners));
        }
        catch
        {
            foreach (var o in owners.Skip(1)) o.Dispose(); // the caller disposes the GGUF file itself
            throw;
        }
    }

    /// <summary>llama.cpp's per-frequency RoPE divisors (Llama 3.1): a 1-D tensor of positive finite values, checked here by name.</summary>
    private static float[]? RopeFactors(GgufFile gguf)
    {
        const string Name = "rope_freqs.weight";
        if (gguf.TryGetWeight(Name, Name) is not { } t) return null;
        if (t.Shape.Length != 1 || t.ElementCount > ModelConfig.MaxHeadDim / 2)
            throw new ModelFormatException(gguf.Path, $"tensor '{Name}' has shape {t.ShapeText}, expected [head_dim / 2]");
        var factors = t.ToFloatArray();
        for (int i = 0; i < factors.Length; i++)
            if (!float.IsFinite(factors[i]) || factors[i] <= 0)
                throw new ModelFormatException(gguf.Path, $"tensor '{Name}' [{i}] = {FieldValues.Format(factors[i])} must be a positive finite divisor");
        return factors;
    }
}
