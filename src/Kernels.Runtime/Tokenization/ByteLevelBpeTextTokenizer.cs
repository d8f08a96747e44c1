// ITextTokenizer for byte-level BPE vocabularies (Llama 3, Qwen2), encoding through ML.Tokenizers' BpeTokenizer.
using System.Text;
using System.Text.RegularExpressions;
using Kernels.Runtime.Numerics;
using Microsoft.ML.Tokenizers;

namespace Kernels.Runtime.Tokenization;

/// <summary>
/// Encoding runs in three steps, as in Hugging Face tokenizers: added tokens are cut out of the text verbatim, the
/// rest is split by the pre-tokenizer regex, and each piece is merged by ML.Tokenizers' <see cref="BpeTokenizer"/>
/// (ByteLevel = true). The first two steps are done here rather than by ML.Tokenizers so that "ignore_merges"
/// (Llama 3: a piece that is itself a vocabulary entry is taken whole) can be honoured between them.
/// </summary>
internal sealed class ByteLevelBpeTextTokenizer : ITextTokenizer
{
    private readonly BpeTokenizer _bpe;
    private readonly Regex _preTokenizer;
    private readonly Regex? _addedTokenSplitter;
    private readonly Dictionary<string, int> _addedTokens;
    private readonly Dictionary<string, int> _vocab;
    private readonly byte[][] _tokenBytes;
    private readonly ByteLevelBpeVocabulary _vocabulary;

    public int VocabSize => _tokenBytes.Length;
    public int? BosId => _vocabulary.BosId;
    public IReadOnlyList<int> EosIds => _vocabulary.EosIds;
    public bool AddBosByDefault => _vocabulary.AddBos && _vocabulary.BosId is not null;
    // Hugging Face's ByteLevel decoder keeps a prefix space it added (GPT-2 decodes " Hello"), so nothing is stripped.
    public bool DecodeStripsLeadingSpace => false;

    private ByteLevelBpeTextTokenizer(ByteLevelBpeVocabulary vocabulary, string source)
    {
        vocabulary.Validate(source);
        _vocabulary = vocabulary;

        _addedTokens = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (AddedToken t in vocabulary.AddedTokens)
            _addedTokens.TryAdd(t.Content, t.Id);
        var addedIds = vocabulary.AddedTokens.ToDictionary(t => t.Id, t => t, EqualityComparer<int>.Default);

        _vocab = new Dictionary<string, int>(StringComparer.Ordinal);
        _tokenBytes = new byte[vocabulary.Count][];
        for (int id = 0; id < vocabulary.Count; id++)
        {
            if (addedIds.TryGetValue(id, out AddedToken? added))
            {
                // Added tokens are stored as plain text, not byte-level symbols; special ones are markers.
                _tokenBytes[id] = added.Special ? [] : Encoding.UTF8.GetBytes(added.Content);
                continue;
            }
            string? token = vocabulary.Tokens[id];
            if (token is null)
            {
                _tokenBytes[id] = [];
                continue;
            }
            _tokenBytes[id] = ByteLevelSymbols.ToBytes(token);
            // Some GGUF vocabularies repeat a token string (padding slots); the first id wins for encoding and every
            // id still decodes, rather than refusing a model that llama.cpp loads.
            _vocab.TryAdd(token, id);
        }

        try
        {
            _preTokenizer = new Regex(vocabulary.PreTokenizerRegex, RegexOptions.Compiled | RegexOptions.CultureInvariant);
        }
        catch (ArgumentException ex)
        {
            throw new ModelFormatException(source, $"pre-tokenizer regex does not compile in .NET: {ex.Message}", ex);
        }
        if (_addedTokens.Count > 0)
        {
            // Longest first: .NET alternation takes the first alternative that matches, and "<|eot|>" must not win
            // over "<|eot_id|>" when both exist.
            string alternation = string.Join("|", _addedTokens.Keys
                .OrderByDescending(k => k.Length).ThenBy(k => k, StringComparer.Ordinal).Select(Regex.Escape));
            _addedTokenSplitter = new Regex(alternation, RegexOptions.CultureInvariant);
        }

        try
        {
            _bpe = BpeTokenizer.Create(new BpeOptions(_vocab)
            {
                Merges = vocabulary.Merges.Select(m => $"{m.Left} {m.Right}"),
                ByteLevel = true,
                PreTokenizer = null, // pieces arrive already split by _preTokenizer
            });
        }
        catch (Exception ex) when (ex is not ModelFormatException)
        {
            throw new ModelFormatException(source, $"ML.Tokenizers rejected the BPE vocabulary: {ex.Message}", ex);
        }
    }

    public static ByteLevelBpeTextTokenizer Create(ByteLevelBpeVocabulary vocabulary, string source) => new(vocabulary, source);

    public int[] Encode(string text, bool addBos)
    {
        ArgumentNullException.ThrowIfNull(text);
        var ids = new List<int>(text.Length / 3 + 2);
        if (addBos && BosId is int bos) ids.Add(bos);
        if (_vocabulary.NormalizeNfc)
            text = text.Normalize(NormalizationForm.FormC);
        if (_vocabulary.AddPrefixSpace && text.Length > 0 && text[0] != ' ')
            text = " " + text;

        int pos = 0;
        if (_addedTokenSplitter is not null)
        {
            foreach (Match m in _addedTokenSplitter.Matches(text))
            {
                EncodeOrdinary(text.AsSpan(pos, m.Index - pos), ids);
                ids.Add(_addedTokens[m.Value]);
                pos = m.Index + m.Length;
            }
        }
        EncodeOrdinary(text.AsSpan(pos), ids);
        return ids.ToArray();
    }

    private void EncodeOrdinary(ReadOnlySpan<char> segment, List<int> ids)
    {
        int pos = 0;
        foreach (ValueMatch m in _preTokenizer.EnumerateMatches(segment))
        {
            // Text the regex skips is kept as its own piece, like Hugging Face's Split with "Isolated" behaviour.
            if (m.Index > pos) EncodePiece(segment[pos..m.Index], ids);
            EncodePiece(segment.Slice(m.Index, m.Length), ids);
            pos = m.Index + m.Length;
        }
        if (pos < segment.Length) EncodePiece(segment[pos..], ids);
    }

    private void EncodePiece(ReadOnlySpan<char> piece, List<int> ids)
    {
        if (piece.IsEmpty) return;
        string text = piece.ToString();
        if (_vocabulary.IgnoreMerges && _vocab.TryGetValue(ByteLevelSymbols.FromText(text), out int whole))
        {
            ids.Add(whole);
            return;
        }
        ids.AddRange(_bpe.EncodeToIds(text, considerPreTokenization: false, considerNormalization: false));
    }

    public byte[] TokenBytes(int id)
    {
        if ((uint)id >= (uint)_tokenBytes.Length)
            throw new ArgumentOutOfRangeException(nameof(id), id, $"token id outside the vocabulary of {_tokenBytes.Length}");
        return _tokenBytes[id];
    }

    public string Decode(IReadOnlyList<int> ids) => TokenDecoding.Decode(this, ids);
}
