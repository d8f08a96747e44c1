// Writes GGUF v3 files: typed metadata, then tensor infos, then 32-byte-aligned data (F32, F16, Q8_0).
using System.Text;
using Kernels.Runtime.Numerics;

namespace Kernels.Runtime.Models;

internal sealed class GgufWriter
{
    public const int Alignment = 32;

    public sealed record Tensor(string Name, long[] Shape, TensorDType DType, byte[] Data);

    private readonly List<(string Key, object Value)> _metadata = new();
    private readonly List<Tensor> _tensors = new();

    /// <summary>
    /// Adds a metadata value: string, bool, float, double, int, uint, long, ulong, or an array of string, float, int.
    /// </summary>
    public GgufWriter Set(string key, object value)
    {
        _metadata.Add((key, value));
        return this;
    }

    /// <summary>Adds a tensor; shape is row-major (written reversed, GGML's fastest dimension first).</summary>
    public GgufWriter Add(Tensor tensor)
    {
        long elements = tensor.Shape.Aggregate(1L, (a, b) => a * b);
        if (tensor.DType.ByteCount(elements) != tensor.Data.Length)
            throw new ArgumentException($"tensor '{tensor.Name}': {tensor.Data.Length} bytes for {tensor.DType.Name()} {string.Join("x", tensor.Shape)}");
        _tensors.Add(tensor);
        return this;
    }

    public void Write(string path)
    {
        using var f = new BinaryWriter(File.Create(path), Encoding.UTF8);
        f.Write(Encoding.ASCII.GetBytes("GGUF"));
        f.Write(3u);
        f.Write((ulong)_tensors.Count);
        f.Write((ulong)_metadata.Count);
        foreach (var (key, value) in _metadata)
        {
            WriteString(f, key);
            WriteValue(f, key, value);
        }
        long offset = 0;
        foreach (var t in _tensors)
        {
            WriteString(f, t.Name);
            f.Write((uint)t.Shape.Length);
            for (int d = t.Shape.Length - 1; d >= 0; d--) f.Write((ulong)t.Shape[d]);
            f.Write(GgmlTypes.ToId(t.DType));
            f.Write((ulong)offset);
            offset = Align(offset + t.Data.Length);
        }
        Pad(f);
        foreach (var t in _tensors)
        {
            f.Write(t.Data);
            Pad(f);
        }
    }

    private static long Align(long x) => (x + Alignment - 1) / Alignment * Alignment;

    private static void Pad(BinaryWriter f)
    {
        long pos = f.BaseStream.Position;
        f.Write(new byte[Align(pos) - pos]);
    }

    private static void WriteString(BinaryWriter f, string s)
    {
        var bytes = Encoding.UTF8.GetBytes(s);
        f.Write((ulong)bytes.Length);
        f.Write(bytes);
    }

    private static void WriteValue(BinaryWriter f, string key, object value)
    {
        switch (value)
        {
            case uint v: f.Write(4u); f.Write(v); break;
            case int v: f.Write(5u); f.Write(v); break;
            case float v: f.Write(6u); f.Write(v); break;
            case bool v: f.Write(7u); f.Write((byte)(v ? 1 : 0)); break;
            case string v: f.Write(8u); WriteString(f, v); break;
            case ulong v: f.Write(10u); f.Write(v); break;
            case long v: f.Write(11u); f.Write(v); break;
            case double v: f.Write(12u); f.Write(v); break;
            case string[] a: f.Write(9u); f.Write(8u); f.Write((ulong)a.Length); foreach (var s in a) WriteString(f, s); break;
            case float[] a: f.Write(9u); f.Write(6u); f.Write((ulong)a.Length); foreach (var x in a) f.Write(x); break;
            case int[] a: f.Write(9u); f.Write(5u); f.Write((ulong)a.Length); foreach (var x in a) f.Write(x); break;
            default: throw new ArgumentException($"metadata '{key}': unsupported value type {value.GetType().Name}");
        }
    }
}
