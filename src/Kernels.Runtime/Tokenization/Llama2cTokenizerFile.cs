// Reader for llama2.c's tok*.bin tokenizer files, producing a SentencePieceVocabulary that encodes like run.c.
using System.Buffers.Binary;
using System.Text;
using Kernels.Runtime.Numerics;

namespace Kernels.Runtime.Tokenization;

/// <summary>
/// llama2.c's tokenizer export (tokenizer.py): <c>uint32 max_token_length</c>, then for each token
/// <c>float32 score, int32 byte_length, bytes</c>, little-endian, until the end of the file. The file has no header
/// for the vocabulary size, types or special ids: run.c hard-codes BOS = 1, EOS = 2, byte fallback at id + 3.
/// </summary>
internal static class Llama2cTokenizerFile
{
    private const int BosId = 1, EosId = 2;

    public static SentencePieceVocabulary Read(string path)
    {
        byte[] bytes = TokenizerLoader.ReadFile(path, "llama2.c tokenizer file");
        return Parse(bytes, path);
    }

    public static SentencePieceVocabulary Parse(ReadOnlySpan<byte> bytes, string source)
    {
        if (bytes.Length < 4)
            throw new ModelFormatException(source, "llama2.c tokenizer file is shorter than its 4-byte header");
        uint maxTokenLength = BinaryPrimitives.ReadUInt32LittleEndian(bytes);
        int pos = 4;

        var pieces = new List<string>();
        var scores = new List<float>();
        var types = new List<SentencePieceTokenType>();
        while (pos < bytes.Length)
        {
            int id = pieces.Count;
            if (bytes.Length - pos < 8)
                throw new ModelFormatException(source, $"truncated: token {id} header needs 8 bytes at offset {pos}, {bytes.Length - pos} remain");
            float score = BinaryPrimitives.ReadSingleLittleEndian(bytes[pos..]);
            int length = BinaryPrimitives.ReadInt32LittleEndian(bytes[(pos + 4)..]);
            pos += 8;
            if (length <= 0 || (uint)length > maxTokenLength)
                throw new ModelFormatException(source, $"token {id} has length {length}, outside 1..{maxTokenLength} (max_token_length)");
            if (bytes.Length - pos < length)
                throw new ModelFormatException(source, $"truncated: token {id} needs {length} bytes at offset {pos}, {bytes.Length - pos} remain");
            string raw = Encoding.UTF8.GetString(bytes.Slice(pos, length));
            pos += length;

            (string piece, SentencePieceTokenType type) = Classify(id, raw);
            pieces.Add(piece);
            scores.Add(score);
            types.Add(type);
        }

        if (pieces.Count <= EosId)
            throw new ModelFormatException(source, $"only {pieces.Count} tokens; llama2.c needs at least <unk>, <s>, </s>");
        var vocabulary = new SentencePieceVocabulary(pieces, scores, types, UnknownId: 0, BosId, EosId,
            AddDummyPrefix: true, ByteFallback: true);
        vocabulary.Validate(source);
        return vocabulary;
    }

    /// <summary>
    /// Undoes the export's rewriting so the pieces are sentencepiece's again. tokenizer.py replaced U+2581 with a
    /// plain space (run.c matches pieces against text containing spaces) and wrote BOS/EOS as "\n&lt;s&gt;\n" and
    /// "\n&lt;/s&gt;\n" so they print on their own line. Restoring U+2581 makes ML.Tokenizers, which escapes spaces
    /// in the input, find the same pieces run.c finds; the ids then match run.c's encode exactly.
    /// </summary>
    private static (string Piece, SentencePieceTokenType Type) Classify(int id, string raw)
    {
        if (id == 0) return ("<unk>", SentencePieceTokenType.Unknown);
        if (id == BosId) return ("<s>", SentencePieceTokenType.Control);
        if (id == EosId) return ("</s>", SentencePieceTokenType.Control);
        if (raw.Length == 6 && raw.StartsWith("<0x", StringComparison.Ordinal) && raw[5] == '>'
            && Uri.IsHexDigit(raw[3]) && Uri.IsHexDigit(raw[4]))
            return (raw, SentencePieceTokenType.Byte);
        return (raw.Replace(' ', SentencePieceVocabulary.SpaceSymbol), SentencePieceTokenType.Normal);
    }
}
