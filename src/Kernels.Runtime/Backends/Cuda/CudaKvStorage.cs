// KV block data in device memory: one allocation holding, per layer, keys then values, each [slots, block_size, kv_dim]
// (and, for KIVI, the compact records of every block id).
using Kernels.Interop;
using Kernels.Runtime.KvCache;
using Kernels.Runtime.Models;
using Kernels.Runtime.Numerics;
using Kernels.Runtime.Quantization;

namespace Kernels.Runtime.Backends.Cuda;

/// <summary>
/// Layer l's keys are <see cref="Keys"/>(l) = [FullBlocks, BlockSize, KvDim] in <see cref="DType"/>, the layout the paged
/// attention kernels and kv_append read (the CPU backend's block layout, in 16-bit or 32-bit floats). All memory is
/// allocated up front (sized by <see cref="CudaMemoryPlan"/>). fp16/bf16/fp32: block b's rows are slot b.
/// <para>
/// KIVI (<see cref="Format"/>): every block id has a compact record in <see cref="Pool"/>(l) (codes, scales, mins: the
/// CPU's layout, Kivi.cs), and a block that is full precision also holds one of <see cref="FullBlocks"/> fp16 slots,
/// handed out on <see cref="Prepare"/> and taken back on <see cref="Compact"/> or release (the pool never holds more
/// full blocks than slots: KvBlockPool's maxFullBlocks). <see cref="Slot"/> maps a block to its slot.
/// </para>
/// <see cref="CopyBlock"/> queues device-to-device copies on the backend's stream, ahead of the step that reads them.
/// </summary>
internal sealed unsafe class CudaKvStorage : IKvStorage, IDisposable
{
    private readonly DeviceBuffer<byte> _memory;
    private readonly CuStreamHandle _stream;
    private readonly long _rowsBytes;   // one layer's keys (or values): FullBlocks slots
    private readonly long _codesBytes, _scalesBytes, _minsBytes; // one layer's compact records (KIVI)
    private readonly long _layerBytes;
    private readonly int[] _slot = [];  // KIVI: block id -> fp16 slot, -1 when none
    private readonly Stack<int> _freeSlots = new();

    public int NumLayers { get; }
    /// <summary>Block ids the pool may hand out.</summary>
    public int NumBlocks { get; }
    /// <summary>Full-precision slots: NumBlocks, or the KIVI cache's fixed number of fp16 slots.</summary>
    public int FullBlocks { get; }
    public int BlockSize { get; }
    public int KvDim { get; }
    public TensorDType DType { get; }
    public int ElementBytes { get; }
    /// <summary>The KIVI format, or null for a cache of 16/32-bit rows only.</summary>
    public KvCacheFormat? Format { get; }
    public long Bytes => _memory.ByteLength;

    public CudaKvStorage(CudaDevice device, CuStreamHandle stream, ModelConfig config, int numBlocks, int blockSize, TensorDType dtype,
        KvCacheFormat? kivi = null, int fullBlocks = 0)
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
        if (kivi is { IsKivi: true })
        {
            if (dtype != TensorDType.F16) throw new ArgumentException($"a KIVI cache keeps its window in fp16, not {dtype.Name()}", nameof(dtype));
            if (blockSize != kivi.Group) throw new ArgumentException($"a KIVI cache needs blocks of G = {kivi.Group} tokens, got {blockSize}", nameof(blockSize));
            ArgumentOutOfRangeException.ThrowIfLessThan(fullBlocks, 1);
            Format = kivi;
            FullBlocks = Math.Min(fullBlocks, numBlocks);
            _codesBytes = CudaMemoryPlan.Align((long)numBlocks * Kivi.CodeWords(KvDim, blockSize, kivi.Bits) * sizeof(uint));
            _scalesBytes = CudaMemoryPlan.Align(2L * numBlocks * KvDim * sizeof(ushort));
            _minsBytes = CudaMemoryPlan.Align(2L * numBlocks * KvDim * sizeof(float));
            _slot = new int[numBlocks];
            Array.Fill(_slot, -1);
            for (int s = FullBlocks - 1; s >= 0; s--) _freeSlots.Push(s);
        }
        else FullBlocks = numBlocks;
        _rowsBytes = CudaMemoryPlan.Align((long)FullBlocks * blockSize * KvDim * ElementBytes);
        _layerBytes = 2 * _rowsBytes + _codesBytes + _scalesBytes + _minsBytes;
        _memory = DeviceBuffer<byte>.Allocate(device, NumLayers * _layerBytes);
        // Zeroed once: rows and records nobody wrote (a captured graph's padding entries, a fresh slot) read as valid zeros.
        _memory.FillBytes(0);
    }

    /// <summary>Rows per layer that kv_append may write: slot * BlockSize + position % BlockSize.</summary>
    public int NumSlots => FullBlocks * BlockSize;

    private long LayerElements => (long)FullBlocks * BlockSize * KvDim;

    /// <summary>Layer <paramref name="layer"/>'s keys as <typeparamref name="T"/> (Half for F16, ushort for BF16, float for F32).</summary>
    public DeviceBuffer<T> Keys<T>(int layer) where T : unmanaged => _memory.View<T>(layer * _layerBytes, LayerElements);

    public DeviceBuffer<T> Values<T>(int layer) where T : unmanaged => _memory.View<T>(layer * _layerBytes + _rowsBytes, LayerElements);

    /// <summary>KIVI: layer <paramref name="layer"/>'s compact records, one per block id.</summary>
    public OpsLauncher.KiviPool Pool(int layer)
    {
        var f = Format ?? throw new InvalidOperationException("this KV cache is not KIVI: it has no compact records");
        long at = layer * _layerBytes + 2 * _rowsBytes;
        return new OpsLauncher.KiviPool(
            _memory.View<uint>(at, (long)NumBlocks * Kivi.CodeWords(KvDim, BlockSize, f.Bits)),
            _memory.View<Half>(at + _codesBytes, 2L * NumBlocks * KvDim),
            _memory.View<float>(at + _codesBytes + _scalesBytes, 2L * NumBlocks * KvDim),
            NumBlocks, KvDim, BlockSize, f.Bits);
    }

    /// <summary>The slot holding block <paramref name="block"/>'s full-precision rows (the block itself without KIVI).</summary>
    public int Slot(int block)
    {
        if (Format == null) return block;
        int slot = _slot[block];
        if (slot < 0) throw new InvalidOperationException($"KV block {block} is compact: it has no full-precision rows");
        return slot;
    }

    /// <summary>Whether the block has full-precision rows (always, except KIVI blocks that were compacted).</summary>
    public bool HasFullRows(int block) => Format == null || _slot[block] >= 0;

    public void Prepare(int block)
    {
        if ((uint)block >= (uint)NumBlocks) throw new ArgumentOutOfRangeException(nameof(block), block, $"the device KV pool has {NumBlocks} blocks");
        if (Format == null || _slot[block] >= 0) return;
        if (_freeSlots.Count == 0)
            throw new InvalidOperationException($"no free fp16 slot for KV block {block}: all {FullBlocks} are held (the pool must bound full blocks by the slots)");
        _slot[block] = _freeSlots.Pop();
    }

    public void Compact(int block) => Release(block);

    public void Release(int block)
    {
        if (Format == null || _slot[block] < 0) return;
        _freeSlots.Push(_slot[block]);
        _slot[block] = -1;
    }

    public void CopyBlock(int source, int destination, int tokens)
    {
        if ((uint)source >= (uint)NumBlocks) throw new ArgumentOutOfRangeException(nameof(source), source, $"the device KV pool has {NumBlocks} blocks");
        if ((uint)destination >= (uint)NumBlocks) throw new ArgumentOutOfRangeException(nameof(destination), destination, $"the device KV pool has {NumBlocks} blocks");
        if (tokens < 0 || tokens > BlockSize) throw new ArgumentOutOfRangeException(nameof(tokens), tokens, $"a block holds {BlockSize} tokens");
        if (tokens == 0 || source == destination) return;
        _memory.Device.MakeCurrent();
        IntPtr stream = _stream.DangerousGetHandle();
        void Copy(long from, long to, long bytes) =>
            Cu.Check(CuApi.cuMemcpyDtoDAsync(_memory.Pointer + (ulong)to, _memory.Pointer + (ulong)from, (nuint)bytes, stream), _memory.Device.Ordinal);
        if (!HasFullRows(source))
        {
            // A compact block (always whole): its record, every layer.
            int words = Kivi.CodeWords(KvDim, BlockSize, Format!.Bits);
            for (int l = 0; l < NumLayers; l++)
            {
                long at = l * _layerBytes + 2 * _rowsBytes;
                Copy(at + (long)source * words * 4, at + (long)destination * words * 4, words * 4L);
                at += _codesBytes;
                Copy(at + source * 2L * KvDim * 2, at + destination * 2L * KvDim * 2, 2L * KvDim * 2);
                at += _scalesBytes;
                Copy(at + source * 2L * KvDim * 4, at + destination * 2L * KvDim * 4, 2L * KvDim * 4);
            }
            return;
        }
        long blockBytes = (long)BlockSize * KvDim * ElementBytes, bytes = (long)tokens * KvDim * ElementBytes;
        int from = Slot(source), to = Slot(destination);
        for (int l = 0; l < NumLayers; l++)
            for (int half = 0; half < 2; half++)
            {
                long rows = l * _layerBytes + half * _rowsBytes;
                Copy(rows + from * blockBytes, rows + to * blockBytes, bytes);
            }
    }

    public void Dispose() => _memory.Dispose();
}
