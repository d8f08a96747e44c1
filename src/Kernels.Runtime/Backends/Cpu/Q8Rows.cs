// fp32 activation rows quantized to int8 the way llama.cpp's x86 build does it before multiplying them with GGML
// block-quantized weights: Q8_0 (blocks of 32, fp16 scale; for Q4_0, Q5_0, Q8_0 weights), Q8_1 (Q8_0 plus the
// block's scaled sum; for Q4_1, Q5_1) and Q8_K (blocks of 256, fp32 scale, sums of 16; for the k-quants).
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Kernels.Runtime.Numerics;

namespace Kernels.Runtime.Backends.Cpu;

/// <summary>Which int8 form a weight type's dot products take their activations in (llama.cpp's vec_dot_type).</summary>
internal enum Q8Format
{
    Q8_0,
    Q8_1,
    Q8_K,
}

/// <summary>
/// Rows x K activations as int8 codes (row-major, K per row) with, per block, the scale the codes are multiplied by:
/// value ~ Scales[block] * Codes[i]. Q8_1 adds <see cref="Sums"/> (fp16(d * sum of the block's codes), as llama.cpp
/// stores it); Q8_K adds <see cref="GroupSums"/> (the exact sum of every 16 codes); Q8_0 adds <see cref="BlockOffsets"/>
/// (-128 x the sum of each block's codes: what the VNNI kernels, which multiply signed weights as w + 128, add back).
/// Two rows or more also come in groups of <see cref="GgmlDot.TileRows"/> (the last one padded with zeros) transposed
/// for the batched kernels: their codes interleaved by 4 bytes (<see cref="TileCodes"/>), so one vpdpbusd advances the
/// eight rows' sums, their scales (<see cref="TileScales"/>), and Q8_K's group sums (<see cref="TileGroupSums"/>) or
/// Q8_0 / Q8_1's offsets or sums (<see cref="TileOffsets"/>, <see cref="TileSums"/>), so a block is finished for the
/// whole group in one vector.
/// </summary>
internal sealed unsafe class Q8Rows
{
    public Q8Format Format { get; }
    public int Rows { get; private set; }
    public int K { get; private set; }
    public int Block { get; }
    /// <summary>
    /// Rows x K codes, row t at t x K. Stored from a 64-byte boundary of a pinned array, so the kernels' 32-byte loads
    /// of a row do not straddle cache lines (measured 1-3 % of a 16-row k-quant matmul, near this host's noise).
    /// </summary>
    public Span<sbyte> Codes => new(CodesAddress, Rows * K);
    private sbyte[] _codes = [];
    private sbyte* CodesAddress => _codes.Length == 0 ? null : Address(_codes) + ((64 - ((nint)Address(_codes) & 63)) & 63);
    public float[] Scales { get; private set; } = [];
    public float[] Sums { get; private set; } = [];
    public short[] GroupSums { get; private set; } = [];
    public int[] BlockOffsets { get; private set; } = [];
    /// <summary>Two rows or more: per group of 8 rows and block (super-block for Q8_K), the 8 rows' scales (zeros past the last row).</summary>
    public float[] TileScales { get; private set; } = [];
    /// <summary>Q8_K, two rows or more: per group of 8 rows, super-block and pair h of 16-value groups, the 8 rows' sums of groups 2h, 2h + 1 (interleaved).</summary>
    public short[] TileGroupSums { get; private set; } = [];
    /// <summary>Two rows or more: per group of 8 rows, 32-value chunk and quad q of 4 values, the 8 rows' codes 4q..4q + 3 (row r at 4r).</summary>
    public Span<sbyte> TileCodes => new(TileCodesAddress, TileGroups * K * GgmlDot.TileRows);
    private sbyte[] _tileCodes = [];
    private sbyte* TileCodesAddress => _tileCodes.Length == 0 ? null : Address(_tileCodes) + ((64 - ((nint)Address(_tileCodes) & 63)) & 63);
    /// <summary>
    /// Q8_K where AVX-512BW is present: each pair of tile groups (0 and 1, 2 and 3, ...) laid out for the 512-bit kernel
    /// (GgmlDot.TileKQuantWide), which reads every value it needs with one 64-byte load: per 32-value chunk, the first
    /// group's quad pairs p = 0..3 (64 bytes each: row r's quads 2p and 2p + 1 at 8r), then the second group's (K x 16
    /// bytes in all); then per super-block the two groups' <see cref="TileScales"/> (64 bytes); then per super-block and
    /// pair of 16-value groups the two groups' <see cref="TileGroupSums"/> (8 x 64 bytes).
    /// </summary>
    public Span<sbyte> Wide => new(WideAddress, WidePairs * WidePairBytes(K));
    private sbyte[] _wide = [];
    private sbyte* WideAddress => _wide.Length == 0 ? null : Address(_wide) + ((64 - ((nint)Address(_wide) & 63)) & 63);
    private int WidePairs => Format == Q8Format.Q8_K && Avx512BW.IsSupported ? TileGroups / 2 : 0;

    /// <summary>Where a pair's scales start in <see cref="Wide"/>, after its codes.</summary>
    public static int WideScales(int k) => k * 16;

    /// <summary>Where a pair's group sums start in <see cref="Wide"/>, after its scales.</summary>
    public static int WideGroupSums(int k) => WideScales(k) + k / 256 * 64;

    /// <summary>Bytes of one pair of groups in <see cref="Wide"/>: codes, then scales, then group sums.</summary>
    private static int WidePairBytes(int k) => WideGroupSums(k) + k / 256 * 512;
    /// <summary>Q8_0, two rows or more: per group of 8 rows and block, the 8 rows' <see cref="BlockOffsets"/>.</summary>
    public int[] TileOffsets { get; private set; } = [];
    /// <summary>Q8_1, two rows or more: per group of 8 rows and block, the 8 rows' <see cref="Sums"/>.</summary>
    public float[] TileSums { get; private set; } = [];
    private int TileGroups => Rows > 1 ? (Rows + GgmlDot.TileRows - 1) / GgmlDot.TileRows : 0;

    private Q8Rows(Q8Format format)
    {
        Format = format;
        Block = format == Q8Format.Q8_K ? 256 : 32;
    }

    /// <summary>Sizes the arrays for rows x k (growing them when needed; pinned, so the kernels take their addresses once).</summary>
    private void Resize(int rows, int k)
    {
        Rows = rows;
        K = k;
        long n = (long)rows * k;
        if (_codes.Length < n + 64)
        {
            _codes = GC.AllocateUninitializedArray<sbyte>(checked((int)n + 64), pinned: true);
            Scales = GC.AllocateUninitializedArray<float>((int)(n / Block), pinned: true);
            if (Format == Q8Format.Q8_1) Sums = GC.AllocateUninitializedArray<float>((int)(n / 32), pinned: true);
            if (Format == Q8Format.Q8_K) GroupSums = GC.AllocateUninitializedArray<short>((int)(n / 16), pinned: true);
            if (Format == Q8Format.Q8_0) BlockOffsets = GC.AllocateUninitializedArray<int>((int)(n / 32), pinned: true);
        }
        const int R = GgmlDot.TileRows;
        long blocks = (long)TileGroups * (k / Block);
        if (TileScales.Length < blocks * R)
        {
            TileScales = GC.AllocateUninitializedArray<float>(checked((int)(blocks * R)), pinned: true);
            if (Format == Q8Format.Q8_K) TileGroupSums = GC.AllocateUninitializedArray<short>(checked((int)(blocks * R * 16)), pinned: true);
            _tileCodes = GC.AllocateUninitializedArray<sbyte>(checked((int)(blocks * R * Block + 64)), pinned: true);
            if (Format == Q8Format.Q8_0) TileOffsets = GC.AllocateUninitializedArray<int>(checked((int)(blocks * R)), pinned: true);
            if (Format == Q8Format.Q8_1) TileSums = GC.AllocateUninitializedArray<float>(checked((int)(blocks * R)), pinned: true);
        }
        long wide = (long)WidePairs * WidePairBytes(k);
        if (wide > 0 && _wide.Length < wide + 64) _wide = GC.AllocateUninitializedArray<sbyte>(checked((int)wide + 64), pinned: true);
    }

    private static T* Address<T>(T[] array) where T : unmanaged =>
        array.Length == 0 ? null : (T*)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(array));

    /// <summary>Row <paramref name="t"/> as the pointers the dot products read (valid while this object lives: its arrays are pinned).</summary>
    public GgmlDot.Activation Row(int t)
    {
        if ((uint)t >= (uint)Rows) throw new ArgumentOutOfRangeException(nameof(t), $"row {t} of {Rows}");
        float* sums = Address(Sums);
        short* groupSums = Address(GroupSums);
        int* offsets = Address(BlockOffsets);
        const int R = GgmlDot.TileRows;
        long groupBlocks = t / R * (K / Block);
        bool tiled = Rows > 1;
        return new GgmlDot.Activation(CodesAddress + (long)t * K, Address(Scales) + (long)t * (K / Block),
            sums == null ? null : sums + (long)t * (K / 32), groupSums == null ? null : groupSums + (long)t * (K / 16),
            offsets == null ? null : offsets + (long)t * (K / 32),
            tiled ? Address(TileScales) + groupBlocks * R : null,
            tiled && Format == Q8Format.Q8_K ? Address(TileGroupSums) + groupBlocks * R * 16 : null,
            tiled ? TileCodesAddress + groupBlocks * R * Block : null,
            tiled && Format == Q8Format.Q8_0 ? Address(TileOffsets) + groupBlocks * R : null,
            tiled && Format == Q8Format.Q8_1 ? Address(TileSums) + groupBlocks * R : null,
            t / R / 2 < WidePairs ? WideAddress + (long)(t / R / 2) * WidePairBytes(K) : null);
    }

    /// <summary>The activation form GGML pairs with weights of <paramref name="type"/>.</summary>
    public static Q8Format FormatFor(TensorDType type) => type switch
    {
        TensorDType.Q4_0 or TensorDType.Q5_0 or TensorDType.Q8_0 => Q8Format.Q8_0,
        TensorDType.Q4_1 or TensorDType.Q5_1 => Q8Format.Q8_1,
        TensorDType.Q2_K or TensorDType.Q3_K or TensorDType.Q4_K or TensorDType.Q5_K or TensorDType.Q6_K => Q8Format.Q8_K,
        _ => throw new ArgumentOutOfRangeException(nameof(type), type, "not a GGML block type"),
    };

    /// <summary>Quantizes <paramref name="rows"/> rows of <paramref name="k"/> values (k a multiple of the format's block) into new arrays.</summary>
    public static Q8Rows Quantize(Q8Format format, ReadOnlySpan<float> x, int rows, int k) => new Q8Rows(format).Fill(x, rows, k, Avx2.IsSupported);

    /// <summary><see cref="Quantize"/> on the scalar path even where AVX2 is present (the tests compare both).</summary>
    internal static Q8Rows QuantizeScalar(Q8Format format, ReadOnlySpan<float> x, int rows, int k) => new Q8Rows(format).Fill(x, rows, k, vector: false);

    [ThreadStatic] private static Q8Rows?[]? _reused;

    /// <summary>
    /// <see cref="Quantize"/> into this thread's buffers for the format (valid until the thread's next call for it):
    /// what one matmul call uses, so a decode step allocates nothing.
    /// </summary>
    internal static Q8Rows QuantizeReused(Q8Format format, ReadOnlySpan<float> x, int rows, int k)
    {
        var cache = _reused ??= new Q8Rows?[3];
        return (cache[(int)format] ??= new Q8Rows(format)).Fill(x, rows, k, Avx2.IsSupported);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private Q8Rows Fill(ReadOnlySpan<float> x, int rows, int k, bool vector)
    {
        if (k % Block != 0) throw new ArgumentException($"{Format} activations need rows of whole {Block}-value blocks, got {k}", nameof(k));
        if (x.Length < (long)rows * k) throw new ArgumentException($"x holds {x.Length} values, {rows}x{k} needed", nameof(x));
        Resize(rows, k);
        fixed (float* xp = x)
        {
            // One row goes through the decode kernels, which read the row-major scales and sums: no tile on the decode
            // path. More: each group of TileRows rows is quantized and laid out in the tile by one task (the groups
            // are independent), so a 16-row step's two groups take both cores instead of one while the other waits.
            if (rows == 1) QuantizeRows(xp, 0, 1, vector);
            else if (TileGroups > 1 && (long)rows * k >= ParallelValues)
            {
                nint xa = (nint)xp;
                WorkerTeam.For(TileGroups, g => FillGroup((float*)xa, g, vector));
            }
            else
                for (int g = 0; g < TileGroups; g++) FillGroup(xp, g, vector);
        }
        return this;
    }

    /// <summary>Values from which the groups are filled in parallel (below, a fork costs about what it saves).</summary>
    private const int ParallelValues = 4096;

    /// <summary>Rows [from, to) quantized into codes and the row-major scales (offsets, sums).</summary>
    private void QuantizeRows(float* x, int from, int to, bool vector)
    {
        sbyte* c = CodesAddress;
        int k = K;
        for (int r = from; r < to; r++)
            for (int b = 0; b < k / Block; b++)
            {
                long at = (long)r * k + (long)b * Block;
                int index = r * (k / Block) + b;
                if (Format == Q8Format.Q8_K)
                {
                    if (vector) QuantizeKVector(x + at, c + at, index);
                    else QuantizeK(x + at, c + at, index);
                }
                else if (vector) Quantize32Vector(x + at, c + at, index);
                else Quantize32(x + at, c + at, index);
            }
    }

    /// <summary>Tile group <paramref name="g"/>: its rows quantized, then transposed (Q8_K) and interleaved into the tile.</summary>
    private void FillGroup(float* x, int g, bool vector)
    {
        const int R = GgmlDot.TileRows;
        QuantizeRows(x, g * R, Math.Min(Rows, g * R + R), vector);
        if (Format == Q8Format.Q8_K) Transpose(g);
        Interleave(g);
        if (g / 2 < WidePairs) Widen(g);
    }

    /// <summary>Group g's tile into its half of its pair's <see cref="Wide"/> (each group writes its own half, so the groups stay independent).</summary>
    private void Widen(int g)
    {
        const int R = GgmlDot.TileRows;
        int nb = K / 256;
        sbyte* pair = WideAddress + (long)(g / 2) * WidePairBytes(K);
        // Codes: per chunk, the group's quads 2p and 2p + 1 of its eight rows, row by row, at 256 x (g % 2) + 64 p.
        int* codes = (int*)(TileCodesAddress + (long)g * K * R);
        var zip = Vector512.Create(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
        for (int c = 0; c < K / 32; c++)
            for (int p = 0; p < 4; p++)
            {
                int* quads = codes + (c * 8 + 2 * p) * R;
                Avx512F.PermuteVar16x32x2(Vector256.Load(quads).ToVector512(), zip, Vector256.Load(quads + R).ToVector512())
                    .Store((int*)(pair + 512L * c + 256 * (g % 2) + 64 * p));
            }
        sbyte* to = pair + WideScales(K) + (g % 2) * 32;
        sbyte* scales = (sbyte*)(Address(TileScales) + (long)g * nb * R);
        for (int b = 0; b < nb; b++, to += 64) Vector256.Load(scales + 32L * b).Store(to);
        to = pair + WideGroupSums(K) + (g % 2) * 32;
        sbyte* sums = (sbyte*)(Address(TileGroupSums) + (long)g * nb * R * 16);
        for (int i = 0; i < nb * 8; i++, to += 64) Vector256.Load(sums + 32L * i).Store(to);
    }

    /// <summary>Fills tile group g of <see cref="TileCodes"/> and, for the 32-value formats, <see cref="TileScales"/> and <see cref="TileOffsets"/> / <see cref="TileSums"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void Interleave(int g)
    {
        const int R = GgmlDot.TileRows;
        int nb = K / 32;
        bool blocks32 = Format != Q8Format.Q8_K;
        uint* tile = (uint*)TileCodesAddress;
        float* scales = Address(TileScales), sums = Address(TileSums);
        int* offsets = Address(TileOffsets);
        for (int r = 0; r < R; r++)
        {
            int row = g * R + r;
            bool real = row < Rows;
            uint* from = (uint*)(CodesAddress + (long)row * K);
            for (int b = 0; b < nb; b++)
            {
                long at = (long)g * nb + b;
                uint* to = tile + at * R * 8 + r;
                for (int q = 0; q < 8; q++) to[q * R] = real ? from[8 * b + q] : 0u;
                if (!blocks32) continue;
                scales[at * R + r] = real ? Scales[row * nb + b] : 0f;
                if (offsets != null) offsets[at * R + r] = real ? BlockOffsets[row * nb + b] : 0;
                if (sums != null) sums[at * R + r] = real ? Sums[row * nb + b] : 0f;
            }
        }
    }

    /// <summary>Fills tile group g of <see cref="TileScales"/> and <see cref="TileGroupSums"/> from its rows' scales and group sums.</summary>
    private void Transpose(int g)
    {
        const int R = GgmlDot.TileRows;
        int nb = K / 256;
        for (int b = 0; b < nb; b++)
        {
            int tile = g * nb + b;
            for (int r = 0; r < R; r++)
            {
                int row = g * R + r;
                bool real = row < Rows;
                TileScales[tile * R + r] = real ? Scales[row * nb + b] : 0f;
                for (int h = 0; h < 8; h++)
                {
                    int at = (tile * 8 + h) * 2 * R + 2 * r, from = (row * nb + b) * 16 + 2 * h;
                    TileGroupSums[at] = real ? GroupSums[from] : (short)0;
                    TileGroupSums[at + 1] = real ? GroupSums[from + 1] : (short)0;
                }
            }
        }
    }

    /// <summary>
    /// llama.cpp's x86 quantize_row_q8_0 / q8_1: d = max|x| / 127 (stored fp16), codes round-half-even(x * 127 / max|x|);
    /// Q8_1 also keeps fp16(d * sum of codes) with d unrounded.
    /// </summary>
    private void Quantize32(float* x, sbyte* codes, int index)
    {
        float max = 0;
        for (int i = 0; i < 32; i++) max = MathF.Max(max, MathF.Abs(x[i]));
        float d = max / 127f;
        Scales[index] = (float)(Half)d;
        float id = max != 0 ? 127f / max : 0f;
        int sum = 0;
        for (int i = 0; i < 32; i++)
        {
            int v = (int)MathF.Round(x[i] * id, MidpointRounding.ToEven);
            codes[i] = (sbyte)Math.Clamp(v, -128, 127);
            sum += codes[i];
        }
        if (Format == Q8Format.Q8_1) Sums[index] = (float)(Half)(d * sum);
        else BlockOffsets[index] = -128 * sum;
    }

    /// <summary>32 values to codes with vroundps (nearest, ties to even) and saturating packs: <see cref="Quantize32"/>'s results.</summary>
    private void Quantize32Vector(float* x, sbyte* codes, int index)
    {
        Vector256<float> v0 = Vector256.Load(x), v1 = Vector256.Load(x + 8), v2 = Vector256.Load(x + 16), v3 = Vector256.Load(x + 24);
        var m = Vector256.Max(Vector256.Max(Vector256.Abs(v0), Vector256.Abs(v1)), Vector256.Max(Vector256.Abs(v2), Vector256.Abs(v3)));
        float max = HorizontalMax(m);
        float d = max / 127f;
        Scales[index] = (float)(Half)d;
        var id = Vector256.Create(max != 0 ? 127f / max : 0f);
        var i0 = Avx.ConvertToVector256Int32(Avx.RoundToNearestInteger(v0 * id));
        var i1 = Avx.ConvertToVector256Int32(Avx.RoundToNearestInteger(v1 * id));
        var i2 = Avx.ConvertToVector256Int32(Avx.RoundToNearestInteger(v2 * id));
        var i3 = Avx.ConvertToVector256Int32(Avx.RoundToNearestInteger(v3 * id));
        var packed = Pack(i0, i1, i2, i3);
        packed.Store(codes);
        if (Format == Q8Format.Q8_1) Sums[index] = (float)(Half)(d * Vector256.Sum(i0 + i1 + i2 + i3));
        else BlockOffsets[index] = -128 * Vector256.Sum(Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(Vector256.Create((byte)1), packed), Vector256.Create((short)1)));
    }

    /// <summary>Four vectors of 8 int32 (elements 0-31 in order) as 32 saturated bytes in order.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<sbyte> Pack(Vector256<int> i0, Vector256<int> i1, Vector256<int> i2, Vector256<int> i3)
    {
        var b = Avx2.PackSignedSaturate(Avx2.PackSignedSaturate(i0, i1), Avx2.PackSignedSaturate(i2, i3));
        return Avx2.PermuteVar8x32(b.AsInt32(), Vector256.Create(0, 4, 1, 5, 2, 6, 3, 7)).AsSByte();
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float HorizontalMax(Vector256<float> m)
    {
        var h = Vector128.Max(m.GetLower(), m.GetUpper());
        h = Vector128.Max(h, Sse.MoveHighToLow(h, h));
        return MathF.Max(h.ToScalar(), h.GetElement(1));
    }

    /// <summary>
    /// llama.cpp's quantize_row_q8_K: the value of largest magnitude (first one) sets iscale = -127 / max, codes
    /// min(127, round-half-even(iscale * x)), d = 1 / iscale; an all-zero block gets d = 0 and zero codes.
    /// </summary>
    private void QuantizeK(float* x, sbyte* codes, int index)
    {
        float max = 0, amax = 0;
        for (int i = 0; i < 256; i++)
        {
            float a = MathF.Abs(x[i]);
            if (a > amax) { amax = a; max = x[i]; }
        }
        short* sums = Address(GroupSums) + index * 16;
        if (amax == 0)
        {
            Scales[index] = 0;
            new Span<sbyte>(codes, 256).Clear();
            new Span<short>(sums, 16).Clear();
            return;
        }
        float iscale = -127f / max;
        for (int i = 0; i < 256; i++) codes[i] = (sbyte)Math.Min(127, (int)MathF.Round(iscale * x[i], MidpointRounding.ToEven));
        for (int g = 0; g < 16; g++)
        {
            int s = 0;
            for (int i = 0; i < 16; i++) s += codes[16 * g + i];
            sums[g] = (short)s;
        }
        Scales[index] = 1 / iscale;
    }

    /// <summary><see cref="QuantizeK"/> 32 values at a time (the first value of largest magnitude found by comparing to the maximum).</summary>
    private void QuantizeKVector(float* x, sbyte* codes, int index)
    {
        var m = Vector256<float>.Zero;
        for (int i = 0; i < 256; i += 8) m = Vector256.Max(m, Vector256.Abs(Vector256.Load(x + i)));
        float amax = HorizontalMax(m);
        short* sums = Address(GroupSums) + index * 16;
        if (amax == 0 || float.IsNaN(amax))
        {
            QuantizeK(x, codes, index);
            return;
        }
        float max = 0;
        var target = Vector256.Create(amax);
        for (int i = 0; i < 256; i += 8)
        {
            uint hits = Vector256.Equals(Vector256.Abs(Vector256.Load(x + i)), target).ExtractMostSignificantBits();
            if (hits != 0) { max = x[i + System.Numerics.BitOperations.TrailingZeroCount(hits)]; break; }
        }
        float iscale = -127f / max;
        var s = Vector256.Create(iscale);
        for (int i = 0; i < 256; i += 32)
        {
            var i0 = Avx.ConvertToVector256Int32(Avx.RoundToNearestInteger(Vector256.Load(x + i) * s));
            var i1 = Avx.ConvertToVector256Int32(Avx.RoundToNearestInteger(Vector256.Load(x + i + 8) * s));
            var i2 = Avx.ConvertToVector256Int32(Avx.RoundToNearestInteger(Vector256.Load(x + i + 16) * s));
            var i3 = Avx.ConvertToVector256Int32(Avx.RoundToNearestInteger(Vector256.Load(x + i + 24) * s));
            Pack(i0, i1, i2, i3).Store(codes + i);
            sums[i / 16] = (short)Vector256.Sum(i0 + i1);
            sums[i / 16 + 1] = (short)Vector256.Sum(i2 + i3);
        }
        Scales[index] = 1 / iscale;
    }
}
