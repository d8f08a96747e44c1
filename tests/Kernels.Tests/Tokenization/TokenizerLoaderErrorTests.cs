// Bad inputs to every loader: each must fail with ModelFormatException naming the source and the problem.
using Kernels.Runtime.Numerics;
using Kernels.Runtime.Tokenization;
using NUnit.Framework;

namespace Kernels.Tests.Tokenization;

[TestFixture]
public sealed class TokenizerLoaderErrorTests
{
    private string _dir = "";

    [SetUp]
    public void CreateDir() => _dir = Directory.CreateTempSubdirectory("kernels-tok-bad-").FullName;

    [TearDown]
    public void DeleteDir() => Directory.Delete(_dir, recursive: true);

    private string Write(string name, string text)
    {
        string path = Path.Combine(_dir, name);
        File.WriteAllText(path, text);
        return path;
    }

    private string Write(string name, byte[] bytes)
    {
        string path = Path.Combine(_dir, name);
        File.WriteAllBytes(path, bytes);
        return path;
    }

    private static void ThrowsFormat(TestDelegate load, string source, string messagePart) =>
        Assert.That(load, Throws.TypeOf<ModelFormatException>()
            .With.Property(nameof(ModelFormatException.Location)).EqualTo(source)
            .And.Message.Contains(messagePart));

    [Test]
    public void MissingFiles()
    {
        string missing = Path.Combine(_dir, "nope");
        ThrowsFormat(() => TokenizerLoader.FromSentencePieceModel(missing), missing, "cannot read");
        ThrowsFormat(() => TokenizerLoader.FromLlama2cFile(missing), missing, "cannot read");
        ThrowsFormat(() => TokenizerLoader.FromHfTokenizerJson(missing), missing, "cannot read");
        ThrowsFormat(() => TokenizerLoader.ForModelDirectory(missing), missing, "does not exist");
        ThrowsFormat(() => TokenizerLoader.ForModelDirectory(_dir), _dir, "no tokenizer found");
    }

    [Test]
    public void MalformedTokenizerJson()
    {
        string path = Write("tokenizer.json", "{ \"model\": { \"type\": \"BPE\", ");
        ThrowsFormat(() => TokenizerLoader.FromHfTokenizerJson(path), path, "malformed JSON");
    }

    [Test]
    public void UnsupportedTokenizerJsonModels()
    {
        string wordPiece = Write("tokenizer.json", """{ "model": { "type": "WordPiece", "vocab": {} } }""");
        ThrowsFormat(() => TokenizerLoader.FromHfTokenizerJson(wordPiece), wordPiece, "only BPE");

        // Llama 2's tokenizer.json: BPE, but sentencepiece-style (Metaspace, byte fallback), not byte-level.
        string spStyle = Write("tokenizer.json", """
            { "pre_tokenizer": { "type": "Metaspace", "replacement": "▁" }, "decoder": { "type": "Sequence", "decoders": [] },
              "model": { "type": "BPE", "byte_fallback": true, "vocab": { "a": 0 }, "merges": [] } }
            """);
        ThrowsFormat(() => TokenizerLoader.FromHfTokenizerJson(spStyle), spStyle, "not a byte-level BPE");
    }

    [Test]
    public void BadMergeInTokenizerJson()
    {
        string path = Write("tokenizer.json", """
            { "pre_tokenizer": { "type": "ByteLevel", "add_prefix_space": false, "use_regex": true },
              "model": { "type": "BPE", "vocab": { "a": 0, "b": 1, "ab": 2 }, "merges": [ "a b", "abc" ] } }
            """);
        ThrowsFormat(() => TokenizerLoader.FromHfTokenizerJson(path), path, "model.merges[1]");
    }

    [Test]
    public void SplitBehaviourOtherThanIsolated_IsRefused()
    {
        string path = Write("tokenizer.json", """
            { "pre_tokenizer": { "type": "Sequence", "pretokenizers": [
                { "type": "Split", "pattern": { "Regex": "\\s+" }, "behavior": "Removed", "invert": false },
                { "type": "ByteLevel", "use_regex": false } ] },
              "model": { "type": "BPE", "vocab": { "a": 0 }, "merges": [] } }
            """);
        ThrowsFormat(() => TokenizerLoader.FromHfTokenizerJson(path), path, "behavior 'Removed'");
    }

    [Test]
    public void MinimalByteLevelTokenizerJson_UsesGpt2RegexByDefault()
    {
        string path = Write("tokenizer.json", """
            { "pre_tokenizer": { "type": "ByteLevel", "add_prefix_space": false, "use_regex": true },
              "model": { "type": "BPE", "vocab": { "a": 0, "b": 1, "ab": 2, "Ġ": 3 }, "merges": [ "a b" ] } }
            """);
        ITextTokenizer tokenizer = TokenizerLoader.FromHfTokenizerJson(path);
        Assert.That(tokenizer.Encode("ab ab", addBos: true), Is.EqualTo(new[] { 2, 3, 2 }),
            "GPT-2 regex splits ' ab' off; inside it 'a b' merges and 'Ġ' stays alone (no 'Ġ ab' merge)");
        Assert.That(tokenizer.BosId, Is.Null);
        Assert.That(tokenizer.EosIds, Is.Empty);
    }

    [Test]
    public void MalformedSiblingConfig()
    {
        string path = Write("tokenizer.json", """
            { "pre_tokenizer": { "type": "ByteLevel" }, "model": { "type": "BPE", "vocab": { "a": 0 }, "merges": [] } }
            """);
        string config = Write("generation_config.json", "[1, 2");
        ThrowsFormat(() => TokenizerLoader.FromHfTokenizerJson(path), config, "malformed JSON");
    }

    [Test]
    public void TruncatedLlama2cFile()
    {
        byte[] full = File.ReadAllBytes(StoriesReference.Tok512);
        string cutInBytes = Write("cut-bytes.bin", full[..(full.Length - 1)]);
        ThrowsFormat(() => TokenizerLoader.FromLlama2cFile(cutInBytes), cutInBytes, "truncated");
        string cutInHeader = Write("cut-header.bin", full[..(full.Length - 3 - 6)]); // token 511: 8-byte header + 3 bytes
        ThrowsFormat(() => TokenizerLoader.FromLlama2cFile(cutInHeader), cutInHeader, "truncated");
        string tiny = Write("tiny.bin", new byte[] { 7, 0 });
        ThrowsFormat(() => TokenizerLoader.FromLlama2cFile(tiny), tiny, "shorter than its 4-byte header");
    }

    [Test]
    public void GarbageSentencePieceModel()
    {
        string path = Write("tokenizer.model", "this is not a protobuf message at all"u8.ToArray());
        Assert.That(() => TokenizerLoader.FromSentencePieceModel(path),
            Throws.TypeOf<ModelFormatException>().With.Property(nameof(ModelFormatException.Location)).EqualTo(path));
    }

    [Test]
    public void ForModelDirectory_FallsBackToTokenizerModel()
    {
        File.Copy(StoriesReference.TokenizerModel, Path.Combine(_dir, "tokenizer.model"));
        Assert.That(TokenizerLoader.ForModelDirectory(_dir), Is.TypeOf<SentencePieceTextTokenizer>());
    }

    // ------------------------------------------------------------------------------------------------ GGUF metadata

    private static Dictionary<string, object> Gpt2Metadata() => new()
    {
        ["tokenizer.ggml.model"] = "gpt2",
        ["tokenizer.ggml.pre"] = "qwen2",
        ["tokenizer.ggml.tokens"] = new[] { "a", "b", "ab" },
        ["tokenizer.ggml.token_type"] = new[] { 1, 1, 1 },
        ["tokenizer.ggml.merges"] = new[] { "a b" },
    };

    [Test]
    public void Gguf_MissingOrUnknownTokenizerKind()
    {
        ThrowsFormat(() => TokenizerLoader.FromGgufMetadata(new Dictionary<string, object>(), "m.gguf"), "m.gguf", "tokenizer.ggml.model is missing");
        var bert = Gpt2Metadata();
        bert["tokenizer.ggml.model"] = "bert";
        ThrowsFormat(() => TokenizerLoader.FromGgufMetadata(bert, "m.gguf"), "m.gguf", "'bert' is not supported");
    }

    [Test]
    public void Gguf_UnknownOrMissingPreTokenizer()
    {
        var unknown = Gpt2Metadata();
        unknown["tokenizer.ggml.pre"] = "deepseek-llm";
        ThrowsFormat(() => TokenizerLoader.FromGgufMetadata(unknown, "m.gguf"), "m.gguf", "'deepseek-llm' is not supported");
        var missing = Gpt2Metadata();
        missing.Remove("tokenizer.ggml.pre");
        ThrowsFormat(() => TokenizerLoader.FromGgufMetadata(missing, "m.gguf"), "m.gguf", "tokenizer.ggml.pre is missing");
    }

    [Test]
    public void Gguf_WrongShapesAndTypes()
    {
        var noMerges = Gpt2Metadata();
        noMerges.Remove("tokenizer.ggml.merges");
        ThrowsFormat(() => TokenizerLoader.FromGgufMetadata(noMerges, "m.gguf"), "m.gguf", "merges is missing");

        var shortTypes = Gpt2Metadata();
        shortTypes["tokenizer.ggml.token_type"] = new[] { 1, 1 };
        ThrowsFormat(() => TokenizerLoader.FromGgufMetadata(shortTypes, "m.gguf"), "m.gguf", "2 entries for 3 tokens");

        var floatTokens = Gpt2Metadata();
        floatTokens["tokenizer.ggml.tokens"] = new[] { 1f, 2f };
        ThrowsFormat(() => TokenizerLoader.FromGgufMetadata(floatTokens, "m.gguf"), "m.gguf", "expected string array");

        var badBos = Gpt2Metadata();
        badBos["tokenizer.ggml.bos_token_id"] = 99u;
        ThrowsFormat(() => TokenizerLoader.FromGgufMetadata(badBos, "m.gguf"), "m.gguf", "BOS id 99");

        var llama = new Dictionary<string, object>
        {
            ["tokenizer.ggml.model"] = "llama",
            ["tokenizer.ggml.tokens"] = new[] { "<unk>", "<s>", "</s>", "a" },
            ["tokenizer.ggml.scores"] = new[] { 0f, 0f },
        };
        ThrowsFormat(() => TokenizerLoader.FromGgufMetadata(llama, "m.gguf"), "m.gguf", "2 entries for 4 tokens");
    }

    [Test]
    public void Gguf_AcceptsAnyIntegerWidth()
    {
        foreach (object bos in new object[] { (byte)2, (sbyte)2, (ushort)2, (short)2, 2u, 2, 2UL, 2L })
        {
            var m = Gpt2Metadata();
            m["tokenizer.ggml.bos_token_id"] = bos;
            m["tokenizer.ggml.token_type"] = new uint[] { 1, 1, 1 };
            Assert.That(TokenizerLoader.FromGgufMetadata(m, "m.gguf").BosId, Is.EqualTo(2), bos.GetType().Name);
        }
    }
}
