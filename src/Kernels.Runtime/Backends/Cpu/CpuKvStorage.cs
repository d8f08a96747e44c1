// KV block data on the CPU: per layer, pinned chunks of blocks, each block [block_size, kv_heads * head_dim] fp32.
using System.Runtime.CompilerServices;
using Kernels.Runtime.KvCache;
using Kernels.Runtime.Models;

namespace Kernels.Runtime.Backends.Cpu;

public sealed unsafe class CpuKvStorage : IKvStorage
{
    /// <summary>Blocks per allocation: memory grows with use, in steps of this many blocks.</summary>
    private const int BlocksPerChunk = 64;

    private readonly int _layers, _blockSize, _kvDim;
    private readonly List<float[]>[] _keys, _values; // [layer][chunk] -> BlocksPerChunk * blockSize * kvDim, pinned

    public CpuKvStorage(ModelConfig config, int blockSize)
    {
        _layers = config.NumLayers;
        _blockSize = blockSize;
        _kvDim = config.KvDim;
        _keys = Enumerable.Range(0, _layers).Select(_ => new List<float[]>()).ToArray();
        _values = Enumerable.Range(0, _layers).Select(_ => new List<float[]>()).ToArray();
    }

    private int BlockFloats => _blockSize * _kvDim;

    public void Prepare(int block)
    {
        int chunk = block / BlocksPerChunk;
        for (int l = 0; l < _layers; l++)
        {
            while (_keys[l].Count <= chunk)
            {
                _keys[l].Add(GC.AllocateUninitializedArray<float>(BlocksPerChunk * BlockFloats, pinned: true));
                _values[l].Add(GC.AllocateUninitializedArray<float>(BlocksPerChunk * BlockFloats, pinned: true));
            }
        }
    }

    /// <summary>Keys of one block: [block_size, kv_heads * head_dim].</summary>
    public Span<float> Keys(int layer, int block) => _keys[layer][block / BlocksPerChunk].AsSpan(block % BlocksPerChunk * BlockFloats, BlockFloats);

    public Span<float> Values(int layer, int block) => _values[layer][block / BlocksPerChunk].AsSpan(block % BlocksPerChunk * BlockFloats, BlockFloats);

    // Chunks are pinned, so pointers into them stay valid for the storage's lifetime.
    public float* KeyPointer(int layer, int block) => (float*)Unsafe.AsPointer(ref Keys(layer, block)[0]);
    public float* ValuePointer(int layer, int block) => (float*)Unsafe.AsPointer(ref Values(layer, block)[0]);

    public void CopyBlock(int source, int destination, int tokens)
    {
        int n = tokens * _kvDim;
        for (int l = 0; l < _layers; l++)
        {
            Keys(l, source)[..n].CopyTo(Keys(l, destination));
            Values(l, source)[..n].CopyTo(Values(l, destination));
        }
    }
}
