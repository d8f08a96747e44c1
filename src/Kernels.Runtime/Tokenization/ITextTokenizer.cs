// The tokenizer contract the engine relies on: text <-> ids, special ids, and per-token bytes for streaming.
namespace Kernels.Runtime.Tokenization;

public interface ITextTokenizer
{
    /// <summary>
    /// The most ids a vocabulary may hold, far above the largest real one (256K): a file that claims more is corrupt,
    /// and nothing is allocated by its count. The model's vocabulary has the same bound (ModelConfig.MaxVocab).
    /// </summary>
    public const int MaxVocab = 1 << 24;

    /// <summary>Number of ids the tokenizer can produce (may be smaller than the model's vocab, never larger).</summary>
    int VocabSize { get; }

    /// <summary>Beginning-of-sequence id, or null when the model has none (Qwen2).</summary>
    int? BosId { get; }

    /// <summary>Every id that ends generation (Llama 3 has several: eot and eos).</summary>
    IReadOnlyList<int> EosIds { get; }

    /// <summary>Whether prompts get BOS prepended by default (from the model's files).</summary>
    bool AddBosByDefault { get; }

    /// <summary>
    /// True when decoding drops one leading space of the text (SentencePiece's dummy prefix): the stream decoder
    /// strips it from the first text it emits.
    /// </summary>
    bool DecodeStripsLeadingSpace { get; }

    /// <summary>Encodes text; prepends BOS when <paramref name="addBos"/> and the model has a BOS id.</summary>
    int[] Encode(string text, bool addBos);

    /// <summary>
    /// The bytes a token contributes to the decoded text when it follows other tokens: SentencePiece's U+2581 as a
    /// space, byte-fallback tokens (&lt;0x0A&gt;) as their byte, byte-level BPE symbols mapped back to raw bytes.
    /// Control tokens (BOS, EOS, padding) contribute nothing. Out-of-range ids throw ArgumentOutOfRangeException.
    /// </summary>
    byte[] TokenBytes(int id);

    /// <summary>Decodes a whole id sequence (control tokens skipped, leading dummy-prefix space removed).</summary>
    string Decode(IReadOnlyList<int> ids);
}
