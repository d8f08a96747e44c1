// Built-in models with seeded random weights in named shapes, so every command runs without files.
using Kernels.Runtime.Numerics;
using Kernels.Runtime.Tokenization;

namespace Kernels.Runtime.Models;

/// <summary>
/// Writes one synthetic linear layer [outFeatures, inFeatures] in a stored quantized format: the tensors under the layer's
/// name ("name.suffix"), random but valid. Quantization methods supply it (Models cannot see their formats).
/// </summary>
internal delegate IReadOnlyList<WeightTensor> SyntheticLinearWriter(string name, int outFeatures, int inFeatures, Random rng, List<IDisposable> owners);

internal static unsafe class SyntheticModels
{
    public const string Prefix = "synthetic:";

    /// <summary>
    /// The named shapes: tiny mirrors the golden test models; mini has every matrix dimension a multiple of 256 (GGML k-quants);
    /// small is a ~100M-parameter Llama; llama3-8b is Llama 3
    /// 8B's shape in F16 for GPU throughput (see <see cref="SharedLayerShapes"/>).
    /// </summary>
    public static IReadOnlyDictionary<string, ModelConfig> Shapes { get; } = new Dictionary<string, ModelConfig>
    {
        ["tiny"] = new()
        {
            Architecture = ModelArchitecture.Llama, HiddenSize = 64, IntermediateSize = 176, NumLayers = 2, NumHeads = 4,
            NumKvHeads = 2, HeadDim = 16, VocabSize = 512, MaxPositions = 512, BosTokenId = SyntheticVocabulary.Bos,
            EosTokenIds = [SyntheticVocabulary.Eos],
        },
        // Every matrix dimension a multiple of 256, so llama.cpp's k-quants apply to all of them (tiny's 64 are not):
        // the model the GGUF-format tests quantize.
        ["mini"] = new()
        {
            Architecture = ModelArchitecture.Llama, HiddenSize = 256, IntermediateSize = 768, NumLayers = 4, NumHeads = 4,
            NumKvHeads = 2, HeadDim = 64, VocabSize = 512, MaxPositions = 512, BosTokenId = SyntheticVocabulary.Bos,
            EosTokenIds = [SyntheticVocabulary.Eos],
        },
        ["small"] = new()
        {
            Architecture = ModelArchitecture.Llama, HiddenSize = 768, IntermediateSize = 2048, NumLayers = 12, NumHeads = 12,
            NumKvHeads = 4, HeadDim = 64, VocabSize = 32000, MaxPositions = 2048, TieWordEmbeddings = true,
            RopeTheta = 500000, BosTokenId = SyntheticVocabulary.Bos, EosTokenIds = [SyntheticVocabulary.Eos],
        },
        ["llama3-8b"] = Llama3_8B,
        // The same shape with a 33K context (plain RoPE: not Llama 3.1's scaled one), for KV-bound throughput at 32K
        // tokens (kernels-bench e2e's KIVI capacity table); random weights like every synthetic model.
        ["llama3-8b-32k"] = Llama3_8B with { MaxPositions = 32768 + 512 },
    };

    private static ModelConfig Llama3_8B => new()
    {
        Architecture = ModelArchitecture.Llama, HiddenSize = 4096, IntermediateSize = 14336, NumLayers = 32, NumHeads = 32,
        NumKvHeads = 8, HeadDim = 128, VocabSize = 128256, MaxPositions = 8192, RopeTheta = 500000,
        BosTokenId = SyntheticVocabulary.Bos, EosTokenIds = [SyntheticVocabulary.Eos],
    };

    /// <summary>
    /// Shapes whose layers all share layer 0's host memory, stored in F16: the host holds one layer (436 MiB for
    /// llama3-8b) plus the embedding and LM head (2 GiB), not 16 GB, while a GPU backend still uploads 32 separate
    /// copies, so a decode step streams every layer's bytes as a real 8B model does. Values are random either way.
    /// </summary>
    public static IReadOnlySet<string> SharedLayerShapes { get; } = new HashSet<string> { "llama3-8b", "llama3-8b-32k" };

    public static bool IsSynthetic(string model) => model.StartsWith(Prefix, StringComparison.Ordinal);

    /// <summary>
    /// A synthetic model; with <paramref name="quantized"/>, its seven projections per layer come from the writer (in a
    /// layer-shared shape, layer 0's tensors serve every layer, as the dense ones do) and load through the config's method.
    /// </summary>
    public static LoadedModel Create(string model, int seed = 1234, (SyntheticLinearWriter Writer, QuantizationConfig Config, string Name)? quantized = null)
    {
        string name = model[Prefix.Length..];
        if (!Shapes.TryGetValue(name, out var config))
            throw new ModelFormatException(model, $"unknown synthetic model '{name}'; known: {string.Join(", ", Shapes.Keys)}");

        var owners = new List<IDisposable>();
        var tensors = new Dictionary<string, WeightTensor>();
        bool sharedLayers = SharedLayerShapes.Contains(name);
        var dtype = sharedLayers ? TensorDType.F16 : TensorDType.BF16;
        void Add(string tensorName, bool ones, params long[] shape)
        {
            const string LayerPrefix = "model.layers.";
            if (sharedLayers && tensorName.StartsWith(LayerPrefix, StringComparison.Ordinal) && !tensorName.StartsWith(LayerPrefix + "0.", StringComparison.Ordinal))
            {
                string first = LayerPrefix + "0." + tensorName[(tensorName.IndexOf('.', LayerPrefix.Length) + 1)..];
                tensors[tensorName] = new WeightTensor(tensorName, dtype, shape, tensors[first].Data);
                return;
            }
            long n = shape.Aggregate(1L, (a, b) => a * b);
            var storage = new OwnedStorage(n * 2);
            owners.Add(storage);
            var bits = new Span<ushort>(storage.Pointer, checked((int)n));
            uint tensorSeed = StableHash(tensorName) ^ (uint)seed;
            if (dtype == TensorDType.F16)
            {
                if (ones) bits.Fill(BitConverter.HalfToUInt16Bits((Half)1f));
                else FillUniformHalf(storage.Pointer, n, tensorSeed, std: 0.02f);
            }
            else if (ones) bits.Fill(DTypeConvert.SingleToBFloat16(1f));
            else FillUniform(bits, tensorSeed, std: 0.02f);
            tensors[tensorName] = new WeightTensor(tensorName, dtype, shape, storage.Pointer);
        }

        int h = config.HiddenSize, ff = config.IntermediateSize;
        var rng = new Random(seed);
        void Linear(int layer, string suffix, int n, int k)
        {
            string name = $"model.layers.{layer}.{suffix}";
            if (quantized is not { } q)
            {
                Add(name + ".weight", false, n, k);
                return;
            }
            if (sharedLayers && layer > 0)
            {
                string first = $"model.layers.0.{suffix}";
                foreach (var t in tensors.Where(kv => kv.Key.StartsWith(first + ".", StringComparison.Ordinal)).ToArray())
                {
                    string alias = name + t.Key[first.Length..];
                    tensors[alias] = new WeightTensor(alias, t.Value.DType, t.Value.Shape, t.Value.Data);
                }
                return;
            }
            foreach (var t in q.Writer(name, n, k, rng, owners)) tensors[t.Name] = t;
        }
        Add("model.embed_tokens.weight", false, config.VocabSize, h);
        for (int i = 0; i < config.NumLayers; i++)
        {
            string p = $"model.layers.{i}.";
            Add(p + "input_layernorm.weight", true, h);
            Linear(i, "self_attn.q_proj", config.QueryDim, h);
            Linear(i, "self_attn.k_proj", config.KvDim, h);
            Linear(i, "self_attn.v_proj", config.KvDim, h);
            Linear(i, "self_attn.o_proj", h, config.QueryDim);
            Add(p + "post_attention_layernorm.weight", true, h);
            Linear(i, "mlp.gate_proj", ff, h);
            Linear(i, "mlp.up_proj", ff, h);
            Linear(i, "mlp.down_proj", h, ff);
        }
        Add("model.norm.weight", true, h);
        if (!config.TieWordEmbeddings) Add("lm_head.weight", false, config.VocabSize, h);
        string label = quantized is { } qz ? $"{model} ({qz.Name}, random)" : model;
        var weights = ModelWeights.Build(config, n => tensors.GetValueOrDefault(n), label, owners, quantized?.Config);
        return new LoadedModel(label, ModelFormat.Synthetic, config, weights, () => SyntheticVocabulary.Tokenizer(config.VocabSize));
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

    /// <summary>F16 uniform values, generated in parallel chunks of 1M (each with its own xorshift stream): seeded and fast.</summary>
    private static void FillUniformHalf(byte* data, long n, uint seed, float std)
    {
        const int Chunk = 1 << 20;
        ushort* bits = (ushort*)data;
        float a = std * MathF.Sqrt(3f);
        Parallel.For(0, (n + Chunk - 1) / Chunk, c =>
        {
            uint state = (seed ^ (uint)(c * 0x9E3779B9L)) | 1u;
            for (long i = c * Chunk, end = Math.Min(n, i + Chunk); i < end; i++)
            {
                state ^= state << 13; state ^= state >> 17; state ^= state << 5;
                float u = (state >> 8) * (1f / (1 << 24)) * 2f - 1f;
                bits[i] = BitConverter.HalfToUInt16Bits((Half)(u * a));
            }
        });
    }

    private static uint StableHash(string s)
    {
        uint h = 2166136261;
        foreach (char c in s) h = (h ^ c) * 16777619;
        return h;
    }
}
