// GGUF v2/v3 reader: typed metadata, tensor directory, data views into the mapped file (the types GgmlTypes lists).
using System.Buffers.Binary;
using System.Text;

namespace Kernels.Runtime.Models;

public sealed unsafe class GgufFile : IDisposable
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

    private static GgufFile Parse(MappedFile file)
    {
        var r = new Reader(file);
        uint magic = r.U32();
        if (magic != Magic) throw new ModelFormatException(file.Path, $"not a GGUF file: bad magic 0x{magic:X8} (expected 'GGUF')");
        uint version = r.U32();
        if (version is not (2 or 3)) throw new ModelFormatException(file.Path, $"unsupported GGUF version {version}; supported: 2, 3");
        ulong tensorCount = r.U64(), kvCount = r.U64();
        if (tensorCount > 1_000_000 || kvCount > 1_000_000)
            throw new ModelFormatException(file.Path, $"corrupt GGUF header: {tensorCount} tensors, {kvCount} metadata entries");

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
            if (nDims is 0 or > 4) throw new ModelFormatException(file.Path, $"tensor '{name}': {nDims} dimensions");
            var ne = new long[nDims];
            for (int d = 0; d < nDims; d++) ne[d] = checked((long)r.U64());
            Array.Reverse(ne); // GGML lists the fastest dimension first; we keep row-major order
            int ggmlType = (int)r.U32();
            ulong offset = r.U64();
            tensors[name] = new TensorInfo(name, ne, ggmlType, offset);
        }

        long alignment = metadata.TryGetValue("general.alignment", out var a) ? a switch
        {
            uint u => u,
            int i => i,
            ulong u => u <= 1 << 20 ? (long)u : -1,
            long l => l,
            _ => throw new ModelFormatException(file.Path, $"general.alignment is a {a.GetType().Name}, expected an integer"),
        } : 32;
        if (alignment <= 0 || (alignment & (alignment - 1)) != 0) throw new ModelFormatException(file.Path, $"general.alignment {alignment} is not a power of two");
        long dataStart = (r.Position + alignment - 1) / alignment * alignment;
        var result = new GgufFile(file, version, metadata, tensors, dataStart);
        foreach (var t in tensors.Values)
        {
            var dtype = GgmlTypes.ToDType(t.GgmlType);
            if (dtype == null) continue; // reported when the tensor is used
            long available = file.Length - dataStart;
            long elements = t.Shape.Aggregate(1L, (x, y) => checked(x * y)); // overflow: a corrupt shape, reported above
            long bytes = checked(dtype.Value.ByteCount(elements));
            if (t.Offset > (ulong)available || bytes > available - (long)t.Offset)
                throw new ModelFormatException(file.Path, $"truncated GGUF file: tensor '{t.Name}' ({bytes} bytes at data offset {t.Offset}) ends past the end of the file ({file.Length} bytes)");
        }
        return result;
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

    public string? GetString(string key) => Metadata.TryGetValue(key, out var v) ? v as string : null;

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

    public double? GetReal(string key) => Metadata.TryGetValue(key, out var v) && v is float or double or int or uint or long or ulong ? Convert.ToDouble(v) : null;

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
