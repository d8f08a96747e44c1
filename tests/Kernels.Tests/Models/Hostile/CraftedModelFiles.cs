// The crafted model files of issue 21, each rebuilt from a small valid file: the regression cases that the library
// (ModelFormatException) and the CLI (one `error:` line) must both refuse, naming the file, the field and the value.
using System.Text;
using System.Text.Json.Nodes;

namespace Kernels.Tests.Models.Hostile;

/// <summary>
/// One hostile input: <see cref="Build"/> writes it under the given fresh directory and returns (what to pass as
/// --model, the file the error must name); the error must also contain every one of <see cref="Fragments"/>.
/// </summary>
public sealed record CraftedModel(string Name, Func<string, (string Model, string File)> Build, params string[] Fragments)
{
    public override string ToString() => Name;
}

public static class CraftedModelFiles
{
    private const ulong TwoTo63 = 1UL << 63;
    private const string Arch = "llama";

    private static readonly Lazy<byte[]> Tiny = new(() => TestModelFiles.TinyGguf());

    public static IEnumerable<CraftedModel> All() =>
        GgufCases(stories: false).Concat(RawGgufCases()).Concat(HfCases()).Concat(SqueezeLlmCases());

    // ---------------------------------------------------------------------------------------------------- GGUF

    /// <summary>The GGUF cases, built from the synthetic tiny GGUF or (<paramref name="stories"/>) from stories260K.gguf.</summary>
    public static IEnumerable<CraftedModel> GgufCases(bool stories)
    {
        string tag = stories ? "Stories260K" : "Tiny";
        byte[] Source() => stories ? File.ReadAllBytes(SharedData.Require("models/stories260K/stories260K.gguf")) : Tiny.Value;
        CraftedModel Case(string name, Func<byte[], GgufLayout, byte[]> edit, params string[] fragments) =>
            new($"{tag}Gguf_{name}", dir => Gguf(dir, Source(), edit), fragments);

        // Issue 21: a header that ends unaligned exactly at the end of the file puts the aligned data start past the
        // end; tensor offsets of 2^63 + o, or wrapping to 4 MiB before the mapping, then passed the old checks.
        yield return Case("HeaderEndingUnalignedAtEndOfFile_OffsetsPlus2To63", Offsets((o, _) => TwoTo63 + o, headerOnly: true), "past the end of the file");
        yield return Case("HeaderEndingUnalignedAtEndOfFile_OffsetsWrappingTo4MiBBeforeTheMapping",
            Offsets((o, l) => unchecked(0UL - (ulong)DataStart(l) - (4UL << 20) + o), headerOnly: true), "past the end of the file");
        yield return Case("OffsetsPlus2To63", Offsets((o, _) => TwoTo63 + o, headerOnly: false), "offset", (TwoTo63 + 0).ToString()[..6]);
        yield return Case("OffsetsWrappingTo4MiBBeforeTheMapping", Offsets((o, _) => unchecked(o - (4UL << 20)), headerOnly: false), "offset", "184467440737");
        yield return Case("Alignment2To30", ScalarOrExtra("general.alignment", 4, 1UL << 30), "general.alignment", (1UL << 30).ToString());
        yield return Case("Alignment2To30_OffsetsWrappingBackIntoTheHeader",
            Both(ScalarOrExtra("general.alignment", 4, 1UL << 30), Offsets((o, _) => unchecked(o - (1UL << 30)), headerOnly: false)), "general.alignment", (1UL << 30).ToString());
        // Issue 21: block_count 2^31 - 1 (or 10^8) in a 14 KB file built a name map per layer before any tensor check.
        foreach (ulong blocks in new ulong[] { int.MaxValue, 100_000_000, 200_000 })
            yield return Case($"BlockCount{blocks}", Scalar($"{Arch}.block_count", blocks), $"{Arch}.block_count", blocks.ToString());
        // Within the config bound but beyond what the file holds (9 tensors a block).
        yield return Case("BlockCount1000", Scalar($"{Arch}.block_count", 1000), $"{Arch}.block_count", "1000", "needs at least 9000 tensors");
        yield return Case("HeadCount2To31", Scalar($"{Arch}.attention.head_count", 1UL << 31), $"{Arch}.attention.head_count", (1UL << 31).ToString());
        yield return Case("ContextLength0", Scalar($"{Arch}.context_length", 0), $"{Arch}.context_length", "0");
        // Issue 21: accepted silently, giving NaN or zero logits.
        yield return Case("RopeScalingFactor0", Both(ExtraString($"{Arch}.rope.scaling.type", "linear"), ExtraFloat($"{Arch}.rope.scaling.factor", 0f)),
            $"{Arch}.rope.scaling.factor", "= 0");
        yield return Case("RopeFreqBaseInfinity", ScalarOrExtra($"{Arch}.rope.freq_base", 6, FloatBits(float.PositiveInfinity)), $"{Arch}.rope.freq_base", "inf");
        yield return Case("RmsEpsilonNaN", Scalar($"{Arch}.attention.layer_norm_rms_epsilon", FloatBits(float.NaN)), $"{Arch}.attention.layer_norm_rms_epsilon", "nan");
        yield return Case("ArchitectureIsANumber", Both(Remove("general.architecture"), ExtraUInt("general.architecture", 5)), "general.architecture", "UInt32");
    }

    /// <summary>GGUF files written byte by byte: one tensor whose shape times its element size overflows 64 bits.</summary>
    public static IEnumerable<CraftedModel> RawGgufCases()
    {
        // [2^62 + 51] F32 elements need 2^64 + 204 bytes: unchecked, that wrapped to 204 and fit the file.
        ulong elements = (1UL << 62) + 51;
        yield return new("RawGguf_ByteCountOverflowingTo204", dir =>
        {
            string path = Path.Combine(dir, "model.gguf");
            using (var w = new BinaryWriter(File.Create(path)))
            {
                w.Write(Encoding.ASCII.GetBytes("GGUF")); w.Write(3u);
                w.Write(1UL); w.Write(1UL);
                Str(w, "general.architecture"); w.Write(8u); Str(w, "llama");
                Str(w, "token_embd.weight"); w.Write(1u); w.Write(elements); w.Write(0u); w.Write(0UL);
                w.Write(new byte[32 - w.BaseStream.Position % 32]);
                w.Write(new byte[256]);
            }
            return (path, path);
        }, "token_embd.weight", elements.ToString());
    }

    // ---------------------------------------------------------------------------------------------------- HF

    public static IEnumerable<CraftedModel> HfCases()
    {
        CraftedModel Config(string name, Action<JsonObject> edit, params string[] fragments) => new($"HfConfig_{name}", dir =>
        {
            string model = TestModelFiles.HfDirectory(Path.Combine(dir, "model"));
            string config = Path.Combine(model, "config.json");
            var json = JsonNode.Parse(File.ReadAllText(config))!.AsObject();
            edit(json);
            File.WriteAllText(config, json.ToJsonString());
            return (model, config);
        }, fragments);
        // A value System.Text.Json will not write (1e400): a marker value set through the DOM, then replaced as text.
        CraftedModel RawConfig(string name, Action<JsonObject> mark, string from, string to, params string[] fragments) => new($"HfConfig_{name}", dir =>
        {
            string model = TestModelFiles.HfDirectory(Path.Combine(dir, "model"));
            string config = Path.Combine(model, "config.json");
            var json = JsonNode.Parse(File.ReadAllText(config))!.AsObject();
            mark(json);
            string text = json.ToJsonString();
            Assert.That(text, Does.Contain(from), "precondition");
            File.WriteAllText(config, text.Replace(from, to));
            return (model, config);
        }, fragments);
        CraftedModel TokenizerConfig(string name, string json, params string[] fragments) => new($"HfTokenizerConfig_{name}", dir =>
        {
            string model = TestModelFiles.HfDirectory(Path.Combine(dir, "model"));
            string file = Path.Combine(model, "tokenizer_config.json");
            File.WriteAllText(file, json);
            return (model, file);
        }, fragments);

        // Issue 21: unhandled exceptions with a stack trace (exit 134).
        yield return Config("ArchitecturesHoldsANumber", j => j["architectures"] = new JsonArray(1), "architectures", "1");
        yield return Config("ModelTypeIsANumber", j => j["model_type"] = 5, "model_type", "5");
        yield return Config("DtypeIsANumber", j => j["dtype"] = 5, "dtype", "5");
        yield return Config("RopeTypeIsANumber", j => j["rope_parameters"] = new JsonObject { ["rope_type"] = 5 }, "rope_parameters.rope_type", "5");
        yield return TokenizerConfig("ChatTemplateIsANumberList", """{"chat_template": [1, 2]}""", "chat_template", "1");
        yield return TokenizerConfig("ChatTemplateNameIsANumber", """{"chat_template": [{"name": 5, "template": "x"}]}""", "chat_template[0].name", "5");
        // Issue 21: accepted silently, giving NaN or zero logits; and a vocabulary of 2^31 reported as "missing".
        yield return Config("RopeScalingFactor0", j => j["rope_scaling"] = new JsonObject { ["type"] = "linear", ["factor"] = 0 }, "rope_scaling.factor", "0");
        yield return Config("Llama3ScalingWithEqualFrequencyFactors", j => j["rope_scaling"] = new JsonObject
        {
            ["rope_type"] = "llama3", ["factor"] = 8.0, ["low_freq_factor"] = 4.0, ["high_freq_factor"] = 4.0, ["original_max_position_embeddings"] = 8192,
        }, "high_freq_factor", "4");
        yield return RawConfig("RmsNormEps1e400", j => j["rms_norm_eps"] = 12345.25, "12345.25", "1e400", "rms_norm_eps", "1e400");
        yield return Config("RopeThetaNegative", j => j["rope_parameters"]!["rope_theta"] = -1.0, "rope_theta", "-1");
        yield return Config("VocabSize2To31", j => j["vocab_size"] = 1L << 31, "vocab_size", "2147483648");
        yield return Config("LayerCount2To31Minus1", j => j["num_hidden_layers"] = int.MaxValue, "num_hidden_layers", int.MaxValue.ToString());
        yield return Config("LayerCount1000", j => j["num_hidden_layers"] = 1000, "num_hidden_layers", "1000", "needs at least 9000 tensors");
        yield return Config("HiddenSizeIsAString", j => j["hidden_size"] = "64", "hidden_size", "\"64\"");
    }

    /// <summary>Issue 21: a SqueezeLLM outlier_cols of shape [2^62 + 51] (shape x 4 bytes wrapped to the 204 its offsets span).</summary>
    public static IEnumerable<CraftedModel> SqueezeLlmCases()
    {
        ulong nnz = (1UL << 62) + 51;
        yield return new("SqueezeLlm_OutlierColsOf2To62Plus51", dir =>
        {
            string model = TestModelFiles.SqueezeLlmDirectory(Path.Combine(dir, "model"));
            string target = "model.layers.0.mlp.up_proj.";
            string shard = Directory.GetFiles(model, "*.safetensors").Single(f => File.ReadAllText(f).Contains(target + "outlier_cols"));
            File.WriteAllBytes(shard, TestModelFiles.EditSafetensorsHeader(File.ReadAllBytes(shard), header =>
            {
                foreach (string suffix in new[] { "outlier_cols", "outlier_values" })
                {
                    var entry = header[target + suffix]!.AsObject();
                    long begin = (long)entry["data_offsets"]![0]!;
                    entry["shape"] = new JsonArray(nnz);
                    entry["data_offsets"] = new JsonArray(begin, begin + 204);
                }
            }));
            return (model, shard);
        }, "outlier_", nnz.ToString());
    }

    // ---------------------------------------------------------------------------------------------------- editing

    private static (string, string) Gguf(string dir, byte[] source, Func<byte[], GgufLayout, byte[]> edit)
    {
        var bytes = (byte[])source.Clone();
        string path = Path.Combine(dir, "model.gguf");
        File.WriteAllBytes(path, edit(bytes, GgufLayout.Of(bytes)));
        return (path, path);
    }

    private static long DataStart(GgufLayout l) => (l.HeaderEnd + 31) / 32 * 32;

    /// <summary>Every tensor offset o becomes f(o); the file is cut at the header's (unaligned) end when <paramref name="headerOnly"/>.</summary>
    private static Func<byte[], GgufLayout, byte[]> Offsets(Func<ulong, GgufLayout, ulong> f, bool headerOnly) => (bytes, layout) =>
    {
        foreach (long at in layout.TensorOffsets.Values) GgufLayout.Set(bytes, at, 8, f(GgufLayout.Get(bytes, at), layout));
        if (!headerOnly) return bytes;
        Assert.That(layout.HeaderEnd % 32, Is.Not.EqualTo(0), "precondition: the header ends unaligned, so the aligned data start lies past the end of a header-only file");
        return bytes[..(int)layout.HeaderEnd];
    };

    private static Func<byte[], GgufLayout, byte[]> Scalar(string key, ulong value) => (bytes, layout) =>
    {
        var field = layout.Fields.Single(f => f.Kind == GgufLayout.FieldKind.Scalar && f.Owner == key);
        GgufLayout.Set(bytes, field.Position, field.Width, value);
        return bytes;
    };

    /// <summary>Sets a 4-byte scalar (type 4 uint32 or 6 float32), adding the entry when the file has none.</summary>
    private static Func<byte[], GgufLayout, byte[]> ScalarOrExtra(string key, uint type, ulong value) => (bytes, layout) =>
        layout.Values.ContainsKey(key) ? Scalar(key, value)(bytes, layout) : Extra(key, w => { w.Write(type); w.Write((uint)value); })(bytes, layout);

    private static ulong FloatBits(float f) => BitConverter.SingleToUInt32Bits(f);

    private static Func<byte[], GgufLayout, byte[]> Both(params Func<byte[], GgufLayout, byte[]>[] edits) => (bytes, _) =>
    {
        foreach (var e in edits) bytes = e(bytes, GgufLayout.Of(bytes));
        return bytes;
    };

    private static Func<byte[], GgufLayout, byte[]> ExtraString(string key, string value) => Extra(key, w => { w.Write(8u); Str(w, value); });
    private static Func<byte[], GgufLayout, byte[]> ExtraFloat(string key, float value) => Extra(key, w => { w.Write(6u); w.Write(value); });
    private static Func<byte[], GgufLayout, byte[]> ExtraUInt(string key, uint value) => Extra(key, w => { w.Write(4u); w.Write(value); });

    /// <summary>
    /// One more metadata entry, inserted after the last one; the tensor data moves to the next aligned position after
    /// the longer header, so the (relative) tensor offsets stay valid.
    /// </summary>
    private static Func<byte[], GgufLayout, byte[]> Extra(string key, Action<BinaryWriter> typeAndValue) => (bytes, layout) =>
    {
        long at = layout.Fields.First(f => f.Kind == GgufLayout.FieldKind.StringLength && f.Owner == "tensor name").Position;
        var entry = new MemoryStream();
        using (var w = new BinaryWriter(entry, Encoding.UTF8, leaveOpen: true))
        {
            Str(w, key);
            typeAndValue(w);
        }
        return Splice(bytes, layout, at, 0, entry.ToArray(), +1);
    };

    /// <summary>Removes a metadata entry (its key, type and value).</summary>
    private static Func<byte[], GgufLayout, byte[]> Remove(string key) => (bytes, layout) =>
    {
        var keyField = layout.Fields.Single(f => f.Kind == GgufLayout.FieldKind.StringLength && f.Owner == "key"
                                                 && Encoding.UTF8.GetString(bytes, (int)f.Position + 8, (int)GgufLayout.Get(bytes, f.Position)) == key);
        int i = layout.Fields.IndexOf(keyField);
        long end = layout.Fields.Skip(i + 1).FirstOrDefault(f => f.Kind == GgufLayout.FieldKind.StringLength && f.Owner is "key" or "tensor name")?.Position
                   ?? layout.HeaderEnd;
        return Splice(bytes, layout, keyField.Position, end - keyField.Position, [], -1);
    };

    /// <summary>Replaces header bytes [at, at + remove) with <paramref name="insert"/>, keeps the data section aligned, adjusts the metadata count.</summary>
    private static byte[] Splice(byte[] bytes, GgufLayout layout, long at, long remove, byte[] insert, int countDelta)
    {
        long headerEnd = layout.HeaderEnd - remove + insert.Length;
        long dataStart = DataStart(layout), newDataStart = (headerEnd + 31) / 32 * 32;
        var result = new byte[bytes.Length - dataStart + newDataStart];
        bytes.AsSpan(0, (int)at).CopyTo(result);
        insert.CopyTo(result, at);
        bytes.AsSpan((int)(at + remove), (int)(layout.HeaderEnd - at - remove)).CopyTo(result.AsSpan((int)at + insert.Length));
        bytes.AsSpan((int)dataStart).CopyTo(result.AsSpan((int)newDataStart));
        long kvCount = layout.Fields.Single(f => f.Kind == GgufLayout.FieldKind.MetadataCount).Position;
        GgufLayout.Set(result, kvCount, 8, (ulong)((long)GgufLayout.Get(bytes, kvCount) + countDelta));
        return result;
    }

    private static void Str(BinaryWriter w, string s)
    {
        w.Write((ulong)Encoding.UTF8.GetByteCount(s));
        w.Write(Encoding.UTF8.GetBytes(s));
    }
}
