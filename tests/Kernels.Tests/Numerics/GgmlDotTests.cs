// Integer dot products of GGML weight rows with int8 activations: the activation quantizers bit for bit against
// llama.cpp's x86 ones, the dot products against llama.cpp's vec_dot_* (to fp32 rounding: the sums are summed in
// another order), and every instruction path of ours against the others bit for bit.
using Kernels.Runtime.Backends.Cpu;
using Kernels.Runtime.Numerics;

namespace Kernels.Tests.Numerics;

public sealed unsafe class GgmlDotTests
{
    public static readonly TensorDType[] BlockTypes = GgmlBlocksTests.BlockTypes;

    private static float[] Activations(int n, int seed)
    {
        var rng = new Random(seed);
        var x = new float[n];
        for (int i = 0; i < n; i++) x[i] = (float)(rng.NextDouble() * 2 - 1) * (rng.Next(50) == 0 ? 8 : 1);
        for (int i = 0; i < 32; i++) x[i] = 0; // an all-zero block
        return x;
    }

    [TestCase((int)Q8Format.Q8_0, "q8_0", 34, 32, false)]
    [TestCase((int)Q8Format.Q8_1, "q8_1", 36, 32, false)]
    [TestCase((int)Q8Format.Q8_K, "q8_K", 292, 256, false)]
    [TestCase((int)Q8Format.Q8_0, "q8_0", 34, 32, true)]
    [TestCase((int)Q8Format.Q8_1, "q8_1", 36, 32, true)]
    [TestCase((int)Q8Format.Q8_K, "q8_K", 292, 256, true)]
    public void ActivationQuantizationMatchesLlamaCpp(int formatValue, string name, int blockBytes, int block, bool scalar)
    {
        var format = (Q8Format)formatValue; // Q8Format is internal: a public test method cannot take it

        GgmlNative.Require();
        const int k = 1024;
        var x = Activations(k, 3);
        x[300] = 5.5f; x[301] = -5.5f; x[302] = 0.5f; // ties
        x[600] = -3f; x[601] = 3f; // two values of the largest magnitude in one block: the first one's sign counts
        var expected = GgmlNative.QuantizeActivations(name, x, blockBytes, block);
        var ours = scalar ? Q8Rows.QuantizeScalar(format, x, 1, k) : Q8Rows.Quantize(format, x, 1, k);
        for (int b = 0; b < k / block; b++)
        {
            fixed (byte* e = expected)
            {
                byte* eb = e + b * blockBytes;
                if (format == Q8Format.Q8_K)
                {
                    Assert.That(ours.Scales[b], Is.EqualTo(*(float*)eb), $"block {b}: d");
                    for (int i = 0; i < 256; i++) Assert.That(ours.Codes[256 * b + i], Is.EqualTo(((sbyte*)eb)[4 + i]), $"block {b}: code {i}");
                    for (int g = 0; g < 16; g++) Assert.That(ours.GroupSums[16 * b + g], Is.EqualTo(((short*)(eb + 260))[g]), $"block {b}: bsum {g}");
                }
                else
                {
                    Assert.That(ours.Scales[b], Is.EqualTo(GgmlBlocks.Half(eb)), $"block {b}: d");
                    int codes = format == Q8Format.Q8_1 ? 4 : 2;
                    if (format == Q8Format.Q8_1) Assert.That(ours.Sums[b], Is.EqualTo(GgmlBlocks.Half(eb + 2)), $"block {b}: s");
                    for (int i = 0; i < 32; i++) Assert.That(ours.Codes[32 * b + i], Is.EqualTo(((sbyte*)eb)[codes + i]), $"block {b}: code {i}");
                }
            }
        }
        for (int b = 0; b < (format == Q8Format.Q8_0 ? k / 32 : 0); b++)
        {
            int sum = 0;
            for (int i = 32 * b; i < 32 * b + 32; i++) sum += ours.Codes[i];
            Assert.That(ours.BlockOffsets[b], Is.EqualTo(-128 * sum), $"block {b}: offset");
        }
    }

    private static (string Name, int Bytes, int Block) Llama(Q8Format f) => f switch
    {
        Q8Format.Q8_0 => ("q8_0", 34, 32),
        Q8Format.Q8_1 => ("q8_1", 36, 32),
        _ => ("q8_K", 292, 256),
    };

    [TestCaseSource(nameof(BlockTypes))]
    public void DotProductsMatchLlamaCppToRounding(TensorDType type)
    {
        GgmlNative.Require();
        const int rows = 8, k = 2048;
        var weights = GgmlNative.Quantize(type, GgmlBlocksTests.Weights(rows, k, 21 + (int)type), rows, k);
        var format = Q8Rows.FormatFor(type);
        var (name, bytes, block) = Llama(format);
        long rowBytes = type.ByteCount(k);
        var unpacked = new byte[GgmlDot.UnpackedBytes(type, k) + 64];
        var w = new float[k];
        for (int seed = 0; seed < 3; seed++)
        {
            var x = Activations(k, 100 + seed);
            var ours = Q8Rows.Quantize(format, x, 1, k);
            var xq = GgmlNative.QuantizeActivations(name, x, bytes, block);
            for (int r = 0; r < rows; r++)
            {
                var row = weights.AsSpan((int)(r * rowBytes), (int)rowBytes).ToArray();
                float expected = GgmlNative.VecDot(type, name, row, xq, k);
                fixed (byte* u0 = unpacked)
                fixed (byte* src = row)
                {
                    byte* u = (byte*)(((nint)u0 + 63) & ~(nint)63);
                    GgmlDot.Unpack(type, src, k, u);
                    float actual = GgmlDot.Dot(type, u, k, ours.Row(0), GgmlDot.Best);
                    // Magnitude of the terms: the fp32 rounding of summing them in two orders is a small part of it.
                    GgmlBlocks.Dequantize(type, src, w);
                    double magnitude = 0;
                    for (int i = 0; i < k; i++) magnitude += Math.Abs(w[i] * ours.Scales[i / ours.Block] * ours.Codes[i]);
                    Assert.That(actual, Is.EqualTo(expected).Within(4e-6 * magnitude + 1e-30), $"{type} row {r} seed {seed}");
                }
            }
        }
    }

    [TestCaseSource(nameof(BlockTypes))]
    public void EveryPathAndBatchSizeGivesTheSameBits(TensorDType type)
    {
        // k-quant batches: a tile of 8 rows, a tile of 4, a single row; 32-value batches: tiles of 8 rows, the last one
        // padded; one activation row: weight rows two at a time, then the last alone. The later trials' 37 activation
        // rows and 19 weight rows end the 32-value formats' blocked loop in a partial chunk of GgmlDot.ChunkRows weight
        // rows with an odd count.
        const int k = 1024;
        Assert.That(37 % GgmlDot.TileRows % 4 != 0 && 13 % GgmlDot.TileRows > 4, "the shapes must end in partial tiles (of either k-quant kind)");
        Assert.That(19 > 2 * GgmlDot.ChunkRows && 19 % GgmlDot.ChunkRows % 2 == 1, "and in a partial chunk of an odd count");
        var rng = new Random(7 + (int)type);
        var paths = new List<GgmlDot.Path> { GgmlDot.Path.Scalar };
        if (System.Runtime.Intrinsics.X86.Avx2.IsSupported && System.Runtime.Intrinsics.X86.Fma.IsSupported) paths.Add(GgmlDot.Path.Avx2);
        if (System.Runtime.Intrinsics.X86.AvxVnni.IsSupported) paths.Add(GgmlDot.Path.AvxVnni);
        var format = Q8Rows.FormatFor(type);
        int unpackedBytes = GgmlDot.UnpackedBytes(type, k);
        // Pinned, so the 64-byte-aligned start (and the untouched padding after the data) stays put between trials.
        var unpacked = GC.AllocateArray<byte>(unpackedBytes + 64, pinned: true);
        var vectorUnpacked = GC.AllocateArray<byte>(unpackedBytes + 64, pinned: true);
        for (int trial = 0; trial < 8; trial++)
        {
            int rows = trial < 4 ? 7 : 19, xRows = trial < 4 ? 13 : 37;
            // Arbitrary bytes: every code and scale pattern (finite fp16 scales, so sums stay comparable).
            long rowBytes = type.ByteCount(k);
            var weights = new byte[rowBytes * rows];
            rng.NextBytes(weights);
            FiniteScales(type, weights);
            var xf = new float[xRows * k];
            for (int t = 0; t < xRows; t++) Activations(k, 10 * trial + t).CopyTo(xf, t * k);
            var x = Q8Rows.Quantize(format, xf, xRows, k);
            var batched = new float[xRows * rows];
            var batchedNarrow = new float[xRows * rows];
            var single = new float[xRows * rows];
            var acts = Enumerable.Range(0, xRows).Select(x.Row).ToArray();
            fixed (byte* src = weights)
            fixed (float* y = batched)
            fixed (float* y1 = single)
            {
                GgmlDot.Multiply(type, src, k, 0, rows, acts, y, rows, null, new byte[GgmlDot.BufferBytes(type, k)]);
                // Where AVX-512 is on, the k-quant batches of sixteen rows take the 512-bit tile; the 256-bit ones as well,
                // on every vector path this machine has (AVX2's two-group tile is its own, in quad order).
                bool wide = MatMul.Wide;
                var narrowPaths = paths.Where(p => p != GgmlDot.Path.Scalar).ToList();
                var batchedByPath = narrowPaths.Select(_ => new float[xRows * rows]).ToList();
                try
                {
                    MatMul.Wide = false;
                    fixed (float* yn = batchedNarrow) GgmlDot.Multiply(type, src, k, 0, rows, acts, yn, rows, null, new byte[GgmlDot.BufferBytes(type, k)]);
                    for (int i = 0; i < narrowPaths.Count; i++)
                        fixed (float* yp = batchedByPath[i])
                            GgmlDot.Multiply(type, src, k, 0, rows, acts, yp, rows, null, new byte[GgmlDot.BufferBytes(type, k)], narrowPaths[i]);
                }
                finally
                {
                    MatMul.Wide = wide;
                }
                for (int t = 0; t < xRows; t++) GgmlDot.Multiply(type, src, k, 0, rows, [acts[t]], y1 + t * rows, rows, null, new byte[GgmlDot.BufferBytes(type, k)]);
                for (int j = 0; j < rows; j++)
                    fixed (byte* u0 = unpacked)
                    fixed (byte* v0 = vectorUnpacked)
                    {
                        byte* u = (byte*)(((nint)u0 + 63) & ~(nint)63), v = (byte*)(((nint)v0 + 63) & ~(nint)63);
                        GgmlDot.Unpack(type, src + j * rowBytes, k, u);
                        if (paths.Count > 1)
                        {
                            GgmlDot.UnpackVector(type, src + j * rowBytes, k, v);
                            int firstDiff = -1;
                            for (int b = 0; b < unpackedBytes && firstDiff < 0; b++) if (v[b] != u[b]) firstDiff = b;
                            Assert.That(firstDiff, Is.EqualTo(-1), $"{type}: the vector unpack differs from the scalar one at byte {firstDiff} of {unpackedBytes}");
                        }
                        for (int t = 0; t < xRows; t++)
                        {
                            int reference = Bits(GgmlDot.Dot(type, u, k, acts[t], GgmlDot.Path.Scalar));
                            foreach (var p in paths)
                            {
                                Assert.That(Bits(GgmlDot.Dot(type, u, k, acts[t], p)), Is.EqualTo(reference), $"{type} trial {trial}: {p} unpacked");
                                if (p != GgmlDot.Path.Scalar)
                                    Assert.That(Bits(GgmlDot.FusedDot(type, src + j * rowBytes, k, acts[t], p)), Is.EqualTo(reference), $"{type} trial {trial}: {p} fused");
                            }
                            Assert.That(Bits(batched[t * rows + j]), Is.EqualTo(reference), $"{type} trial {trial}: row {j} of a batch of {xRows} (wide tiles: {wide})");
                            Assert.That(Bits(batchedNarrow[t * rows + j]), Is.EqualTo(reference), $"{type} trial {trial}: row {j} of a batch of {xRows}, 256-bit tiles");
                            for (int i = 0; i < narrowPaths.Count; i++)
                                Assert.That(Bits(batchedByPath[i][t * rows + j]), Is.EqualTo(reference), $"{type} trial {trial}: row {j} of a batch of {xRows}, 256-bit tiles, {narrowPaths[i]}");
                            Assert.That(Bits(single[t * rows + j]), Is.EqualTo(reference), $"{type} trial {trial}: weight row {j} against one activation row");
                        }
                    }
            }
            GC.KeepAlive(x); // acts point into its pinned arrays
        }
    }

    private static int Bits(float f) => BitConverter.SingleToInt32Bits(f);

    /// <summary>Replaces every fp16 scale of random block bytes by a finite one in [-1, 1].</summary>
    private static void FiniteScales(TensorDType type, byte[] row)
    {
        int[] offsets = type switch
        {
            TensorDType.Q4_0 or TensorDType.Q5_0 or TensorDType.Q8_0 => [0],
            TensorDType.Q4_1 or TensorDType.Q5_1 => [0, 2],
            TensorDType.Q2_K => [80, 82],
            TensorDType.Q3_K => [108],
            TensorDType.Q4_K or TensorDType.Q5_K => [0, 2],
            _ => [208],
        };
        for (int b = 0; b < row.Length / type.BlockBytes(); b++)
            foreach (int o in offsets)
            {
                int at = b * type.BlockBytes() + o;
                var h = (Half)(((row[at] + 256 * row[at + 1]) % 2001 - 1000) / 1000f);
                BitConverter.TryWriteBytes(row.AsSpan(at, 2), h);
            }
    }
}
