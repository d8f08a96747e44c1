// The sentencepiece ModelProto wire format: a minimal protobuf reader and writer for the fields the engine needs.
using System.Buffers.Binary;
using System.Text;
using Kernels.Runtime.Numerics;

namespace Kernels.Runtime.Tokenization;

/// <summary>
/// Reads and writes the subset of <c>sentencepiece_model.proto</c> (proto2) that describes a BPE vocabulary.
/// Field numbers, checked against sentencepiece's proto and against the stories260K tokenizer.model:
/// <code>
/// ModelProto      pieces = 1 (repeated SentencePiece), trainer_spec = 2, normalizer_spec = 3
/// SentencePiece   piece = 1 (string), score = 2 (float), type = 3 (enum Type, NORMAL = 1 ... BYTE = 6)
/// TrainerSpec     model_type = 3 (UNIGRAM = 1, BPE = 2), vocab_size = 4, byte_fallback = 35,
///                 unk_id = 40 (default 0), bos_id = 41 (default 1), eos_id = 42 (default 2), pad_id = 43 (default -1)
/// NormalizerSpec  name = 1, add_dummy_prefix = 3 (default true), remove_extra_whitespaces = 4 (default true),
///                 escape_whitespaces = 5 (default true)
/// </code>
/// Writing lets GGUF and llama2.c vocabularies go through ML.Tokenizers' SentencePiece BPE, whose only public entry
/// point takes a serialized model. Reading recovers the token types, which ML.Tokenizers does not expose but
/// <see cref="ITextTokenizer.TokenBytes"/> needs.
/// </summary>
internal static class SentencePieceModelProto
{
    private const int ModelTypeBpe = 2;

    // Wire types of the protobuf encoding.
    private const int WireVarint = 0, WireFixed64 = 1, WireLengthDelimited = 2, WireFixed32 = 5;

    // ------------------------------------------------------------------------------------------------ writing

    /// <summary>Serializes <paramref name="vocabulary"/> as a BPE ModelProto with an identity normalizer.</summary>
    public static byte[] Write(SentencePieceVocabulary vocabulary)
    {
        var model = new MemoryStream();
        var piece = new MemoryStream();
        for (int i = 0; i < vocabulary.Count; i++)
        {
            piece.SetLength(0);
            WriteString(piece, 1, vocabulary.Pieces[i]);
            WriteFloat(piece, 2, vocabulary.Scores[i]);
            WriteVarintField(piece, 3, (ulong)vocabulary.Types[i]);
            WriteMessage(model, 1, piece);
        }

        var trainer = new MemoryStream();
        WriteVarintField(trainer, 3, ModelTypeBpe);
        WriteVarintField(trainer, 4, (ulong)vocabulary.Count);
        WriteVarintField(trainer, 35, vocabulary.ByteFallback ? 1UL : 0UL);
        WriteInt32(trainer, 40, vocabulary.UnknownId);
        // -1 is sentencepiece's own spelling of "this model has no such token".
        WriteInt32(trainer, 41, vocabulary.BosId ?? -1);
        WriteInt32(trainer, 42, vocabulary.EosId ?? -1);
        WriteInt32(trainer, 43, -1);
        WriteMessage(model, 2, trainer);

        var normalizer = new MemoryStream();
        WriteString(normalizer, 1, "identity");
        WriteVarintField(normalizer, 3, vocabulary.AddDummyPrefix ? 1UL : 0UL);
        // llama.cpp and llama2.c never collapse runs of spaces; sentencepiece's default (true) would.
        WriteVarintField(normalizer, 4, 0);
        WriteVarintField(normalizer, 5, 1);
        WriteMessage(model, 3, normalizer);

        return model.ToArray();
    }

    private static void WriteTag(Stream s, int field, int wireType) => WriteVarint(s, (ulong)((field << 3) | wireType));

    private static void WriteVarint(Stream s, ulong value)
    {
        while (value >= 0x80)
        {
            s.WriteByte((byte)(value | 0x80));
            value >>= 7;
        }
        s.WriteByte((byte)value);
    }

    private static void WriteVarintField(Stream s, int field, ulong value)
    {
        WriteTag(s, field, WireVarint);
        WriteVarint(s, value);
    }

    // Protobuf int32 sign-extends negatives to 64 bits (ten bytes on the wire), so -1 round-trips.
    private static void WriteInt32(Stream s, int field, int value) => WriteVarintField(s, field, (ulong)(long)value);

    private static void WriteFloat(Stream s, int field, float value)
    {
        WriteTag(s, field, WireFixed32);
        Span<byte> bytes = stackalloc byte[4];
        BinaryPrimitives.WriteSingleLittleEndian(bytes, value);
        s.Write(bytes);
    }

    private static void WriteString(Stream s, int field, string value)
    {
        byte[] utf8 = Encoding.UTF8.GetBytes(value);
        WriteTag(s, field, WireLengthDelimited);
        WriteVarint(s, (ulong)utf8.Length);
        s.Write(utf8);
    }

    private static void WriteMessage(Stream s, int field, MemoryStream message)
    {
        WriteTag(s, field, WireLengthDelimited);
        WriteVarint(s, (ulong)message.Length);
        message.Position = 0;
        message.CopyTo(s);
    }

    // ------------------------------------------------------------------------------------------------ reading

    /// <summary>
    /// Parses a serialized ModelProto. Unknown fields are skipped; a truncated or malformed message, or a model type
    /// other than BPE, throws <see cref="ModelFormatException"/> naming <paramref name="source"/>.
    /// </summary>
    public static SentencePieceVocabulary Read(ReadOnlySpan<byte> bytes, string source)
    {
        var pieces = new List<string>();
        var scores = new List<float>();
        var types = new List<SentencePieceTokenType>();
        int modelType = 1, unkId = 0, bosId = 1, eosId = 2;
        bool byteFallback = false, addDummyPrefix = true;

        var model = new Reader(bytes, source);
        while (model.Next(out int field, out int wire))
        {
            if (field == 1 && wire == WireLengthDelimited)
            {
                var p = new Reader(model.ReadBytes(), source);
                string text = "";
                float score = 0;
                var type = SentencePieceTokenType.Normal;
                while (p.Next(out int f, out int w))
                {
                    if (f == 1 && w == WireLengthDelimited) text = p.ReadString();
                    else if (f == 2 && w == WireFixed32) score = p.ReadFloat();
                    else if (f == 3 && w == WireVarint) type = (SentencePieceTokenType)(int)p.ReadVarint();
                    else p.Skip(w);
                }
                pieces.Add(text);
                scores.Add(score);
                types.Add(type);
            }
            else if (field == 2 && wire == WireLengthDelimited)
            {
                var t = new Reader(model.ReadBytes(), source);
                while (t.Next(out int f, out int w))
                {
                    if (w != WireVarint) { t.Skip(w); continue; }
                    long v = (long)t.ReadVarint();
                    switch (f)
                    {
                        case 3: modelType = (int)v; break;
                        case 35: byteFallback = v != 0; break;
                        case 40: unkId = (int)v; break;
                        case 41: bosId = (int)v; break;
                        case 42: eosId = (int)v; break;
                    }
                }
            }
            else if (field == 3 && wire == WireLengthDelimited)
            {
                var n = new Reader(model.ReadBytes(), source);
                while (n.Next(out int f, out int w))
                {
                    if (f == 3 && w == WireVarint) addDummyPrefix = n.ReadVarint() != 0;
                    else n.Skip(w);
                }
            }
            else
            {
                model.Skip(wire);
            }
        }

        if (modelType != ModelTypeBpe)
            throw new ModelFormatException(source, $"sentencepiece model type {modelType} is not BPE (2); only BPE models are supported");
        var vocabulary = new SentencePieceVocabulary(pieces, scores, types, unkId,
            bosId >= 0 ? bosId : null, eosId >= 0 ? eosId : null, addDummyPrefix, byteFallback);
        vocabulary.Validate(source);
        return vocabulary;
    }

    /// <summary>A forward-only cursor over one protobuf message; every overrun becomes a ModelFormatException.</summary>
    private ref struct Reader
    {
        private readonly ReadOnlySpan<byte> _data;
        private readonly string _source;
        private int _pos;

        public Reader(ReadOnlySpan<byte> data, string source)
        {
            _data = data;
            _source = source;
            _pos = 0;
        }

        public bool Next(out int field, out int wireType)
        {
            if (_pos >= _data.Length)
            {
                field = wireType = 0;
                return false;
            }
            ulong tag = ReadVarint();
            field = (int)(tag >> 3);
            wireType = (int)(tag & 7);
            if (field == 0)
                throw Malformed("field number 0");
            return true;
        }

        public ulong ReadVarint()
        {
            ulong result = 0;
            for (int shift = 0; shift < 64; shift += 7)
            {
                if (_pos >= _data.Length) throw Malformed("truncated varint");
                byte b = _data[_pos++];
                result |= (ulong)(b & 0x7F) << shift;
                if (b < 0x80) return result;
            }
            throw Malformed("varint longer than 10 bytes");
        }

        public ReadOnlySpan<byte> ReadBytes()
        {
            ulong length = ReadVarint();
            if (length > (ulong)(_data.Length - _pos)) throw Malformed("length-delimited field runs past the end");
            var slice = _data.Slice(_pos, (int)length);
            _pos += (int)length;
            return slice;
        }

        public string ReadString() => Encoding.UTF8.GetString(ReadBytes());

        public float ReadFloat() => BinaryPrimitives.ReadSingleLittleEndian(Take(4));

        public void Skip(int wireType)
        {
            switch (wireType)
            {
                case WireVarint: ReadVarint(); break;
                case WireFixed64: Take(8); break;
                case WireLengthDelimited: ReadBytes(); break;
                case WireFixed32: Take(4); break;
                default: throw Malformed($"unsupported wire type {wireType}");
            }
        }

        private ReadOnlySpan<byte> Take(int n)
        {
            if (_data.Length - _pos < n) throw Malformed("fixed-size field runs past the end");
            var slice = _data.Slice(_pos, n);
            _pos += n;
            return slice;
        }

        private readonly ModelFormatException Malformed(string what) =>
            new(_source, $"not a sentencepiece model: {what} at byte {_pos}");
    }
}
