// Writes a loaded model as a Hugging Face model directory (config.json, safetensors shards, tokenizer), optionally
// quantizing its linear layers on the way: the output of `kernels quantize` and `kernels export --format hf`.
using System.Text.Json;
using System.Text.Json.Nodes;
using Kernels.Runtime.Numerics;
using Kernels.Runtime.Tokenization;

namespace Kernels.Runtime.Models;

internal static unsafe class HfModelWriter
{
    /// <summary>
    /// Writes <paramref name="model"/> into <paramref name="directory"/> (created; existing model files in it are
    /// replaced). One shard per transformer layer plus one for the embedding, final norm and LM head, each written as
    /// soon as it is made, so quantizing holds one layer in memory, never the model. Linear layers go through
    /// <paramref name="quantizer"/> when given; everything else keeps its stored dtype (Q8_0 becomes F32).
    /// </summary>
    public static void Write(LoadedModel model, string directory, ILinearQuantizer? quantizer = null, Action<string>? progress = null)
    {
        var c = model.Config;
        var m = model.Weights;
        if (quantizer != null && m.Quantization != null)
            throw new ArgumentException($"{model.Source} is already quantized ({m.Quantization.Method}); quantize the dense model");
        Directory.CreateDirectory(directory);

        int shards = c.NumLayers + 1;
        string ShardName(int i) => $"model-{i + 1:00000}-of-{shards:00000}.safetensors";
        var weightMap = new SortedDictionary<string, string>(StringComparer.Ordinal);
        var metadata = new Dictionary<string, string> { ["format"] = "pt" };
        if (quantizer != null) metadata["quant_method"] = Method(quantizer.Config);
        else if (m.Quantization != null) metadata["quant_method"] = m.Quantization.Method;

        void WriteShard(int index, List<SafetensorsWriter.Tensor> tensors)
        {
            string name = ShardName(index);
            SafetensorsWriter.Write(Path.Combine(directory, name), tensors, metadata);
            foreach (var t in tensors) weightMap[t.Name] = name;
        }

        for (int i = 0; i < c.NumLayers; i++)
        {
            var l = m.Layers[i];
            var tensors = new List<SafetensorsWriter.Tensor>();
            tensors.Add(Copy(l.AttentionNorm));
            foreach (var w in new[] { l.Wq, l.Wk, l.Wv, l.Wo }) tensors.AddRange(Linear(w, quantizer));
            foreach (var b in new[] { l.Bq, l.Bk, l.Bv }) if (b != null) tensors.Add(Copy(b));
            tensors.Add(Copy(l.FfnNorm));
            foreach (var w in new[] { l.Gate, l.Up, l.Down }) tensors.AddRange(Linear(w, quantizer));
            WriteShard(i, tensors);
            progress?.Invoke($"layer {i + 1}/{c.NumLayers} written");
        }
        var last = new List<SafetensorsWriter.Tensor> { Copy(m.Embedding, "model.embed_tokens.weight"), Copy(m.FinalNorm, "model.norm.weight") };
        if (!ReferenceEquals(m.LmHead, m.Embedding)) last.Add(Copy(m.LmHead, "lm_head.weight"));
        WriteShard(c.NumLayers, last);

        var index = new JsonObject
        {
            ["metadata"] = new JsonObject { ["total_size"] = TotalSize(directory, weightMap.Values.Distinct()) },
            ["weight_map"] = new JsonObject(weightMap.Select(p => KeyValuePair.Create(p.Key, (JsonNode?)p.Value))),
        };
        File.WriteAllText(Path.Combine(directory, "model.safetensors.index.json"), index.ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n");
        File.Delete(Path.Combine(directory, "model.safetensors")); // a stale single file would win over the index
        HfConfigWriter.Write(Path.Combine(directory, "config.json"), c, quantizer?.Config ?? m.Quantization?.Parameters);
        WriteTokenizer(model, directory, progress);
    }

    private static string Method(JsonObject config) =>
        config["quant_method"]?.GetValue<string>() ?? throw new InvalidOperationException("a quantizer's config must name its quant_method");

    private static long TotalSize(string directory, IEnumerable<string> files) =>
        files.Sum(f => new FileInfo(Path.Combine(directory, f)).Length);

    private static IEnumerable<SafetensorsWriter.Tensor> Linear(LinearWeight w, ILinearQuantizer? quantizer)
    {
        if (w is DenseLinear dense)
            return quantizer != null ? quantizer.Quantize(dense) : [Copy(dense.Weight, w.Name + ".weight")];
        return w.Tensors.Select(t => Copy(t)); // already quantized: its tensors as stored
    }

    /// <summary>A tensor's bytes under its name (or <paramref name="name"/>), in its dtype; Q8_0 is widened to F32.</summary>
    private static SafetensorsWriter.Tensor Copy(WeightTensor t, string? name = null)
    {
        name ??= t.Name;
        if (t.DType == TensorDType.Q8_0)
        {
            var values = t.ToFloatArray();
            var bytes = new byte[values.Length * sizeof(float)];
            Buffer.BlockCopy(values, 0, bytes, 0, bytes.Length);
            return new SafetensorsWriter.Tensor(name, TensorDType.F32.Name(), t.Shape, bytes);
        }
        return new SafetensorsWriter.Tensor(name, t.DType.Name(), t.Shape, new ReadOnlySpan<byte>(t.Data, checked((int)t.ByteLength)).ToArray());
    }

    /// <summary>The tokenizer files of a Hugging Face source as they are; a SentencePiece vocabulary from any other source as tokenizer.model.</summary>
    private static void WriteTokenizer(LoadedModel model, string directory, Action<string>? progress)
    {
        if (model.Format == ModelFormat.HuggingFace)
        {
            string source = model.Source;
            if (Path.GetFullPath(source) == Path.GetFullPath(directory)) return;
            foreach (var file in new[] { "tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json" })
            {
                string from = Path.Combine(source, file);
                if (File.Exists(from)) File.Copy(from, Path.Combine(directory, file), overwrite: true);
            }
            return;
        }
        ITextTokenizer tokenizer;
        try
        {
            tokenizer = model.Tokenizer;
        }
        catch (ModelFormatException e)
        {
            progress?.Invoke($"note: no tokenizer written ({e.Message}); the output needs one given at load (ModelLoadOptions.TokenizerPath)");
            return;
        }
        if (tokenizer is not SentencePieceTextTokenizer sp)
        {
            progress?.Invoke("note: no tokenizer written (only SentencePiece vocabularies of non-Hugging Face sources are converted); the output needs one given at load (ModelLoadOptions.TokenizerPath)");
            return;
        }
        File.WriteAllBytes(Path.Combine(directory, "tokenizer.model"), SentencePieceModelProto.Write(sp.Vocabulary));
        var config = new JsonObject { ["add_bos_token"] = sp.AddBosByDefault };
        if (model.ChatTemplateText != null) config["chat_template"] = model.ChatTemplateText;
        File.WriteAllText(Path.Combine(directory, "tokenizer_config.json"), config.ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n");
    }
}
