// fp32 activation rows quantized to int8 the way llama.cpp's x86 build does it before multiplying them with GGML
// block-quantized weights: Q8_0 (blocks of 32, fp16 scale; for Q4_0, Q5_0, Q8_0 weights), Q8_1 (Q8_0 plus the
// block's scaled sum; for Q4_1, Q5_1) and Q8_K (blocks of 256, fp32 scale, sums of 16; for the k-quants).
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Kernels.Runtime.Models;

namespace Kernels.Runtime.Backends.Cpu;

/// <summary>Which int8 form a weight type's dot products take their activations in (llama.cpp's vec_dot_type).</summary>
public enum Q8Format
{
    Q8_0,
    Q8_1,
    Q8_K,
}

/// <summary>
/// Rows x K activations as int8 codes (row-major, K per row) with, per block, the scale the codes are multiplied by:
/// value ~ Scales[block] * Codes[i]. Q8_1 adds <see cref="Sums"/> (fp16(d * sum of the block's codes), as llama.cpp
/// stores it); Q8_K adds <see cref="GroupSums"/> (the exact sum of every 16 codes). <see cref="LaneSums"/> holds
/// -128 x the sum of every 4 codes (the offset the VNNI kernels fold into their accumulators).
/// </summary>
public sealed unsafe class Q8Rows
{
    public Q8Format Format { get; }
    public int Rows { get; }
    public int K { get; }
    public int Block { get; }
    public sbyte[] Codes { get; }
    public float[] Scales { get; }
    public float[] Sums { get; }
    public short[] GroupSums { get; }
    public int[] LaneSums { get; }

    private Q8Rows(Q8Format format, int rows, int k)
    {
        Format = format;
        Rows = rows;
        K = k;
        Block = format == Q8Format.Q8_K ? 256 : 32;
        // Pinned (the pinned object heap), so the kernels take their addresses once.
        Codes = GC.AllocateUninitializedArray<sbyte>(rows * k, pinned: true);
        Scales = GC.AllocateArray<float>(rows * (k / Block), pinned: true);
        Sums = format == Q8Format.Q8_1 ? GC.AllocateArray<float>(rows * (k / 32), pinned: true) : [];
        GroupSums = format == Q8Format.Q8_K ? GC.AllocateUninitializedArray<short>(rows * (k / 16), pinned: true) : [];
        LaneSums = GC.AllocateUninitializedArray<int>(rows * (k / 4), pinned: true);
    }

    private static T* Address<T>(T[] array) where T : unmanaged =>
        array.Length == 0 ? null : (T*)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(array));

    /// <summary>Row <paramref name="t"/> as the pointers the dot products read (valid while this object lives: its arrays are pinned).</summary>
    public GgmlDot.Activation Row(int t)
    {
        if ((uint)t >= (uint)Rows) throw new ArgumentOutOfRangeException(nameof(t), $"row {t} of {Rows}");
        float* sums = Address(Sums);
        short* groupSums = Address(GroupSums);
        return new GgmlDot.Activation(Address(Codes) + (long)t * K, Address(Scales) + (long)t * (K / Block),
            sums == null ? null : sums + (long)t * (K / 32), groupSums == null ? null : groupSums + (long)t * (K / 16),
            Address(LaneSums) + (long)t * (K / 4));
    }

    /// <summary>The activation form GGML pairs with weights of <paramref name="type"/>.</summary>
    public static Q8Format FormatFor(TensorDType type) => type switch
    {
        TensorDType.Q4_0 or TensorDType.Q5_0 or TensorDType.Q8_0 => Q8Format.Q8_0,
        TensorDType.Q4_1 or TensorDType.Q5_1 => Q8Format.Q8_1,
        TensorDType.Q2_K or TensorDType.Q3_K or TensorDType.Q4_K or TensorDType.Q5_K or TensorDType.Q6_K => Q8Format.Q8_K,
        _ => throw new ArgumentOutOfRangeException(nameof(type), type, "not a GGML block type"),
    };

    /// <summary>Quantizes <paramref name="rows"/> rows of <paramref name="k"/> values (k a multiple of the format's block).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static Q8Rows Quantize(Q8Format format, ReadOnlySpan<float> x, int rows, int k)
    {
        int block = format == Q8Format.Q8_K ? 256 : 32;
        if (k % block != 0) throw new ArgumentException($"{format} activations need rows of whole {block}-value blocks, got {k}", nameof(k));
        if (x.Length < (long)rows * k) throw new ArgumentException($"x holds {x.Length} values, {rows}x{k} needed", nameof(x));
        var q = new Q8Rows(format, rows, k);
        fixed (float* xp = x)
        fixed (sbyte* c = q.Codes)
        {
            for (int r = 0; r < rows; r++)
                for (int b = 0; b < k / block; b++)
                {
                    long at = (long)r * k + (long)b * block;
                    int index = r * (k / block) + b;
                    if (format == Q8Format.Q8_K) q.QuantizeK(xp + at, c + at, index);
                    else q.Quantize32(xp + at, c + at, index);
                }
            for (long i = 0; i < (long)rows * k / 4; i++)
                q.LaneSums[i] = -128 * (c[4 * i] + c[4 * i + 1] + c[4 * i + 2] + c[4 * i + 3]);
        }
        return q;
    }

    /// <summary>
    /// llama.cpp's x86 quantize_row_q8_0 / q8_1: d = max|x| / 127 (stored fp16), codes round-half-even(x * 127 / max|x|);
    /// Q8_1 also keeps fp16(d * sum of codes) with d unrounded.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
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
    }

    /// <summary>
    /// llama.cpp's quantize_row_q8_K: the value of largest magnitude (first one) sets iscale = -127 / max, codes
    /// min(127, round-half-even(iscale * x)), d = 1 / iscale; an all-zero block gets d = 0 and zero codes.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
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
}
