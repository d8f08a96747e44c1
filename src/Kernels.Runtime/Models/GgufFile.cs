// GGUF v2/v3 reader: typed metadata, tensor directory, data views into the mapped file (the types GgmlTypes lists).
using System.Buffers.Binary;
using System.Text;
using Kernels.Runtime.Numerics;

namespace Kernels.Runtime.Models;

internal sealed unsafe class GgufFile : ITensorStorage, IDisposable
{
    public sealed record TensorInfo(string Name, long[] Shape, int GgmlType, ulong Offset);

    private const uint Magic = 0x46554747; // "GGUF" little-endian

    private readonly MappedFile _file;
    private readonly long _dataStart;
    public string Path => _file.Path;
    public uint Version { get; }
    /// <summary>Values keep their GGUF type: integers as their exact .NET type, arrays as typed .NET arrays.</summary>
    public IReadOnlyDictionary<string, object> Metadata { get; }
    public IReadOnlyDictionary<string, TensorInfo> Tensors { get; }

    private GgufFile(MappedFile file, uint version, Dictionary<string, object> metadata, Dictionary<string, TensorInfo> tensors, long dataStart)
    {
        _file = file;
        Version = version;
        Metadata = metadata;
        Tensors = tensors;
        _dataStart = dataStart;
    }

    public static GgufFile Open(string path)
    {
        var file = MappedFile.Open(path);
        try
        {
            return Parse(file);
        }
        catch (Exception e) when (e is OverflowException or FormatException or InvalidCastException)
        {
            file.Dispose();
            throw new ModelFormatException(path, $"corrupt GGUF file: {e.Message}", e);
        }
        catch
        {
            file.Dispose();
            throw;
        }
    }

    public static bool HasMagic(ReadOnlySpan<byte> head) => head.Length >= 4 && BinaryPrimitives.ReadUInt32LittleEndian(head) == Magic;

    /// <summary>Largest general.alignment accepted: real files use 32; a forged 2^30 would put the data past any file.</summary>
    public const uint MaxAlignment = 1 << 20;

    private static GgufFile Parse(MappedFile file)
    {
        string path = file.Path;
        var r = new Reader(file);
        uint magic = r.U32();
        if (magic != Magic) throw new ModelFormatException(path, $"not a GGUF file: bad magic 0x{magic:X8} (expected 'GGUF')");
        uint version = r.U32();
        if (version is not (2 or 3)) throw new ModelFormatException(path, $"unsupported GGUF version {version}; supported: 2, 3");
        ulong tensorCount = r.U64(), kvCount = r.U64();
        // Bounded by what the rest of the file can hold (a metadata entry takes at least 13 bytes, a tensor entry 32),
        // before any loop runs on them.
        ulong rest = (ulong)(file.Length - r.Position);
        if (kvCount > rest / MinMetadataEntryBytes)
            throw new ModelFormatException(path, $"corrupt GGUF header: metadata count {kvCount} cannot fit in the {rest} bytes after the header");
        if (tensorCount > rest / MinTensorEntryBytes)
            throw new ModelFormatException(path, $"corrupt GGUF header: tensor count {tensorCount} cannot fit in the {rest} bytes after the header");

        var metadata = new Dictionary<string, object>(StringComparer.Ordinal);
        for (ulong i = 0; i < kvCount; i++)
        {
            string key = r.Str();
            uint type = r.U32();
            metadata[key] = r.Value(type, key);
        }

        var tensors = new Dictionary<string, TensorInfo>(StringComparer.Ordinal);
        for (ulong i = 0; i < tensorCount; i++)
        {
            string name = r.Str();
            uint nDims = r.U32();
            if (nDims is 0 or > 4) throw new ModelFormatException(path, $"tensor '{name}': {nDims} dimensions (expected 1 to 4)");
            var ne = new long[nDims];
            for (int d = 0; d < nDims; d++)
            {
                ulong extent = r.U64();
                if (extent is 0 or > long.MaxValue)
                    throw new ModelFormatException(path, $"tensor '{name}': dimension {d} is {extent} (expected 1 to {long.MaxValue})");
                ne[d] = (long)extent;
            }
            Array.Reverse(ne); // GGML lists the fastest dimension first; we keep row-major order
            int ggmlType = (int)r.U32();
            ulong offset = r.U64();
            if (!tensors.TryAdd(name, new TensorInfo(name, ne, ggmlType, offset)))
                throw new ModelFormatException(path, $"tensor '{name}' is listed twice");
        }

        uint alignment = Alignment(metadata, path);
        // All in unsigned 64-bit arithmetic: the header ends inside the file, so the aligned start cannot overflow,
        // but it may lie past the end when the header ends unaligned at the end of the file.
        ulong headerEnd = (ulong)r.Position, fileLength = (ulong)file.Length;
        ulong dataStart = (headerEnd + alignment - 1) / alignment * alignment;
        if (tensors.Count > 0 && dataStart > fileLength)
            throw new ModelFormatException(path, $"truncated GGUF file: tensor data would start at byte {dataStart} (the header ends at {headerEnd}, " +
                                                 $"aligned to {alignment}), past the end of the file ({fileLength} bytes)");
        ulong available = dataStart <= fileLength ? fileLength - dataStart : 0;
        foreach (var t in tensors.Values)
        {
            if (t.Offset % alignment != 0)
                throw new ModelFormatException(path, $"tensor '{t.Name}': data offset {t.Offset} is not a multiple of general.alignment {alignment}");
            if (t.Offset > available)
                throw new ModelFormatException(path, $"truncated or corrupt GGUF file: tensor '{t.Name}' has data offset {t.Offset}, beyond the {available}-byte data section");
            if (GgmlTypes.ToDType(t.GgmlType) is not { } dtype) continue; // the size of an unknown type is unknown: reported when the tensor is used
            ulong bytes = ByteCount(t, dtype, path);
            if (bytes > available - t.Offset)
                throw new ModelFormatException(path, $"truncated GGUF file: tensor '{t.Name}' ({bytes} bytes at data offset {t.Offset}) ends past the end of " +
                                                     $"the {available}-byte data section (file {fileLength} bytes)");
        }
        return new GgufFile(file, version, metadata, tensors, (long)dataStart);
    }

    private const ulong MinMetadataEntryBytes = 8 + 4 + 1; // key length, value type, a one-byte value
    private const ulong MinTensorEntryBytes = 8 + 4 + 8 + 4 + 8; // name length, dimension count, one dimension, type, offset

    /// <summary>general.alignment: an unsigned or signed integer, a power of two in 1..<see cref="MaxAlignment"/>; 32 when absent.</summary>
    private static uint Alignment(Dictionary<string, object> metadata, string path)
    {
        const string Key = "general.alignment";
        if (!metadata.TryGetValue(Key, out var a)) return 32;
        ulong value = a switch
        {
            byte or ushort or uint or ulong => Convert.ToUInt64(a),
            sbyte or short or int or long when Convert.ToInt64(a) >= 0 => (ulong)Convert.ToInt64(a),
            sbyte or short or int or long => 0,
            _ => throw new ModelFormatException(path, $"metadata '{Key}' is a {a.GetType().Name} ({a}), expected an integer"),
        };
        if (value == 0 || value > MaxAlignment || (value & (value - 1)) != 0)
            throw new ModelFormatException(path, $"metadata '{Key}' = {a} is not a power of two between 1 and {MaxAlignment}");
        return (uint)value;
    }

    /// <summary>The tensor's byte size, every multiplication checked: a shape whose size overflows 64 bits is corrupt.</summary>
    private static ulong ByteCount(TensorInfo t, TensorDType dtype, string path)
    {
        try
        {
            long elements = 1;
            foreach (long d in t.Shape) elements = checked(elements * d);
            return (ulong)dtype.ByteCount(elements);
        }
        catch (OverflowException)
        {
            throw new ModelFormatException(path, $"corrupt GGUF file: tensor '{t.Name}' of shape [{string.Join(", ", t.Shape)}] {dtype.Name()} " +
                                                 "has more bytes than a 64-bit size can count");
        }
    }

    public WeightTensor? TryGetWeight(string ggufName, string name)
    {
        if (!Tensors.TryGetValue(ggufName, out var t)) return null;
        var dtype = GgmlTypes.ToDType(t.GgmlType)
            ?? throw new ModelFormatException(Path, $"tensor '{ggufName}' is stored as {GgmlTypes.Name(t.GgmlType)}, which this engine does not read; supported: {GgmlTypes.Supported}");
        if (t.Shape[^1] % dtype.BlockSize() != 0)
            throw new ModelFormatException(Path, $"tensor '{ggufName}': {dtype.Name()} rows of {t.Shape[^1]} values are not whole blocks of {dtype.BlockSize()}");
        return new WeightTensor(name, dtype, t.Shape, _file.Pointer + _dataStart + (long)t.Offset);
    }

    /// <summary>A string metadata value; a value of another type is an error naming the key.</summary>
    public string? GetString(string key) => Metadata.TryGetValue(key, out var v)
        ? v as string ?? throw new ModelFormatException(Path, $"metadata '{key}' is a {v.GetType().Name} ({v}), expected a string")
        : null;

    /// <summary>An integer metadata value of any width; a value of another type or beyond the long range is an error.</summary>
    public long? GetInteger(string key)
    {
        if (!Metadata.TryGetValue(key, out var v)) return null;
        return v switch
        {
            byte or sbyte or ushort or short or uint or int or long => Convert.ToInt64(v),
            ulong u when u <= long.MaxValue => (long)u,
            _ => throw new ModelFormatException(Path, $"metadata '{key}' is {v} ({v.GetType().Name}), expected an integer"),
        };
    }

    /// <summary>A real (or integer) metadata value; a value of another type is an error naming the key.</summary>
    public double? GetReal(string key)
    {
        if (!Metadata.TryGetValue(key, out var v)) return null;
        return v switch
        {
            float or double or byte or sbyte or ushort or short or uint or int or long or ulong => Convert.ToDouble(v),
            _ => throw new ModelFormatException(Path, $"metadata '{key}' is a {v.GetType().Name} ({v}), expected a number"),
        };
    }

    /// <summary>The mapped file the tensors point into.</summary>
    public NativeStorage Memory => _file;

    public void Dispose() => _file.Dispose();

    // ---------------------------------------------------------------------------------------------------------------
    // Bounds-checked little-endian reader over the mapped file: any read past the end is a truncated-file error.
    private sealed class Reader(MappedFile file)
    {
        public long Position { get; private set; }

        private ReadOnlySpan<byte> Take(long n)
        {
            if (n < 0 || Position + n > file.Length)
                throw new ModelFormatException(file.Path, $"truncated GGUF file: needed {n} bytes at offset {Position}, the file has {file.Length}");
            var s = file.Span(Position, checked((int)n));
            Position += n;
            return s;
        }

        public byte U8() => Take(1)[0];
        public ushort U16() => BinaryPrimitives.ReadUInt16LittleEndian(Take(2));
        public uint U32() => BinaryPrimitives.ReadUInt32LittleEndian(Take(4));
        public ulong U64() => BinaryPrimitives.ReadUInt64LittleEndian(Take(8));
        public float F32() => BinaryPrimitives.ReadSingleLittleEndian(Take(4));
        public double F64() => BinaryPrimitives.ReadDoubleLittleEndian(Take(8));

        public string Str()
        {
            ulong len = U64();
            if (len > int.MaxValue) throw new ModelFormatException(file.Path, $"corrupt GGUF string length {len} at offset {Position - 8}");
            return Encoding.UTF8.GetString(Take((long)len));
        }

        public object Value(uint type, string key) => type switch
        {
            0 => U8(),
            1 => (sbyte)U8(),
            2 => U16(),
            3 => (short)U16(),
            4 => U32(),
            5 => (int)U32(),
            6 => F32(),
            7 => U8() != 0,
            8 => Str(),
            9 => Array(key),
            10 => U64(),
            11 => (long)U64(),
            12 => F64(),
            _ => throw new ModelFormatException(file.Path, $"metadata '{key}': unknown value type {type}"),
        };

        private object Array(string key)
        {
            uint elemType = U32();
            ulong count = U64();
            // Every element takes at least one byte (a string at least its 8-byte length), so a count the rest of the
            // file cannot hold is corrupt; checking before allocating stops a forged count from reserving gigabytes.
            ulong minElement = elemType switch { 0 or 1 or 7 => 1, 2 or 3 => 2, 4 or 5 or 6 => 4, _ => 8 };
            if (count > (ulong)System.Array.MaxLength || count * minElement > (ulong)(file.Length - Position))
                throw new ModelFormatException(file.Path, $"metadata '{key}': array of {count} elements cannot fit in the file");
            int n = (int)count;
            switch (elemType)
            {
                case 0: { var a = new byte[n]; for (int i = 0; i < n; i++) a[i] = U8(); return a; }
                case 1: { var a = new sbyte[n]; for (int i = 0; i < n; i++) a[i] = (sbyte)U8(); return a; }
                case 2: { var a = new ushort[n]; for (int i = 0; i < n; i++) a[i] = U16(); return a; }
                case 3: { var a = new short[n]; for (int i = 0; i < n; i++) a[i] = (short)U16(); return a; }
                case 4: { var a = new uint[n]; for (int i = 0; i < n; i++) a[i] = U32(); return a; }
                case 5: { var a = new int[n]; for (int i = 0; i < n; i++) a[i] = (int)U32(); return a; }
                case 6: { var a = new float[n]; for (int i = 0; i < n; i++) a[i] = F32(); return a; }
                case 7: { var a = new bool[n]; for (int i = 0; i < n; i++) a[i] = U8() != 0; return a; }
                case 8: { var a = new string[n]; for (int i = 0; i < n; i++) a[i] = Str(); return a; }
                case 10: { var a = new ulong[n]; for (int i = 0; i < n; i++) a[i] = U64(); return a; }
                case 11: { var a = new long[n]; for (int i = 0; i < n; i++) a[i] = (long)U64(); return a; }
                case 12: { var a = new double[n]; for (int i = 0; i < n; i++) a[i] = F64(); return a; }
                default: throw new ModelFormatException(file.Path, $"metadata '{key}': unsupported array element type {elemType}");
            }
        }
    }
}
