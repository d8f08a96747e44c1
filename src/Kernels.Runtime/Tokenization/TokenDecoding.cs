// Whole-sequence decoding shared by every tokenizer: concatenate TokenBytes, decode UTF-8 once, drop the dummy prefix.
using System.Text;

namespace Kernels.Runtime.Tokenization;

/// <summary>
/// Decoding defined on <see cref="ITextTokenizer.TokenBytes"/> rather than on each library's own decoder, so that
/// <see cref="ITextTokenizer.Decode"/> and <see cref="TokenTextStream"/> cannot disagree: both are "concatenate the
/// bytes, decode UTF-8 (invalid bytes become U+FFFD), strip one leading space if the tokenizer adds a dummy prefix".
/// </summary>
internal static class TokenDecoding
{
    public static string Decode(ITextTokenizer tokenizer, IReadOnlyList<int> ids)
    {
        ArgumentNullException.ThrowIfNull(ids);
        var bytes = new List<byte>(ids.Count * 4);
        foreach (int id in ids)
            bytes.AddRange(tokenizer.TokenBytes(id));
        var span = System.Runtime.InteropServices.CollectionsMarshal.AsSpan(bytes);
        if (tokenizer.DecodeStripsLeadingSpace && span.Length > 0 && span[0] == (byte)' ')
            span = span[1..];
        return Encoding.UTF8.GetString(span);
    }
}
