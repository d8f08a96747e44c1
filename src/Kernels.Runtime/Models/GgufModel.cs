// Maps a GGUF file (llama.cpp naming, "llama" and "qwen2" architectures) onto ModelConfig and Hugging Face tensor names.
namespace Kernels.Runtime.Models;

public static class GgufModel
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
        long Req(string key) => gguf.GetInteger($"{arch}.{key}") ?? throw new ModelFormatException(path, $"metadata has no {arch}.{key}");

        int hidden = checked((int)Req("embedding_length"));
        int heads = checked((int)Req("attention.head_count"));
        var embd = gguf.Tensors.TryGetValue("token_embd.weight", out var e) ? e : throw new ModelFormatException(path, "missing tensor 'token_embd.weight'");
        int vocab = checked((int)(gguf.GetInteger($"{arch}.vocab_size") ?? embd.Shape[0]));
        string? scalingType = gguf.GetString($"{arch}.rope.scaling.type");
        double scalingFactor = gguf.GetReal($"{arch}.rope.scaling.factor") ?? 1.0;
        var scaling = scalingType switch
        {
            null or "none" => new RopeScaling(RopeScalingType.None),
            "linear" => new RopeScaling(RopeScalingType.Linear, scalingFactor),
            _ => throw new ModelFormatException(path, $"unsupported rope scaling type '{scalingType}'"),
        };
        var owners = new List<IDisposable> { gguf };
        var factors = gguf.TryGetWeight("rope_freqs.weight", "rope_freqs.weight")?.ToFloatArray();

        var config = new ModelConfig
        {
            Architecture = architecture,
            HiddenSize = hidden,
            IntermediateSize = checked((int)Req("feed_forward_length")),
            NumLayers = checked((int)Req("block_count")),
            NumHeads = heads,
            NumKvHeads = checked((int)(gguf.GetInteger($"{arch}.attention.head_count_kv") ?? heads)),
            HeadDim = checked((int)(gguf.GetInteger($"{arch}.attention.key_length") ?? (heads > 0 ? hidden / heads : 0))),
            VocabSize = vocab,
            MaxPositions = checked((int)(gguf.GetInteger($"{arch}.context_length") ?? 2048)),
            RmsNormEps = gguf.GetReal($"{arch}.attention.layer_norm_rms_epsilon") ?? 1e-5,
            RopeTheta = gguf.GetReal($"{arch}.rope.freq_base") ?? 10000.0,
            RopeScaling = scaling,
            RopeFrequencyFactors = factors,
            TieWordEmbeddings = !gguf.Tensors.ContainsKey("output.weight"),
            AttentionBias = architecture == ModelArchitecture.Qwen2,
            BosTokenId = (int?)gguf.GetInteger("tokenizer.ggml.bos_token_id"),
            EosTokenIds = gguf.GetInteger("tokenizer.ggml.eos_token_id") is long eos ? [(int)eos] : [],
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
}
