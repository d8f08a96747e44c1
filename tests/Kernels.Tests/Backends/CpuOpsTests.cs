// Each CPU op (the reference for the CUDA kernels) against a naive scalar double-precision version, over every SIMD tail.
using Kernels.Runtime.Backends.Cpu;
using Kernels.Runtime.Models;
using Kernels.Runtime.Numerics;

namespace Kernels.Tests.Backends;

public unsafe class CpuOpsTests
{
    // Lengths that hit every tail of the 8-, 16- and 32-wide loops.
    private static readonly int[] Lengths = [1, 7, 8, 9, 15, 16, 17, 31, 33, 64, 100];

    private static float[] Random(int n, int seed, float scale = 1f)
    {
        var rng = new Random(seed);
        return Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() * 2 - 1) * scale).ToArray();
    }

    /// <summary>Owned tensor of the given dtype holding <paramref name="values"/> (rounded to that dtype).</summary>
    private static (WeightTensor Tensor, float[] Rounded, OwnedStorage Storage) Tensor(float[] values, int rows, int cols, TensorDType dtype)
    {
        var storage = new OwnedStorage(dtype.ByteCount(values.Length));
        var rounded = new float[values.Length];
        for (int i = 0; i < values.Length; i++)
        {
            switch (dtype)
            {
                case TensorDType.F32: ((float*)storage.Pointer)[i] = rounded[i] = values[i]; break;
                case TensorDType.F16: ((Half*)storage.Pointer)[i] = (Half)values[i]; rounded[i] = (float)(Half)values[i]; break;
                case TensorDType.BF16:
                    ushort b = DTypeConvert.SingleToBFloat16(values[i]);
                    ((ushort*)storage.Pointer)[i] = b;
                    rounded[i] = DTypeConvert.BFloat16ToSingle(b);
                    break;
            }
        }
        return (new WeightTensor("w", dtype, [rows, cols], storage.Pointer), rounded, storage);
    }

    [Test]
    public void MatMulMatchesNaiveForEveryDTypeAndTail([Values(TensorDType.F32, TensorDType.F16, TensorDType.BF16)] TensorDType dtype,
        [Values(1, 3, 4, 5, 9)] int rows)
    {
        foreach (int k in Lengths)
        {
            int n = 70; // more than one task of 64 rows
            var (w, rounded, storage) = Tensor(Random(n * k, k), n, k, dtype);
            using var _ = storage;
            var x = Random(rows * k, k + 1);
            var bias = Tensor(Random(n, 5), 1, n, TensorDType.F32);
            using var __ = bias.Storage;
            var y = new float[rows * n];
            MatMul.Multiply(x, rows, w, y, bias.Tensor);
            for (int t = 0; t < rows; t++)
                for (int j = 0; j < n; j++)
                {
                    double expected = bias.Rounded[j];
                    for (int i = 0; i < k; i++) expected += (double)x[t * k + i] * rounded[j * k + i];
                    // fp32 accumulation of k products of magnitude <= 1: a few ulps of sqrt(k)-scaled sums.
                    Assert.That(y[t * n + j], Is.EqualTo(expected).Within(1e-5 * (1 + k)), $"k={k} row={t} col={j}");
                }
        }
    }

    /// <summary>
    /// A row's result has the same bits alone (decode kernel: weights widened in registers, x prescaled when it can be)
    /// and among others (blocked kernel: weights converted chunk by chunk), for K across several chunks with every tail,
    /// and for an x row too large to prescale.
    /// </summary>
    /// <remarks>
    /// With weights of magnitude up to 0.002 about 3 % of the F16 halves are subnormal: those matrices take the flushed
    /// copy with exact per-row fix-ups (WeightTensor.Subnormals), which must keep both properties.
    /// </remarks>
    [Test]
    public void MatMulRowsAreBitIdenticalAloneAndBatchedAcrossChunks([Values(TensorDType.F32, TensorDType.F16, TensorDType.BF16)] TensorDType dtype,
        [Values(1f, 0.002f)] float scale)
    {
        // Row counts that take every tile shape (4x3, 4x2, the panel from 8 rows); with and without a row whose |x|
        // is beyond the prescale limit (the F16 batch then multiplies its weights instead of prescaling x).
        foreach (var (rows, huge) in new[] { (5, 3), (2, -1), (4, -1), (7, 6), (16, -1), (16, 15) })
        foreach (int k in new[] { 16, 24, 40, 45, 256, 263, 520, 777, 1100, 2056 }) // 1100, 2056: two and three K chunks
        {
            int n = 70;
            var (w, rounded, storage) = Tensor(Random(n * k, k, scale), n, k, dtype);
            using var _ = storage;
            if (dtype == TensorDType.F16 && scale < 1) Assert.That(F16Subnormals.For(w), Is.Not.Null, "the F16 weights were meant to hold subnormal halves");
            var x = Random(rows * k, k + 2);
            if (huge >= 0) for (int i = 0; i < k; i++) x[huge * k + i] *= 1e5f;
            var batched = new float[rows * n];
            MatMul.Multiply(x, rows, w, batched);
            var single = new float[n];
            for (int t = 0; t < rows; t++)
            {
                MatMul.Multiply(x.AsSpan(t * k, k), 1, w, single);
                Assert.That(single, Is.EqualTo(batched.AsSpan(t * n, n).ToArray()), $"k={k} row {t} of {rows}");
                for (int j = 0; j < n; j++)
                {
                    double expected = 0, magnitude = 0;
                    for (int i = 0; i < k; i++)
                    {
                        expected += (double)x[t * k + i] * rounded[j * k + i];
                        magnitude += Math.Abs((double)x[t * k + i] * rounded[j * k + i]);
                    }
                    Assert.That(single[j], Is.EqualTo(expected).Within(1e-6 * magnitude + 1e-6), $"k={k} row={t} col={j}");
                }
            }
        }
    }

    /// <summary>
    /// The AVX-512 and AVX2 paths sum every dot in one order (16 columns per step as two 8-lane halves, folded, one
    /// 8-column step, Vector256.Sum, the scalar tail: DotTile's summary), so they give the same bits. The one
    /// exception: F16 with subnormal halves on a CPU where the AVX2 path reads a flushed copy plus fix-ups
    /// (F16Subnormals.Needed, Intel), whose sums then differ by rounding: within 1e-6 of the sum of the terms'
    /// magnitudes there.
    /// </summary>
    [Test]
    public void MatMulAvx512AndAvx2PathsGiveTheSameBits([Values(TensorDType.F32, TensorDType.F16, TensorDType.BF16)] TensorDType dtype,
        [Values(1f, 0.002f)] float scale)
    {
        if (!MatMul.Wide) Assert.Ignore("this host has no AVX-512 path (or DOTNET_EnableAVX512=0): only the AVX2 path runs here");
        try
        {
            foreach (int rows in new[] { 1, 3, 4, 7, 16 })
            foreach (int k in new[] { 16, 40, 264, 768, 1100, 2056 })
            {
                int n = 70;
                var (w, rounded, storage) = Tensor(Random(n * k, k, scale), n, k, dtype);
                using var _ = storage;
                var x = Random(rows * k, k + 3);
                var wide = new float[rows * n];
                var narrow = new float[rows * n];
                MatMul.Wide = true;
                MatMul.Multiply(x, rows, w, wide);
                MatMul.Wide = false;
                MatMul.Multiply(x, rows, w, narrow);
                MatMul.Wide = true;
                for (int t = 0; t < rows; t++)
                    for (int j = 0; j < n; j++)
                    {
                        double magnitude = 0;
                        for (int i = 0; i < k; i++) magnitude += Math.Abs((double)x[t * k + i] * rounded[j * k + i]);
                        if (dtype == TensorDType.F16 && F16Subnormals.Needed)
                            Assert.That(wide[t * n + j], Is.EqualTo(narrow[t * n + j]).Within(1e-6 * magnitude + 1e-30), $"{dtype} k={k} row={t} col={j}");
                        else
                            Assert.That(BitConverter.SingleToInt32Bits(wide[t * n + j]), Is.EqualTo(BitConverter.SingleToInt32Bits(narrow[t * n + j])),
                                $"{dtype} scale {scale} k={k} rows={rows} row={t} col={j}: {wide[t * n + j]} against {narrow[t * n + j]}");
                    }
            }
        }
        finally
        {
            MatMul.Wide = true;
        }
    }

    /// <summary>
    /// The wide kernels' two readings of finite F16 weights (fields against x times 2^112, or exact values converted in
    /// integers) multiply the same real numbers, so they give the same bits: decode and batches, K with every tail,
    /// weights with ~3 % subnormal halves, and a row too large to prescale (which falls back to the exact reading).
    /// </summary>
    [Test]
    public void MatMulWideHalfFieldsGiveTheExactConversionsBits([Values(1f, 0.002f)] float scale)
    {
        if (!MatMul.Wide) Assert.Ignore("this host has no AVX-512 path (or DOTNET_EnableAVX512=0): the fields reading is the wide kernels'");
        bool before = MatMul.HalfFields;
        try
        {
            foreach (var (rows, huge) in new[] { (1, -1), (1, 0), (3, -1), (16, -1), (16, 9) })
            foreach (int k in new[] { 16, 24, 45, 264, 777, 1100, 2056 })
            {
                int n = 70;
                var (w, _, storage) = Tensor(Random(n * k, k, scale), n, k, TensorDType.F16);
                using var _ = storage;
                var x = Random(rows * k, k + 5);
                if (huge >= 0) for (int i = 0; i < k; i++) x[huge * k + i] *= 1e5f;
                var fields = new float[rows * n];
                var exact = new float[rows * n];
                MatMul.HalfFields = true;
                MatMul.Multiply(x, rows, w, fields);
                MatMul.HalfFields = false;
                MatMul.Multiply(x, rows, w, exact);
                Assert.That(fields, Is.EqualTo(exact), $"k={k}, {rows} rows, scale {scale}");
            }
        }
        finally
        {
            MatMul.HalfFields = before;
        }
    }

    [Test]
    public unsafe void MatMulOfSeveralWeightsSharingXEqualsOneCallEach()
    {
        foreach (int rows in new[] { 1, 5, 16 })
        {
            int k = 264;
            var (wa, _, sa) = Tensor(Random(70 * k, 1), 70, k, TensorDType.F16);
            var (wb, _, sb) = Tensor(Random(9 * k, 2), 9, k, TensorDType.BF16);
            var (wc, _, sc) = Tensor(Random(130 * k, 3), 130, k, TensorDType.F32);
            using var _a = sa; using var _b = sb; using var _c = sc;
            var x = Random(rows * k, 4);
            var weights = new[] { wa, wb, wc };
            var together = weights.Select(w => new float[rows * w.Rows]).ToArray();
            fixed (float* ya = together[0], yb = together[1], yc = together[2])
                MatMul.Multiply(x, rows, [new MatMul.Product(wa, ya, together[0].Length), new MatMul.Product(wb, yb, together[1].Length), new MatMul.Product(wc, yc, together[2].Length)]);
            for (int i = 0; i < 3; i++)
            {
                var alone = new float[rows * weights[i].Rows];
                MatMul.Multiply(x, rows, weights[i], alone);
                Assert.That(together[i], Is.EqualTo(alone), $"{weights[i].DType}, {rows} rows");
            }
        }
    }

    [Test]
    public void RmsNormMatchesNaive()
    {
        foreach (int d in Lengths)
        {
            var x = Random(3 * d, d, 10f);
            var w = Random(d, d + 1);
            var y = new float[3 * d];
            RmsNorm.Apply(x, w, 1e-5f, y, 3);
            for (int t = 0; t < 3; t++)
            {
                double ms = 0;
                for (int i = 0; i < d; i++) ms += (double)x[t * d + i] * x[t * d + i];
                double inv = 1 / Math.Sqrt(ms / d + 1e-5);
                for (int i = 0; i < d; i++) Assert.That(y[t * d + i], Is.EqualTo(x[t * d + i] * inv * w[i]).Within(1e-5 * (1 + Math.Abs(y[t * d + i]))));
            }
        }
    }

    [Test]
    public void RopeRotatesHalvesByPositionTimesFrequency()
    {
        int heads = 3, d = 16, rows = 4;
        var x = Random(rows * heads * d, 1);
        var original = (float[])x.Clone();
        int[] positions = [0, 1, 17, 500];
        var inv = Enumerable.Range(0, d / 2).Select(i => (float)Math.Pow(10000, -2.0 * i / d)).ToArray();
        Rope.Apply(x, rows, heads, d, positions, inv);
        for (int t = 0; t < rows; t++)
            for (int h = 0; h < heads; h++)
                for (int i = 0; i < d / 2; i++)
                {
                    int o = (t * heads + h) * d;
                    double angle = positions[t] * (double)inv[i];
                    double a = original[o + i], b = original[o + i + d / 2];
                    Assert.That(x[o + i], Is.EqualTo(a * Math.Cos(angle) - b * Math.Sin(angle)).Within(2e-5));
                    Assert.That(x[o + i + d / 2], Is.EqualTo(b * Math.Cos(angle) + a * Math.Sin(angle)).Within(2e-5));
                }
        Assert.That(x.AsSpan(0, heads * d).ToArray(), Is.EqualTo(original.AsSpan(0, heads * d).ToArray()), "position 0 is the identity");
    }

    [Test]
    public void SwiGluIsSiluOfGateTimesUp()
    {
        // The extremes, then a sweep long enough for the 8-lane path and its scalar tail.
        float[] gate = [-80f, -1f, 0f, 0.5f, 3f, 80f, -100f, 100f, .. Enumerable.Range(0, 43).Select(i => -21f + i * 1.01f)];
        var up = Enumerable.Range(0, gate.Length).Select(i => 2f - 0.03f * i).ToArray();
        var y = new float[gate.Length];
        SwiGlu.Apply(gate, up, y);
        for (int i = 0; i < gate.Length; i++)
            Assert.That(y[i], Is.EqualTo(gate[i] / (1 + Math.Exp(-gate[i])) * up[i]).Within(1e-5 * (1 + Math.Abs(y[i]))), $"gate {gate[i]}");
        Assert.That(y.All(float.IsFinite));
    }

    [Test]
    public void BFloat16ConversionIsExactAndRoundsToNearestEven()
    {
        var bits = Enumerable.Range(0, 40).Select(i => (ushort)(0x3F80 + i * 37)).ToArray();
        var floats = new float[bits.Length];
        DTypeConvert.BFloat16ToSingle(bits, floats);
        for (int i = 0; i < bits.Length; i++)
        {
            Assert.That(BitConverter.SingleToUInt32Bits(floats[i]), Is.EqualTo((uint)bits[i] << 16));
            Assert.That(DTypeConvert.SingleToBFloat16(floats[i]), Is.EqualTo(bits[i]));
        }
        Assert.That(DTypeConvert.SingleToBFloat16(BitConverter.UInt32BitsToSingle(0x3F808000)), Is.EqualTo((ushort)0x3F80), "tie to even (down)");
        Assert.That(DTypeConvert.SingleToBFloat16(BitConverter.UInt32BitsToSingle(0x3F818000)), Is.EqualTo((ushort)0x3F82), "tie to even (up)");
        Assert.That(float.IsNaN(DTypeConvert.BFloat16ToSingle(DTypeConvert.SingleToBFloat16(float.NaN))));
    }

    [Test]
    public void F16WeightsWidenExactlyIncludingSubnormalsInfinitiesAndNaN()
    {
        // Every finite half (exponent < 31) as one weight, against one-hot x rows, so each output is exactly one weight.
        // This table has no inf/NaN, so single-row products take the finite-only widening; the next one the general one.
        var finite = Enumerable.Range(0, 1 << 16).Select(i => (ushort)i).Where(h => (h & 0x7C00) != 0x7C00).ToArray();
        int cols = 16, rows = finite.Length / cols;
        Check(finite[..(rows * cols)], rows, cols, (row, col, expected, actual) =>
            Assert.That(BitConverter.SingleToInt32Bits(actual) == BitConverter.SingleToInt32Bits(expected) || (actual == 0 && expected == 0),
                $"half 0x{finite[row * cols + col]:X4}: {actual} vs {expected}"));
        // Infinities and NaNs alone in their rows (anything else would meet them as inf * 0).
        ushort[] special = [0x7C00, 0xFC00, 0x7E00, 0xFE01, 0x7C01];
        var table = new ushort[special.Length * cols];
        for (int r = 0; r < special.Length; r++) table[r * cols] = special[r];
        Check(table, special.Length, cols, (row, col, expected, actual) =>
        {
            if (col != 0) return;
            if (float.IsNaN(expected)) Assert.That(float.IsNaN(actual), $"half 0x{special[row]:X4}");
            else Assert.That(actual, Is.EqualTo(expected), $"half 0x{special[row]:X4}");
        });
    }

    private static void Check(ushort[] halves, int rows, int cols, Action<int, int, float, float> check)
    {
        var storage = new OwnedStorage(halves.Length * 2);
        using var _ = storage;
        halves.AsSpan().CopyTo(new Span<ushort>(storage.Pointer, halves.Length));
        var w = new WeightTensor("w", TensorDType.F16, [rows, cols], storage.Pointer);
        var x = new float[cols * cols];
        for (int r = 0; r < cols; r++) x[r * cols + r] = 1f;
        var y = new float[cols * rows];
        MatMul.Multiply(x, cols, w, y); // many x rows: F16 rows converted into a buffer
        for (int row = 0; row < rows; row++)
            for (int col = 0; col < cols; col++)
                check(row, col, (float)BitConverter.UInt16BitsToHalf(halves[row * cols + col]), y[col * rows + row]);
        var single = new float[rows];
        for (int col = 0; col < cols; col++)
        {
            MatMul.Multiply(x.AsSpan(col * cols, cols), 1, w, single); // one x row: widened in registers
            for (int row = 0; row < rows; row++)
                check(row, col, (float)BitConverter.UInt16BitsToHalf(halves[row * cols + col]), single[row]);
        }
    }
}
