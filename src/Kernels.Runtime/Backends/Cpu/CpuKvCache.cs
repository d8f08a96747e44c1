// A sequence's keys and values on the CPU: per layer, contiguous [position, kv_heads * head_dim] fp32, grown on demand.
using Kernels.Runtime.Models;

namespace Kernels.Runtime.Backends.Cpu;

public sealed class CpuKvCache : IKvCache
{
    private readonly ModelConfig _config;
    internal float[][] Keys;    // [layer][capacity * kvDim]
    internal float[][] Values;  // [layer][capacity * kvDim]
    private bool _disposed;

    public int Length { get; internal set; }
    public int Capacity { get; private set; }

    internal CpuKvCache(ModelConfig config, int capacity)
    {
        _config = config;
        Capacity = capacity;
        Keys = new float[config.NumLayers][];
        Values = new float[config.NumLayers][];
        for (int l = 0; l < config.NumLayers; l++)
        {
            Keys[l] = new float[(long)capacity * config.KvDim];
            Values[l] = new float[(long)capacity * config.KvDim];
        }
    }

    /// <summary>Makes room for <paramref name="tokens"/> positions (doubling, capped at the model's context).</summary>
    internal void EnsureCapacity(int tokens)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (tokens <= Capacity) return;
        if (tokens > _config.MaxPositions)
            throw new InvalidOperationException($"sequence of {tokens} tokens exceeds the model's context of {_config.MaxPositions}");
        int capacity = Math.Min(_config.MaxPositions, Math.Max(tokens, Capacity * 2));
        if ((long)capacity * _config.KvDim > Array.MaxLength)
            throw new InvalidOperationException($"a KV cache of {capacity} tokens x {_config.KvDim} values per layer exceeds one array; use a shorter context");
        for (int l = 0; l < _config.NumLayers; l++)
        {
            Array.Resize(ref Keys[l], capacity * _config.KvDim);
            Array.Resize(ref Values[l], capacity * _config.KvDim);
        }
        Capacity = capacity;
    }

    public IKvCache Fork()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        var copy = new CpuKvCache(_config, Math.Max(Length, 1)) { Length = Length };
        int n = Length * _config.KvDim;
        for (int l = 0; l < _config.NumLayers; l++)
        {
            Array.Copy(Keys[l], copy.Keys[l], n);
            Array.Copy(Values[l], copy.Values[l], n);
        }
        return copy;
    }

    public void Truncate(int length)
    {
        if (length < 0 || length > Length) throw new ArgumentOutOfRangeException(nameof(length), length, $"cache holds {Length} tokens");
        Length = length;
    }

    public void Dispose()
    {
        _disposed = true;
        Keys = [];
        Values = [];
    }
}
