// An in-memory byte-level BPE vocabulary (tokens, merges, added tokens, regex, special ids) and its checks.
using Kernels.Runtime.Numerics;

namespace Kernels.Runtime.Tokenization;

/// <summary>A token that is matched verbatim in the input before BPE runs (Hugging Face "added_tokens").</summary>
/// <param name="Special">Control tokens (BOS, EOS, chat markers): they decode to nothing.</param>
internal sealed record AddedToken(int Id, string Content, bool Special);

/// <summary>
/// What <see cref="ByteLevelBpeTextTokenizer"/> needs, whether read from tokenizer.json or a GGUF "gpt2" vocabulary.
/// <paramref name="Tokens"/> is indexed by id and spelled in <see cref="ByteLevelSymbols"/> form; ids with no entry
/// are null (Hugging Face vocabularies may leave gaps), and the ids of added tokens may be null there too.
/// </summary>
internal sealed record ByteLevelBpeVocabulary(
    IReadOnlyList<string?> Tokens,
    IReadOnlyList<(string Left, string Right)> Merges,
    IReadOnlyList<AddedToken> AddedTokens,
    string PreTokenizerRegex,
    int? BosId,
    IReadOnlyList<int> EosIds,
    bool AddBos,
    bool IgnoreMerges = false,
    bool AddPrefixSpace = false,
    bool NormalizeNfc = false)
{
    public int Count => Tokens.Count;

    public void Validate(string source)
    {
        if (Tokens.Count == 0)
            throw new ModelFormatException(source, "the vocabulary is empty");
        foreach (AddedToken t in AddedTokens)
        {
            if ((uint)t.Id >= (uint)Tokens.Count)
                throw new ModelFormatException(source, $"added token '{t.Content}' has id {t.Id}, outside the vocabulary of {Tokens.Count}");
            if (t.Content.Length == 0)
                throw new ModelFormatException(source, $"added token {t.Id} has empty content");
        }
        if (BosId is int bos && (uint)bos >= (uint)Tokens.Count)
            throw new ModelFormatException(source, $"BOS id {bos} is outside the vocabulary of {Tokens.Count}");
        foreach (int eos in EosIds)
            if ((uint)eos >= (uint)Tokens.Count)
                throw new ModelFormatException(source, $"EOS id {eos} is outside the vocabulary of {Tokens.Count}");
        for (int i = 0; i < Merges.Count; i++)
        {
            var (left, right) = Merges[i];
            // ML.Tokenizers takes merges as "left right" strings; byte-level symbols never contain a space.
            if (left.Length == 0 || right.Length == 0 || left.Contains(' ') || right.Contains(' '))
                throw new ModelFormatException(source, $"merge {i} ('{left}', '{right}') is not a pair of byte-level symbols");
        }
    }
}
