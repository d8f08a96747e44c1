// llama2.c checkpoints (legacy .bin): a 7-int header, then float32 arrays in a fixed order; RoPE on adjacent pairs.
using System.Runtime.InteropServices;
using Kernels.Runtime.Numerics;

namespace Kernels.Runtime.Models;

internal static unsafe class Llama2cCheckpoint
{
    private const int HeaderBytes = 7 * sizeof(int);

    /// <summary>
    /// Layout (all float32, matrices W[out][in]): token_emb [V, D], rms_att [L, D], wq [L, D, D], wk [L, KV, D],
    /// wv [L, KV, D], wo [L, D, D], rms_ffn [L, D], w1 [L, F, D], w2 [L, D, F], w3 [L, F, D], rms_final [D],
    /// two RoPE tables [S, hd/2] (unused), then wcls [V, D] when the header's vocab size is negative.
    /// </summary>
    public static (ModelConfig Config, ModelWeights Weights) Load(string path)
    {
        var file = MappedFile.Open(path);
        var owners = new List<IDisposable> { file };
        try
        {
            if (file.Length < HeaderBytes)
                throw new ModelFormatException(path, $"truncated llama2.c checkpoint: {file.Length} bytes, the header alone needs {HeaderBytes}");
            var h = MemoryMarshal.Cast<byte, int>(file.Span(0, HeaderBytes));
            int dim = h[0], hidden = h[1], layers = h[2], heads = h[3], kvHeads = h[4], vocabRaw = h[5], seqLen = h[6];
            bool shared = vocabRaw > 0;
            int vocab = vocabRaw == int.MinValue ? 0 : Math.Abs(vocabRaw); // 0 is rejected just below
            // Each header field within its bound, named, before any size is computed from it.
            void Field(string name, long value, long max)
            {
                if (value < 1 || value > max)
                    throw new ModelFormatException(path, $"not a llama2.c checkpoint: header field {name} = {value} is outside 1..{max}");
            }
            Field("dim", dim, 1 << 16);
            Field("hidden_dim", hidden, 1 << 18);
            Field("n_layers", layers, ModelConfig.MaxLayers);
            Field("n_heads", heads, dim);
            Field("n_kv_heads", kvHeads, heads);
            Field("vocab_size (absolute value)", vocab, 1 << 22);
            Field("seq_len", seqLen, ModelConfig.MaxContext);
            if (dim % heads != 0) throw new ModelFormatException(path, $"not a llama2.c checkpoint: dim = {dim} is not a multiple of n_heads = {heads}");
            int headDim = dim / heads;
            var config = new ModelConfig
            {
                Architecture = ModelArchitecture.Llama,
                HiddenSize = dim,
                IntermediateSize = hidden,
                NumLayers = layers,
                NumHeads = heads,
                NumKvHeads = kvHeads,
                HeadDim = headDim,
                VocabSize = vocab,
                MaxPositions = seqLen,
                RmsNormEps = 1e-5,
                RopeTheta = 10000.0,
                TieWordEmbeddings = shared,
                BosTokenId = 1,
                // llama2.c's sentencepiece vocabularies: </s> is 2, and the TinyStories models end a story with BOS.
                EosTokenIds = [2, 1],
            };
            config.Validate(path);
            int kvDim = kvHeads * headDim;

            long offset = HeaderBytes;
            long expected = HeaderBytes + 4L * ((long)vocab * dim + layers * (2L * dim + 2L * dim * dim + 2L * kvDim * dim + 3L * hidden * dim)
                                                + dim + 2L * seqLen * (headDim / 2) + (shared ? 0 : (long)vocab * dim));
            if (file.Length < expected)
                throw new ModelFormatException(path, $"truncated llama2.c checkpoint: {file.Length} bytes, the header's shapes need {expected}");

            WeightTensor Take(string name, params long[] shape)
            {
                var t = new WeightTensor(name, TensorDType.F32, shape, file.Pointer + offset);
                offset += t.ByteLength;
                return t;
            }
            WeightTensor[] TakeLayers(Func<int, string> name, params long[] shape)
            {
                var r = new WeightTensor[layers];
                for (int i = 0; i < layers; i++) r[i] = Take(name(i), shape);
                return r;
            }

            var byName = new Dictionary<string, WeightTensor>();
            void Put(WeightTensor t) => byName[t.Name] = t;
            void PutAll(WeightTensor[] ts) { foreach (var t in ts) Put(t); }

            Put(Take("model.embed_tokens.weight", vocab, dim));
            PutAll(TakeLayers(i => $"model.layers.{i}.input_layernorm.weight", dim));
            var wq = TakeLayers(i => $"model.layers.{i}.self_attn.q_proj.weight", dim, dim);
            var wk = TakeLayers(i => $"model.layers.{i}.self_attn.k_proj.weight", kvDim, dim);
            PutAll(TakeLayers(i => $"model.layers.{i}.self_attn.v_proj.weight", kvDim, dim));
            PutAll(TakeLayers(i => $"model.layers.{i}.self_attn.o_proj.weight", dim, dim));
            PutAll(TakeLayers(i => $"model.layers.{i}.post_attention_layernorm.weight", dim));
            PutAll(TakeLayers(i => $"model.layers.{i}.mlp.gate_proj.weight", hidden, dim));
            PutAll(TakeLayers(i => $"model.layers.{i}.mlp.down_proj.weight", dim, hidden));
            PutAll(TakeLayers(i => $"model.layers.{i}.mlp.up_proj.weight", hidden, dim));
            Put(Take("model.norm.weight", dim));
            offset += 2L * seqLen * (headDim / 2) * sizeof(float);
            if (!shared) Put(Take("lm_head.weight", vocab, dim));

            for (int i = 0; i < layers; i++)
            {
                Put(RopeLayout.AdjacentPairsToHalves(wq[i], heads, headDim, owners));
                Put(RopeLayout.AdjacentPairsToHalves(wk[i], kvHeads, headDim, owners));
            }
            var weights = ModelWeights.Build(config, n => byName.GetValueOrDefault(n), path, owners);
            return (config, weights);
        }
        catch
        {
            foreach (var o in owners) o.Dispose();
            throw;
        }
    }

    /// <summary>Whether the first bytes look like a llama2.c header (used by format detection).</summary>
    public static bool LooksLikeCheckpoint(ReadOnlySpan<byte> head)
    {
        if (head.Length < HeaderBytes) return false;
        var h = MemoryMarshal.Cast<byte, int>(head[..HeaderBytes]);
        return h[0] > 0 && h[1] > 0 && h[2] > 0 && h[3] > 0 && h[4] > 0 && h[5] != 0 && h[6] > 0 && h[0] % h[3] == 0;
    }
}
