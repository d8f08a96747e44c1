// KIVI 2/4-bit KV quantization on the CPU: the per-group min-max quantizer, the packed block layout, and the attention
// inner loops with dequantization fused into the dot products (the reference for the GPU kernels).
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Kernels.Runtime.Numerics;

namespace Kernels.Runtime.Quantization;

/// <summary>
/// Quantizer: for a group X, z = min X, s = (max X - min X) / (2^B - 1) rounded UP to fp16 (so the codes still cover
/// the range), q = clamp(round((x - z) / s), 0, 2^B - 1), x^ = q * s + z; |x - x^| &lt;= s / 2 (+ fp32 rounding).
/// A constant group (max == min) gets s = 1 and codes 0, so it reconstructs exactly and never divides by zero.
/// z stays fp32 (the additive offset in real units); s is fp16.
/// <para>
/// One layer of one block of G tokens (the KV block size), kvd = kv_heads * head_dim channels, per = 32 / B codes a word,
/// lowest index in the least significant bits:
/// <list type="bullet">
/// <item>codes uint32[2 * kvd * G / per]: keys first, per channel (a group = the block's G tokens of one channel):
/// channel c, token j at word c * (G / per) + j / per, bits B * (j % per); then values, per token (groups of G
/// channels): token j, channel c at word kvd * G / per + j * (kvd / per) + c / per, bits B * (c % per).</item>
/// <item>scales fp16[2 * kvd] and mins fp32[2 * kvd]: keys' per channel c at [c]; values' of token j, group g at
/// [kvd + j * (kvd / G) + g].</item>
/// </list>
/// 2 bits + (16 + 32) / G bits per element: 3.5 bits at G = 32 (4-bit: 5.5).
/// </para>
/// </summary>
internal static unsafe class Kivi
{
    public static int MaxCode(int bits) => (1 << bits) - 1;

    /// <summary>Every fp16 bit pattern as fp32 (256 KB, cache resident): .NET converts Half in software, this is one load.</summary>
    private static readonly float[] HalfToSingleTable = Enumerable.Range(0, 65536).Select(i => (float)BitConverter.UInt16BitsToHalf((ushort)i)).ToArray();

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float ToSingle(Half h) => HalfToSingleTable[BitConverter.HalfToUInt16Bits(h)];

    /// <summary>Words of codes in one layer of one block (keys and values together).</summary>
    public static int CodeWords(int kvd, int group, int bits) => 2 * kvd * group * bits / 32;

    /// <summary>Bytes of one layer of one quantized block: codes, fp16 scales, fp32 mins.</summary>
    public static long BlockBytes(int kvd, int group, int bits) => CodeWords(kvd, group, bits) * 4L + 2L * kvd * (sizeof(ushort) + sizeof(float));

    /// <summary>The guarded (scale, min) of a group whose smallest and largest elements are given.</summary>
    public static (Half Scale, float Min) GroupParameters(float min, float max, int bits)
    {
        float exact = (max - min) / MaxCode(bits);
        if (!(exact > 0)) return (Half.One, min); // constant group: codes 0 reconstruct min exactly
        var s = (Half)exact;
        if ((float)s < exact) s = Half.BitIncrement(s);
        if (Half.IsInfinity(s)) throw new OverflowException($"a KV group spans {max - min}, beyond what an fp16 scale can hold");
        return (s, min);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static uint Code(float x, float scale, float min, int bits) => (uint)Math.Clamp(MathF.Round((x - min) / scale), 0f, MaxCode(bits));

    /// <summary>
    /// Quantizes one layer of one block: <paramref name="keys"/> and <paramref name="values"/> are [G, kvd] fp32 rows.
    /// </summary>
    public static void QuantizeBlock(float* keys, float* values, int kvd, int group, int bits, uint* codes, Half* scales, float* mins)
    {
        int per = 32 / bits, kWords = group / per, vWords = kvd / per, groups = kvd / group;
        new Span<uint>(codes, CodeWords(kvd, group, bits)).Clear();
        for (int c = 0; c < kvd; c++) // keys: per channel over the block's tokens
        {
            float lo = float.PositiveInfinity, hi = float.NegativeInfinity;
            for (int j = 0; j < group; j++)
            {
                float x = keys[(long)j * kvd + c];
                lo = Math.Min(lo, x);
                hi = Math.Max(hi, x);
            }
            var (s, z) = GroupParameters(lo, hi, bits);
            scales[c] = s;
            mins[c] = z;
            float sf = (float)s;
            for (int j = 0; j < group; j++)
                codes[c * kWords + j / per] |= Code(keys[(long)j * kvd + c], sf, z, bits) << (bits * (j % per));
        }
        uint* vCodes = codes + kvd * kWords;
        for (int j = 0; j < group; j++) // values: per token over groups of G channels
        {
            float* row = values + (long)j * kvd;
            for (int g = 0; g < groups; g++)
            {
                float lo = float.PositiveInfinity, hi = float.NegativeInfinity;
                for (int c = g * group; c < (g + 1) * group; c++)
                {
                    lo = Math.Min(lo, row[c]);
                    hi = Math.Max(hi, row[c]);
                }
                var (s, z) = GroupParameters(lo, hi, bits);
                scales[kvd + j * groups + g] = s;
                mins[kvd + j * groups + g] = z;
                float sf = (float)s;
                for (int c = g * group; c < (g + 1) * group; c++)
                    vCodes[j * vWords + c / per] |= Code(row[c], sf, z, bits) << (bits * (c % per));
            }
        }
    }

    /// <summary>The reconstruction x^ = q * s + z of one layer of one block, as [G, kvd] fp32 rows (reference and tests).</summary>
    public static void DequantizeBlock(uint* codes, Half* scales, float* mins, int kvd, int group, int bits, float* keys, float* values)
    {
        int per = 32 / bits, kWords = group / per, vWords = kvd / per, groups = kvd / group;
        uint mask = (uint)MaxCode(bits);
        uint* vCodes = codes + kvd * kWords;
        for (int j = 0; j < group; j++)
            for (int c = 0; c < kvd; c++)
            {
                uint kq = (codes[c * kWords + j / per] >> (bits * (j % per))) & mask;
                keys[(long)j * kvd + c] = kq * (float)scales[c] + mins[c];
                uint vq = (vCodes[j * vWords + c / per] >> (bits * (c % per))) & mask;
                int gi = kvd + j * groups + c / group;
                values[(long)j * kvd + c] = vq * (float)scales[gi] + mins[gi];
            }
    }

    /// <summary>
    /// scores[j] = q . k^_j for the block's G tokens over channels [c0, c0 + d) (one kv head), with the dequantization
    /// folded in: sum_c q_c (s_c q_cj + z_c) = sum_c (q_c s_c) q_cj + sum_c q_c z_c. The SIMD path unpacks 8 tokens of
    /// one channel from one word per step (variable shifts) and FMAs them with the broadcast q_c s_c.
    /// </summary>
    public static void KeyScores(uint* codes, Half* scales, float* mins, int kvd, int group, int bits, int c0, int d, float* q, float* scores)
    {
        int per = 32 / bits, kWords = group / per;
        float* qs = stackalloc float[d];
        for (int i = 0; i < d; i++) qs[i] = q[i] * ToSingle(scales[c0 + i]);
        float bias = Simd.Dot(q, mins + c0, d);
        uint* first = codes + c0 * kWords;
        if (Avx2.IsSupported && Fma.IsSupported)
        {
            var mask = Vector256.Create((uint)MaxCode(bits));
            var steps = Vector256.Create(0u, 1, 2, 3, 4, 5, 6, 7) * (uint)bits;
            int vectorsPerWord = per / 8;
            for (int v = 0; v < group / 8; v++)
            {
                var shifts = steps + Vector256.Create((uint)(bits * 8 * (v % vectorsPerWord)));
                int word = v / vectorsPerWord;
                var acc0 = Vector256<float>.Zero;
                var acc1 = Vector256<float>.Zero;
                int i = 0;
                for (; i + 2 <= d; i += 2)
                {
                    var c0v = Avx2.ShiftRightLogicalVariable(Vector256.Create(first[i * kWords + word]), shifts) & mask;
                    var c1v = Avx2.ShiftRightLogicalVariable(Vector256.Create(first[(i + 1) * kWords + word]), shifts) & mask;
                    acc0 = Fma.MultiplyAdd(Vector256.Create(qs[i]), Avx.ConvertToVector256Single(c0v.AsInt32()), acc0);
                    acc1 = Fma.MultiplyAdd(Vector256.Create(qs[i + 1]), Avx.ConvertToVector256Single(c1v.AsInt32()), acc1);
                }
                for (; i < d; i++)
                {
                    var cv = Avx2.ShiftRightLogicalVariable(Vector256.Create(first[i * kWords + word]), shifts) & mask;
                    acc0 = Fma.MultiplyAdd(Vector256.Create(qs[i]), Avx.ConvertToVector256Single(cv.AsInt32()), acc0);
                }
                Vector256.Store(acc0 + acc1 + Vector256.Create(bias), scores + v * 8);
            }
            return;
        }
        uint m = (uint)MaxCode(bits);
        for (int j = 0; j < group; j++)
        {
            float sum = 0;
            for (int i = 0; i < d; i++) sum += qs[i] * ((first[i * kWords + j / per] >> (bits * (j % per))) & m);
            scores[j] = sum + bias;
        }
    }

    /// <summary>
    /// o[i] += sum_j weights[j] v^_j[c0 + i] over the block's G tokens (one kv head's d channels), dequantization
    /// folded in: w (s q + z) = (w s) q + w z per value group. The SIMD path unpacks 8 channels from one word per step.
    /// </summary>
    public static void AccumulateValues(uint* codes, Half* scales, float* mins, int kvd, int group, int bits, int c0, int d, float* weights, float* o)
    {
        int per = 32 / bits, vWords = kvd / per, groups = kvd / group;
        uint* vCodes = codes + kvd * (group / per);
        uint m = (uint)MaxCode(bits);
        bool simd = Avx2.IsSupported && Fma.IsSupported && d % 8 == 0 && c0 % 8 == 0;
        var steps = Vector256.Create(0u, 1, 2, 3, 4, 5, 6, 7) * (uint)bits;
        var mask = Vector256.Create(m);
        for (int j = 0; j < group; j++)
        {
            float w = weights[j];
            uint* row = vCodes + j * vWords;
            int gBase = kvd + j * groups;
            if (simd)
            {
                for (int i = 0; i < d;)
                {
                    int c = c0 + i, g = gBase + c / group, groupEnd = Math.Min(d, (c / group + 1) * group - c0);
                    var a = Vector256.Create(w * ToSingle(scales[g]));
                    var b = Vector256.Create(w * mins[g]);
                    for (; i < groupEnd; i += 8)
                    {
                        c = c0 + i;
                        var shifts = steps + Vector256.Create((uint)(bits * (c % per)));
                        var q = Avx.ConvertToVector256Single((Avx2.ShiftRightLogicalVariable(Vector256.Create(row[c / per]), shifts) & mask).AsInt32());
                        Vector256.Store(Fma.MultiplyAdd(a, q, Vector256.Load(o + i) + b), o + i);
                    }
                }
                continue;
            }
            for (int i = 0; i < d; i++)
            {
                int c = c0 + i, g = gBase + c / group;
                o[i] += w * ToSingle(scales[g]) * ((row[c / per] >> (bits * (c % per))) & m) + w * mins[g];
            }
        }
    }
}
