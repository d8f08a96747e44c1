// Paged attention and the (o, lse) merge: levels + suffix equal one softmax over all keys; special cases.
using Kernels.Runtime.Backends.Cpu;
using Kernels.Runtime.KvCache;
using Kernels.Runtime.Models;
using Kernels.Runtime.Numerics;

namespace Kernels.Tests.Backends;

public unsafe class AttentionTests
{
    private const int BlockSize = 4, Heads = 4, KvHeads = 2, D = 8;

    private static ModelConfig Config => new()
    {
        Architecture = ModelArchitecture.Llama, HiddenSize = 32, IntermediateSize = 32, NumLayers = 1, NumHeads = Heads,
        NumKvHeads = KvHeads, HeadDim = D, VocabSize = 16, MaxPositions = 64,
    };

    /// <summary>A sequence of <paramref name="length"/> positions with random keys and values (scaled to make large scores).</summary>
    private static (CpuKvStorage Storage, KvSequence Seq, float[] K, float[] V) Cache(int length, int seed, float scale = 1f)
    {
        var storage = new CpuKvStorage(Config, BlockSize);
        var pool = new KvBlockPool(64, BlockSize, storage);
        var seq = new KvSequence(pool);
        seq.Reserve(length);
        var rng = new Random(seed);
        var k = Enumerable.Range(0, length * KvHeads * D).Select(_ => (float)(rng.NextDouble() * 2 - 1) * scale).ToArray();
        var v = Enumerable.Range(0, length * KvHeads * D).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray();
        for (int p = 0; p < length; p++)
        {
            k.AsSpan(p * KvHeads * D, KvHeads * D).CopyTo(storage.Keys(0, seq.Blocks[p / BlockSize])[(p % BlockSize * KvHeads * D)..]);
            v.AsSpan(p * KvHeads * D, KvHeads * D).CopyTo(storage.Values(0, seq.Blocks[p / BlockSize])[(p % BlockSize * KvHeads * D)..]);
        }
        seq.Advance(length);
        return (storage, seq, k, v);
    }

    /// <summary>Naive double-precision softmax attention of one query head over keys [from, to].</summary>
    private static double[] Naive(float[] q, int head, float[] k, float[] v, int from, int to)
    {
        int kvh = head / (Heads / KvHeads);
        var s = new double[to - from + 1];
        for (int j = from; j <= to; j++)
        {
            double dot = 0;
            for (int i = 0; i < D; i++) dot += (double)q[head * D + i] * k[(j * KvHeads + kvh) * D + i];
            s[j - from] = dot / Math.Sqrt(D);
        }
        double max = s.Max(), sum = s.Sum(x => Math.Exp(x - max));
        var o = new double[D];
        for (int j = from; j <= to; j++)
            for (int i = 0; i < D; i++) o[i] += Math.Exp(s[j - from] - max) / sum * v[(j * KvHeads + kvh) * D + i];
        return o;
    }

    [TestCase(1f)]
    [TestCase(40f)] // scores in the hundreds: softmax must subtract the max
    public void SharedLevelPlusSuffixEqualsOneSoftmaxOverAllKeys(float scale)
    {
        int length = 13, pos = length - 1, split = 8;
        var (storage, seq, k, v) = Cache(length, 1, scale);
        var rng = new Random(2);
        var q = Enumerable.Range(0, Heads * D).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray();
        var kv = new Attention.Layer(storage, 0, BlockSize, Heads, KvHeads, D);
        var o = new float[Heads * D];
        var lse = Enumerable.Repeat(float.NegativeInfinity, Heads).ToArray();
        fixed (float* qp = q)
        fixed (float* op = o)
        fixed (float* lp = lse)
        {
            for (int kvh = 0; kvh < KvHeads; kvh++)
            {
                Attention.LevelRow[] rows = [new(0, kvh * 2), new(0, kvh * 2 + 1)];
                Attention.Level(kv, seq.Blocks.ToArray(), 0, split, kvh, rows, qp, op, lp, new float[2 * split], new float[2 * D]);
            }
            for (int h = 0; h < Heads; h++)
                Attention.Suffix(kv, seq.Blocks.ToArray(), qp, op, lp, 1, pos, split, h, null, new float[length], new float[D]);
        }
        for (int h = 0; h < Heads; h++)
        {
            var expected = Naive(q, h, k, v, 0, pos);
            for (int i = 0; i < D; i++) Assert.That(o[h * D + i], Is.EqualTo(expected[i]).Within(1e-5), $"head {h} dim {i}");
        }
    }

    [Test]
    public void SuffixHonoursTheCausalLimitAndTheWindow()
    {
        var (storage, seq, k, v) = Cache(10, 3);
        var q = Enumerable.Range(0, 3 * Heads * D).Select(i => (float)Math.Sin(i)).ToArray(); // 3 rows at positions 7, 8, 9
        var kv = new Attention.Layer(storage, 0, BlockSize, Heads, KvHeads, D);
        var o = new float[3 * Heads * D];
        var lse = Enumerable.Repeat(float.NegativeInfinity, 3 * Heads).ToArray();
        fixed (float* qp = q)
        fixed (float* op = o)
        fixed (float* lp = lse)
            for (int h = 0; h < Heads; h++) Attention.Suffix(kv, seq.Blocks.ToArray(), qp, op, lp, 3, 7, 0, h, 4, new float[10], new float[D]);
        for (int t = 0; t < 3; t++)
            for (int h = 0; h < Heads; h++)
            {
                var expected = Naive(q.AsSpan(t * Heads * D, Heads * D).ToArray(), h, k, v, 7 + t - 3, 7 + t);
                for (int i = 0; i < D; i++) Assert.That(o[(t * Heads + h) * D + i], Is.EqualTo(expected[i]).Within(1e-5));
            }
    }

    [Test]
    public void MergeWithTheEmptyStateIsTheIdentity()
    {
        float[] o = [0, 0];
        float lse = float.NegativeInfinity;
        AttentionState.Merge(o, ref lse, [1f, 2f], 0.5f);
        Assert.That(o, Is.EqualTo(new[] { 1f, 2f }));
        Assert.That(lse, Is.EqualTo(0.5f));
        AttentionState.Merge(o, ref lse, [9f, 9f], float.NegativeInfinity);
        Assert.That(o, Is.EqualTo(new[] { 1f, 2f }));
        // Two equal halves: the mean, and lse grows by ln 2.
        AttentionState.Merge(o, ref lse, [3f, 4f], 0.5f);
        Assert.That(o, Is.EqualTo(new[] { 2f, 3f }).Within(1e-6f));
        Assert.That(lse, Is.EqualTo(0.5f + MathF.Log(2)).Within(1e-6f));
    }

    /// <summary>The partial state of one query over a key set, from its definition in double: o = softmax(s) . V, lse = ln sum e^s.</summary>
    private static (double[] O, double Lse) Partial(double[] scores, double[][] values)
    {
        double max = scores.Max(), sum = scores.Sum(s => Math.Exp(s - max));
        var o = new double[values[0].Length];
        for (int j = 0; j < scores.Length; j++)
            for (int i = 0; i < o.Length; i++) o[i] += Math.Exp(scores[j] - max) / sum * values[j][i];
        return (o, max + Math.Log(sum));
    }

    // Head dims 1..17 put elements in the scalar tail (every dim that is not a multiple of 8), 8/16/64 only in the
    // vector body; the two halves get different key counts and score offsets, so their weights are far from 1/2 each
    // and a swapped pair of weights moves every element (the equal-halves case above cannot see a swap).
    [TestCase(1)]
    [TestCase(3)]
    [TestCase(7)]
    [TestCase(8)]
    [TestCase(9)]
    [TestCase(16)]
    [TestCase(17)]
    [TestCase(64)]
    [TestCase(67)]
    public void MergeOfUnequalHalvesIsTheSoftmaxOverTheUnion(int d)
    {
        var rng = new Random(d);
        foreach (var (countA, countB, offsetB) in new[] { (3, 11, 0.0), (5, 2, 2.5), (1, 1, -4.0), (20, 7, 60.0) })
        {
            int n = countA + countB;
            var scores = new double[n];
            var values = new double[n][];
            for (int j = 0; j < n; j++)
            {
                // Scores of B shifted by offsetB (60: one half holds essentially all the mass, the max-subtraction must work).
                scores[j] = (float)(rng.NextDouble() * 4 - 2 + (j >= countA ? offsetB : 0));
                values[j] = Enumerable.Range(0, d).Select(_ => (double)(float)(rng.NextDouble() * 2 - 1)).ToArray();
            }
            var a = Partial(scores[..countA], values[..countA]);
            var b = Partial(scores[countA..], values[countA..]);
            var union = Partial(scores, values);

            var o = a.O.Select(x => (float)x).ToArray();
            float lse = (float)a.Lse;
            AttentionState.Merge(o, ref lse, b.O.Select(x => (float)x).ToArray(), (float)b.Lse);
            string what = $"d={d}, halves of {countA} and {countB} keys, offset {offsetB}";
            Assert.That(lse, Is.EqualTo(union.Lse).Within(1e-5 * (1 + Math.Abs(union.Lse))), what + ": lse");
            // fp32 inputs and weights: a few ulp of |o| <= 1 per element.
            for (int i = 0; i < d; i++) Assert.That(o[i], Is.EqualTo(union.O[i]).Within(2e-6), $"{what}: element {i}");

            // The merge is symmetric: B first, then A, gives the same state.
            var o2 = b.O.Select(x => (float)x).ToArray();
            float lse2 = (float)b.Lse;
            AttentionState.Merge(o2, ref lse2, a.O.Select(x => (float)x).ToArray(), (float)a.Lse);
            for (int i = 0; i < d; i++) Assert.That(o2[i], Is.EqualTo(union.O[i]).Within(2e-6), $"{what}: element {i}, B merged with A");
        }
    }

    [Test]
    public void ScoreTilesGiveTheBitsOfOneDotAtATime()
    {
        var rng = new Random(3);
        foreach (int d in new[] { 8, 12, 24, 40, 64, 128 })
        foreach (int rows in new[] { 1, 2, 3, 4, 5, 7 })
        foreach (int n in new[] { 1, 3, 4, 7, 16 })
        {
            int stride = d + 16; // rows of a block hold other kv heads between them
            var keys = Enumerable.Range(0, n * stride).Select(_ => (float)(rng.NextDouble() * 4 - 2)).ToArray();
            var q = Enumerable.Range(0, rows * 2 * d).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray();
            var scores = new float[rows * (n + 5)];
            fixed (float* kp = keys, qp = q, sp = scores)
            {
                // query rows 2d apart, score rows n + 5 apart: any addresses work
                nint q0 = (nint)qp, s0 = (nint)sp;
                var qa = Enumerable.Range(0, rows).Select(r => q0 + r * 2 * d * sizeof(float)).ToArray();
                var sa = Enumerable.Range(0, rows).Select(r => s0 + r * (n + 5) * sizeof(float)).ToArray();
                fixed (nint* qap = qa, sap = sa)
                    Attention.ScoreRows(qap, sap, rows, kp, stride, n, d);
                for (int r = 0; r < rows; r++)
                    for (int i = 0; i < n; i++)
                    {
                        float one = Attention.Dot(qp + r * 2 * d, kp + i * stride, d);
                        Assert.That(scores[r * (n + 5) + i], Is.EqualTo(one), $"d={d} rows={rows} n={n} row {r} key {i}");
                        double exact = 0;
                        for (int c = 0; c < d; c++) exact += (double)q[r * 2 * d + c] * keys[i * stride + c];
                        Assert.That(one, Is.EqualTo(exact).Within(1e-4 * d), $"d={d}: the dot itself");
                    }
            }
        }
    }

    [Test]
    public void ValueTilesAddEachValueInOrderWithOneFusedMultiplyAdd()
    {
        var rng = new Random(4);
        foreach (int d in new[] { 8, 12, 40, 64, 128 })
        foreach (int rows in new[] { 1, 2, 3, 4, 7 })
        foreach (int n in new[] { 1, 3, 16 })
        {
            int stride = d + 16;
            var values = Enumerable.Range(0, n * stride).Select(_ => (float)(rng.NextDouble() * 4 - 2)).ToArray();
            var p = Enumerable.Range(0, rows * n).Select(_ => (float)rng.NextDouble()).ToArray();
            var o0 = Enumerable.Range(0, rows * d).Select(_ => (float)(rng.NextDouble() - 0.5)).ToArray();
            var tiled = (float[])o0.Clone();
            fixed (float* vp = values, pp = p, op = tiled)
            {
                nint p0 = (nint)pp, q0 = (nint)op;
                var pa = Enumerable.Range(0, rows).Select(r => p0 + r * n * sizeof(float)).ToArray();
                var oa = Enumerable.Range(0, rows).Select(r => q0 + r * d * sizeof(float)).ToArray();
                fixed (nint* pap = pa, oap = oa)
                    Attention.AccumulateRows(pap, oap, rows, vp, stride, n, d);
            }
            for (int r = 0; r < rows; r++)
                for (int c = 0; c < d; c++)
                {
                    float expected = o0[r * d + c];
                    for (int i = 0; i < n; i++) expected = MathF.FusedMultiplyAdd(p[r * n + i], values[i * stride + c], expected);
                    Assert.That(tiled[r * d + c], Is.EqualTo(expected), $"d={d} rows={rows} n={n} row {r} column {c}");
                }
        }
    }

    [Test]
    public void HalfRowsWidenExactly()
    {
        var rng = new Random(5);
        foreach (int d in new[] { 6, 8, 20, 64 })
        {
            int n = 5, stride = d + 4;
            var halves = Enumerable.Range(0, n * stride).Select(_ => BitConverter.HalfToUInt16Bits((Half)(rng.NextDouble() * 8 - 4))).ToArray();
            var wide = new float[n * d];
            fixed (ushort* hp = halves)
            fixed (float* wp = wide)
                Attention.Widen(hp, stride, n, d, wp);
            for (int i = 0; i < n; i++)
                for (int c = 0; c < d; c++)
                    Assert.That(wide[i * d + c], Is.EqualTo((float)BitConverter.UInt16BitsToHalf(halves[i * stride + c])), $"d={d} row {i} column {c}");
        }
    }
}
