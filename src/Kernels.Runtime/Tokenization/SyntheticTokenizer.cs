// The tokenizer of the built-in synthetic models: bytes as tokens, plus generated word pieces for the rest of the vocab.
using System.Text;

namespace Kernels.Runtime.Tokenization;

/// <summary>
/// ids 0..2 are pad, BOS and EOS; 3..258 are the 256 bytes; every higher id decodes to a short lowercase word with a
/// leading space, derived from the id, so the (random) output of a synthetic model reads as words. Encoding uses
/// the byte tokens only, so any text round-trips.
/// </summary>
public sealed class SyntheticTokenizer : ITextTokenizer
{
    public const int Bos = 1;
    public const int Eos = 2;
    private const int FirstByte = 3;

    public SyntheticTokenizer(int vocabSize)
    {
        if (vocabSize < FirstByte + 256) throw new ArgumentOutOfRangeException(nameof(vocabSize), vocabSize, "the synthetic tokenizer needs at least 259 ids");
        VocabSize = vocabSize;
    }

    public int VocabSize { get; }
    public int? BosId => Bos;
    public IReadOnlyList<int> EosIds { get; } = [Eos];
    public bool AddBosByDefault => true;
    public bool DecodeStripsLeadingSpace => false;

    public int[] Encode(string text, bool addBos)
    {
        var bytes = Encoding.UTF8.GetBytes(text);
        var ids = new List<int>(bytes.Length + 1);
        if (addBos) ids.Add(Bos);
        foreach (byte b in bytes) ids.Add(FirstByte + b);
        return ids.ToArray();
    }

    public byte[] TokenBytes(int id)
    {
        if ((uint)id >= (uint)VocabSize) throw new ArgumentOutOfRangeException(nameof(id), id, $"vocabulary has {VocabSize} ids");
        if (id < FirstByte) return [];
        if (id < FirstByte + 256) return [(byte)(id - FirstByte)];
        uint h = (uint)id * 2654435761u;
        int len = 2 + (int)(h % 5);
        var word = new byte[len + 1];
        word[0] = (byte)' ';
        for (int i = 1; i <= len; i++)
        {
            h = h * 1103515245u + 12345u;
            word[i] = (byte)('a' + (h >> 16) % 26);
        }
        return word;
    }

    public string Decode(IReadOnlyList<int> ids)
    {
        var bytes = new List<byte>();
        foreach (int id in ids) bytes.AddRange(TokenBytes(id));
        return Encoding.UTF8.GetString(bytes.ToArray());
    }
}
