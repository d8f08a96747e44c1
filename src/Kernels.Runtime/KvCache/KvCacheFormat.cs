// How the KV cache stores keys and values: fp32 (the reference), fp16, or KIVI 2/4-bit with a full-precision window.
namespace Kernels.Runtime.KvCache;

public enum KvCacheKind
{
    /// <summary>fp32 keys and values: the golden-model reference, bit-exact with the unquantized math.</summary>
    Fp32,
    /// <summary>fp16 keys and values: half the memory, rounding only.</summary>
    Fp16,
    /// <summary>KIVI 2-bit: keys per channel, values per token, asymmetric min-max over groups of G; fp16 window of R.</summary>
    Kivi2,
    /// <summary>KIVI 4-bit, same layout as <see cref="Kivi2"/>.</summary>
    Kivi4,
}

/// <summary>
/// A KV cache format. For the KIVI kinds, the KV block size is <see cref="Group"/> (one key group per block, so a
/// group never mixes tokens of two sequences) and a sequence's blocks are quantized once they fall entirely before
/// its most recent <see cref="Window"/> tokens; the window stays fp16.
/// </summary>
public sealed record KvCacheFormat
{
    public KvCacheKind Kind { get; init; } = KvCacheKind.Fp32;

    /// <summary>G: tokens per key group (= tokens per KV block) and channels per value group.</summary>
    public int Group { get; init; } = 32;

    /// <summary>R: most recent tokens of a sequence that stay full precision (fp16).</summary>
    public int Window { get; init; } = 128;

    public static readonly KvCacheFormat Fp32 = new();

    public bool IsKivi => Kind is KvCacheKind.Kivi2 or KvCacheKind.Kivi4;

    /// <summary>Bits per quantized code (0 for the unquantized kinds).</summary>
    public int Bits => Kind switch { KvCacheKind.Kivi2 => 2, KvCacheKind.Kivi4 => 4, _ => 0 };

    /// <summary>The kind named by a string: fp32, fp16, kivi2 or kivi4 (any other is an ArgumentException for <see cref="Kind"/>).</summary>
    public static KvCacheKind ParseKind(string name) => name.ToLowerInvariant() switch
    {
        "fp32" => KvCacheKind.Fp32,
        "fp16" => KvCacheKind.Fp16,
        "kivi2" => KvCacheKind.Kivi2,
        "kivi4" => KvCacheKind.Kivi4,
        _ => throw new ArgumentException($"unknown KV cache format '{name}': expected fp32, fp16, kivi2 or kivi4", nameof(Kind)),
    };

    /// <summary>
    /// Throws an ArgumentException naming the property at fault (<see cref="Kind"/>, <see cref="Group"/> or
    /// <see cref="Window"/>) when the format cannot store a model with <paramref name="kvDim"/> = kv_heads * head_dim channels.
    /// </summary>
    public void Validate(int kvDim, int headDim)
    {
        if (!IsKivi) return;
        if (Group < 16 || Group % 16 != 0)
            throw new ArgumentException($"the KIVI group must be a positive multiple of 16 (codes pack 32 bits at a time), got {Group}", nameof(Group));
        if (kvDim % Group != 0)
            throw new ArgumentException($"the KIVI group {Group} must divide the model's kv_heads * head_dim = {kvDim} (value groups are G channels)", nameof(Group));
        if (headDim % 8 != 0)
            throw new ArgumentException($"KIVI needs a head_dim that is a multiple of 8, the model has {headDim}", nameof(Kind));
        if (Window < 0) throw new ArgumentException($"the KIVI window must be >= 0 tokens, got {Window}", nameof(Window));
    }

    /// <summary>
    /// KIVI: whole blocks (of G tokens) that end at or before <paramref name="length"/> - R, i.e. have left the window of
    /// a sequence of that length and are quantized; 0 for the unquantized kinds. The one statement of when a block compacts.
    /// </summary>
    internal int BlocksPassed(int length) => IsKivi ? Math.Max(0, length - Window) / Group : 0;

    /// <summary>
    /// KIVI: the position before which a query row at <paramref name="pos"/> reads keys quantized: the blocks it has
    /// passed, and at least the sequence's first <paramref name="compactBlocks"/> (already compact, so without fp16 rows).
    /// 0 for the unquantized kinds. The CPU attention and the CUDA step both draw the boundary here.
    /// </summary>
    internal int QuantizedEnd(int pos, int compactBlocks) => IsKivi ? Math.Max(compactBlocks, BlocksPassed(pos + 1)) * Group : 0;

    /// <summary>KIVI: the most blocks one sequence keeps full precision once settled: ceil(R / G) and the partly filled tail.</summary>
    internal int WindowBlocks => (Window + Group - 1) / Group + 1;

    public override string ToString() => IsKivi ? $"{Kind.ToString().ToLowerInvariant()} (G={Group}, R={Window})" : Kind.ToString().ToLowerInvariant();
}
