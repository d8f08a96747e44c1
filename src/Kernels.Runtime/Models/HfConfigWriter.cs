// Writes a ModelConfig as a Hugging Face config.json that HfConfigReader (and transformers) read back to the same model.
using System.Text.Json;
using System.Text.Json.Nodes;
using Kernels.Runtime.Numerics;

namespace Kernels.Runtime.Models;

internal static class HfConfigWriter
{
    /// <summary>The config.json object; <paramref name="quantization"/> becomes "quantization_config".</summary>
    public static JsonObject ToJson(ModelConfig c, JsonObject? quantization = null)
    {
        if (c.RopeFrequencyFactors != null)
            throw new NotSupportedException("per-frequency RoPE factors (GGUF rope_freqs.weight) have no config.json form; convert from the Hugging Face checkpoint instead");
        var (architecture, modelType) = c.Architecture switch
        {
            ModelArchitecture.Mistral => ("MistralForCausalLM", "mistral"),
            ModelArchitecture.Qwen2 => ("Qwen2ForCausalLM", "qwen2"),
            _ => ("LlamaForCausalLM", "llama"),
        };
        var o = new JsonObject
        {
            ["architectures"] = new JsonArray(architecture),
            ["model_type"] = modelType,
            ["hidden_size"] = c.HiddenSize,
            ["intermediate_size"] = c.IntermediateSize,
            ["num_hidden_layers"] = c.NumLayers,
            ["num_attention_heads"] = c.NumHeads,
            ["num_key_value_heads"] = c.NumKvHeads,
            ["head_dim"] = c.HeadDim,
            ["vocab_size"] = c.VocabSize,
            ["max_position_embeddings"] = c.MaxPositions,
            ["rms_norm_eps"] = c.RmsNormEps,
            ["rope_theta"] = c.RopeTheta,
            ["tie_word_embeddings"] = c.TieWordEmbeddings,
            ["attention_bias"] = c.AttentionBias,
            ["torch_dtype"] = c.RopeInvFreqDType switch
            {
                TensorDType.BF16 => "bfloat16",
                TensorDType.F16 => "float16",
                _ => "float32",
            },
        };
        o["rope_scaling"] = c.RopeScaling.Type switch
        {
            RopeScalingType.Linear => new JsonObject { ["rope_type"] = "linear", ["factor"] = c.RopeScaling.Factor },
            RopeScalingType.Llama3 => new JsonObject
            {
                ["rope_type"] = "llama3",
                ["factor"] = c.RopeScaling.Factor,
                ["low_freq_factor"] = c.RopeScaling.LowFreqFactor,
                ["high_freq_factor"] = c.RopeScaling.HighFreqFactor,
                ["original_max_position_embeddings"] = c.RopeScaling.OriginalMaxPositions,
            },
            _ => null,
        };
        if (c.SlidingWindow is int window) o["sliding_window"] = window;
        if (c.Architecture == ModelArchitecture.Qwen2) o["use_sliding_window"] = c.SlidingWindow != null;
        if (c.BosTokenId is int bos) o["bos_token_id"] = bos;
        if (c.EosTokenIds.Count == 1) o["eos_token_id"] = c.EosTokenIds[0];
        else if (c.EosTokenIds.Count > 1) o["eos_token_id"] = new JsonArray(c.EosTokenIds.Select(id => (JsonNode)id).ToArray());
        if (quantization != null) o["quantization_config"] = quantization.DeepClone();
        return o;
    }

    public static void Write(string path, ModelConfig config, JsonObject? quantization = null) =>
        File.WriteAllText(path, ToJson(config, quantization).ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n");
}
