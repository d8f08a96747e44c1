// QoQ's offline weight quantization (QServe W4A8): progressive group quantization (int8 per channel, then unsigned
// 4-bit per group with 8-bit integer scales) and the per-channel 4-bit variant, one dense layer at a time.
using System.Text.Json.Nodes;
using Kernels.Runtime.Models;
using Kernels.Runtime.Numerics;

namespace Kernels.Runtime.Quantization.W4A8;

/// <summary>
/// <para>
/// Per group (g input channels, K % g == 0): level 0 quantizes each output channel to int8 with scale
/// s0 = fp16(max|W[n,:]| / 119), Q0 = clamp(rne(W / s0), -119, 119). Level 1 splits Q0 into groups, takes the group's
/// range [min(0, min Q0), max(0, max Q0)] (at most 238 wide), s1 = max(1, ceil(range / 15)) (so s1 &lt;= 16),
/// z = rne(-min / s1) and q = clamp(rne(Q0 / s1) + z, 0, 15). The runtime weight is the byte q*s1 + (-z*s1) modulo 256
/// ("scale then subtract", lane-packed on the GPU): because |rne(Q0/s1)*s1| &lt;= 119 + s1/2 &lt;= 127 the wrapped byte
/// is exactly the int8 (q - z)*s1. The protective range 119 is what makes that bound hold; every range is checked here
/// (a violation is a bug, never silently wrapped).
/// </para>
/// <para>
/// Per channel: W[n,k] ~ s[n]*(q - z[n]) with the range [min(0, min W), max(0, max W)], s = fp16(range / 15),
/// z = rne(-min / s) (integer, 0..15), q = clamp(rne(W / s) + z, 0, 15). The zero point is applied in the epilogue with
/// the token's sum of int8 activations (see W4A8Linear). Layers whose K is not a multiple of the group use this form.
/// </para>
/// </summary>
internal sealed class QoqQuantizer : ILinearQuantizer
{
    /// <summary>Level-0 int8 codes stay inside [-119, 119] so level 1 can never leave int8 (see the class summary).</summary>
    public const int ProtectiveRange = 119;
    public const int DefaultGroupSize = 128;

    private readonly int _groupSize;

    /// <param name="groupSize">Input channels per group (a multiple of 32), or 0 for per-channel.</param>
    public QoqQuantizer(int groupSize)
    {
        if (groupSize < 0 || groupSize % W4A8Layout.Tile != 0)
            throw new ArgumentException($"w4a8 groups must be a positive multiple of {W4A8Layout.Tile} input channels (or per channel), got {groupSize}", nameof(QuantizeOptions.GroupSize));
        _groupSize = groupSize;
    }

    public JsonObject Config => W4A8Method.ConfigFor(_groupSize);

    public IReadOnlyList<SafetensorsWriter.Tensor> Quantize(DenseLinear weight)
    {
        int group = W4A8Method.GroupFor(_groupSize, weight.InFeatures);
        return group > 0 ? QuantizeGroups(weight, group) : QuantizeChannels(weight);
    }

    private static IReadOnlyList<SafetensorsWriter.Tensor> QuantizeGroups(DenseLinear weight, int group)
    {
        int n = weight.OutFeatures, k = weight.InFeatures, groups = k / group, nPadded = W4A8Layout.Padded(n);
        var codes = new byte[(long)n * k];
        var s0 = new Half[n];
        var s2Scales = new byte[groups * nPadded];
        var s2Zeros = new byte[groups * nPadded];
        var row = new float[k];
        var q0 = new int[k];
        for (int r = 0; r < n; r++)
        {
            weight.ReadRow(r, row);
            float amax = 0;
            foreach (float v in row) amax = MathF.Max(amax, MathF.Abs(v));
            s0[r] = FiniteScale(amax / ProtectiveRange);
            float scale0 = (float)s0[r];
            for (int c = 0; c < k; c++) q0[c] = (int)Math.Clamp(MathF.Round(row[c] / scale0), -ProtectiveRange, ProtectiveRange);

            for (int g = 0; g < groups; g++)
            {
                var span = q0.AsSpan(g * group, group);
                int min = 0, max = 0;
                foreach (int v in span) { min = Math.Min(min, v); max = Math.Max(max, v); }
                int s1 = Math.Max(1, (max - min + 14) / 15);
                int z = (int)Math.Round((double)-min / s1, MidpointRounding.ToEven);
                Check(s1 <= 127 && z is >= 0 and <= 15 && z * s1 <= 255, weight, r, g, $"s1 = {s1}, z = {z}");
                for (int c = 0; c < group; c++)
                {
                    int q = Math.Clamp((int)Math.Round((double)span[c] / s1, MidpointRounding.ToEven) + z, 0, 15);
                    int w8 = (q - z) * s1;
                    Check(q * s1 <= 255 && w8 is >= -127 and <= 127, weight, r, g, $"q = {q}, s1 = {s1}, z = {z} gives {w8}");
                    codes[(long)r * k + g * group + c] = (byte)q;
                }
                int column = g * nPadded + W4A8Layout.ScaleColumn(r);
                s2Scales[column] = (byte)s1;
                s2Zeros[column] = (byte)(-z * s1); // two's complement: the GPU adds it modulo 256 (__vadd4)
            }
        }
        string p = weight.Name + ".";
        return
        [
            new(p + W4A8Linear.QWeight, TensorDType.I8.Name(), [nPadded, W4A8Layout.Padded(k) / 2], W4A8Layout.Pack(codes, n, k)),
            new(p + W4A8Linear.ChannelScales, TensorDType.F16.Name(), [n], HalfBytes(s0)),
            new(p + W4A8Linear.GroupScales, TensorDType.I8.Name(), [groups, nPadded], s2Scales),
            new(p + W4A8Linear.GroupZeros, TensorDType.I8.Name(), [groups, nPadded], s2Zeros),
        ];
    }

    private static IReadOnlyList<SafetensorsWriter.Tensor> QuantizeChannels(DenseLinear weight)
    {
        int n = weight.OutFeatures, k = weight.InFeatures;
        var codes = new byte[(long)n * k];
        var scales = new Half[n];
        var zeros = new byte[n];
        var row = new float[k];
        for (int r = 0; r < n; r++)
        {
            weight.ReadRow(r, row);
            float min = 0, max = 0;
            foreach (float v in row) { min = MathF.Min(min, v); max = MathF.Max(max, v); }
            scales[r] = FiniteScale((max - min) / 15);
            float s = (float)scales[r];
            int z = Math.Clamp((int)MathF.Round(-min / s), 0, 15);
            zeros[r] = (byte)z;
            for (int c = 0; c < k; c++) codes[(long)r * k + c] = (byte)Math.Clamp((int)MathF.Round(row[c] / s) + z, 0, 15);
        }
        string p = weight.Name + ".";
        return
        [
            new(p + W4A8Linear.QWeight, TensorDType.I8.Name(), [W4A8Layout.Padded(n), W4A8Layout.Padded(k) / 2], W4A8Layout.Pack(codes, n, k)),
            new(p + W4A8Linear.ChannelScales, TensorDType.F16.Name(), [n], HalfBytes(scales)),
            new(p + W4A8Linear.ChannelZeros, TensorDType.U8.Name(), [n], zeros),
        ];
    }

    /// <summary>An fp16 scale that divides safely: 1 for an all-zero row, the smallest subnormal when fp16 underflows.</summary>
    private static Half FiniteScale(float scale)
    {
        if (!float.IsFinite(scale)) throw new ArgumentException($"weight range {scale} is not finite");
        if (scale == 0) return (Half)1f;
        var h = (Half)scale;
        return h == Half.Zero ? Half.Epsilon : h;
    }

    private static void Check(bool ok, DenseLinear weight, int row, int group, string what)
    {
        if (!ok) throw new InvalidOperationException($"{weight.Name}: row {row} group {group}: {what} leaves the QoQ integer ranges");
    }

    private static byte[] HalfBytes(Half[] values)
    {
        var bytes = new byte[values.Length * 2];
        for (int i = 0; i < values.Length; i++) BitConverter.TryWriteBytes(bytes.AsSpan(2 * i), values[i]);
        return bytes;
    }
}
