// GPT-2's byte-to-unicode table: how byte-level BPE vocabularies spell raw bytes as printable characters.
using System.Text;

namespace Kernels.Runtime.Tokenization;

/// <summary>
/// Byte-level BPE (GPT-2, Llama 3, Qwen2) stores tokens as strings in which every byte is one printable character:
/// bytes '!'..'~', '¡'..'¬' and '®'..'ÿ' stand for themselves; the other 68 (controls, space, DEL, NBSP, soft hyphen)
/// map in byte order to U+0100, U+0101, ... (so space is 'Ġ' U+0120 and '\n' is 'Ċ' U+010A). The table is the
/// one in GPT-2's encoder.py <c>bytes_to_unicode</c>, which every byte-level tokenizer.json and GGUF "gpt2" vocabulary
/// shares.
/// </summary>
internal static class ByteLevelSymbols
{
    private static readonly char[] ByteToChar = BuildTable();
    private static readonly Dictionary<char, byte> CharToByte =
        Enumerable.Range(0, 256).ToDictionary(b => ByteToChar[b], b => (byte)b);

    public static char Symbol(byte b) => ByteToChar[b];

    /// <summary>The symbol string for UTF-8 text (what a vocabulary lookup needs).</summary>
    public static string FromText(string text)
    {
        byte[] utf8 = Encoding.UTF8.GetBytes(text);
        return string.Create(utf8.Length, utf8, static (chars, bytes) =>
        {
            for (int i = 0; i < bytes.Length; i++) chars[i] = ByteToChar[bytes[i]];
        });
    }

    /// <summary>
    /// Raw bytes of a vocabulary token. A character outside the table (a malformed vocabulary) contributes its own
    /// UTF-8 bytes rather than failing, so a bad entry garbles one token instead of the whole stream.
    /// </summary>
    public static byte[] ToBytes(string symbols)
    {
        var bytes = new List<byte>(symbols.Length);
        Span<byte> scratch = stackalloc byte[4];
        foreach (Rune rune in symbols.EnumerateRunes())
        {
            if (rune.IsBmp && CharToByte.TryGetValue((char)rune.Value, out byte b))
            {
                bytes.Add(b);
            }
            else
            {
                int n = rune.EncodeToUtf8(scratch);
                for (int i = 0; i < n; i++) bytes.Add(scratch[i]);
            }
        }
        return bytes.ToArray();
    }

    private static char[] BuildTable()
    {
        var table = new char[256];
        int next = 256;
        for (int b = 0; b < 256; b++)
        {
            bool printable = b is >= '!' and <= '~' or >= 0xA1 and <= 0xAC or >= 0xAE and <= 0xFF;
            table[b] = printable ? (char)b : (char)next++;
        }
        return table;
    }
}
