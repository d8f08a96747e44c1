// Built-in models with seeded random weights in named shapes, so every command runs without files.
using Kernels.Runtime.Numerics;
using Kernels.Runtime.Tokenization;

namespace Kernels.Runtime.Models;

public static unsafe class SyntheticModels
{
    public const string Prefix = "synthetic:";

    /// <summary>The named shapes: tiny mirrors the golden test models; small is a ~100M-parameter Llama.</summary>
    public static IReadOnlyDictionary<string, ModelConfig> Shapes { get; } = new Dictionary<string, ModelConfig>
    {
        ["tiny"] = new()
        {
            Architecture = ModelArchitecture.Llama, HiddenSize = 64, IntermediateSize = 176, NumLayers = 2, NumHeads = 4,
            NumKvHeads = 2, HeadDim = 16, VocabSize = 512, MaxPositions = 512, BosTokenId = SyntheticVocabulary.Bos,
            EosTokenIds = [SyntheticVocabulary.Eos],
        },
        ["small"] = new()
        {
            Architecture = ModelArchitecture.Llama, HiddenSize = 768, IntermediateSize = 2048, NumLayers = 12, NumHeads = 12,
            NumKvHeads = 4, HeadDim = 64, VocabSize = 32000, MaxPositions = 2048, TieWordEmbeddings = true,
            RopeTheta = 500000, BosTokenId = SyntheticVocabulary.Bos, EosTokenIds = [SyntheticVocabulary.Eos],
        },
    };

    public static bool IsSynthetic(string model) => model.StartsWith(Prefix, StringComparison.Ordinal);

    public static LoadedModel Create(string model, int seed = 1234)
    {
        string name = model[Prefix.Length..];
        if (!Shapes.TryGetValue(name, out var config))
            throw new ModelFormatException(model, $"unknown synthetic model '{name}'; known: {string.Join(", ", Shapes.Keys)}");

        var owners = new List<IDisposable>();
        var tensors = new Dictionary<string, WeightTensor>();
        void Add(string tensorName, bool ones, params long[] shape)
        {
            long n = shape.Aggregate(1L, (a, b) => a * b);
            var storage = new OwnedStorage(n * 2);
            owners.Add(storage);
            var bits = new Span<ushort>(storage.Pointer, checked((int)n));
            if (ones) bits.Fill(DTypeConvert.SingleToBFloat16(1f));
            else FillUniform(bits, StableHash(tensorName) ^ (uint)seed, std: 0.02f);
            tensors[tensorName] = new WeightTensor(tensorName, TensorDType.BF16, shape, storage.Pointer);
        }

        int h = config.HiddenSize, ff = config.IntermediateSize;
        Add("model.embed_tokens.weight", false, config.VocabSize, h);
        for (int i = 0; i < config.NumLayers; i++)
        {
            string p = $"model.layers.{i}.";
            Add(p + "input_layernorm.weight", true, h);
            Add(p + "self_attn.q_proj.weight", false, config.QueryDim, h);
            Add(p + "self_attn.k_proj.weight", false, config.KvDim, h);
            Add(p + "self_attn.v_proj.weight", false, config.KvDim, h);
            Add(p + "self_attn.o_proj.weight", false, h, config.QueryDim);
            Add(p + "post_attention_layernorm.weight", true, h);
            Add(p + "mlp.gate_proj.weight", false, ff, h);
            Add(p + "mlp.up_proj.weight", false, ff, h);
            Add(p + "mlp.down_proj.weight", false, h, ff);
        }
        Add("model.norm.weight", true, h);
        if (!config.TieWordEmbeddings) Add("lm_head.weight", false, config.VocabSize, h);
        var weights = ModelWeights.Build(config, n => tensors.GetValueOrDefault(n), model, owners);
        return new LoadedModel(model, ModelFormat.Synthetic, config, weights, () => SyntheticVocabulary.Tokenizer(config.VocabSize));
    }

    /// <summary>Uniform values with the given standard deviation from a xorshift stream (same seed, same weights).</summary>
    private static void FillUniform(Span<ushort> bits, uint seed, float std)
    {
        uint state = seed == 0 ? 0x9E3779B9u : seed;
        float a = std * MathF.Sqrt(3f);
        for (int i = 0; i < bits.Length; i++)
        {
            state ^= state << 13; state ^= state >> 17; state ^= state << 5;
            float u = (state >> 8) * (1f / (1 << 24)) * 2f - 1f;
            bits[i] = DTypeConvert.SingleToBFloat16(u * a);
        }
    }

    private static uint StableHash(string s)
    {
        uint h = 2166136261;
        foreach (char c in s) h = (h ^ c) * 16777619;
        return h;
    }
}
