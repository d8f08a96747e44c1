// Small, valid model files the hostile-input tests start from: a GGUF of synthetic:tiny with a SentencePiece
// vocabulary, an HF directory (golden tiny Llama), a SqueezeLLM-quantized directory and a llama2.c checkpoint.
using System.Runtime.InteropServices;
using System.Text.Json.Nodes;
using Kernels.Runtime.Calibration;
using Kernels.Runtime.Models;
using Kernels.Runtime.Numerics;
using Kernels.Runtime.Quantization;
using Kernels.Runtime.Tokenization;

namespace Kernels.Tests.Models.Hostile;

public static unsafe class TestModelFiles
{
    /// <summary>
    /// synthetic:tiny exported to GGUF (2-D weights in <paramref name="dtype"/>), plus a 320-token "llama" vocabulary
    /// (specials, 256 byte tokens, letters) so the file carries every metadata kind a real one does.
    /// </summary>
    public static byte[] TinyGguf(TensorDType dtype = TensorDType.F16)
    {
        string dir = Path.Combine(Path.GetTempPath(), "kernels-tiny-gguf-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(dir);
        try
        {
            string plain = Path.Combine(dir, "plain.gguf"), full = Path.Combine(dir, "tiny.gguf");
            using (var model = ModelLoader.Load("synthetic:tiny")) GgufExport.Write(model, plain, dtype);
            using (var source = GgufFile.Open(plain))
            {
                var w = new GgufWriter();
                foreach (var (key, value) in source.Metadata) w.Set(key, value);
                var (tokens, scores, types) = Vocabulary();
                w.Set(GgufTokenizerMetadata.ModelKey, "llama")
                    .Set(GgufTokenizerMetadata.TokensKey, tokens)
                    .Set(GgufTokenizerMetadata.ScoresKey, scores)
                    .Set(GgufTokenizerMetadata.TokenTypeKey, types)
                    .Set(GgufTokenizerMetadata.BosKey, 1u)
                    .Set(GgufTokenizerMetadata.EosKey, 2u)
                    .Set(GgufTokenizerMetadata.UnknownKey, 0u);
                foreach (var info in source.Tensors.Values)
                {
                    var t = source.TryGetWeight(info.Name, info.Name)!;
                    w.Add(new GgufWriter.Tensor(info.Name, info.Shape, t.DType, new ReadOnlySpan<byte>(t.Data, checked((int)t.ByteLength)).ToArray()));
                }
                w.Write(full);
            }
            return File.ReadAllBytes(full);
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }

    private static (string[] Tokens, float[] Scores, int[] Types) Vocabulary()
    {
        var tokens = new List<string> { "<unk>", "<s>", "</s>" };
        var types = new List<int> { (int)SentencePieceTokenType.Unknown, (int)SentencePieceTokenType.Control, (int)SentencePieceTokenType.Control };
        for (int b = 0; b < 256; b++)
        {
            tokens.Add($"<0x{b:X2}>");
            types.Add((int)SentencePieceTokenType.Byte);
        }
        foreach (string letter in "abcdefghijklmnopqrstuvwxyz".Select(c => c.ToString()))
        {
            tokens.Add(letter);
            tokens.Add("\u2581" + letter);
            types.Add((int)SentencePieceTokenType.Normal);
            types.Add((int)SentencePieceTokenType.Normal);
        }
        tokens.Add("\u2581");
        types.Add((int)SentencePieceTokenType.Normal);
        var scores = tokens.Select((_, i) => i < 259 ? 0f : -i).ToArray();
        return (tokens.ToArray(), scores, types.ToArray());
    }

    /// <summary>
    /// A copy of the golden tiny Llama (config.json + model.safetensors) in <paramref name="dir"/>, with a
    /// tokenizer_config.json and, when <paramref name="withTokenizer"/>, a byte-level BPE tokenizer.json (256 byte
    /// symbols, a few merges, &lt;s&gt; and &lt;/s&gt;) so the model also runs from text.
    /// </summary>
    public static string HfDirectory(string dir, bool withTokenizer = false)
    {
        Directory.CreateDirectory(dir);
        foreach (var f in Directory.GetFiles(TestPaths.Golden("tiny-llama-f32")))
            if (!f.EndsWith("golden.safetensors")) File.Copy(f, Path.Combine(dir, Path.GetFileName(f)));
        File.WriteAllText(Path.Combine(dir, "tokenizer_config.json"),
            """{"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": true, "chat_template": "{% for m in messages %}[INST] {{ m.content }} [/INST]{% endfor %}"}""");
        if (withTokenizer) File.WriteAllText(Path.Combine(dir, "tokenizer.json"), ByteLevelTokenizerJson());
        return dir;
    }

    private static string ByteLevelTokenizerJson()
    {
        var vocab = new JsonObject();
        for (int b = 0; b < 256; b++) vocab[ByteLevelSymbols.Symbol((byte)b).ToString()] = b;
        string space = ByteLevelSymbols.Symbol((byte)' ').ToString();
        var merges = new JsonArray();
        int id = 256;
        foreach (string pair in new[] { "t h", "th e", $"{space} t", $"{space}t h", "o n", "a n" })
        {
            merges.Add(pair);
            vocab[pair.Replace(" ", "")] = id++;
        }
        var root = new JsonObject
        {
            ["model"] = new JsonObject { ["type"] = "BPE", ["vocab"] = vocab, ["merges"] = merges },
            ["added_tokens"] = new JsonArray(
                new JsonObject { ["id"] = 300, ["content"] = "<s>", ["special"] = true },
                new JsonObject { ["id"] = 301, ["content"] = "</s>", ["special"] = true }),
            ["pre_tokenizer"] = new JsonObject { ["type"] = "ByteLevel", ["add_prefix_space"] = false, ["use_regex"] = true },
            ["decoder"] = new JsonObject { ["type"] = "ByteLevel" },
        };
        return root.ToJsonString();
    }

    /// <summary>A safetensors file's bytes with its JSON header changed by <paramref name="edit"/> (the data section unchanged).</summary>
    public static byte[] EditSafetensorsHeader(byte[] file, Action<JsonObject> edit)
    {
        int headerLength = (int)BitConverter.ToUInt64(file, 0);
        var header = JsonNode.Parse(System.Text.Encoding.UTF8.GetString(file, 8, headerLength))!.AsObject();
        edit(header);
        var newHeader = System.Text.Encoding.UTF8.GetBytes(header.ToJsonString());
        var result = new byte[8 + newHeader.Length + file.Length - 8 - headerLength];
        BitConverter.TryWriteBytes(result.AsSpan(0, 8), (ulong)newHeader.Length);
        newHeader.CopyTo(result, 8);
        file.AsSpan(8 + headerLength).CopyTo(result.AsSpan(8 + newHeader.Length));
        return result;
    }

    /// <summary>synthetic:tiny quantized with SqueezeLLM (3 shards) into <paramref name="dir"/>.</summary>
    public static string SqueezeLlmDirectory(string dir)
    {
        using var model = ModelLoader.Load("synthetic:tiny");
        var quantizer = QuantizationMethods.Find("squeezellm", "test").CreateQuantizer(new QuantizeOptions { Method = "squeezellm", Bits = 3 }, model, new CpuCalibrationRunner());
        HfModelWriter.Write(model, dir, quantizer);
        return dir;
    }

    /// <summary>synthetic:tiny as a llama2.c checkpoint (header, then float32 arrays in run.c's order; unshared classifier).</summary>
    public static byte[] Llama2cCheckpoint()
    {
        using var model = ModelLoader.Load("synthetic:tiny");
        var c = model.Config;
        var w = model.Weights;
        using var stream = new MemoryStream();
        using var o = new BinaryWriter(stream);
        foreach (int v in new[] { c.HiddenSize, c.IntermediateSize, c.NumLayers, c.NumHeads, c.NumKvHeads, -c.VocabSize, c.MaxPositions }) o.Write(v);
        void Put(WeightTensor t) => o.Write(MemoryMarshal.AsBytes(t.ToFloatArray().AsSpan()));
        void PerLayer(Func<LayerWeights, WeightTensor> pick) { foreach (var l in w.Layers) Put(pick(l)); }
        Put(w.Embedding);
        PerLayer(l => l.AttentionNorm);
        // The checkpoint stores q/k in adjacent-pair RoPE order; these weights are random, so their order does not
        // matter for a reader test (the loader permutes whatever it finds).
        PerLayer(l => ((DenseLinear)l.Wq).Weight);
        PerLayer(l => ((DenseLinear)l.Wk).Weight);
        PerLayer(l => ((DenseLinear)l.Wv).Weight);
        PerLayer(l => ((DenseLinear)l.Wo).Weight);
        PerLayer(l => l.FfnNorm);
        PerLayer(l => ((DenseLinear)l.Gate).Weight);
        PerLayer(l => ((DenseLinear)l.Down).Weight);
        PerLayer(l => ((DenseLinear)l.Up).Weight);
        Put(w.FinalNorm);
        o.Write(new byte[2L * c.MaxPositions * (c.HeadDim / 2) * sizeof(float)]); // the unused RoPE tables
        Put(w.LmHead);
        o.Flush();
        return stream.ToArray();
    }
}
