// The GGML block formats against llama.cpp's own code: sizes, and dequantization bit for bit, on data its quantizer made
// and on arbitrary bytes (every code and scale pattern, fp16 infinities and NaNs included).
using Kernels.Runtime.Models;
using Kernels.Runtime.Numerics;

namespace Kernels.Tests.Numerics;

public sealed unsafe class GgmlBlocksTests
{
    public static readonly TensorDType[] BlockTypes =
    [
        TensorDType.Q4_0, TensorDType.Q4_1, TensorDType.Q5_0, TensorDType.Q5_1, TensorDType.Q8_0,
        TensorDType.Q2_K, TensorDType.Q3_K, TensorDType.Q4_K, TensorDType.Q5_K, TensorDType.Q6_K,
    ];

    /// <summary>Rows of weights with the shapes that matter to a quantizer: gaussian, outliers, an all-zero block, all negative.</summary>
    public static float[] Weights(int rows, int perRow, int seed)
    {
        var rng = new Random(seed);
        var w = new float[rows * perRow];
        for (int i = 0; i < w.Length; i++)
        {
            double u1 = 1 - rng.NextDouble(), u2 = rng.NextDouble();
            w[i] = (float)(0.02 * Math.Sqrt(-2 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2));
            if (rng.Next(97) == 0) w[i] *= 40; // outliers
        }
        for (int i = 0; i < Math.Min(256, w.Length); i++) w[i] = 0;                                    // a zero super-block
        for (int i = 256; i < Math.Min(512, w.Length); i++) w[i] = -Math.Abs(w[i]) - 1e-3f;           // all negative
        return w;
    }

    [TestCaseSource(nameof(BlockTypes))]
    public void BlockGeometryMatchesGgml(TensorDType type)
    {
        GgmlNative.Require();
        var bytes = GgmlNative.Quantize(type, new float[512], 2, 256);
        Assert.That(bytes.Length, Is.EqualTo(type.ByteCount(512)));
        Assert.That(GgmlTypes.ToDType((int)GgmlTypes.ToId(type)), Is.EqualTo(type));
    }

    [TestCaseSource(nameof(BlockTypes))]
    public void DequantizationMatchesLlamaCppBitForBit(TensorDType type)
    {
        GgmlNative.Require();
        const int rows = 6, perRow = 1024;
        var data = GgmlNative.Quantize(type, Weights(rows, perRow, 11 + (int)type), rows, perRow);
        AssertSameDequantization(type, data, rows * perRow);
    }

    [TestCaseSource(nameof(BlockTypes))]
    public void DequantizationOfArbitraryBytesMatchesLlamaCpp(TensorDType type)
    {
        GgmlNative.Require();
        var rng = new Random(5 + (int)type);
        int blocks = 64, n = blocks * type.BlockSize();
        var data = new byte[type.ByteCount(n)];
        rng.NextBytes(data);
        AssertSameDequantization(type, data, n);
    }

    private static void AssertSameDequantization(TensorDType type, byte[] data, int n)
    {
        var expected = GgmlNative.Dequantize(type, data, n);
        var actual = new float[n];
        fixed (byte* p = data) GgmlBlocks.Dequantize(type, p, actual);
        int mismatches = 0, first = -1;
        for (int i = 0; i < n; i++)
            if (BitConverter.SingleToInt32Bits(actual[i]) != BitConverter.SingleToInt32Bits(expected[i]) && !(float.IsNaN(actual[i]) && float.IsNaN(expected[i])))
            {
                mismatches++;
                if (first < 0) first = i;
            }
        Assert.That(mismatches, Is.Zero, () => $"{type}: {mismatches} of {n} values differ; first at {first}: ours {actual[first]:R}, llama.cpp {expected[first]:R}");
    }

    [Test]
    public void PartialBlocksAreRefused()
    {
        var e = Assert.Throws<ArgumentException>(() =>
        {
            var data = new byte[144];
            fixed (byte* p = data) GgmlBlocks.Dequantize(TensorDType.Q4_K, p, new float[128]);
        });
        Assert.That(e!.Message, Does.Contain("whole blocks of 256"));
    }
}
