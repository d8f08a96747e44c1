// The safetensors format: u64 header length, a JSON header {name: {dtype, shape, data_offsets}}, then raw data.
using System.Buffers.Binary;
using System.Text.Json;
using Kernels.Runtime.Numerics;

namespace Kernels.Runtime.Models;

internal sealed unsafe class SafetensorsFile : ITensorStorage, IDisposable
{
    public sealed record Entry(string Name, string DType, long[] Shape, long Begin, long End);

    private const long MaxHeaderBytes = 100L << 20; // the format's own limit on header size

    private readonly MappedFile _file;
    private readonly long _dataStart;
    public string Path => _file.Path;
    public IReadOnlyDictionary<string, Entry> Entries { get; }
    public IReadOnlyDictionary<string, string> Metadata { get; }

    private SafetensorsFile(MappedFile file, long dataStart, Dictionary<string, Entry> entries, Dictionary<string, string> metadata)
    {
        _file = file;
        _dataStart = dataStart;
        Entries = entries;
        Metadata = metadata;
    }

    public static SafetensorsFile Open(string path)
    {
        var file = MappedFile.Open(path);
        try
        {
            return Parse(file);
        }
        catch
        {
            file.Dispose();
            throw;
        }
    }

    private static SafetensorsFile Parse(MappedFile file)
    {
        string path = file.Path;
        if (file.Length < 8) throw new ModelFormatException(path, $"truncated safetensors file: {file.Length} bytes, not even the 8-byte header length");
        ulong headerLen = BinaryPrimitives.ReadUInt64LittleEndian(file.Span(0, 8));
        if (headerLen > (ulong)MaxHeaderBytes || (long)headerLen > file.Length - 8)
            throw new ModelFormatException(path, $"truncated or corrupt safetensors file: header claims {headerLen} bytes but the file has {file.Length - 8} after the length field");

        var entries = new Dictionary<string, Entry>(StringComparer.Ordinal);
        var metadata = new Dictionary<string, string>(StringComparer.Ordinal);
        long dataStart = 8 + (long)headerLen;
        long dataLength = file.Length - dataStart;
        try
        {
            using var doc = JsonDocument.Parse(file.Span(8, (int)headerLen).ToArray());
            if (doc.RootElement.ValueKind != JsonValueKind.Object) throw new ModelFormatException(path, "safetensors header is not a JSON object");
            foreach (var prop in doc.RootElement.EnumerateObject())
            {
                if (prop.Name == "__metadata__")
                {
                    if (prop.Value.ValueKind == JsonValueKind.Object)
                        foreach (var m in prop.Value.EnumerateObject())
                            metadata[m.Name] = m.Value.ValueKind == JsonValueKind.String ? m.Value.GetString()! : m.Value.GetRawText();
                    continue;
                }
                entries[prop.Name] = ParseEntry(prop.Name, prop.Value, dataLength, path);
            }
        }
        catch (Exception e) when (e is JsonException or InvalidOperationException or ArgumentException)
        {
            throw new ModelFormatException(path, $"corrupt safetensors header: {e.Message}", e);
        }
        return new SafetensorsFile(file, dataStart, entries, metadata);
    }

    /// <summary>
    /// One tensor of the header: {"dtype": string, "shape": [non-negative integers], "data_offsets": [begin, end]},
    /// with begin &lt;= end within the data section and, for a known dtype, end - begin = elements x element size
    /// (counted with checked 64-bit arithmetic: a shape whose size overflows is corrupt, not a small tensor).
    /// </summary>
    private static Entry ParseEntry(string name, JsonElement v, long dataLength, string path)
    {
        ModelFormatException Bad(string field, JsonElement value, string expected) =>
            new(path, $"tensor '{name}': {field} is {Truncated(value.GetRawText())}, expected {expected}");
        if (v.ValueKind != JsonValueKind.Object) throw Bad("the entry", v, "an object");
        if (!v.TryGetProperty("dtype", out var dtypeJson) || dtypeJson.ValueKind != JsonValueKind.String)
            throw new ModelFormatException(path, $"tensor '{name}': dtype is missing or not a string");
        string dtype = dtypeJson.GetString()!;
        if (!v.TryGetProperty("shape", out var shapeJson) || shapeJson.ValueKind != JsonValueKind.Array)
            throw new ModelFormatException(path, $"tensor '{name}': shape is missing or not an array");
        if (shapeJson.GetArrayLength() > MaxDimensions) throw Bad("shape", shapeJson, $"at most {MaxDimensions} dimensions");
        var shape = new long[shapeJson.GetArrayLength()];
        int d = 0;
        foreach (var x in shapeJson.EnumerateArray())
        {
            if (x.ValueKind != JsonValueKind.Number || !x.TryGetInt64(out long extent) || extent < 0)
                throw Bad($"shape[{d}]", x, $"an integer in 0..{long.MaxValue}");
            shape[d++] = extent;
        }
        if (!v.TryGetProperty("data_offsets", out var offs) || offs.ValueKind != JsonValueKind.Array || offs.GetArrayLength() != 2
            || !Integer(offs[0], out long begin) || !Integer(offs[1], out long end))
            throw new ModelFormatException(path, $"tensor '{name}': data_offsets must be two integers [begin, end]");
        if (begin < 0 || end < begin || end > dataLength)
            throw new ModelFormatException(path, $"tensor '{name}': data_offsets [{begin}, {end}] lie outside the data section of {dataLength} bytes (file truncated or header corrupt)");
        int elemSize = ElementSize(dtype);
        if (elemSize > 0)
        {
            ulong bytes = 1;
            bool overflow = false;
            foreach (long extent in shape)
                if (!overflow) overflow = !TryMultiply(bytes, (ulong)extent, out bytes);
            if (overflow || !TryMultiply(bytes, (ulong)elemSize, out bytes))
                throw new ModelFormatException(path, $"tensor '{name}': {dtype} {FormatShape(shape)} has more bytes than a 64-bit size can count");
            if ((ulong)(end - begin) != bytes)
                throw new ModelFormatException(path, $"tensor '{name}': data_offsets span {end - begin} bytes but {dtype} {FormatShape(shape)} needs {bytes}");
        }
        return new Entry(name, dtype, shape, begin, end);
    }

    private const int MaxDimensions = 8;

    private static bool Integer(JsonElement e, out long value)
    {
        value = 0;
        return e.ValueKind == JsonValueKind.Number && e.TryGetInt64(out value);
    }

    private static bool TryMultiply(ulong a, ulong b, out ulong product)
    {
        product = unchecked(a * b);
        return b == 0 || a <= ulong.MaxValue / b;
    }

    private static string Truncated(string s) => s.Length <= 40 ? s : s[..40] + "...";

    private static string FormatShape(long[] shape) => "[" + string.Join(", ", shape) + "]";

    private static int ElementSize(string dtype) => dtype switch
    {
        "F64" or "I64" or "U64" => 8,
        "F32" or "I32" or "U32" => 4,
        "F16" or "BF16" or "I16" or "U16" => 2,
        "I8" or "U8" or "BOOL" or "F8_E4M3" or "F8_E5M2" => 1,
        _ => 0,
    };

    public static TensorDType? WeightDType(string dtype) => dtype switch
    {
        "F32" => TensorDType.F32,
        "F16" => TensorDType.F16,
        "BF16" => TensorDType.BF16,
        "I8" => TensorDType.I8,
        "U8" => TensorDType.U8,
        "I32" => TensorDType.I32,
        _ => null,
    };

    /// <summary>A weight tensor pointing into the mapped file (no copy).</summary>
    public WeightTensor GetWeight(string name)
    {
        var e = Entries.TryGetValue(name, out var x) ? x : throw new ModelFormatException(Path, $"tensor '{name}' not found");
        var dtype = WeightDType(e.DType)
            ?? throw new ModelFormatException(Path, $"tensor '{name}' has dtype {e.DType}; weights must be F32, F16, BF16, I8, U8 or I32");
        return new WeightTensor(name, dtype, e.Shape, _file.Pointer + _dataStart + e.Begin);
    }

    public ReadOnlySpan<byte> RawBytes(string name)
    {
        var e = Entries.TryGetValue(name, out var x) ? x : throw new ModelFormatException(Path, $"tensor '{name}' not found");
        return _file.Span(_dataStart + e.Begin, checked((int)(e.End - e.Begin)));
    }

    public long[] ReadInt64(string name)
    {
        var e = Entries.TryGetValue(name, out var x) ? x : throw new ModelFormatException(Path, $"tensor '{name}' not found");
        if (e.DType != "I64") throw new ModelFormatException(Path, $"tensor '{name}' is {e.DType}, not I64");
        return System.Runtime.InteropServices.MemoryMarshal.Cast<byte, long>(RawBytes(name)).ToArray();
    }

    public float[] ReadSingle(string name)
    {
        var w = GetWeight(name);
        return w.ToFloatArray();
    }

    /// <summary>The mapped file the tensors point into.</summary>
    public NativeStorage Memory => _file;

    public void Dispose() => _file.Dispose();
}
