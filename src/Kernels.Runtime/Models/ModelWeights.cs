// The weights of a Llama-family model under Hugging Face names, shape-checked against the config, owning their storage.
namespace Kernels.Runtime.Models;

public sealed record LayerWeights(
    WeightTensor AttentionNorm,   // [hidden]
    WeightTensor Wq,              // [heads * head_dim, hidden]
    WeightTensor Wk,              // [kv_heads * head_dim, hidden]
    WeightTensor Wv,              // [kv_heads * head_dim, hidden]
    WeightTensor Wo,              // [hidden, heads * head_dim]
    WeightTensor? Bq,             // [heads * head_dim] (Qwen2)
    WeightTensor? Bk,             // [kv_heads * head_dim]
    WeightTensor? Bv,             // [kv_heads * head_dim]
    WeightTensor FfnNorm,         // [hidden]
    WeightTensor Gate,            // [intermediate, hidden]
    WeightTensor Up,              // [intermediate, hidden]
    WeightTensor Down);           // [hidden, intermediate]

public sealed class ModelWeights : IDisposable
{
    public WeightTensor Embedding { get; }       // [vocab, hidden]
    public IReadOnlyList<LayerWeights> Layers { get; }
    public WeightTensor FinalNorm { get; }       // [hidden]
    public WeightTensor LmHead { get; }          // [vocab, hidden]; the embedding itself when tied
    private readonly IReadOnlyList<IDisposable> _owners;

    private ModelWeights(WeightTensor embedding, IReadOnlyList<LayerWeights> layers, WeightTensor finalNorm, WeightTensor lmHead, IReadOnlyList<IDisposable> owners)
    {
        Embedding = embedding;
        Layers = layers;
        FinalNorm = finalNorm;
        LmHead = lmHead;
        _owners = owners;
    }

    /// <summary>
    /// Assembles the weights from a lookup by Hugging Face tensor name (null when absent). Every shape is checked
    /// against <paramref name="config"/>; a mismatch names <paramref name="source"/> and the tensor.
    /// </summary>
    public static ModelWeights Build(ModelConfig config, Func<string, WeightTensor?> lookup, string source, IReadOnlyList<IDisposable> owners)
    {
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

        int h = config.HiddenSize, q = config.QueryDim, kv = config.KvDim, ff = config.IntermediateSize, v = config.VocabSize;
        var embedding = Get("model.embed_tokens.weight", v, h);
        var layers = new LayerWeights[config.NumLayers];
        for (int i = 0; i < config.NumLayers; i++)
        {
            string p = $"model.layers.{i}.";
            layers[i] = new LayerWeights(
                Get(p + "input_layernorm.weight", h),
                Get(p + "self_attn.q_proj.weight", q, h),
                Get(p + "self_attn.k_proj.weight", kv, h),
                Get(p + "self_attn.v_proj.weight", kv, h),
                Get(p + "self_attn.o_proj.weight", h, q),
                config.AttentionBias ? Get(p + "self_attn.q_proj.bias", q) : Optional(p + "self_attn.q_proj.bias", q),
                config.AttentionBias ? Get(p + "self_attn.k_proj.bias", kv) : Optional(p + "self_attn.k_proj.bias", kv),
                config.AttentionBias ? Get(p + "self_attn.v_proj.bias", kv) : Optional(p + "self_attn.v_proj.bias", kv),
                Get(p + "post_attention_layernorm.weight", h),
                Get(p + "mlp.gate_proj.weight", ff, h),
                Get(p + "mlp.up_proj.weight", ff, h),
                Get(p + "mlp.down_proj.weight", h, ff));
        }
        var norm = Get("model.norm.weight", h);
        // Some tied checkpoints still carry lm_head.weight; an untied one must.
        var head = config.TieWordEmbeddings ? Optional("lm_head.weight", v, h) ?? embedding : Get("lm_head.weight", v, h);
        return new ModelWeights(embedding, layers, norm, head, owners);
    }

    public IEnumerable<WeightTensor> All()
    {
        yield return Embedding;
        foreach (var l in Layers)
        {
            yield return l.AttentionNorm; yield return l.Wq; yield return l.Wk; yield return l.Wv; yield return l.Wo;
            if (l.Bq != null) yield return l.Bq;
            if (l.Bk != null) yield return l.Bk;
            if (l.Bv != null) yield return l.Bv;
            yield return l.FfnNorm; yield return l.Gate; yield return l.Up; yield return l.Down;
        }
        yield return FinalNorm;
        if (!ReferenceEquals(LmHead, Embedding)) yield return LmHead;
    }

    public void Dispose()
    {
        foreach (var o in _owners) o.Dispose();
    }
}
