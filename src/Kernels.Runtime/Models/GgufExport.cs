// Exports a loaded model as a llama.cpp-compatible GGUF (llama / qwen2 architectures; F32, F16 or Q8_0 weights).
using System.Runtime.InteropServices;
using Kernels.Runtime.Numerics;
using Kernels.Runtime.Tokenization;

namespace Kernels.Runtime.Models;

internal static class GgufExport
{
    /// <summary>
    /// Writes <paramref name="model"/> to <paramref name="path"/>. 2-D weights take <paramref name="dtype"/>; norms and
    /// biases stay F32 (as llama.cpp's converter writes them). Llama q/k rows go back to GGML's adjacent-pair RoPE
    /// order. The tokenizer is written when it is a SentencePiece or byte-level BPE vocabulary.
    /// </summary>
    public static void Write(LoadedModel model, string path, TensorDType dtype)
    {
        if (dtype is not (TensorDType.F32 or TensorDType.F16 or TensorDType.Q8_0))
            throw new ArgumentException($"GGUF export supports F32, F16 and Q8_0 weights, not {dtype.Name()}", nameof(dtype));
        var c = model.Config;
        string arch = c.Architecture == ModelArchitecture.Qwen2 ? "qwen2" : "llama";
        var w = new GgufWriter()
            .Set("general.architecture", arch)
            .Set("general.name", Path.GetFileName(model.Source.TrimEnd('/')))
            .Set("general.alignment", (uint)GgufWriter.Alignment)
            .Set($"{arch}.context_length", (uint)c.MaxPositions)
            .Set($"{arch}.embedding_length", (uint)c.HiddenSize)
            .Set($"{arch}.feed_forward_length", (uint)c.IntermediateSize)
            .Set($"{arch}.block_count", (uint)c.NumLayers)
            .Set($"{arch}.attention.head_count", (uint)c.NumHeads)
            .Set($"{arch}.attention.head_count_kv", (uint)c.NumKvHeads)
            .Set($"{arch}.attention.key_length", (uint)c.HeadDim)
            .Set($"{arch}.attention.value_length", (uint)c.HeadDim)
            .Set($"{arch}.attention.layer_norm_rms_epsilon", (float)c.RmsNormEps)
            .Set($"{arch}.rope.freq_base", (float)c.RopeTheta)
            .Set($"{arch}.rope.dimension_count", (uint)c.HeadDim)
            .Set($"{arch}.vocab_size", (uint)c.VocabSize);
        if (c.RopeScaling.Type == RopeScalingType.Linear)
            w.Set($"{arch}.rope.scaling.type", "linear").Set($"{arch}.rope.scaling.factor", (float)c.RopeScaling.Factor);
        else if (c.RopeScaling.Type == RopeScalingType.Llama3)
            throw new NotSupportedException("GGUF export of Llama-3.1 RoPE scaling (rope_freqs.weight) is not implemented");

        WriteTokenizer(model, w);

        if (model.Weights.Quantization is { } quantized)
            throw new NotSupportedException($"GGUF export of a {quantized.Method}-quantized model is not supported; export the dense model");
        bool permute = arch == "llama";
        void Add(string name, WeightTensor t, bool matrix, int ropeHeads = 0)
        {
            var values = t.ToFloatArray();
            if (permute && ropeHeads > 0) values = HalvesToAdjacentPairs(values, ropeHeads, c.HeadDim);
            var type = matrix ? dtype : TensorDType.F32;
            if (type == TensorDType.Q8_0 && t.Columns % TensorDTypeInfo.Q8_0BlockSize != 0) type = TensorDType.F16;
            w.Add(new GgufWriter.Tensor(name, t.Shape, type, Encode(values, type)));
        }
        void AddLinear(string name, LinearWeight linear, int ropeHeads = 0) => Add(name, ((DenseLinear)linear).Weight, true, ropeHeads);

        var m = model.Weights;
        Add("token_embd.weight", m.Embedding, matrix: true);
        for (int i = 0; i < c.NumLayers; i++)
        {
            var l = m.Layers[i];
            string b = $"blk.{i}.";
            Add(b + "attn_norm.weight", l.AttentionNorm, false);
            AddLinear(b + "attn_q.weight", l.Wq, c.NumHeads);
            AddLinear(b + "attn_k.weight", l.Wk, c.NumKvHeads);
            AddLinear(b + "attn_v.weight", l.Wv);
            AddLinear(b + "attn_output.weight", l.Wo);
            if (l.Bq != null) Add(b + "attn_q.bias", l.Bq, false, c.NumHeads);
            if (l.Bk != null) Add(b + "attn_k.bias", l.Bk, false, c.NumKvHeads);
            if (l.Bv != null) Add(b + "attn_v.bias", l.Bv, false);
            Add(b + "ffn_norm.weight", l.FfnNorm, false);
            AddLinear(b + "ffn_gate.weight", l.Gate);
            AddLinear(b + "ffn_up.weight", l.Up);
            AddLinear(b + "ffn_down.weight", l.Down);
        }
        Add("output_norm.weight", m.FinalNorm, false);
        if (!ReferenceEquals(m.LmHead, m.Embedding)) Add("output.weight", m.LmHead, true);
        w.Write(path);
    }

    private static void WriteTokenizer(LoadedModel model, GgufWriter w)
    {
        ITextTokenizer tokenizer;
        try
        {
            tokenizer = model.Tokenizer;
        }
        catch (ModelFormatException)
        {
            return; // a model without a tokenizer exports without one
        }
        if (tokenizer is not SentencePieceTextTokenizer sp) return;
        var v = sp.Vocabulary;
        w.Set(GgufTokenizerMetadata.ModelKey, "llama")
            .Set(GgufTokenizerMetadata.TokensKey, v.Pieces.ToArray())
            .Set(GgufTokenizerMetadata.ScoresKey, v.Scores.ToArray())
            .Set(GgufTokenizerMetadata.TokenTypeKey, v.Types.Select(t => (int)t).ToArray())
            .Set(GgufTokenizerMetadata.UnknownKey, (uint)v.UnknownId)
            .Set(GgufTokenizerMetadata.AddSpacePrefixKey, v.AddDummyPrefix)
            .Set(GgufTokenizerMetadata.AddBosKey, tokenizer.AddBosByDefault);
        if (v.BosId is int bos) w.Set(GgufTokenizerMetadata.BosKey, (uint)bos);
        if (v.EosId is int eos) w.Set(GgufTokenizerMetadata.EosKey, (uint)eos);
    }

    /// <summary>Inverse of <see cref="RopeLayout.AdjacentPairsToHalves"/>: rotate-half rows back to GGML's pair order.</summary>
    private static float[] HalvesToAdjacentPairs(float[] values, int heads, int headDim)
    {
        int cols = values.Length / (heads * headDim), half = headDim / 2;
        var result = new float[values.Length];
        for (int h = 0; h < heads; h++)
            for (int i = 0; i < headDim; i++)
            {
                int src = h * headDim + (i % 2 == 0 ? i / 2 : half + i / 2);
                Array.Copy(values, (long)src * cols, result, (long)(h * headDim + i) * cols, cols);
            }
        return result;
    }

    /// <summary>fp32 values in the given storage type; Q8_0 as llama.cpp quantizes it (d = amax / 127, round to nearest).</summary>
    public static byte[] Encode(float[] values, TensorDType type)
    {
        switch (type)
        {
            case TensorDType.F32:
                return MemoryMarshal.AsBytes(values.AsSpan()).ToArray();
            case TensorDType.F16:
                return MemoryMarshal.AsBytes(values.Select(x => (Half)x).ToArray().AsSpan()).ToArray();
            case TensorDType.BF16:
                return MemoryMarshal.AsBytes(values.Select(DTypeConvert.SingleToBFloat16).ToArray().AsSpan()).ToArray();
            case TensorDType.Q8_0:
                int blocks = values.Length / TensorDTypeInfo.Q8_0BlockSize;
                var bytes = new byte[blocks * TensorDTypeInfo.Q8_0BlockBytes];
                for (int b = 0; b < blocks; b++)
                {
                    var block = values.AsSpan(b * TensorDTypeInfo.Q8_0BlockSize, TensorDTypeInfo.Q8_0BlockSize);
                    float amax = 0;
                    foreach (float x in block) amax = Math.Max(amax, Math.Abs(x));
                    float d = amax / 127f, id = d != 0 ? 1f / d : 0f;
                    var o = bytes.AsSpan(b * TensorDTypeInfo.Q8_0BlockBytes);
                    MemoryMarshal.Write(o, (Half)d);
                    for (int j = 0; j < TensorDTypeInfo.Q8_0BlockSize; j++) o[2 + j] = (byte)(sbyte)MathF.Round(block[j] * id);
                }
                return bytes;
            default:
                throw new ArgumentOutOfRangeException(nameof(type), type, "cannot encode");
        }
    }
}
