// y[T, N] = x[T, K] . W[N, K]^T for W4A8 (QServe) weights on the CPU: int8 activations, exact int32 accumulation, then
// the fp32 epilogue in the fixed order the GPU kernel uses (W4A8Linear's summary states the arithmetic).
using System.Buffers;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Kernels.Runtime.Models;
using Kernels.Runtime.Quantization.W4A8;

namespace Kernels.Runtime.Backends.Cpu;

/// <summary>
/// <para>
/// The integer part is computed through the identity sum_k x_q*(q - z)*s1 = s1*sum_k x_q*q - z*s1*sum_k x_q per group:
/// the unsigned 4-bit codes go straight into vpmaddubsw against the signed int8 activations (|products| fit int16),
/// vpmaddwd multiplies the int16 pair sums by the group scale s1 while widening to int32, and the zero term is one
/// integer per (token, group, channel). The result equals the GPU's int8 MMA over the wrapped w8 bytes exactly (the
/// scalar reference in the tests does it the GPU's way); being integer, it does not depend on the batch either.
/// </para>
/// <para>
/// Codes are read in place from the tile layout (W4A8Layout): the 64 bytes of lanes 4c..4c+3 of a tile hold channels
/// c, c+8 (low nibbles of alternate dwords) and c+16, c+24 (high nibbles) over the tile's 32 k; the activations are
/// permuted once per call into the same dword order (<see cref="PermutedK"/>), so each int32 lane sums one channel's
/// products and even/odd lanes separate the two channels at the end.
/// </para>
/// </summary>
internal static unsafe class W4A8Gemm
{
    /// <summary>32-channel blocks handed to one task (64 output channels, as MatMul's RowsPerTask).</summary>
    private const int BlocksPerTask = 2;

    private static readonly bool Vectorized = Avx2.IsSupported;

    /// <summary>Byte p of a tile's 64 permuted activation bytes holds k = PermutedK[p]: p = 32j + 16f' + 8e + 4b + h -> 16e + 4(2j + f') + h.</summary>
    private static readonly byte[] PermutedK = Enumerable.Range(0, 64)
        .Select(p => (byte)(16 * ((p >> 3) & 1) + 4 * (2 * (p >> 5) + ((p >> 4) & 1)) + (p & 3))).ToArray();

    /// <summary>The W4A8 linear: quantizes the rows of x (Int8Activations), multiplies, scales, adds the bias.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Multiply(ReadOnlySpan<float> x, int rows, W4A8Linear w, Span<float> y, WeightTensor? bias = null)
    {
        int n = w.OutFeatures, k = w.InFeatures;
        if (x.Length < (long)rows * k) throw new ArgumentException($"x holds {x.Length} values, {rows}x{k} needed for {w.Name}");
        if (y.Length < (long)rows * n) throw new ArgumentException($"y holds {y.Length} values, {rows}x{n} needed for {w.Name}");
        var codes = ArrayPool<sbyte>.Shared.Rent(rows * w.PaddedIn);
        var scales = new float[rows];
        var acc = ArrayPool<int>.Shared.Rent(rows * n);
        try
        {
            Array.Clear(codes, 0, rows * w.PaddedIn);
            for (int t = 0; t < rows; t++)
                scales[t] = Int8Activations.QuantizeRow(x.Slice(t * k, k), codes.AsSpan(t * w.PaddedIn, k));
            Accumulate(codes, rows, w, acc);
            float[]? b = bias?.ToFloatArray();
            for (int t = 0; t < rows; t++)
                for (int j = 0; j < n; j++)
                {
                    float v = Epilogue(acc[t * n + j], scales[t], w.OutputScales[j]);
                    y[t * n + j] = b is null ? v : v + b[j];
                }
        }
        finally
        {
            ArrayPool<sbyte>.Shared.Return(codes);
            ArrayPool<int>.Shared.Return(acc);
        }
    }

    /// <summary>y = (acc * s_x) * s_w in fp32, in this order (the GPU epilogue multiplies the same way, without FMA contraction).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Epilogue(int acc, float activationScale, float weightScale) => (float)acc * activationScale * weightScale;

    /// <summary>
    /// acc[T, N] = sum_k x_q[t,k] * w8[n,k] - zc[n] * sum_k x_q[t,k], exactly; <paramref name="codes"/> is [T, PaddedIn]
    /// int8 with zero padding.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Accumulate(ReadOnlySpan<sbyte> codes, int rows, W4A8Linear w, Span<int> acc)
    {
        int n = w.OutFeatures, kPadded = w.PaddedIn, tiles = kPadded / W4A8Layout.Tile, groups = w.Groups;
        if (codes.Length < (long)rows * kPadded) throw new ArgumentException($"codes hold {codes.Length} values, {rows}x{kPadded} needed for {w.Name}");
        if (acc.Length < (long)rows * n) throw new ArgumentException($"acc holds {acc.Length} values, {rows}x{n} needed for {w.Name}");

        // Activations permuted into the weight tiles' dword order, and each token's per-group sums for the zero term.
        var permuted = ArrayPool<sbyte>.Shared.Rent(rows * tiles * 64);
        var sums = new int[rows * groups];
        for (int t = 0; t < rows; t++)
        {
            var row = codes.Slice(t * kPadded, kPadded);
            for (int kt = 0; kt < tiles; kt++)
                for (int p = 0; p < 64; p++) permuted[(t * tiles + kt) * 64 + p] = row[kt * 32 + PermutedK[p]];
            for (int c = 0; c < kPadded; c++) sums[t * groups + Math.Min(c / w.GroupSpan, groups - 1)] += row[c];
        }

        try
        {
            fixed (sbyte* xp = permuted)
            fixed (int* ap = acc)
            {
                var job = new Job(w, xp, sums, rows, ap);
                int blocks = w.PaddedOut / W4A8Layout.Tile, tasks = (blocks + BlocksPerTask - 1) / BlocksPerTask;
                if (tasks == 1) job.Run(0, blocks);
                else WorkerTeam.For(tasks, task => job.Run(task * BlocksPerTask, Math.Min(blocks, (task + 1) * BlocksPerTask)));
            }
        }
        finally
        {
            ArrayPool<sbyte>.Shared.Return(permuted);
        }
    }

    private readonly struct Job(W4A8Linear w, sbyte* x, int[] sums, int rows, int* acc)
    {
        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        public void Run(int firstBlock, int endBlock)
        {
            int n = w.OutFeatures, tiles = w.PaddedIn / W4A8Layout.Tile, groups = w.Groups;
            int tilesPerGroup = w.GroupSpan / W4A8Layout.Tile;
            byte* codes = w.Codes.Data;
            byte* groupScales = w.GroupScaleTensor is null ? null : w.GroupScaleTensor.Data;
            Span<int> dots = stackalloc int[64];
            for (int nt = firstBlock; nt < endBlock; nt++)
            {
                byte* block = codes + (long)nt * tiles * W4A8Layout.TileBytes;
                for (int t = 0; t < rows; t += 2)
                {
                    // Two tokens per pass share each unpacked weight register (one for the last token of an odd count).
                    sbyte* x0 = x + (long)t * tiles * 64, x1 = x0 + tiles * 64;
                    bool two = t + 1 < rows;
                    if (!Vectorized)
                    {
                        BlockDotsScalar(block, x0, tiles, tilesPerGroup, groupScales, w.PaddedOut, nt, dots);
                        if (two) BlockDotsScalar(block, x1, tiles, tilesPerGroup, groupScales, w.PaddedOut, nt, dots[32..]);
                    }
                    else if (two) BlockDots<TwoTokens>(block, x0, x1, tiles, tilesPerGroup, groupScales, w.PaddedOut, nt, dots);
                    else BlockDots<OneToken>(block, x0, x0, tiles, tilesPerGroup, groupScales, w.PaddedOut, nt, dots);
                    for (int u = t; u < Math.Min(rows, t + 2); u++)
                        for (int i = 0; i < 32; i++)
                        {
                            int channel = nt * 32 + i;
                            if (channel >= n) break;
                            int total = dots[(u - t) * 32 + i];
                            for (int g = 0; g < groups; g++) total -= w.ZeroTerms[g * n + channel] * sums[u * groups + g];
                            acc[(long)u * n + channel] = total;
                        }
                }
            }
        }
    }

    /// <summary>
    /// dots[i] = sum_g s1[g, 32nt+i] * sum_{k in g} q[32nt+i, k] * x_q[k] for one 32-channel block and one token (x0),
    /// or two (x0 and x1, results in dots[32..63]) sharing each unpacked weight register.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void BlockDots<T>(byte* block, sbyte* x0, sbyte* x1, int tiles, int tilesPerGroup, byte* groupScales, int nPadded, int nt, Span<int> dots)
        where T : ITokenCount
    {
        var nibble = Vector256.Create((byte)0x0F);
        var ones = Vector256.Create((short)1);
        int groups = tiles / tilesPerGroup;
        for (int c = 0; c < 8; c++)
        {
            var low0 = Vector256<int>.Zero; // int32 lanes: even = channel c, odd = c + 8
            var high0 = Vector256<int>.Zero; // even = c + 16, odd = c + 24
            var low1 = Vector256<int>.Zero;
            var high1 = Vector256<int>.Zero;
            byte* lanes = block + 64 * c;
            for (int g = 0; g < groups; g++)
            {
                Vector256<short> scaleLow = ones, scaleHigh = ones;
                if (groupScales != null)
                {
                    // The 4 bytes at permuted column 4c are s1 of channels c, c+8, c+16, c+24 (W4A8Layout.ScaleColumn).
                    byte* s = groupScales + (long)g * nPadded + nt * 32 + 4 * c;
                    scaleLow = Vector256.Create((long)(s[0] * 0x10001L | (long)s[1] * 0x10001L << 32)).AsInt16();
                    scaleHigh = Vector256.Create((long)(s[2] * 0x10001L | (long)s[3] * 0x10001L << 32)).AsInt16();
                }
                for (int kt = g * tilesPerGroup, end = kt + tilesPerGroup; kt < end; kt++)
                {
                    byte* tile = lanes + (long)kt * W4A8Layout.TileBytes;
                    var w0 = Avx.LoadVector256(tile);
                    var w1 = Avx.LoadVector256(tile + 32);
                    var l0 = Avx2.And(w0, nibble);
                    var l1 = Avx2.And(w1, nibble);
                    var h0 = Avx2.And(Avx2.ShiftRightLogical(w0.AsUInt16(), 4).AsByte(), nibble);
                    var h1 = Avx2.And(Avx2.ShiftRightLogical(w1.AsUInt16(), 4).AsByte(), nibble);
                    Step(l0, l1, h0, h1, x0 + kt * 64, scaleLow, scaleHigh, ref low0, ref high0);
                    if (T.Two) Step(l0, l1, h0, h1, x1 + kt * 64, scaleLow, scaleHigh, ref low1, ref high1);
                }
            }
            (dots[c], dots[c + 8]) = EvenOddSums(low0);
            (dots[c + 16], dots[c + 24]) = EvenOddSums(high0);
            if (T.Two)
            {
                (dots[32 + c], dots[32 + c + 8]) = EvenOddSums(low1);
                (dots[32 + c + 16], dots[32 + c + 24]) = EvenOddSums(high1);
            }
        }
    }

    /// <summary>One tile for one token: vpmaddubsw of codes and activations, the two k halves added in int16 (|sum| &lt;= 7620), vpmaddwd by s1.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Step(Vector256<byte> l0, Vector256<byte> l1, Vector256<byte> h0, Vector256<byte> h1, sbyte* x,
        Vector256<short> scaleLow, Vector256<short> scaleHigh, ref Vector256<int> low, ref Vector256<int> high)
    {
        var a = Avx.LoadVector256(x);
        var b = Avx.LoadVector256(x + 32);
        low = Avx2.Add(low, Avx2.MultiplyAddAdjacent(Avx2.Add(Avx2.MultiplyAddAdjacent(l0, a), Avx2.MultiplyAddAdjacent(l1, b)), scaleLow));
        high = Avx2.Add(high, Avx2.MultiplyAddAdjacent(Avx2.Add(Avx2.MultiplyAddAdjacent(h0, a), Avx2.MultiplyAddAdjacent(h1, b)), scaleHigh));
    }

    // Token count of a BlockDots pass as a type, so the JIT compiles the one- and two-token loops without a branch.
    private interface ITokenCount
    {
        static abstract bool Two { get; }
    }

    private readonly struct OneToken : ITokenCount
    {
        public static bool Two => false;
    }

    private readonly struct TwoTokens : ITokenCount
    {
        public static bool Two => true;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static (int Even, int Odd) EvenOddSums(Vector256<int> v)
    {
        var s = Sse2.Add(v.GetLower(), v.GetUpper());
        s = Sse2.Add(s, Sse2.Shuffle(s, 0b01_00_11_10));
        return (s.ToScalar(), s.GetElement(1));
    }

    /// <summary>BlockDots without AVX2, element by element from the same layout.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void BlockDotsScalar(byte* block, sbyte* x, int tiles, int tilesPerGroup, byte* groupScales, int nPadded, int nt, Span<int> dots)
    {
        dots.Clear();
        for (int kt = 0; kt < tiles; kt++)
        {
            byte* tile = block + (long)kt * W4A8Layout.TileBytes;
            for (int c = 0; c < 8; c++)
                for (int p = 0; p < 64; p++)
                {
                    byte v = tile[64 * c + p];
                    int xv = x[kt * 64 + p];
                    int b = (p >> 2) & 1;
                    int low = 8 * b + c, high = 16 + 8 * b + c;
                    int g = kt / tilesPerGroup;
                    int sLow = groupScales == null ? 1 : groupScales[(long)g * nPadded + nt * 32 + W4A8Layout.ScaleColumn(low)];
                    int sHigh = groupScales == null ? 1 : groupScales[(long)g * nPadded + nt * 32 + W4A8Layout.ScaleColumn(high)];
                    dots[low] += sLow * (v & 15) * xv;
                    dots[high] += sHigh * (v >> 4) * xv;
                }
        }
    }
}
