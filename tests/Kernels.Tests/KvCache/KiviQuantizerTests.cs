// KIVI's quantizer and packed layout: round trip within s/2, constant groups, bit positions; attention over the
// quantized cache equals attention over its dequantized copy.
using Kernels.Runtime.Backends.Cpu;
using Kernels.Runtime.KvCache;
using Kernels.Runtime.Models;
using Kernels.Runtime.Quantization;

namespace Kernels.Tests.KvCache;

public unsafe class KiviQuantizerTests
{
    private const int Kvd = 32, Heads = 4, KvHeads = 2, D = 16;

    private static float[] Random(int seed, int n, float scale = 1f)
    {
        var r = new Random(seed);
        return Enumerable.Range(0, n).Select(_ => (float)(r.NextDouble() * 2 - 1) * scale).ToArray();
    }

    private static (uint[] Codes, Half[] Scales, float[] Mins) Quantize(float[] keys, float[] values, int group, int bits)
    {
        var codes = new uint[Kivi.CodeWords(Kvd, group, bits)];
        var scales = new Half[2 * Kvd];
        var mins = new float[2 * Kvd];
        fixed (float* k = keys) fixed (float* v = values) fixed (uint* c = codes) fixed (Half* s = scales) fixed (float* m = mins)
            Kivi.QuantizeBlock(k, v, Kvd, group, bits, c, s, m);
        return (codes, scales, mins);
    }

    private static (float[] Keys, float[] Values) Dequantize((uint[] Codes, Half[] Scales, float[] Mins) q, int group, int bits)
    {
        var keys = new float[group * Kvd];
        var values = new float[group * Kvd];
        fixed (float* k = keys) fixed (float* v = values) fixed (uint* c = q.Codes) fixed (Half* s = q.Scales) fixed (float* m = q.Mins)
            Kivi.DequantizeBlock(c, s, m, Kvd, group, bits, k, v);
        return (keys, values);
    }

    [TestCase(2, 16)]
    [TestCase(2, 32)]
    [TestCase(4, 32)]
    public void RoundTripIsWithinHalfAScale(int bits, int group)
    {
        var keys = Random(1, group * Kvd);
        var values = Random(2, group * Kvd, 3f);
        for (int j = 0; j < group; j++) keys[j * Kvd + 5] *= 40; // an outlier channel, as real keys have
        var q = Quantize(keys, values, group, bits);
        var (k2, v2) = Dequantize(q, group, bits);
        for (int j = 0; j < group; j++)
            for (int c = 0; c < Kvd; c++)
            {
                float ks = (float)q.Scales[c], vs = (float)q.Scales[Kvd + j * (Kvd / group) + c / group];
                int i = j * Kvd + c;
                Assert.That(Math.Abs(keys[i] - k2[i]), Is.LessThanOrEqualTo(ks / 2 + 1e-5f * (1 + Math.Abs(keys[i]))), $"key token {j} channel {c}");
                Assert.That(Math.Abs(values[i] - v2[i]), Is.LessThanOrEqualTo(vs / 2 + 1e-5f * (1 + Math.Abs(values[i]))), $"value token {j} channel {c}");
            }
        // The scale is the range over 2^B - 1 rounded up to fp16, never smaller.
        float lo = Enumerable.Range(0, group).Min(j => keys[j * Kvd + 5]), hi = Enumerable.Range(0, group).Max(j => keys[j * Kvd + 5]);
        Assert.That((float)q.Scales[5], Is.GreaterThanOrEqualTo((hi - lo) / Kivi.MaxCode(bits)).And.LessThan((hi - lo) / Kivi.MaxCode(bits) * 1.001f));
    }

    /// <summary>
    /// x = lo + (k + 1/2) * range / (2^B - 1) for every k: the half-steps of the exact fp32 scale. The stored scale is
    /// the fp16 one, rounded up, so these sit just below a half-step of it and round down; a quantizer dividing by the
    /// unrounded fp32 scale lands on the half-step itself (round-half-even then rounds k = 1 up).
    /// </summary>
    private static float[] HalfSteps(float lo, float range, int bits, int count)
    {
        int max = Kivi.MaxCode(bits);
        var xs = new float[count];
        for (int j = 0; j < count; j++)
            xs[j] = j == 0 ? lo : j == 1 ? lo + range : lo + (j - 2) % max * (range / max) + range / max / 2;
        return xs;
    }

    [TestCase(2)]
    [TestCase(4)]
    public void CodesAreTheRoundedStepsOfTheStoredFp16ScaleAndMin(int bits)
    {
        // From the definition: z = min of the group (fp32), s = the smallest fp16 >= (max - min) / (2^B - 1),
        // q = clamp(round-half-even((x - z) / s), 0, 2^B - 1) with the fp32 quotient: the GPU quantizer computes the same.
        const int group = 32;
        var rng = new Random(bits);
        var keys = new float[group * Kvd];
        var values = new float[group * Kvd];
        for (int i = 0; i < keys.Length; i++) { keys[i] = (float)(rng.NextDouble() * 2 - 1); values[i] = (float)(rng.NextDouble() * 6 - 3); }
        // Key channels 0..3 and value token 0's groups: ranges whose step is not an fp16 number, filled with half-steps.
        float[] ranges = [1f, 0.7f, 3f, 1e-3f];
        for (int c = 0; c < ranges.Length; c++)
        {
            var xs = HalfSteps(-0.25f * c, ranges[c], bits, group);
            for (int j = 0; j < group; j++) keys[j * Kvd + c] = xs[j];
        }
        values.AsSpan(0, group).Clear();
        HalfSteps(0.5f, 1f, bits, group).CopyTo(values, 0);
        var q = Quantize(keys, values, group, bits);

        int per = 32 / bits, kWords = group / per, vWords = Kvd / per, groups = Kvd / group;
        uint mask = (uint)Kivi.MaxCode(bits);
        void Check(float[] xs, Half scale, float min, Func<int, uint> code, string what)
        {
            float lo = xs.Min(), hi = xs.Max(), exact = (hi - lo) / Kivi.MaxCode(bits);
            Assert.That(min, Is.EqualTo(lo), $"{what}: z is the group's min");
            if (hi == lo) Assert.That((float)scale, Is.EqualTo(1f), $"{what}: a constant group's scale");
            else
            {
                Assert.That((float)scale, Is.GreaterThanOrEqualTo(exact), $"{what}: s >= range / (2^B - 1)");
                Assert.That((float)Half.BitDecrement(scale), Is.LessThan(exact), $"{what}: s is the smallest such fp16");
            }
            for (int j = 0; j < xs.Length; j++)
            {
                double expected = Math.Clamp(Math.Round((double)((xs[j] - min) / (float)scale), MidpointRounding.ToEven), 0, Kivi.MaxCode(bits));
                Assert.That(code(j), Is.EqualTo((uint)expected), $"{what}, element {j} = {xs[j]:R}");
            }
        }
        for (int c = 0; c < Kvd; c++)
        {
            var xs = Enumerable.Range(0, group).Select(j => keys[j * Kvd + c]).ToArray();
            Check(xs, q.Scales[c], q.Mins[c], j => (q.Codes[c * kWords + j / per] >> (bits * (j % per))) & mask, $"key channel {c}");
        }
        for (int j = 0; j < group; j++)
            for (int g = 0; g < groups; g++)
            {
                var xs = values.AsSpan(j * Kvd + g * group, group).ToArray();
                int p = Kvd + j * groups + g;
                Check(xs, q.Scales[p], q.Mins[p], c => (q.Codes[Kvd * kWords + j * vWords + (g * group + c) / per] >> (bits * ((g * group + c) % per))) & mask,
                    $"value token {j} group {g}");
            }
    }

    [TestCase(2)]
    [TestCase(4)]
    public void ConstantGroupsReconstructExactlyWithoutNaN(int bits)
    {
        var keys = Enumerable.Repeat(0.1f, 32 * Kvd).ToArray();
        var values = new float[32 * Kvd];
        var q = Quantize(keys, values, 32, bits);
        Assert.That(q.Codes, Is.All.EqualTo(0u));
        var (k2, v2) = Dequantize(q, 32, bits);
        Assert.That(k2, Is.All.EqualTo(0.1f));
        Assert.That(v2, Is.All.EqualTo(0f));
    }

    [Test]
    public void CodesPackLowestIndexInTheLeastSignificantBits()
    {
        // Key channel 0: token 0 at the maximum, the rest at the minimum -> word 0 of channel 0 is exactly code 3.
        var keys = new float[32 * Kvd];
        keys[0] = 1f;
        var values = new float[32 * Kvd];
        values[Kvd + 1] = 1f; // value token 1, channel 1 -> its word holds 3 << 2
        var q = Quantize(keys, values, 32, 2);
        Assert.That(q.Codes[0], Is.EqualTo(3u), "keys: channel 0, tokens 0-15");
        Assert.That(q.Codes[1], Is.EqualTo(0u), "keys: channel 0, tokens 16-31");
        int valueWords = Kvd * 32 / 16;
        Assert.That(q.Codes[valueWords + Kvd / 16], Is.EqualTo(3u << 2), "values: token 1, channels 0-15");
    }

    [Test]
    public void UnknownFormatsAndBadGroupsNameTheirArgument()
    {
        var e = Assert.Throws<ArgumentException>(() => KvCacheFormat.ParseKind("kivi3"));
        Assert.That(e!.ParamName, Is.EqualTo(nameof(KvCacheFormat.Kind)));
        e = Assert.Throws<ArgumentException>(() => new KvCacheFormat { Kind = KvCacheKind.Kivi2, Group = 24 }.Validate(Kvd, D));
        Assert.That(e!.ParamName, Is.EqualTo(nameof(KvCacheFormat.Group)));
        e = Assert.Throws<ArgumentException>(() => new KvCacheFormat { Kind = KvCacheKind.Kivi2, Group = 64 }.Validate(Kvd, D));
        Assert.That(e!.ParamName, Is.EqualTo(nameof(KvCacheFormat.Group)));
    }

    private static ModelConfig Config => new()
    {
        Architecture = ModelArchitecture.Llama, HiddenSize = 64, IntermediateSize = 32, NumLayers = 1, NumHeads = Heads,
        NumKvHeads = KvHeads, HeadDim = D, VocabSize = 16, MaxPositions = 256,
    };

    /// <summary>Naive double-precision attention of one query head over keys [0, pos].</summary>
    private static double[] Naive(float[] q, int head, float[] k, float[] v, int pos)
    {
        int kvh = head / (Heads / KvHeads);
        var s = new double[pos + 1];
        for (int j = 0; j <= pos; j++)
        {
            double dot = 0;
            for (int i = 0; i < D; i++) dot += (double)q[head * D + i] * k[j * Kvd + kvh * D + i];
            s[j] = dot / Math.Sqrt(D);
        }
        double max = s.Max(), sum = s.Sum(x => Math.Exp(x - max));
        var o = new double[D];
        for (int j = 0; j <= pos; j++)
            for (int i = 0; i < D; i++) o[i] += Math.Exp(s[j] - max) / sum * v[j * Kvd + kvh * D + i];
        return o;
    }

    [TestCase(KvCacheKind.Kivi2)]
    [TestCase(KvCacheKind.Kivi4)]
    public void AttentionOverTheQuantizedCacheEqualsAttentionOverItsDequantizedCopy(KvCacheKind kind)
    {
        const int group = 16, window = 20, length = 75, pos = length - 1, shared = 32;
        var format = new KvCacheFormat { Kind = kind, Group = group, Window = window };
        var storage = new CpuKvStorage(Config, group, format);
        var costs = new KvBlockCosts(storage.FullBlockBytes + storage.CompactBlockBytes, storage.CompactBlockBytes, 3);
        var pool = new KvBlockPool(64 * costs.FullBytes, group, storage, costs);
        var seq = new KvSequence(pool);
        seq.Reserve(length);
        var keys = Random(3, length * Kvd, 2f);
        var values = Random(4, length * Kvd);
        for (int p = 0; p < length; p++)
            storage.WriteRow(0, seq.Blocks[p / group], p % group, keys.AsSpan(p * Kvd, Kvd), values.AsSpan(p * Kvd, Kvd));
        seq.Advance(length);
        var kv = new Attention.Layer(storage, 0, group, Heads, KvHeads, D);
        int quantizedEnd = kv.QuantizedEnd(pos, 0); // blocks ending at or before 75 - 20 = 55: three blocks, 48 tokens
        Assert.That(quantizedEnd, Is.EqualTo(48));
        for (int b = 0; b < quantizedEnd / group; b++)
        {
            storage.Quantize(0, seq.Blocks[b]);
            pool.Compact(seq.Blocks[b]);
        }
        Assert.That(storage.HasFullRows(seq.Blocks[0]), Is.False, "a compact block gives its fp16 rows back");

        // The reference cache: quantized blocks dequantized, the window rounded to fp16 as stored.
        var refK = keys.Select(x => (float)(Half)x).ToArray();
        var refV = values.Select(x => (float)(Half)x).ToArray();
        for (int b = 0; b < quantizedEnd / group; b++)
        {
            var k = new float[group * Kvd];
            var v = new float[group * Kvd];
            fixed (float* kp = k) fixed (float* vp = v)
                Kivi.DequantizeBlock(storage.Codes(0, seq.Blocks[b]), storage.Scales(0, seq.Blocks[b]), storage.Mins(0, seq.Blocks[b]), Kvd, group, format.Bits, kp, vp);
            k.CopyTo(refK, b * group * Kvd);
            v.CopyTo(refV, b * group * Kvd);
        }
        Assert.That(refK.Zip(keys).Max(t => Math.Abs(t.First - t.Second)), Is.GreaterThan(1e-3f), "the quantized part must differ from the fp32 keys");

        var q = Random(5, Heads * D);
        var blocks = seq.Blocks.ToArray();
        foreach (bool level in new[] { false, true })
        {
            var o = new float[Heads * D];
            var lse = Enumerable.Repeat(float.NegativeInfinity, Heads).ToArray();
            fixed (float* qp = q) fixed (float* op = o) fixed (float* lp = lse)
            {
                if (level) // a shared level over the first two blocks, then the suffix
                    for (int kvh = 0; kvh < KvHeads; kvh++)
                    {
                        Attention.LevelRow[] rows = [new(0, kvh * 2, quantizedEnd), new(0, kvh * 2 + 1, quantizedEnd)];
                        Attention.Level(kv, blocks, 0, shared, kvh, rows, qp, op, lp, new float[2 * shared], new float[2 * D]);
                    }
                for (int h = 0; h < Heads; h++)
                    Attention.Suffix(kv, blocks, qp, op, lp, 1, pos, level ? shared : 0, h, null, new float[length], new float[D], quantizedEnd / group);
            }
            for (int h = 0; h < Heads; h++)
            {
                var expected = Naive(q, h, refK, refV, pos);
                for (int i = 0; i < D; i++) Assert.That(o[h * D + i], Is.EqualTo(expected[i]).Within(1e-5), $"level {level}, head {h}, dim {i}");
            }
        }
    }
}
