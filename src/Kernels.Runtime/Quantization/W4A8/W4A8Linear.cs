// A linear layer stored in QServe's W4A8 format (4-bit codes in the GPU tile layout, per-channel fp16 scales, per-group
// 8-bit scales and zeros or per-channel integer zeros), with the tables the CPU kernel reads.
using Kernels.Runtime.Models;
using Kernels.Runtime.Numerics;

namespace Kernels.Runtime.Quantization.W4A8;

/// <summary>
/// <para>
/// Runtime arithmetic (CPU and GPU alike): activations are per-token int8 x_q with fp32 scale s_x (Int8Activations),
/// the weight is an int8 w8[n,k] and the output is
/// y[m,n] = ((float)acc[m,n] * s_x[m]) * s_w[n] with acc the exact int32
/// acc = sum_k x_q[m,k] * w8[n,k] - zc[n] * sum_k x_q[m,k].
/// </para>
/// <para>
/// Per group (<see cref="GroupSize"/> &gt; 0): w8 = (q*s1 - z*s1) wrapped to int8 (exact, see QoqQuantizer),
/// s_w = level-0 scale, zc = 0. Per channel (GroupSize 0): w8 = q (0..15), s_w = the fp16 scale, zc = the integer zero
/// z, whose term uses the token's sum of int8 activations. QServe subtracts z*s_w times the sum of the unquantized
/// activations instead; the integer sum makes acc exactly the dot product of the int8 activations with the dequantized
/// weight row (smaller error, and the GPU reproduces it bit for bit whatever its reduction order).
/// </para>
/// </summary>
internal sealed unsafe class W4A8Linear : LinearWeight
{
    // Tensor names: the layer name + "." + one of these.
    public const string QWeight = "qweight";          // I8 [Npad, Kpad/2], W4A8Layout tiles
    public const string ChannelScales = "s1_scales";  // F16 [N]: level-0 scale (per group) or the scale (per channel)
    public const string GroupScales = "s2_scales";    // I8 [K/g, Npad]: s1 in 1..17, columns permuted (W4A8Layout.ScaleColumn)
    public const string GroupZeros = "s2_zeros";      // I8 [K/g, Npad]: -z*s1 modulo 256, columns permuted
    public const string ChannelZeros = "s1_zeros";    // U8 [N]: integer zero point 0..15 (per channel)

    /// <summary>Input channels per group; 0 = per channel.</summary>
    public int GroupSize { get; }
    public int PaddedOut { get; }
    public int PaddedIn { get; }
    /// <summary>Groups along K (1 for per channel).</summary>
    public int Groups { get; }
    /// <summary>Input channels summed under one group scale (GroupSize, or PaddedIn for per channel).</summary>
    public int GroupSpan => GroupSize > 0 ? GroupSize : PaddedIn;

    public WeightTensor Codes { get; }
    public WeightTensor Scales { get; }
    public WeightTensor? GroupScaleTensor { get; }
    public WeightTensor? ZeroTensor { get; }

    /// <summary>s_w[n] as fp32.</summary>
    internal float[] OutputScales { get; }
    /// <summary>[Groups, N]: the integer subtracted per unit of the group's activation sum (z*s1 per group, z per channel).</summary>
    internal int[] ZeroTerms { get; }

    private W4A8Linear(string name, int n, int k, int groupSize, WeightTensor codes, WeightTensor scales, WeightTensor? groupScales, WeightTensor? zeros)
        : base(name, n, k)
    {
        GroupSize = groupSize;
        PaddedOut = W4A8Layout.Padded(n);
        PaddedIn = W4A8Layout.Padded(k);
        Groups = groupSize > 0 ? k / groupSize : 1;
        Codes = codes;
        Scales = scales;
        GroupScaleTensor = groupScales;
        ZeroTensor = zeros;
        OutputScales = scales.ToFloatArray();
        ZeroTerms = new int[Groups * n];
        for (int g = 0; g < Groups; g++)
            for (int r = 0; r < n; r++)
                ZeroTerms[g * n + r] = groupSize > 0
                    ? (byte)-zeros!.Data[g * PaddedOut + W4A8Layout.ScaleColumn(r)] // stored -z*s1 mod 256; z*s1 <= 255
                    : zeros!.Data[r];
    }

    public override string Format => GroupSize > 0 ? $"W4A8 g{GroupSize}" : "W4A8 per-channel";

    public override IEnumerable<WeightTensor> Tensors =>
        GroupScaleTensor is null ? [Codes, Scales, ZeroTensor!] : [Codes, Scales, GroupScaleTensor, ZeroTensor!];

    /// <summary>The group scale s1 of channel <paramref name="n"/> in group <paramref name="g"/> (1 per channel).</summary>
    public int GroupScale(int g, int n) => GroupScaleTensor is null ? 1 : GroupScaleTensor.Data[g * PaddedOut + W4A8Layout.ScaleColumn(n)];

    /// <summary>The runtime int8 weight w8[n,k] (see the class summary), computed as the GPU does: byte arithmetic modulo 256.</summary>
    public int Int8Weight(int n, int k)
    {
        int q = W4A8Layout.Code(new ReadOnlySpan<byte>(Codes.Data, checked((int)Codes.ByteLength)), n, k, PaddedIn);
        if (GroupSize == 0) return q;
        int g = k / GroupSize;
        byte zero = ZeroTensor!.Data[g * PaddedOut + W4A8Layout.ScaleColumn(n)];
        return (sbyte)(byte)(q * GroupScale(g, n) + zero);
    }

    public override void ReadRow(int row, Span<float> destination)
    {
        if ((uint)row >= (uint)OutFeatures) throw new ArgumentOutOfRangeException(nameof(row), $"{Name}: row {row} of {OutFeatures}");
        float s = OutputScales[row];
        int zero = GroupSize == 0 ? ZeroTerms[row] : 0;
        for (int c = 0; c < InFeatures; c++) destination[c] = s * (Int8Weight(row, c) - zero);
    }

    // ---------------------------------------------------------------------------------------------------------------
    // Loading: every tensor is checked (present, dtype, shape, integer ranges) so a bad file fails here, not as wrong output.

    public static W4A8Linear Load(string name, int n, int k, int groupSize, Func<string, WeightTensor?> lookup, string source)
    {
        int nPadded = W4A8Layout.Padded(n), kPadded = W4A8Layout.Padded(k);
        WeightTensor Get(string suffix, TensorDType dtype, params long[] shape)
        {
            string full = name + "." + suffix;
            var t = lookup(full) ?? throw new ModelFormatException(source, $"missing tensor '{full}' of the w4a8 layer {name}");
            if (t.DType != dtype)
                throw new ModelFormatException(source, $"tensor '{full}' is {t.DType.Name()}, w4a8 stores it as {dtype.Name()}");
            if (!t.Shape.SequenceEqual(shape))
                throw new ModelFormatException(source, $"tensor '{full}' has shape {t.ShapeText}, expected [{string.Join(", ", shape)}] for a [{n}, {k}] layer");
            return t;
        }

        var codes = Get(QWeight, TensorDType.I8, nPadded, kPadded / 2);
        var scales = Get(ChannelScales, TensorDType.F16, n);
        if (groupSize == 0)
        {
            var zeros = Get(ChannelZeros, TensorDType.U8, n);
            for (int r = 0; r < n; r++)
                if (zeros.Data[r] > 15) throw new ModelFormatException(source, $"tensor '{zeros.Name}' [{r}] = {zeros.Data[r]} is not a 4-bit zero point");
            return new W4A8Linear(name, n, k, 0, codes, scales, null, zeros);
        }
        int groups = k / groupSize;
        var s2 = Get(GroupScales, TensorDType.I8, groups, nPadded);
        var z2 = Get(GroupZeros, TensorDType.I8, groups, nPadded);
        for (int g = 0; g < groups; g++)
            for (int r = 0; r < n; r++)
            {
                int column = g * nPadded + W4A8Layout.ScaleColumn(r);
                int s1 = s2.Data[column], zs = (byte)-z2.Data[column];
                // q*s1 <= 255 for every 4-bit q and z*s1 an exact multiple of s1: what the GPU's byte arithmetic needs.
                if (s1 is < 1 or > 17 || zs % s1 != 0 || zs / s1 > 15)
                    throw new ModelFormatException(source, $"tensor '{s2.Name}'/'{z2.Name}' group {g} channel {r}: scale {s1}, zero {zs} leave the QoQ ranges (scale 1..17, zero = z*scale with z 0..15)");
            }
        return new W4A8Linear(name, n, k, groupSize, codes, scales, s2, z2);
    }
}
