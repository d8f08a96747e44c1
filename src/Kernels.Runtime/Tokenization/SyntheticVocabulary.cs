// The vocabulary of the built-in synthetic models: a real SentencePiece vocabulary (so synthetic models export to GGUF
// and load in llama.cpp), with byte tokens for any text and generated word pieces for the rest of the ids.
namespace Kernels.Runtime.Tokenization;

internal static class SyntheticVocabulary
{
    public const int Unknown = 0, Bos = 1, Eos = 2, FirstByte = 3;

    /// <summary>
    /// ids 0..2 are &lt;unk&gt;, &lt;s&gt;, &lt;/s&gt;; 3..258 the byte pieces &lt;0x00&gt;..&lt;0xFF&gt;; every higher id is
    /// a word piece "▁" + 2-6 lowercase letters derived from the id (unique), so random output reads as words. No
    /// word piece is reachable by merges, so text encodes to one byte token per UTF-8 byte (no dummy prefix).
    /// </summary>
    public static SentencePieceVocabulary Create(int size)
    {
        if (size < FirstByte + 256) throw new ArgumentOutOfRangeException(nameof(size), size, "a synthetic vocabulary needs at least 259 ids");
        var pieces = new List<string> { "<unk>", "<s>", "</s>" };
        var types = new List<SentencePieceTokenType> { SentencePieceTokenType.Unknown, SentencePieceTokenType.Control, SentencePieceTokenType.Control };
        for (int b = 0; b < 256; b++)
        {
            pieces.Add($"<0x{b:X2}>");
            types.Add(SentencePieceTokenType.Byte);
        }
        var seen = new HashSet<string>(pieces);
        for (int id = pieces.Count; id < size; id++)
        {
            uint h = (uint)id * 2654435761u;
            var word = new System.Text.StringBuilder().Append(SentencePieceVocabulary.SpaceSymbol);
            int len = 2 + (int)(h % 5);
            for (int i = 0; i < len; i++)
            {
                h = h * 1103515245u + 12345u;
                word.Append((char)('a' + (h >> 16) % 26));
            }
            for (int n = id; !seen.Add(word.ToString()); n /= 26) word.Append((char)('a' + n % 26)); // keep pieces unique
            pieces.Add(word.ToString());
            types.Add(SentencePieceTokenType.Normal);
        }
        var scores = Enumerable.Range(0, size).Select(i => -(float)i).ToArray();
        return new SentencePieceVocabulary(pieces, scores, types, Unknown, Bos, Eos, AddDummyPrefix: false, ByteFallback: true);
    }

    public static ITextTokenizer Tokenizer(int size) =>
        SentencePieceTextTokenizer.FromVocabulary(Create(size), $"synthetic vocabulary ({size})");
}
