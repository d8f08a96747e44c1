// Byte-level BPE (Llama 3 / Qwen2 style) on a small synthetic tokenizer.json and the equivalent GGUF "gpt2" metadata.
using System.Text.Json;
using Kernels.Runtime.Tokenization;
using NUnit.Framework;

namespace Kernels.Tests.Tokenization;

/// <summary>
/// The synthetic vocabulary: ids 0..255 are the 256 byte symbols in byte order (so a byte's id is its value), then
/// merged tokens and added tokens. Small enough that every expected id sequence can be worked out by hand.
/// </summary>
[TestFixture]
public sealed class ByteLevelBpeTokenizerTests
{
    private const int TheWithSpace = 258, He = 257, SpaceT = 256, Lo = 259, End = 260, Begin = 261, SpaceXyz = 262,
        Twelve = 263;

    private string _dir = "";

    [SetUp]
    public void CreateDir() => _dir = Directory.CreateTempSubdirectory("kernels-bpe-").FullName;

    [TearDown]
    public void DeleteDir() => Directory.Delete(_dir, recursive: true);

    private static string Sym(string text) => ByteLevelSymbols.FromText(text);

    /// <summary>Writes tokenizer.json (and optional siblings) and returns its path.</summary>
    private string WriteTokenizerJson(bool ignoreMerges = false, string regex = PreTokenizerPattern.Llama3,
        object? generationConfig = null, object? tokenizerConfig = null)
    {
        var vocab = new Dictionary<string, int>();
        for (int b = 0; b < 256; b++) vocab[ByteLevelSymbols.Symbol((byte)b).ToString()] = b;
        vocab[Sym(" t")] = SpaceT;
        vocab["he"] = He;
        vocab[Sym(" the")] = TheWithSpace;
        vocab["lo"] = Lo;
        vocab[Sym(" xyz")] = SpaceXyz; // reachable only whole (no merges build it): exercises ignore_merges
        vocab["12"] = Twelve;
        var json = new
        {
            version = "1.0",
            added_tokens = new object[]
            {
                new { id = End, content = "<|end|>", special = true },
                new { id = Begin, content = "<|begin|>", special = true },
            },
            normalizer = (object?)null,
            pre_tokenizer = new
            {
                type = "Sequence",
                pretokenizers = new object[]
                {
                    new { type = "Split", pattern = new { Regex = regex }, behavior = "Isolated", invert = false },
                    new { type = "ByteLevel", add_prefix_space = false, trim_offsets = true, use_regex = false },
                },
            },
            post_processor = new
            {
                type = "TemplateProcessing",
                single = new object[]
                {
                    new { SpecialToken = new { id = "<|begin|>", type_id = 0 } },
                    new { Sequence = new { id = "A", type_id = 0 } },
                },
            },
            decoder = new { type = "ByteLevel" },
            model = new
            {
                type = "BPE",
                ignore_merges = ignoreMerges,
                vocab,
                // Both spellings of a merge occur in real files: "a b" (older) and ["a", "b"] (tokenizers >= 0.20).
                merges = new object[] { $"{Sym(" ")} t", new[] { "h", "e" }, $"{Sym(" t")} he", new[] { "l", "o" }, "1 2" },
            },
        };
        string path = Path.Combine(_dir, "tokenizer.json");
        File.WriteAllText(path, JsonSerializer.Serialize(json));
        if (generationConfig is not null)
            File.WriteAllText(Path.Combine(_dir, "generation_config.json"), JsonSerializer.Serialize(generationConfig));
        if (tokenizerConfig is not null)
            File.WriteAllText(Path.Combine(_dir, "tokenizer_config.json"), JsonSerializer.Serialize(tokenizerConfig));
        return path;
    }

    /// <summary>The same vocabulary as GGUF "gpt2" metadata: one token list, types, "a b" merges, a pre name.</summary>
    private static Dictionary<string, object> GgufMetadata(string pre = "llama-bpe")
    {
        var tokens = new string[264];
        var types = new int[264];
        for (int b = 0; b < 256; b++) tokens[b] = ByteLevelSymbols.Symbol((byte)b).ToString();
        tokens[SpaceT] = Sym(" t"); tokens[He] = "he"; tokens[TheWithSpace] = Sym(" the"); tokens[Lo] = "lo";
        tokens[SpaceXyz] = Sym(" xyz"); tokens[End] = "<|end|>"; tokens[Begin] = "<|begin|>";
        tokens[Twelve] = "12";
        for (int i = 0; i < types.Length; i++) types[i] = i is End or Begin ? 3 : 1;
        return new Dictionary<string, object>
        {
            ["tokenizer.ggml.model"] = "gpt2",
            ["tokenizer.ggml.pre"] = pre,
            ["tokenizer.ggml.tokens"] = tokens,
            ["tokenizer.ggml.token_type"] = types,
            ["tokenizer.ggml.merges"] = new[] { $"{Sym(" ")} t", "h e", $"{Sym(" t")} he", "l o", "1 2" },
            ["tokenizer.ggml.bos_token_id"] = (uint)Begin,
            ["tokenizer.ggml.eos_token_id"] = (uint)End,
        };
    }

    [Test]
    public void ByteSymbols_AreGpt2Table()
    {
        Assert.Multiple(() =>
        {
            Assert.That(ByteLevelSymbols.Symbol((byte)' '), Is.EqualTo('Ġ'));
            Assert.That(ByteLevelSymbols.Symbol((byte)'\n'), Is.EqualTo('Ċ'));
            Assert.That(ByteLevelSymbols.Symbol((byte)'!'), Is.EqualTo('!'));
            Assert.That(ByteLevelSymbols.Symbol(0), Is.EqualTo('\u0100'));
            Assert.That(ByteLevelSymbols.Symbol(0xAD), Is.EqualTo('\u0143'), "soft hyphen is the last remapped byte");
            Assert.That(Enumerable.Range(0, 256).Select(b => ByteLevelSymbols.Symbol((byte)b)).Distinct().Count(), Is.EqualTo(256));
            byte[] all = Enumerable.Range(0, 256).Select(b => (byte)b).ToArray();
            Assert.That(ByteLevelSymbols.ToBytes(new string(all.Select(ByteLevelSymbols.Symbol).ToArray())), Is.EqualTo(all));
        });
    }

    [Test]
    public void Encode_MergesSpecialTokensAndByteFallthrough()
    {
        ITextTokenizer tokenizer = TokenizerLoader.FromHfTokenizerJson(WriteTokenizerJson());
        int[] ids = tokenizer.Encode(" the the<|end|>hello 日本", addBos: false);
        int[] expected =
        [
            TheWithSpace, TheWithSpace, End,
            He, 'l', Lo,                            // "hello": h+e, then l+o; the middle l stays a byte
            ' ', 0xE6, 0x97, 0xA5, 0xE6, 0x9C, 0xAC, // " 日本": no merges, so one token per UTF-8 byte
        ];
        Assert.That(ids, Is.EqualTo(expected));
    }

    [Test]
    public void SpecialIds_FromTemplateAndGenerationConfig()
    {
        ITextTokenizer tokenizer = TokenizerLoader.FromHfTokenizerJson(
            WriteTokenizerJson(generationConfig: new { eos_token_id = new[] { End } }));
        Assert.Multiple(() =>
        {
            Assert.That(tokenizer.BosId, Is.EqualTo(Begin), "TemplateProcessing starts with <|begin|>");
            Assert.That(tokenizer.AddBosByDefault, Is.True);
            Assert.That(tokenizer.EosIds, Is.EqualTo(new[] { End }));
            Assert.That(tokenizer.VocabSize, Is.EqualTo(264));
            Assert.That(tokenizer.DecodeStripsLeadingSpace, Is.False);
            Assert.That(tokenizer.Encode("he", addBos: true), Is.EqualTo(new[] { Begin, He }));
        });
    }

    [Test]
    public void SpecialIds_TokenizerConfigWins_NullBosMeansNone()
    {
        ITextTokenizer tokenizer = TokenizerLoader.FromHfTokenizerJson(
            WriteTokenizerJson(tokenizerConfig: new { bos_token = (string?)null, eos_token = "<|end|>" }));
        Assert.Multiple(() =>
        {
            Assert.That(tokenizer.BosId, Is.Null, "Qwen2 style: no BOS");
            Assert.That(tokenizer.AddBosByDefault, Is.False);
            Assert.That(tokenizer.EosIds, Is.EqualTo(new[] { End }));
            Assert.That(tokenizer.Encode("he", addBos: true), Is.EqualTo(new[] { He }), "no BOS to add");
        });
    }

    [TestCase("Hello, world!\nSecond line\t with\ttabs  and   spaces.")]
    [TestCase("日本語のテキスト, émigré, naïve, 🙂 and Ω")]
    [TestCase("digits 1234567 and 3.14159; it's they're WE'LL")]
    [TestCase("   leading and trailing spaces   ")]
    [TestCase("")]
    public void RoundTrip_DecodeOfEncodeIsIdentity(string text)
    {
        ITextTokenizer tokenizer = TokenizerLoader.FromHfTokenizerJson(WriteTokenizerJson());
        int[] ids = tokenizer.Encode(text, addBos: true);
        Assert.That(tokenizer.Decode(ids), Is.EqualTo(text));

        var stream = new TokenTextStream(tokenizer);
        var pieces = ids.Select(stream.Append).ToList();
        pieces.Add(stream.Flush());
        Assert.That(string.Concat(pieces), Is.EqualTo(text));
        Assert.That(pieces, Has.None.Contains('\uFFFD'));
    }

    [Test]
    public void Decode_SpecialTokensContributeNothing()
    {
        ITextTokenizer tokenizer = TokenizerLoader.FromHfTokenizerJson(WriteTokenizerJson());
        Assert.That(tokenizer.Decode(tokenizer.Encode("a<|end|>b", addBos: true)), Is.EqualTo("ab"));
        Assert.That(tokenizer.TokenBytes(End), Is.Empty);
        Assert.That(tokenizer.TokenBytes(TheWithSpace), Is.EqualTo(" the"u8.ToArray()));
    }

    [Test]
    public void IgnoreMerges_TakesWholeVocabularyWords()
    {
        int[] merged = TokenizerLoader.FromHfTokenizerJson(WriteTokenizerJson(ignoreMerges: false)).Encode(" xyz", false);
        int[] whole = TokenizerLoader.FromHfTokenizerJson(WriteTokenizerJson(ignoreMerges: true)).Encode(" xyz", false);
        Assert.That(merged, Is.EqualTo(new[] { ' ', 'x', 'y', 'z' }), "no merge builds ' xyz'");
        Assert.That(whole, Is.EqualTo(new[] { SpaceXyz }), "ignore_merges finds the whole piece");
    }

    [Test]
    public void PreTokenizerRegex_BoundsMerges()
    {
        // Merges never cross a regex match. Llama 3 keeps up to three digits together, so "1 2" can merge; Qwen2
        // isolates every digit, so the same vocabulary must leave "123" as three byte tokens.
        ITextTokenizer llama3 = TokenizerLoader.FromHfTokenizerJson(WriteTokenizerJson(regex: PreTokenizerPattern.Llama3));
        Assert.That(llama3.Encode("123", false), Is.EqualTo(new[] { Twelve, '3' }));
        Assert.That(llama3.Encode("4123", false), Is.EqualTo(new[] { '4', Twelve, '3' }), "groups of three from the left: 412|3");
        ITextTokenizer qwen2 = TokenizerLoader.FromHfTokenizerJson(WriteTokenizerJson(regex: PreTokenizerPattern.Qwen2));
        Assert.That(qwen2.Encode("123", false), Is.EqualTo(new[] { '1', '2', '3' }));
        Assert.That(llama3.Encode("xthe", false), Is.EqualTo(new[] { 'x', 't', He }), "no space: 't' is not ' t'");
    }

    [Test]
    public void Stream_CharacterSplitAcrossByteTokens()
    {
        ITextTokenizer tokenizer = TokenizerLoader.FromHfTokenizerJson(WriteTokenizerJson());
        var stream = new TokenTextStream(tokenizer);
        Assert.That(stream.Append(0xF0), Is.Empty);   // 🙂 = F0 9F 99 82
        Assert.That(stream.Append(0x9F), Is.Empty);
        Assert.That(stream.Append(0x99), Is.Empty);
        Assert.That(stream.Append(0x82), Is.EqualTo("🙂"));
        Assert.That(stream.Append(0xFF), Is.EqualTo("\uFFFD"), "a byte that can never start a character is not held");
    }

    [Test]
    public void Gguf_Gpt2Vocabulary_EncodesLikeTokenizerJson()
    {
        ITextTokenizer json = TokenizerLoader.FromHfTokenizerJson(WriteTokenizerJson(ignoreMerges: true));
        ITextTokenizer gguf = TokenizerLoader.FromGgufMetadata(GgufMetadata(), "synthetic.gguf");
        const string text = " the the<|end|>hello 日本 xyz<|begin|>";
        Assert.Multiple(() =>
        {
            Assert.That(gguf.Encode(text, addBos: true), Is.EqualTo(json.Encode(text, addBos: true)));
            Assert.That(gguf.BosId, Is.EqualTo(Begin));
            Assert.That(gguf.EosIds, Is.EqualTo(new[] { End }));
            Assert.That(gguf.AddBosByDefault, Is.True, "llama-bpe defaults to add_bos");
            Assert.That(gguf.Decode(gguf.Encode(text, true)), Is.EqualTo(" the thehello 日本 xyz"));
        });
    }

    [Test]
    public void Gguf_Qwen2Pre_NoBosByDefault()
    {
        var metadata = GgufMetadata("qwen2");
        metadata.Remove("tokenizer.ggml.bos_token_id");
        ITextTokenizer tokenizer = TokenizerLoader.FromGgufMetadata(metadata, "synthetic.gguf");
        Assert.That(tokenizer.BosId, Is.Null);
        Assert.That(tokenizer.AddBosByDefault, Is.False);
        Assert.That(tokenizer.Encode("hello", addBos: true), Is.EqualTo(new[] { He, 'l', Lo }));
    }

    [Test]
    public void ForModelDirectory_PrefersTokenizerJson()
    {
        WriteTokenizerJson();
        Assert.That(TokenizerLoader.ForModelDirectory(_dir), Is.TypeOf<ByteLevelBpeTextTokenizer>());
    }
}
