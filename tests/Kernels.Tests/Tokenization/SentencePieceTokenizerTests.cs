// Golden tests of the SentencePiece path against stories260K: run.c's encodings and the reference greedy text.
using Kernels.Runtime.Tokenization;
using NUnit.Framework;

namespace Kernels.Tests.Tokenization;

/// <summary>
/// The same vocabulary reaches the engine three ways (tokenizer.model, llama2.c tok512.bin, GGUF metadata); all three
/// must encode the reference prompts exactly as llama2.c's run.c did and decode the reference generation exactly.
/// </summary>
[TestFixture]
public sealed class SentencePieceTokenizerTests
{
    public enum Source { TokenizerModel, Llama2cFile, GgufMetadata }

    private static ITextTokenizer Load(Source source) => source switch
    {
        Source.TokenizerModel => TokenizerLoader.FromSentencePieceModel(StoriesReference.TokenizerModel),
        Source.Llama2cFile => TokenizerLoader.FromLlama2cFile(StoriesReference.Tok512),
        Source.GgufMetadata => TokenizerLoader.FromGgufMetadata(GgufLlamaMetadataFromTok512(), "stories260K (synthetic GGUF metadata)"),
        _ => throw new ArgumentOutOfRangeException(nameof(source)),
    };

    /// <summary>
    /// The GGUF "llama" metadata llama.cpp's converter writes for this model, rebuilt from tok512.bin (we have no GGUF
    /// reader here): U+2581 pieces, float scores, int32 token types, uint32 special ids.
    /// </summary>
    internal static Dictionary<string, object> GgufLlamaMetadataFromTok512()
    {
        SentencePieceVocabulary v = Llama2cTokenizerFile.Read(StoriesReference.Tok512);
        return new Dictionary<string, object>
        {
            ["tokenizer.ggml.model"] = "llama",
            ["tokenizer.ggml.tokens"] = v.Pieces.ToArray(),
            ["tokenizer.ggml.scores"] = v.Scores.ToArray(),
            ["tokenizer.ggml.token_type"] = v.Types.Select(t => (int)t).ToArray(),
            ["tokenizer.ggml.bos_token_id"] = 1u,
            ["tokenizer.ggml.eos_token_id"] = 2u,
            ["tokenizer.ggml.unknown_token_id"] = 0u,
            ["tokenizer.ggml.add_bos_token"] = true,
            ["tokenizer.ggml.add_space_prefix"] = true,
        };
    }

    [Test]
    public void Encode_MatchesRunC([Values] Source source, [Range(0, 4)] int prompt)
    {
        StoriesReference.EncodeCase c = StoriesReference.EncodeCases().ElementAt(prompt);
        ITextTokenizer tokenizer = Load(source);

        Assert.That(tokenizer.Encode(c.Text, addBos: true), Is.EqualTo(c.IdsWithBos), c.Text);
        Assert.That(tokenizer.Encode(c.Text, addBos: false), Is.EqualTo(c.IdsWithBos.Skip(1)), c.Text);
    }

    [Test]
    public void Encode_PromptedGreedyPrompt([Values] Source source)
    {
        var (prompt, promptIds) = StoriesReference.PromptedGreedy();
        Assert.That(Load(source).Encode(prompt, addBos: true), Is.EqualTo(promptIds));
    }

    [Test]
    public void SpecialIds_AreLlama2c([Values] Source source)
    {
        ITextTokenizer tokenizer = Load(source);
        Assert.Multiple(() =>
        {
            Assert.That(tokenizer.VocabSize, Is.EqualTo(512));
            Assert.That(tokenizer.BosId, Is.EqualTo(1));
            Assert.That(tokenizer.EosIds, Is.EqualTo(new[] { 2 }));
            Assert.That(tokenizer.AddBosByDefault, Is.True);
            Assert.That(tokenizer.DecodeStripsLeadingSpace, Is.True);
            Assert.That(tokenizer.TokenBytes(1), Is.Empty, "BOS is a control token");
            Assert.That(tokenizer.TokenBytes(13), Is.EqualTo(new byte[] { 0x0A }), "<0x0A> is the newline byte");
            Assert.That(tokenizer.TokenBytes(259), Is.EqualTo(" t"u8.ToArray()), "U+2581 decodes as a space");
            Assert.That(() => tokenizer.TokenBytes(512), Throws.TypeOf<ArgumentOutOfRangeException>());
            Assert.That(() => tokenizer.TokenBytes(-1), Throws.TypeOf<ArgumentOutOfRangeException>());
        });
    }

    [Test]
    public void Decode_Greedy256_IsReferenceText([Values] Source source)
    {
        var (ids, text) = StoriesReference.Greedy256();
        ITextTokenizer tokenizer = Load(source);

        Assert.That(tokenizer.Decode(ids), Is.EqualTo(text));
        Assert.That(tokenizer.Decode([1, .. ids]), Is.EqualTo(text), "a leading BOS changes nothing");
    }

    [Test]
    public void Stream_Greedy256_IsReferenceText([Values] Source source)
    {
        var (ids, text) = StoriesReference.Greedy256();
        var stream = new TokenTextStream(Load(source));
        var sb = new System.Text.StringBuilder();
        sb.Append(stream.Append(1)); // BOS first, as generation starts
        foreach (int id in ids) sb.Append(stream.Append(id));
        sb.Append(stream.Flush());
        Assert.That(sb.ToString(), Is.EqualTo(text));
    }

    [Test]
    public void Stream_MultiByteCharacterSplitOverByteTokens()
    {
        ITextTokenizer tokenizer = Load(Source.Llama2cFile);
        const string text = "日本 ok é";
        int[] ids = tokenizer.Encode(text, addBos: true);
        // 日 and 本 are not in the 512-piece vocabulary: each falls back to three <0xNN> byte tokens (id = byte + 3).
        Assert.That(ids.Take(8), Is.EqualTo(new[] { 1, 410, 0xE6 + 3, 0x97 + 3, 0xA5 + 3, 0xE6 + 3, 0x9C + 3, 0xAC + 3 }));

        var stream = new TokenTextStream(tokenizer);
        var pieces = ids.Select(stream.Append).ToList();
        pieces.Add(stream.Flush());
        Assert.Multiple(() =>
        {
            Assert.That(string.Concat(pieces), Is.EqualTo(text));
            Assert.That(pieces, Has.None.Contains('\uFFFD'), "no half character is ever emitted");
            Assert.That(pieces[2], Is.Empty, "first byte of 日 is held");
            Assert.That(pieces[3], Is.Empty, "second byte of 日 is held");
            Assert.That(pieces[4], Is.EqualTo("日"), "third byte completes it");
            Assert.That(tokenizer.Decode(ids), Is.EqualTo(text));
        });
    }

    [Test]
    public void Stream_Flush_EmitsIncompleteBytesAsReplacementCharacter()
    {
        ITextTokenizer tokenizer = Load(Source.Llama2cFile);
        var stream = new TokenTextStream(tokenizer);
        Assert.That(stream.Append(0xE6 + 3), Is.Empty);
        Assert.That(stream.Append(0x97 + 3), Is.Empty);
        Assert.That(stream.Flush(), Is.EqualTo("\uFFFD"));
        Assert.That(stream.Flush(), Is.Empty, "flush leaves nothing behind");
    }

    [Test]
    public void Stream_StripsOnlyTheFirstLeadingSpace()
    {
        ITextTokenizer tokenizer = Load(Source.Llama2cFile);
        int[] ids = tokenizer.Encode("Once upon a time", addBos: true);
        var stream = new TokenTextStream(tokenizer);
        Assert.That(string.Concat(ids.Select(stream.Append)) + stream.Flush(), Is.EqualTo("Once upon a time"));
        Assert.That(stream.Append(ids[1]), Is.EqualTo(" Once"), "later tokens keep their space");
    }

    [Test]
    public void Encode_EmptyText()
    {
        ITextTokenizer tokenizer = Load(Source.Llama2cFile);
        Assert.That(tokenizer.Encode("", addBos: true), Is.EqualTo(new[] { 1 }));
        Assert.That(tokenizer.Encode("", addBos: false), Is.Empty);
    }

    [Test]
    public void Llama2cPieces_ConvertToTheSentencePieceModelsPieces()
    {
        SentencePieceVocabulary fromBin = Llama2cTokenizerFile.Read(StoriesReference.Tok512);
        SentencePieceVocabulary fromModel = SentencePieceModelProto.Read(File.ReadAllBytes(StoriesReference.TokenizerModel), "tokenizer.model");
        Assert.Multiple(() =>
        {
            Assert.That(fromBin.Pieces, Is.EqualTo(fromModel.Pieces));
            Assert.That(fromBin.Scores, Is.EqualTo(fromModel.Scores));
            Assert.That(fromBin.Types, Is.EqualTo(fromModel.Types));
            Assert.That((fromBin.UnknownId, fromBin.BosId, fromBin.EosId, fromBin.AddDummyPrefix, fromBin.ByteFallback),
                Is.EqualTo((fromModel.UnknownId, fromModel.BosId, fromModel.EosId, fromModel.AddDummyPrefix, fromModel.ByteFallback)));
        });
    }

    [Test]
    public void ModelProto_WriteThenRead_RoundTrips()
    {
        SentencePieceVocabulary v = Llama2cTokenizerFile.Read(StoriesReference.Tok512) with { BosId = null, AddDummyPrefix = false };
        SentencePieceVocabulary back = SentencePieceModelProto.Read(SentencePieceModelProto.Write(v), "written");
        Assert.Multiple(() =>
        {
            Assert.That(back.Pieces, Is.EqualTo(v.Pieces));
            Assert.That(back.Scores, Is.EqualTo(v.Scores));
            Assert.That(back.Types, Is.EqualTo(v.Types));
            Assert.That(back.BosId, Is.Null, "bos_id -1 means none");
            Assert.That(back.EosId, Is.EqualTo(2));
            Assert.That(back.AddDummyPrefix, Is.False);
            Assert.That(back.ByteFallback, Is.True);
        });
    }

    [Test]
    public void NoDummyPrefix_EncodesWithoutLeadingSpaceAndDecodesWithoutStripping()
    {
        SentencePieceVocabulary v = Llama2cTokenizerFile.Read(StoriesReference.Tok512) with { AddDummyPrefix = false };
        var tokenizer = SentencePieceTextTokenizer.FromVocabulary(v, "no-prefix");
        int[] ids = tokenizer.Encode(" the", addBos: false);
        Assert.That(ids, Is.EqualTo(new[] { 265 }), "' the' is one piece only when the space is in the text");
        Assert.That(tokenizer.Decode(ids), Is.EqualTo(" the"));
        Assert.That(tokenizer.DecodeStripsLeadingSpace, Is.False);
    }

    [Test]
    public void VocabularyWithoutBos_EncodesAndNeverPrependsBos()
    {
        SentencePieceVocabulary v = Llama2cTokenizerFile.Read(StoriesReference.Tok512) with { BosId = null };
        var tokenizer = SentencePieceTextTokenizer.FromVocabulary(v, "no-bos");
        Assert.That(tokenizer.BosId, Is.Null);
        Assert.That(tokenizer.AddBosByDefault, Is.False);
        Assert.That(tokenizer.Encode("Once upon a time", addBos: true), Is.EqualTo(new[] { 403, 407, 261, 378 }));
    }
}
