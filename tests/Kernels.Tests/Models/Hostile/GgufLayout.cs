// Where each field of a GGUF header sits in the file: the map crafted files and the fuzzer edit in place.
using System.Buffers.Binary;
using System.Text;

namespace Kernels.Tests.Models.Hostile;

/// <summary>
/// An independent walk over a GGUF v2/v3 header (not the reader under test): the byte position and width of every
/// count, length, dimension, type and offset, so a test can set one of them to a boundary value and nothing else.
/// </summary>
public sealed class GgufLayout
{
    public enum FieldKind { TensorCount, MetadataCount, StringLength, ValueType, ArrayType, ArrayCount, Scalar, Dimensions, Dimension, TensorType, TensorOffset }

    /// <summary>One field: what it is, where it is, how many bytes (4 or 8 for integers; scalars any width), and whose it is.</summary>
    public sealed record Field(FieldKind Kind, long Position, int Width, string Owner);

    public List<Field> Fields { get; } = new();
    /// <summary>Byte position just past the tensor directory (before the alignment padding).</summary>
    public long HeaderEnd { get; private set; }
    public Dictionary<string, long> TensorOffsets { get; } = new();
    /// <summary>Position of each metadata value by key (the first byte after its type field).</summary>
    public Dictionary<string, (uint Type, long Position)> Values { get; } = new();

    public static GgufLayout Of(byte[] bytes)
    {
        var layout = new GgufLayout();
        long p = 8;
        ulong U64() { ulong v = BinaryPrimitives.ReadUInt64LittleEndian(bytes.AsSpan((int)p)); p += 8; return v; }
        uint U32() { uint v = BinaryPrimitives.ReadUInt32LittleEndian(bytes.AsSpan((int)p)); p += 4; return v; }
        string Str(string owner)
        {
            layout.Fields.Add(new Field(FieldKind.StringLength, p, 8, owner));
            int n = (int)U64();
            string s = Encoding.UTF8.GetString(bytes, (int)p, n);
            p += n;
            return s;
        }
        void Value(uint type, string owner)
        {
            int width = type switch { 0 or 1 or 7 => 1, 2 or 3 => 2, 4 or 5 or 6 => 4, 10 or 11 or 12 => 8, _ => 0 };
            if (width > 0)
            {
                layout.Fields.Add(new Field(FieldKind.Scalar, p, width, owner));
                p += width;
            }
            else if (type == 8) Str(owner);
            else if (type == 9)
            {
                layout.Fields.Add(new Field(FieldKind.ArrayType, p, 4, owner));
                uint elem = U32();
                layout.Fields.Add(new Field(FieldKind.ArrayCount, p, 8, owner));
                ulong count = U64();
                for (ulong i = 0; i < count; i++)
                {
                    if (elem == 8) Str(owner); // every element's length is a field of its own
                    else Value(elem, owner);
                }
            }
            else throw new InvalidDataException($"value type {type}");
        }

        layout.Fields.Add(new Field(FieldKind.TensorCount, p, 8, "header"));
        ulong tensors = U64();
        layout.Fields.Add(new Field(FieldKind.MetadataCount, p, 8, "header"));
        ulong kvs = U64();
        for (ulong i = 0; i < kvs; i++)
        {
            string key = Str("key");
            layout.Fields.Add(new Field(FieldKind.ValueType, p, 4, key));
            uint type = U32();
            layout.Values[key] = (type, p);
            Value(type, key);
        }
        for (ulong i = 0; i < tensors; i++)
        {
            string name = Str("tensor name");
            layout.Fields.Add(new Field(FieldKind.Dimensions, p, 4, name));
            uint dims = U32();
            for (uint d = 0; d < dims; d++)
            {
                layout.Fields.Add(new Field(FieldKind.Dimension, p, 8, name));
                p += 8;
            }
            layout.Fields.Add(new Field(FieldKind.TensorType, p, 4, name));
            p += 4;
            layout.Fields.Add(new Field(FieldKind.TensorOffset, p, 8, name));
            layout.TensorOffsets[name] = p;
            p += 8;
        }
        layout.HeaderEnd = p;
        return layout;
    }

    /// <summary>Writes <paramref name="value"/> into a field of <paramref name="width"/> bytes (truncating it to that width).</summary>
    public static void Set(byte[] bytes, long position, int width, ulong value)
    {
        var span = bytes.AsSpan((int)position, width);
        switch (width)
        {
            case 1: span[0] = (byte)value; break;
            case 2: BinaryPrimitives.WriteUInt16LittleEndian(span, (ushort)value); break;
            case 4: BinaryPrimitives.WriteUInt32LittleEndian(span, (uint)value); break;
            default: BinaryPrimitives.WriteUInt64LittleEndian(span, value); break;
        }
    }

    public static ulong Get(byte[] bytes, long position) => BinaryPrimitives.ReadUInt64LittleEndian(bytes.AsSpan((int)position));
}
