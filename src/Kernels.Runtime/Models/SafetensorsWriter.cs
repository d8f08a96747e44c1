// Writes safetensors files (header JSON with dtype, shape and offsets, 8-byte aligned, then the raw data).
using System.Buffers.Binary;
using System.Text;
using System.Text.Json;

namespace Kernels.Runtime.Models;

internal static class SafetensorsWriter
{
    public sealed record Tensor(string Name, string DType, long[] Shape, ReadOnlyMemory<byte> Data);

    /// <summary>Writes the tensors in the given order; metadata goes under "__metadata__" (string values only).</summary>
    public static void Write(string path, IReadOnlyList<Tensor> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        var header = new Dictionary<string, object>();
        if (metadata is { Count: > 0 }) header["__metadata__"] = metadata;
        long offset = 0;
        foreach (var t in tensors)
        {
            header[t.Name] = new { dtype = t.DType, shape = t.Shape, data_offsets = new[] { offset, offset + t.Data.Length } };
            offset += t.Data.Length;
        }
        var json = JsonSerializer.SerializeToUtf8Bytes(header);
        int padded = (json.Length + 7) / 8 * 8; // the format pads the header with spaces to keep the data aligned
        using var f = File.Create(path);
        Span<byte> len = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(len, (ulong)padded);
        f.Write(len);
        f.Write(json);
        f.Write(Encoding.ASCII.GetBytes(new string(' ', padded - json.Length)));
        foreach (var t in tensors) f.Write(t.Data.Span);
    }
}
