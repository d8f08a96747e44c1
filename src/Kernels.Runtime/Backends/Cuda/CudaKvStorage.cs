// KV block data in device memory: one allocation holding, per layer, keys then values, each [blocks, block_size, kv_dim].
using Kernels.Interop;
using Kernels.Runtime.KvCache;
using Kernels.Runtime.Models;
using Kernels.Runtime.Numerics;

namespace Kernels.Runtime.Backends.Cuda;

/// <summary>
/// Layer l's keys are <see cref="Keys"/>(l) = [NumBlocks, BlockSize, KvDim] in <see cref="DType"/>, the layout the paged
/// attention kernels and kv_append read (the CPU backend's block layout, in 16-bit or 32-bit floats). All memory is
/// allocated up front (sized by <see cref="CudaMemoryPlan"/>), so <see cref="Prepare"/> has nothing to do.
/// <see cref="CopyBlock"/> queues device-to-device copies on the backend's stream, ahead of the step that reads them.
/// </summary>
internal sealed unsafe class CudaKvStorage : IKvStorage, IDisposable
{
    private readonly DeviceBuffer<byte> _memory;
    private readonly CuStreamHandle _stream;
    private readonly long _layerBytes; // one layer's keys (or values)

    public int NumLayers { get; }
    public int NumBlocks { get; }
    public int BlockSize { get; }
    public int KvDim { get; }
    public TensorDType DType { get; }
    public int ElementBytes { get; }
    public long Bytes => _memory.ByteLength;

    public CudaKvStorage(CudaDevice device, CuStreamHandle stream, ModelConfig config, int numBlocks, int blockSize, TensorDType dtype)
    {
        ArgumentNullException.ThrowIfNull(device);
        ArgumentNullException.ThrowIfNull(stream);
        ArgumentOutOfRangeException.ThrowIfLessThan(numBlocks, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(blockSize, 1);
        NumLayers = config.NumLayers;
        NumBlocks = numBlocks;
        BlockSize = blockSize;
        KvDim = config.KvDim;
        DType = dtype;
        ElementBytes = CudaMemoryPlan.ElementBytes(dtype);
        _stream = stream;
        _layerBytes = CudaMemoryPlan.Align((long)numBlocks * blockSize * KvDim * ElementBytes);
        _memory = DeviceBuffer<byte>.Allocate(device, 2 * NumLayers * _layerBytes);
    }

    /// <summary>Rows (slots) per layer: slot = block * BlockSize + position % BlockSize.</summary>
    public int NumSlots => NumBlocks * BlockSize;

    private long LayerElements => (long)NumBlocks * BlockSize * KvDim;

    /// <summary>Layer <paramref name="layer"/>'s keys as <typeparamref name="T"/> (Half for F16, ushort for BF16, float for F32).</summary>
    public DeviceBuffer<T> Keys<T>(int layer) where T : unmanaged => _memory.View<T>(2 * layer * _layerBytes, LayerElements);

    public DeviceBuffer<T> Values<T>(int layer) where T : unmanaged => _memory.View<T>((2 * layer + 1) * _layerBytes, LayerElements);

    public void Prepare(int block)
    {
        if ((uint)block >= (uint)NumBlocks) throw new ArgumentOutOfRangeException(nameof(block), block, $"the device KV pool has {NumBlocks} blocks");
    }

    public void CopyBlock(int source, int destination, int tokens)
    {
        if ((uint)source >= (uint)NumBlocks) throw new ArgumentOutOfRangeException(nameof(source), source, $"the device KV pool has {NumBlocks} blocks");
        if ((uint)destination >= (uint)NumBlocks) throw new ArgumentOutOfRangeException(nameof(destination), destination, $"the device KV pool has {NumBlocks} blocks");
        if (tokens < 0 || tokens > BlockSize) throw new ArgumentOutOfRangeException(nameof(tokens), tokens, $"a block holds {BlockSize} tokens");
        if (tokens == 0 || source == destination) return;
        long blockBytes = (long)BlockSize * KvDim * ElementBytes, bytes = (long)tokens * KvDim * ElementBytes;
        ulong base_ = _memory.Pointer;
        _memory.Device.MakeCurrent();
        IntPtr stream = _stream.DangerousGetHandle();
        for (int half = 0; half < 2 * NumLayers; half++)
        {
            ulong layer = base_ + (ulong)(half * _layerBytes);
            Cu.Check(CuApi.cuMemcpyDtoDAsync(layer + (ulong)(destination * blockBytes), layer + (ulong)(source * blockBytes), (nuint)bytes, stream),
                _memory.Device.Ordinal);
        }
    }

    public void Dispose() => _memory.Dispose();
}
