// Streaming detokenizer: ids in one at a time, text out as soon as its UTF-8 bytes are complete.
using System.Text;

namespace Kernels.Runtime.Tokenization;

/// <summary>
/// Turns generated ids into text incrementally. A character may span several tokens (byte-fallback pieces
/// &lt;0xE6&gt;&lt;0x97&gt;&lt;0xA5&gt;, or byte-level BPE tokens that split a UTF-8 sequence), so the stream keeps
/// the bytes of an unfinished sequence until it completes; decoding each token alone would print U+FFFD and lose the
/// character. The concatenation of everything returned by <see cref="Append"/> and <see cref="Flush"/> equals
/// <see cref="ITextTokenizer.Decode"/> of the same ids.
/// </summary>
internal sealed class TokenTextStream
{
    private readonly ITextTokenizer _tokenizer;
    private readonly List<byte> _pending = new();
    private bool _atStart;

    /// <param name="atStart">
    /// True when the ids begin the text (decoding from BOS): the dummy-prefix space is dropped. False for a
    /// continuation of a prompt, whose first token's leading space is real text.
    /// </param>
    public TokenTextStream(ITextTokenizer tokenizer, bool atStart = true)
    {
        ArgumentNullException.ThrowIfNull(tokenizer);
        _tokenizer = tokenizer;
        _atStart = atStart;
    }

    /// <summary>Adds one token; returns the text it completes (often empty, sometimes several characters).</summary>
    public string Append(int id)
    {
        byte[] bytes = _tokenizer.TokenBytes(id);
        if (bytes.Length == 0) return "";
        _pending.AddRange(bytes);
        StripDummyPrefix();
        int ready = _pending.Count - IncompleteTailLength(System.Runtime.InteropServices.CollectionsMarshal.AsSpan(_pending));
        return Take(ready);
    }

    /// <summary>Emits whatever is held back; bytes that never formed a character become U+FFFD.</summary>
    public string Flush() => Take(_pending.Count);

    private string Take(int count)
    {
        if (count == 0) return "";
        var span = System.Runtime.InteropServices.CollectionsMarshal.AsSpan(_pending)[..count];
        string text = Encoding.UTF8.GetString(span);
        _pending.RemoveRange(0, count);
        return text;
    }

    /// <summary>
    /// SentencePiece's dummy prefix: the first text byte of the stream is a space the encoder added, dropped once
    /// (as <see cref="TokenDecoding"/> drops it), however many control tokens came before it.
    /// </summary>
    private void StripDummyPrefix()
    {
        if (!_atStart) return;
        _atStart = false;
        if (_tokenizer.DecodeStripsLeadingSpace && _pending.Count > 0 && _pending[0] == (byte)' ')
            _pending.RemoveAt(0);
    }

    /// <summary>
    /// How many trailing bytes form the start of a UTF-8 sequence that may still complete. Only a valid lead byte
    /// followed by fewer continuation bytes than it announces is held; anything else is emitted now (invalid bytes
    /// become U+FFFD at once, and holding them would only delay the same result).
    /// </summary>
    internal static int IncompleteTailLength(ReadOnlySpan<byte> bytes)
    {
        for (int back = 1; back <= 3 && back <= bytes.Length; back++)
        {
            byte b = bytes[^back];
            if ((b & 0xC0) == 0x80) continue; // continuation byte: keep looking for its lead
            int needed = b switch
            {
                >= 0xC2 and <= 0xDF => 2,
                >= 0xE0 and <= 0xEF => 3,
                >= 0xF0 and <= 0xF4 => 4,
                _ => 1, // ASCII or a byte that can never start a sequence
            };
            return needed > back ? back : 0;
        }
        return 0;
    }
}
