// The weights of a Llama-family model under Hugging Face names, shape-checked against the config, owning their storage.
using Kernels.Runtime.Numerics;

namespace Kernels.Runtime.Models;

internal sealed record LayerWeights(
    WeightTensor AttentionNorm,   // [hidden]
    LinearWeight Wq,              // [heads * head_dim, hidden]
    LinearWeight Wk,              // [kv_heads * head_dim, hidden]
    LinearWeight Wv,              // [kv_heads * head_dim, hidden]
    LinearWeight Wo,              // [hidden, heads * head_dim]
    WeightTensor? Bq,             // [heads * head_dim] (Qwen2)
    WeightTensor? Bk,             // [kv_heads * head_dim]
    WeightTensor? Bv,             // [kv_heads * head_dim]
    WeightTensor FfnNorm,         // [hidden]
    LinearWeight Gate,            // [intermediate, hidden]
    LinearWeight Up,              // [intermediate, hidden]
    LinearWeight Down);           // [hidden, intermediate]

internal sealed class ModelWeights : IDisposable
{
    public WeightTensor Embedding { get; }       // [vocab, hidden]
    public IReadOnlyList<LayerWeights> Layers { get; }
    public WeightTensor FinalNorm { get; }       // [hidden]
    public WeightTensor LmHead { get; }          // [vocab, hidden]; the embedding itself when tied
    /// <summary>How the layers' linear weights are quantized; null for a dense model.</summary>
    public QuantizationConfig? Quantization { get; }
    private readonly IReadOnlyList<IDisposable> _owners;

    private ModelWeights(WeightTensor embedding, IReadOnlyList<LayerWeights> layers, WeightTensor finalNorm, WeightTensor lmHead,
        QuantizationConfig? quantization, IReadOnlyList<IDisposable> owners)
    {
        Quantization = quantization;
        Embedding = embedding;
        Layers = layers;
        FinalNorm = finalNorm;
        LmHead = lmHead;
        _owners = owners;
    }

    /// <summary>
    /// Assembles the weights from a lookup by Hugging Face tensor name (null when absent). Every shape is checked
    /// against <paramref name="config"/>; a mismatch names <paramref name="source"/> and the tensor. With
    /// <paramref name="quantization"/>, a linear layer stored without a dense ".weight" is loaded by that method.
    /// </summary>
    public static ModelWeights Build(ModelConfig config, Func<string, WeightTensor?> lookup, string source, IReadOnlyList<IDisposable> owners,
        QuantizationConfig? quantization = null)
    {
        var format = quantization is null ? null : LinearFormats.Find(quantization.Method, source);
        WeightTensor Get(string name, params long[] shape)
        {
            var t = lookup(name) ?? throw new ModelFormatException(source, $"missing tensor '{name}'");
            Check(t, shape);
            return t;
        }
        WeightTensor? Optional(string name, params long[] shape)
        {
            var t = lookup(name);
            if (t != null) Check(t, shape);
            return t;
        }
        void Check(WeightTensor t, long[] shape)
        {
            if (!t.Shape.SequenceEqual(shape))
                throw new ModelFormatException(source, $"tensor '{t.Name}' has shape {t.ShapeText}, expected [{string.Join(", ", shape)}] from the config");
        }

        LinearWeight Linear(string name, int outFeatures, int inFeatures)
        {
            var dense = lookup(name + ".weight");
            if (dense is null && format is not null) return format.Load(name, outFeatures, inFeatures, lookup, quantization!, source);
            if (dense is null) throw new ModelFormatException(source, $"missing tensor '{name}.weight'");
            Check(dense, [outFeatures, inFeatures]);
            if (!dense.DType.IsNumeric()) throw new ModelFormatException(source, $"tensor '{dense.Name}' is {dense.DType.Name()}; a dense weight must be F32, F16, BF16 or a GGML block type ({GgmlTypes.Supported})");
            return new DenseLinear(name, dense);
        }

        int h = config.HiddenSize, q = config.QueryDim, kv = config.KvDim, ff = config.IntermediateSize, v = config.VocabSize;
        var embedding = Get("model.embed_tokens.weight", v, h);
        var layers = new LayerWeights[config.NumLayers];
        for (int i = 0; i < config.NumLayers; i++)
        {
            string p = $"model.layers.{i}.";
            layers[i] = new LayerWeights(
                Get(p + "input_layernorm.weight", h),
                Linear(p + "self_attn.q_proj", q, h),
                Linear(p + "self_attn.k_proj", kv, h),
                Linear(p + "self_attn.v_proj", kv, h),
                Linear(p + "self_attn.o_proj", h, q),
                config.AttentionBias ? Get(p + "self_attn.q_proj.bias", q) : Optional(p + "self_attn.q_proj.bias", q),
                config.AttentionBias ? Get(p + "self_attn.k_proj.bias", kv) : Optional(p + "self_attn.k_proj.bias", kv),
                config.AttentionBias ? Get(p + "self_attn.v_proj.bias", kv) : Optional(p + "self_attn.v_proj.bias", kv),
                Get(p + "post_attention_layernorm.weight", h),
                Linear(p + "mlp.gate_proj", ff, h),
                Linear(p + "mlp.up_proj", ff, h),
                Linear(p + "mlp.down_proj", h, ff));
        }
        var norm = Get("model.norm.weight", h);
        // Some tied checkpoints still carry lm_head.weight; an untied one must.
        var head = config.TieWordEmbeddings ? Optional("lm_head.weight", v, h) ?? embedding : Get("lm_head.weight", v, h);
        var weights = new ModelWeights(embedding, layers, norm, head, quantization, owners);
        weights.CheckStorage(source);
        return weights;
    }

    /// <summary>The native memory the tensors live in: mapped files and memory the model owns.</summary>
    public IEnumerable<NativeStorage> Storage => _owners.OfType<ITensorStorage>().Select(s => s.Memory);

    /// <summary>
    /// Every tensor's bytes [Data, Data + ByteLength) lie inside one of the owners (a mapped file, owned memory): the
    /// readers check sizes and offsets as they parse, and this catches any path that would still point elsewhere
    /// before a kernel reads there.
    /// </summary>
    private unsafe void CheckStorage(string source)
    {
        var storages = Storage.ToArray();
        foreach (var t in All())
        {
            long bytes;
            try
            {
                bytes = t.ByteLength;
            }
            catch (OverflowException)
            {
                throw new ModelFormatException(source, $"tensor '{t.Name}' {t.DType.Name()} {t.ShapeText} has more bytes than a 64-bit size can count");
            }
            if (!storages.Any(s => s.Holds(t.Data, bytes)))
                throw new ModelFormatException(source, $"tensor '{t.Name}' ({bytes} bytes) does not lie inside its file or the model's memory");
        }
    }

    /// <summary>Every stored tensor (quantized layers contribute all of theirs), each once.</summary>
    public IEnumerable<WeightTensor> All()
    {
        yield return Embedding;
        foreach (var l in Layers)
        {
            yield return l.AttentionNorm;
            foreach (var t in new[] { l.Wq, l.Wk, l.Wv, l.Wo }.SelectMany(w => w.Tensors)) yield return t;
            if (l.Bq != null) yield return l.Bq;
            if (l.Bk != null) yield return l.Bk;
            if (l.Bv != null) yield return l.Bv;
            yield return l.FfnNorm;
            foreach (var t in new[] { l.Gate, l.Up, l.Down }.SelectMany(w => w.Tensors)) yield return t;
        }
        yield return FinalNorm;
        if (!ReferenceEquals(LmHead, Embedding)) yield return LmHead;
    }

    public void Dispose()
    {
        foreach (var o in _owners) o.Dispose();
    }
}
