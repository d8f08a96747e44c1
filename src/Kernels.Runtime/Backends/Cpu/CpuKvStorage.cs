// KV block data on the CPU: per layer, pinned chunks of blocks. Full-precision blocks are [block_size, kv_heads * head_dim]
// rows (fp32 for the fp32 format, fp16 otherwise); KIVI blocks that left their window hold the packed layout of Kivi.cs.
using System.Runtime.CompilerServices;
using Kernels.Runtime.KvCache;
using Kernels.Runtime.Models;
using Kernels.Runtime.Quantization;

namespace Kernels.Runtime.Backends.Cpu;

/// <summary>
/// fp32/fp16: block b's rows live at slot b. KIVI: every block id has a compact slot (codes, scales, mins; small), and
/// a full-precision fp16 slot only while it is full precision: slots are handed out on <see cref="Prepare"/> and taken
/// back on <see cref="Compact"/> or release, so full-precision memory follows the pool's accounting.
/// </summary>
internal sealed unsafe class CpuKvStorage : IKvStorage
{
    /// <summary>Blocks per allocation: memory grows with use, in steps of this many blocks.</summary>
    private const int BlocksPerChunk = 64;

    private readonly int _layers, _blockSize, _kvDim;
    private readonly List<float[]>[] _keys, _values;         // fp32 format: [layer][chunk] -> BlocksPerChunk * blockSize * kvDim
    private readonly List<Half[]>[] _keysHalf, _valuesHalf;  // fp16 and KIVI full-precision slots
    private readonly List<uint[]>[] _codes;                  // KIVI compact form, by block id
    private readonly List<Half[]>[] _scales;
    private readonly List<float[]>[] _mins;
    private int[] _slot = [];                                // KIVI: block -> full-precision slot, -1 when none
    private readonly Stack<int> _freeSlots = new();
    private int _slots;

    public KvCacheFormat Format { get; }
    public int BlockSize => _blockSize;
    /// <summary>Whether full-precision rows are fp16 (fp16 and KIVI formats) rather than fp32.</summary>
    public bool HalfRows => Format.Kind != KvCacheKind.Fp32;

    public CpuKvStorage(ModelConfig config, int blockSize, KvCacheFormat? format = null)
    {
        Format = format ?? KvCacheFormat.Fp32;
        Format.Validate(config.KvDim, config.HeadDim);
        if (Format.IsKivi && blockSize != Format.Group)
            throw new ArgumentException($"a KIVI cache needs blocks of G = {Format.Group} tokens, got {blockSize}", nameof(blockSize));
        _layers = config.NumLayers;
        _blockSize = blockSize;
        _kvDim = config.KvDim;
        List<T[]>[] PerLayer<T>() => Enumerable.Range(0, _layers).Select(_ => new List<T[]>()).ToArray();
        _keys = PerLayer<float>();
        _values = PerLayer<float>();
        _keysHalf = PerLayer<Half>();
        _valuesHalf = PerLayer<Half>();
        _codes = PerLayer<uint>();
        _scales = PerLayer<Half>();
        _mins = PerLayer<float>();
    }

    private int BlockFloats => _blockSize * _kvDim;
    private int CodeWords => Kivi.CodeWords(_kvDim, _blockSize, Format.Bits);
    private int ParamCount => 2 * _kvDim;

    /// <summary>Bytes of one full-precision block (every layer, keys and values).</summary>
    public long FullBlockBytes => 2L * _layers * BlockFloats * (HalfRows ? sizeof(ushort) : sizeof(float));

    /// <summary>Bytes of one block's compact form (every layer), 0 when the format does not compact.</summary>
    public long CompactBlockBytes => Format.IsKivi ? _layers * Kivi.BlockBytes(_kvDim, _blockSize, Format.Bits) : 0;

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Grow<T>(List<T[]> chunks, int chunk, int length) where T : unmanaged
    {
        while (chunks.Count <= chunk)
        {
            var array = GC.AllocateUninitializedArray<T>(length, pinned: true);
            // Mapped now in one call rather than a page fault at a time by the step that writes its first rows.
            MemoryPages.Populate(Unsafe.AsPointer(ref array[0]), (long)length * sizeof(T));
            chunks.Add(array);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public void Prepare(int block)
    {
        int slot = block;
        if (Format.IsKivi)
        {
            if (block >= _slot.Length)
            {
                int old = _slot.Length;
                Array.Resize(ref _slot, Math.Max(block + 1, old * 2));
                _slot.AsSpan(old).Fill(-1);
            }
            for (int l = 0; l < _layers; l++)
            {
                Grow(_codes[l], block / BlocksPerChunk, BlocksPerChunk * CodeWords);
                Grow(_scales[l], block / BlocksPerChunk, BlocksPerChunk * ParamCount);
                Grow(_mins[l], block / BlocksPerChunk, BlocksPerChunk * ParamCount);
            }
            if (_slot[block] < 0) _slot[block] = _freeSlots.Count > 0 ? _freeSlots.Pop() : _slots++;
            slot = _slot[block];
        }
        int chunk = slot / BlocksPerChunk;
        for (int l = 0; l < _layers; l++)
        {
            if (HalfRows)
            {
                Grow(_keysHalf[l], chunk, BlocksPerChunk * BlockFloats);
                Grow(_valuesHalf[l], chunk, BlocksPerChunk * BlockFloats);
            }
            else
            {
                Grow(_keys[l], chunk, BlocksPerChunk * BlockFloats);
                Grow(_values[l], chunk, BlocksPerChunk * BlockFloats);
            }
        }
    }

    public void Compact(int block) => Release(block);

    public void Release(int block)
    {
        if (!Format.IsKivi || _slot[block] < 0) return;
        _freeSlots.Push(_slot[block]);
        _slot[block] = -1;
    }

    /// <summary>Whether the block has its full-precision rows (always, except KIVI blocks that were compacted).</summary>
    public bool HasFullRows(int block) => !Format.IsKivi || (block < _slot.Length && _slot[block] >= 0);

    private int Slot(int block)
    {
        int slot = Format.IsKivi ? _slot[block] : block;
        if (slot < 0) throw new InvalidOperationException($"KV block {block} is compact: it has no full-precision rows");
        return slot;
    }

    /// <summary>Keys of one fp32 block: [block_size, kv_heads * head_dim].</summary>
    public Span<float> Keys(int layer, int block) => FloatRows(_keys, layer, block);

    public Span<float> Values(int layer, int block) => FloatRows(_values, layer, block);

    private Span<float> FloatRows(List<float[]>[] store, int layer, int block)
    {
        if (HalfRows) throw new InvalidOperationException($"the {Format} cache keeps fp16 rows");
        return store[layer][block / BlocksPerChunk].AsSpan(block % BlocksPerChunk * BlockFloats, BlockFloats);
    }

    private Span<Half> HalfRowsOf(List<Half[]>[] store, int layer, int block)
    {
        int slot = Slot(block);
        return store[layer][slot / BlocksPerChunk].AsSpan(slot % BlocksPerChunk * BlockFloats, BlockFloats);
    }

    // Chunks are pinned, so pointers into them stay valid for the storage's lifetime.
    public float* KeyPointer(int layer, int block) => (float*)Unsafe.AsPointer(ref Keys(layer, block)[0]);
    public float* ValuePointer(int layer, int block) => (float*)Unsafe.AsPointer(ref Values(layer, block)[0]);
    public ushort* KeyHalfPointer(int layer, int block) => (ushort*)Unsafe.AsPointer(ref HalfRowsOf(_keysHalf, layer, block)[0]);
    public ushort* ValueHalfPointer(int layer, int block) => (ushort*)Unsafe.AsPointer(ref HalfRowsOf(_valuesHalf, layer, block)[0]);

    /// <summary>The compact form of one layer of a block (layout in <see cref="Kivi"/>).</summary>
    public uint* Codes(int layer, int block) => (uint*)Unsafe.AsPointer(ref _codes[layer][block / BlocksPerChunk][block % BlocksPerChunk * CodeWords]);
    public Half* Scales(int layer, int block) => (Half*)Unsafe.AsPointer(ref _scales[layer][block / BlocksPerChunk][block % BlocksPerChunk * ParamCount]);
    public float* Mins(int layer, int block) => (float*)Unsafe.AsPointer(ref _mins[layer][block / BlocksPerChunk][block % BlocksPerChunk * ParamCount]);

    /// <summary>Writes one position's keys and values (kv_heads * head_dim each) into row <paramref name="row"/> of a full-precision block.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public void WriteRow(int layer, int block, int row, ReadOnlySpan<float> key, ReadOnlySpan<float> value)
    {
        if (!HalfRows)
        {
            key.CopyTo(Keys(layer, block)[(row * _kvDim)..]);
            value.CopyTo(Values(layer, block)[(row * _kvDim)..]);
            return;
        }
        var k = HalfRowsOf(_keysHalf, layer, block).Slice(row * _kvDim, _kvDim);
        var v = HalfRowsOf(_valuesHalf, layer, block).Slice(row * _kvDim, _kvDim);
        for (int i = 0; i < _kvDim; i++)
        {
            k[i] = (Half)key[i];
            v[i] = (Half)value[i];
        }
    }

    /// <summary>Quantizes one layer of a full block from its fp16 rows into its compact form (the rows stay until Compact).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public void Quantize(int layer, int block)
    {
        if (!Format.IsKivi) throw new InvalidOperationException($"the {Format} cache does not quantize");
        var keys = new float[BlockFloats];
        var values = new float[BlockFloats];
        var kh = HalfRowsOf(_keysHalf, layer, block);
        var vh = HalfRowsOf(_valuesHalf, layer, block);
        for (int i = 0; i < keys.Length; i++)
        {
            keys[i] = (float)kh[i];
            values[i] = (float)vh[i];
        }
        fixed (float* kp = keys)
        fixed (float* vp = values)
            Kivi.QuantizeBlock(kp, vp, _kvDim, _blockSize, Format.Bits, Codes(layer, block), Scales(layer, block), Mins(layer, block));
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public void CopyBlock(int source, int destination, int tokens)
    {
        int n = tokens * _kvDim;
        for (int l = 0; l < _layers; l++)
        {
            if (!HasFullRows(source))
            {
                new Span<uint>(Codes(l, source), CodeWords).CopyTo(new Span<uint>(Codes(l, destination), CodeWords));
                new Span<Half>(Scales(l, source), ParamCount).CopyTo(new Span<Half>(Scales(l, destination), ParamCount));
                new Span<float>(Mins(l, source), ParamCount).CopyTo(new Span<float>(Mins(l, destination), ParamCount));
            }
            else if (HalfRows)
            {
                HalfRowsOf(_keysHalf, l, source)[..n].CopyTo(HalfRowsOf(_keysHalf, l, destination));
                HalfRowsOf(_valuesHalf, l, source)[..n].CopyTo(HalfRowsOf(_valuesHalf, l, destination));
            }
            else
            {
                Keys(l, source)[..n].CopyTo(Keys(l, destination));
                Values(l, source)[..n].CopyTo(Values(l, destination));
            }
        }
    }
}
