// ITextTokenizer for SentencePiece BPE vocabularies (Llama 1/2, TinyStories), encoding through ML.Tokenizers.
using System.Globalization;
using System.Text;
using Kernels.Runtime.Numerics;
using Microsoft.ML.Tokenizers;

namespace Kernels.Runtime.Tokenization;

/// <summary>
/// Encodes with ML.Tokenizers' <see cref="LlamaTokenizer"/> (sentencepiece's BPE with byte fallback); decodes from the
/// vocabulary's own pieces and types, so streaming and whole decoding follow one rule (<see cref="TokenDecoding"/>).
/// </summary>
internal sealed class SentencePieceTextTokenizer : ITextTokenizer
{
    // sentencepiece decodes an unknown piece as " ⁇ " (TrainerSpec.unk_surface's default), keeping it visible.
    private static readonly byte[] UnknownSurface = Encoding.UTF8.GetBytes(" \u2047 ");

    private readonly LlamaTokenizer _encoder;
    private readonly byte[][] _tokenBytes;
    private readonly int[] _eosIds;

    public SentencePieceVocabulary Vocabulary { get; }

    public int VocabSize => Vocabulary.Count;
    public int? BosId => Vocabulary.BosId;
    public IReadOnlyList<int> EosIds => _eosIds;
    public bool AddBosByDefault { get; }
    public bool DecodeStripsLeadingSpace => Vocabulary.AddDummyPrefix;

    private SentencePieceTextTokenizer(SentencePieceVocabulary vocabulary, byte[] modelProto, string source,
        bool addBosByDefault, IEnumerable<int> extraEosIds)
    {
        vocabulary.Validate(source);
        Vocabulary = vocabulary;
        AddBosByDefault = addBosByDefault && vocabulary.BosId is not null;
        _tokenBytes = BuildTokenBytes(vocabulary, source);

        var eos = new List<int>();
        if (vocabulary.EosId is int e) eos.Add(e);
        foreach (int id in extraEosIds)
        {
            if ((uint)id >= (uint)vocabulary.Count)
                throw new ModelFormatException(source, $"end-of-generation id {id} is outside the vocabulary of {vocabulary.Count}");
            if (!eos.Contains(id)) eos.Add(id);
        }
        _eosIds = eos.ToArray();

        try
        {
            // BOS is prepended here, not by ML.Tokenizers, so AddBos is one decision in one place.
            _encoder = LlamaTokenizer.Create(new MemoryStream(modelProto, writable: false),
                addBeginOfSentence: false, addEndOfSentence: false);
        }
        catch (Exception ex) when (ex is not ModelFormatException)
        {
            throw new ModelFormatException(source, $"ML.Tokenizers rejected the sentencepiece model: {ex.Message}", ex);
        }
    }

    /// <summary>From the bytes of a tokenizer.model file (the serialized proto is handed to ML.Tokenizers unchanged).</summary>
    public static SentencePieceTextTokenizer FromModelProto(byte[] modelProto, string source, bool addBosByDefault = true)
    {
        var vocabulary = SentencePieceModelProto.Read(modelProto, source);
        return new SentencePieceTextTokenizer(vocabulary, modelProto, source, addBosByDefault, []);
    }

    /// <summary>From an in-memory vocabulary (GGUF "llama", llama2.c tok*.bin): a ModelProto is written for it.</summary>
    public static SentencePieceTextTokenizer FromVocabulary(SentencePieceVocabulary vocabulary, string source,
        bool addBosByDefault = true, IEnumerable<int>? extraEosIds = null)
    {
        vocabulary.Validate(source);
        return new SentencePieceTextTokenizer(vocabulary, SentencePieceModelProto.Write(vocabulary), source,
            addBosByDefault, extraEosIds ?? []);
    }

    public int[] Encode(string text, bool addBos)
    {
        ArgumentNullException.ThrowIfNull(text);
        IReadOnlyList<int> ids = _encoder.EncodeToIds(text, addBeginningOfSentence: false, addEndOfSentence: false);
        if (!addBos || BosId is not int bos)
            return [.. ids];
        var result = new int[ids.Count + 1];
        result[0] = bos;
        for (int i = 0; i < ids.Count; i++) result[i + 1] = ids[i];
        return result;
    }

    public byte[] TokenBytes(int id)
    {
        if ((uint)id >= (uint)_tokenBytes.Length)
            throw new ArgumentOutOfRangeException(nameof(id), id, $"token id outside the vocabulary of {_tokenBytes.Length}");
        return _tokenBytes[id];
    }

    public string Decode(IReadOnlyList<int> ids) => TokenDecoding.Decode(this, ids);

    private static byte[][] BuildTokenBytes(SentencePieceVocabulary vocabulary, string source)
    {
        var table = new byte[vocabulary.Count][];
        for (int i = 0; i < table.Length; i++)
        {
            string piece = vocabulary.Pieces[i];
            table[i] = vocabulary.Types[i] switch
            {
                SentencePieceTokenType.Normal or SentencePieceTokenType.UserDefined =>
                    Encoding.UTF8.GetBytes(piece.Replace(SentencePieceVocabulary.SpaceSymbol, ' ')),
                SentencePieceTokenType.Byte => [ParseBytePiece(piece, i, source)],
                SentencePieceTokenType.Unknown => UnknownSurface,
                _ => [], // control and unused pieces are markers, not text
            };
        }
        return table;
    }

    /// <summary>Byte-fallback pieces are spelled "&lt;0xNN&gt;" with two hex digits.</summary>
    internal static byte ParseBytePiece(string piece, int id, string source)
    {
        if (piece.Length == 6 && piece.StartsWith("<0x", StringComparison.Ordinal) && piece[5] == '>'
            && byte.TryParse(piece.AsSpan(3, 2), NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out byte b))
            return b;
        throw new ModelFormatException(source, $"token {id} is typed as a byte but its piece is '{piece}', not <0xNN>");
    }
}
