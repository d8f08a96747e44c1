// An in-memory SentencePiece BPE vocabulary (pieces, scores, types, special ids, normalizer flags) and its checks.
using Kernels.Runtime.Numerics;

namespace Kernels.Runtime.Tokenization;

/// <summary>
/// Everything the SentencePiece BPE encoder needs, independent of where it came from (tokenizer.model, GGUF "llama"
/// vocabulary, llama2.c tok*.bin). Pieces use U+2581 (▁) for spaces, as sentencepiece stores them.
/// </summary>
internal sealed record SentencePieceVocabulary(
    IReadOnlyList<string> Pieces,
    IReadOnlyList<float> Scores,
    IReadOnlyList<SentencePieceTokenType> Types,
    int UnknownId,
    int? BosId,
    int? EosId,
    bool AddDummyPrefix,
    bool ByteFallback)
{
    /// <summary>The character sentencepiece substitutes for a space inside pieces.</summary>
    public const char SpaceSymbol = '\u2581';

    public int Count => Pieces.Count;

    /// <summary>
    /// Throws <see cref="ModelFormatException"/> naming <paramref name="source"/> when the parallel arrays disagree or a
    /// special id points outside the vocabulary: ML.Tokenizers would otherwise fail later with an unrelated message.
    /// </summary>
    public void Validate(string source)
    {
        if (Pieces.Count == 0)
            throw new ModelFormatException(source, "the vocabulary is empty");
        if (Scores.Count != Pieces.Count)
            throw new ModelFormatException(source, $"{Pieces.Count} pieces but {Scores.Count} scores");
        if (Types.Count != Pieces.Count)
            throw new ModelFormatException(source, $"{Pieces.Count} pieces but {Types.Count} token types");
        CheckId(source, "unknown", UnknownId);
        if (BosId is int bos) CheckId(source, "BOS", bos);
        if (EosId is int eos) CheckId(source, "EOS", eos);
        for (int i = 0; i < Types.Count; i++)
        {
            if (!Enum.IsDefined(Types[i]))
                throw new ModelFormatException(source, $"token {i} has unknown token type {(int)Types[i]}");
            if (Pieces[i].Length == 0)
                throw new ModelFormatException(source, $"token {i} is an empty piece");
        }
        if (ByteFallback) CheckBytePieces(source);
    }

    /// <summary>
    /// Byte fallback encodes byte b as the id of "&lt;0x00&gt;" plus b (sentencepiece's layout, which ML.Tokenizers
    /// relies on): the 256 byte pieces must all be there, in order, or encoding would emit ids of other tokens or
    /// beyond the vocabulary.
    /// </summary>
    private void CheckBytePieces(string source)
    {
        int first = -1;
        for (int i = 0; i < Pieces.Count && first < 0; i++)
            if (Pieces[i] == "<0x00>") first = i;
        if (first < 0 || first > Pieces.Count - 256)
            throw new ModelFormatException(source, $"byte fallback needs the 256 pieces <0x00>..<0xFF> in order; {(first < 0 ? "<0x00> is missing" : $"<0x00> is token {first} of {Pieces.Count}")}");
        for (int b = 0; b < 256; b++)
            if (Pieces[first + b] != $"<0x{b:X2}>" || Types[first + b] != SentencePieceTokenType.Byte)
                throw new ModelFormatException(source, $"byte fallback needs the 256 pieces <0x00>..<0xFF> in order; token {first + b} is '{Pieces[first + b]}' ({Types[first + b]}), expected byte <0x{b:X2}>");
    }

    private void CheckId(string source, string what, int id)
    {
        if ((uint)id >= (uint)Pieces.Count)
            throw new ModelFormatException(source, $"{what} id {id} is outside the vocabulary of {Pieces.Count} pieces");
    }
}
