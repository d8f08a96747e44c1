// W4A8 (QServe/QoQ) on the CPU: the packed tile layout, the quantizer's integer ranges, activation quantization, and
// the integer GEMM against a scalar reference that does the GPU's byte arithmetic, bit for bit.
using Kernels.Runtime.Backends.Cpu;
using Kernels.Runtime.Models;
using Kernels.Runtime.Numerics;
using Kernels.Runtime.Quantization.W4A8;

namespace Kernels.Tests.Quantization;

public unsafe class W4A8Tests
{
    private readonly List<IDisposable> _owners = [];

    [TearDown]
    public void Free()
    {
        foreach (var o in _owners) o.Dispose();
        _owners.Clear();
    }

    private WeightTensor Tensor(string name, TensorDType dtype, long[] shape, ReadOnlySpan<byte> bytes)
    {
        var storage = new OwnedStorage(Math.Max(1, bytes.Length));
        _owners.Add(storage);
        bytes.CopyTo(new Span<byte>(storage.Pointer, bytes.Length));
        return new WeightTensor(name, dtype, shape, storage.Pointer);
    }

    /// <summary>Dense fp32 weights with a few large outliers per row (the case the protective range exists for).</summary>
    private static float[] DenseWeights(int n, int k, int seed)
    {
        var rng = new Random(seed);
        var w = new float[n * k];
        for (int i = 0; i < w.Length; i++) w[i] = (float)(rng.NextDouble() * 2 - 1) * 0.05f;
        for (int r = 0; r < n; r++) w[r * k + rng.Next(k)] = (rng.Next(2) * 2 - 1) * 0.9f;
        return w;
    }

    private DenseLinear Dense(float[] w, int n, int k)
    {
        var bytes = new byte[w.Length * 4];
        Buffer.BlockCopy(w, 0, bytes, 0, bytes.Length);
        return new DenseLinear("layer", Tensor("layer.weight", TensorDType.F32, [n, k], bytes));
    }

    /// <summary>Quantizes through the quantizer and loads through the method's loader, as a model directory would.</summary>
    private W4A8Linear Quantized(float[] w, int n, int k, int group)
    {
        var tensors = new QoqQuantizer(group).Quantize(Dense(w, n, k))
            .ToDictionary(t => t.Name, t => Tensor(t.Name, Enum.Parse<TensorDType>(t.DType), t.Shape, t.Data.Span));
        return W4A8Linear.Load("layer", n, k, W4A8Method.GroupFor(group, k), name => tensors.GetValueOrDefault(name), "test");
    }

    // ---------------------------------------------------------------------------------------------------------------
    // Layout

    [Test]
    public void PackedByteOfEveryCodeIsWhereTheResearchBriefPutsIt()
    {
        // Written from kernels.md 2b independently of W4A8Layout.ByteIndex: n = 32nt + 16a + 8b + c, k = 32kt + 16e + 4f + h,
        // lane 4c + f, byte 8e + 4b + h, low nibble for a = 0.
        const int n = 64, k = 96;
        var codes = new byte[n * k];
        var rng = new Random(5);
        for (int i = 0; i < codes.Length; i++) codes[i] = (byte)rng.Next(16);
        var packed = W4A8Layout.Pack(codes, n, k);
        Assert.That(packed, Has.Length.EqualTo(n * k / 2));
        int checkedCodes = 0;
        for (int nt = 0; nt < n / 32; nt++)
        for (int kt = 0; kt < k / 32; kt++)
        for (int a = 0; a < 2; a++) for (int b = 0; b < 2; b++) for (int c = 0; c < 8; c++)
        for (int e = 0; e < 2; e++) for (int f = 0; f < 4; f++) for (int h = 0; h < 4; h++)
        {
            int row = 32 * nt + 16 * a + 8 * b + c, col = 32 * kt + 16 * e + 4 * f + h;
            byte v = packed[(nt * (k / 32) + kt) * 512 + (4 * c + f) * 16 + 8 * e + 4 * b + h];
            Assert.That(a == 0 ? v & 15 : v >> 4, Is.EqualTo(codes[row * k + col]), $"code [{row}, {col}]");
            checkedCodes++;
        }
        Assert.That(checkedCodes, Is.EqualTo(n * k));
    }

    [TestCase(1, 1)]
    [TestCase(32, 32)]
    [TestCase(33, 70)]
    [TestCase(64, 172)]
    [TestCase(100, 256)]
    public void PackThenUnpackIsBitExactAndPadsWithZeroCodes(int n, int k)
    {
        var rng = new Random(n * 1000 + k);
        var codes = new byte[n * k];
        for (int i = 0; i < codes.Length; i++) codes[i] = (byte)rng.Next(16);
        var packed = W4A8Layout.Pack(codes, n, k);
        Assert.That(W4A8Layout.Unpack(packed, n, k), Is.EqualTo(codes));
        int nonzero = codes.Count(c => c != 0);
        int packedNonzero = packed.Sum(b => (b & 15) != 0 ? ((b >> 4) != 0 ? 2 : 1) : ((b >> 4) != 0 ? 1 : 0));
        Assert.That(packedNonzero, Is.EqualTo(nonzero), "padding codes are zero");
        Assert.Throws<ArgumentException>(() => W4A8Layout.Pack([16], 1, 1), "a code above 15 is refused");
    }

    [Test]
    public void ScaleColumnsGiveEachLaneItsFourSubtiles()
    {
        var seen = new HashSet<int>();
        for (int channel = 0; channel < 64; channel++)
        {
            int column = W4A8Layout.ScaleColumn(channel);
            Assert.That(column / 32, Is.EqualTo(channel / 32), "stays inside its 32-channel block");
            Assert.That(seen.Add(column), Is.True, "a permutation");
            // Lane c reads bytes 4c..4c+3: channels c, c+8, c+16, c+24 of the block.
            int c = column % 32 / 4, j = column % 4;
            Assert.That(channel % 32, Is.EqualTo(8 * j + c));
        }
    }

    // ---------------------------------------------------------------------------------------------------------------
    // Quantizer

    [TestCase(64, 128, 128)]
    [TestCase(40, 256, 64)]
    public void ProgressiveGroupCodesStayInTheirRangesAndDequantizeClose(int n, int k, int group)
    {
        var w = DenseWeights(n, k, 7);
        var q = Quantized(w, n, k, group);
        Assert.That(q.GroupSize, Is.EqualTo(group));
        var row = new float[k];
        for (int r = 0; r < n; r++)
        {
            q.ReadRow(r, row);
            float s0 = q.OutputScales[r];
            for (int c = 0; c < k; c++)
            {
                int w8 = q.Int8Weight(r, c), s1 = q.GroupScale(c / group, r);
                Assert.That(w8, Is.InRange(-127, 127));
                Assert.That(s1, Is.InRange(1, 16));
                // Level 0 rounds to within s0/2, level 1 to within s0*s1/2 (plus fp16 rounding of s0).
                Assert.That(row[c], Is.EqualTo(w[r * k + c]).Within(s0 * (0.5f + s1 / 2f) * 1.01f), $"[{r}, {c}]");
            }
        }
    }

    [Test]
    public void LayersWhoseKIsNotAMultipleOfTheGroupArePerChannel()
    {
        const int n = 48, k = 172;
        var w = DenseWeights(n, k, 3);
        var q = Quantized(w, n, k, 128);
        Assert.That(q.GroupSize, Is.EqualTo(0));
        Assert.That(q.Format, Is.EqualTo("W4A8 per-channel"));
        var row = new float[k];
        for (int r = 0; r < n; r++)
        {
            q.ReadRow(r, row);
            for (int c = 0; c < k; c++) Assert.That(row[c], Is.EqualTo(w[r * k + c]).Within(q.OutputScales[r] * 0.5f * 1.01f), $"[{r}, {c}]");
        }
    }

    [Test]
    public void QuantizationIsDeterministic()
    {
        var w = DenseWeights(64, 128, 11);
        var a = new QoqQuantizer(128).Quantize(Dense(w, 64, 128));
        var b = new QoqQuantizer(128).Quantize(Dense(w, 64, 128));
        Assert.That(a.Select(t => t.Data.ToArray()), Is.EqualTo(b.Select(t => t.Data.ToArray())));
    }

    // ---------------------------------------------------------------------------------------------------------------
    // Activations

    [Test]
    public void ActivationRowsQuantizeSymmetricallyToWithin127()
    {
        var rng = new Random(2);
        var x = Enumerable.Range(0, 77).Select(_ => (float)(rng.NextDouble() * 8 - 4)).ToArray();
        x[13] = -9.5f;
        var codes = new sbyte[x.Length];
        float scale = Int8Activations.QuantizeRow(x, codes);
        Assert.That(scale, Is.EqualTo(9.5f / 127f));
        Assert.That(codes[13], Is.EqualTo(-127));
        for (int i = 0; i < x.Length; i++)
        {
            Assert.That((int)codes[i], Is.InRange(-127, 127));
            Assert.That(codes[i] * scale, Is.EqualTo(x[i]).Within(scale * 0.5f * 1.001f));
        }
        Assert.That(Int8Activations.QuantizeRow(new float[5], codes), Is.EqualTo(0f));
        Assert.That(codes.Take(5), Is.All.EqualTo((sbyte)0));
        Assert.Throws<ArgumentException>(() => Int8Activations.QuantizeRow([1f, float.NaN], codes));
    }

    // ---------------------------------------------------------------------------------------------------------------
    // Integer GEMM

    /// <summary>The GPU's way, element by element: w8 = (q*s1 + stored zero byte) mod 256 as int8, int64 sums, then the zero term.</summary>
    private static long[] ReferenceAccumulate(sbyte[] x, int rows, W4A8Linear w)
    {
        int n = w.OutFeatures, k = w.InFeatures;
        var codes = W4A8Layout.Unpack(new ReadOnlySpan<byte>(w.Codes.Data, (int)w.Codes.ByteLength), n, k);
        var acc = new long[rows * n];
        for (int t = 0; t < rows; t++)
        for (int r = 0; r < n; r++)
        {
            long sum = 0, xsum = 0;
            for (int c = 0; c < k; c++)
            {
                int q = codes[r * k + c], w8;
                if (w.GroupSize > 0)
                {
                    int column = c / w.GroupSize * w.PaddedOut + W4A8Layout.ScaleColumn(r);
                    w8 = (sbyte)(byte)(q * w.GroupScaleTensor!.Data[column] + w.ZeroTensor!.Data[column]);
                }
                else w8 = q;
                sum += x[t * w.PaddedIn + c] * w8;
                xsum += x[t * w.PaddedIn + c];
            }
            acc[t * n + r] = w.GroupSize > 0 ? sum : sum - w.ZeroTensor!.Data[r] * xsum;
        }
        return acc;
    }

    [TestCase(32, 128, 128, 1)]
    [TestCase(96, 256, 128, 5)]
    [TestCase(64, 384, 128, 17)]
    [TestCase(40, 96, 32, 2)]
    [TestCase(70, 100, 0, 1)]
    [TestCase(70, 100, 0, 4)]
    [TestCase(64, 64, 0, 3)]
    [TestCase(33, 172, 128, 6)]
    public void IntegerGemmEqualsTheScalarReferenceExactly(int n, int k, int group, int rows)
    {
        var w = Quantized(DenseWeights(n, k, n + k), n, k, group);
        var rng = new Random(rows * 31 + k);
        foreach (bool extreme in new[] { false, true })
        {
            var x = new sbyte[rows * w.PaddedIn];
            for (int t = 0; t < rows; t++)
                for (int c = 0; c < k; c++)
                    x[t * w.PaddedIn + c] = extreme ? (sbyte)(rng.Next(2) == 0 ? -127 : 127) : (sbyte)rng.Next(-127, 128);
            var acc = new int[rows * n];
            W4A8Gemm.Accumulate(x, rows, w, acc);
            var expected = ReferenceAccumulate(x, rows, w);
            Assert.That(acc.Select(v => (long)v), Is.EqualTo(expected), extreme ? "activations at +-127" : "random activations");
        }
    }

    [TestCase(96, 256, 128, 3)]
    [TestCase(70, 100, 0, 5)]
    public void LinearOutputIsTheEpilogueOfTheExactSumsAndCloseToDense(int n, int k, int group, int rows)
    {
        var dense = DenseWeights(n, k, 21);
        var w = Quantized(dense, n, k, group);
        var rng = new Random(4);
        var x = Enumerable.Range(0, rows * k).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray();
        var y = new float[rows * n];
        Linear.Multiply(x, rows, w, y);

        var codes = new sbyte[rows * w.PaddedIn];
        var scales = new float[rows];
        for (int t = 0; t < rows; t++) scales[t] = Int8Activations.QuantizeRow(x.AsSpan(t * k, k), codes.AsSpan(t * w.PaddedIn, k));
        var acc = ReferenceAccumulate(codes, rows, w);
        var dequantized = new float[k];
        for (int r = 0; r < n; r++)
        {
            w.ReadRow(r, dequantized);
            for (int t = 0; t < rows; t++)
            {
                float expected = (float)acc[t * n + r] * scales[t] * w.OutputScales[r];
                Assert.That(y[t * n + r], Is.EqualTo(expected), $"bit-exact epilogue [{t}, {r}]");
                // The integer sum is the dot product of the dequantized activations and weight row (ReadRow agrees with
                // the kernel), and its distance from the dense product is bounded by the two rounding errors.
                double quantized = 0, exact = 0, bound = 0;
                for (int c = 0; c < k; c++)
                {
                    double xc = x[t * k + c], xq = codes[t * w.PaddedIn + c] * (double)scales[t];
                    quantized += xq * dequantized[c];
                    exact += xc * dense[r * k + c];
                    bound += Math.Abs(xc) * Math.Abs(dense[r * k + c] - dequantized[c]) + Math.Abs(xc - xq) * Math.Abs(dequantized[c]);
                }
                Assert.That(y[t * n + r], Is.EqualTo(quantized).Within(1e-5 * (1 + Math.Abs(quantized))), $"dequantized dot [{t}, {r}]");
                Assert.That(y[t * n + r], Is.EqualTo(exact).Within(bound * 1.001 + 1e-6), $"within the rounding bound of dense [{t}, {r}]");
            }
        }

        // A row's result does not depend on the rows beside it.
        var single = new float[n];
        Linear.Multiply(x.AsSpan((rows - 1) * k, k), 1, w, single);
        Assert.That(single, Is.EqualTo(y.AsSpan((rows - 1) * n, n).ToArray()));
    }
}
