// Picks the next token from logits: repetition penalty, then greedy, or temperature -> top-k -> top-p -> min-p -> draw
// (Hugging Face's order: each filter sees what the one before it kept); and scores tokens by their log-probability.
// The host side of a step's token choice (TokenChooser), the reference the GPU's sample_tokens kernel is checked on.
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Kernels.Runtime.Backends;

internal static class Sampler
{
    /// <summary>
    /// Chooses a token from <paramref name="logits"/> (the usable vocabulary only: the caller slices off the rest),
    /// which is modified (penalties). Ties go to the lowest id.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static int Sample(Span<float> logits, TokenChoice options)
    {
        var seen = options.Seen;
        double coin = options.Coin;
        if (options.RepetitionPenalty != 1f && seen != null)
        {
            foreach (int id in seen)
            {
                if ((uint)id >= (uint)logits.Length) continue;
                float l = logits[id];
                logits[id] = l > 0 ? l / options.RepetitionPenalty : l * options.RepetitionPenalty;
            }
        }
        if (options.IsGreedy) return ArgMax(logits);

        // Softmax over temperature-scaled logits, subtracting the max (raw logits can be in the hundreds).
        int best = ArgMax(logits);
        float max = logits[best];
        if (!float.IsFinite(max)) return best;
        float invT = 1f / options.Temperature;
        var probs = new float[logits.Length];
        for (int i = 0; i < logits.Length; i++) probs[i] = float.IsNaN(logits[i]) ? 0f : MathF.Exp((logits[i] - max) * invT);
        var candidates = Keep(probs, options);
        if (candidates.Count == 0) return best;

        double total = 0;
        foreach (int i in candidates) total += probs[i];
        double r = coin * total, run = 0;
        foreach (int i in candidates)
        {
            run += probs[i];
            if (r < run) return i;
        }
        return candidates[^1];
    }

    /// <summary>
    /// The tokens the filters keep, in increasing id order: the order the draw walks them, here and in the GPU's
    /// sample_tokens kernel, so the same coin picks the same token on both (any fixed order draws the same distribution;
    /// this one makes a step's tokens independent of which side chose them). <paramref name="probs"/>: unnormalized
    /// probabilities, the most likely exactly 1 (as
    /// exp(logit - max) gives); zeros are never kept.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static List<int> Keep(float[] probs, TokenChoice options)
    {
        // The filters in Hugging Face's order: top-k, then top-p over what top-k left, then min-p over what top-p left.
        // probs of the best token is exactly 1 before normalization, and no filter drops it, so min-p is relative to it
        // whatever was dropped before (a ratio to the top does not change when the rest is renormalized).
        var candidates = new List<int>(64);
        bool sortNeeded = options.TopK > 0 || options.TopP < 1f;
        if (sortNeeded)
        {
            // Most likely first, ties to the lower id: one key per token, sorted as integers (positive floats order as
            // their bits).
            int count = 0;
            for (int i = 0; i < probs.Length; i++) if (probs[i] > 0) count++;
            var keys = new long[count];
            count = 0;
            for (int i = 0; i < probs.Length; i++)
                if (probs[i] > 0) keys[count++] = ((long)(0x7FFFFFFF - BitConverter.SingleToInt32Bits(probs[i])) << 32) | (uint)i;
            Array.Sort(keys);
            int kept = options.TopK > 0 ? Math.Min(options.TopK, keys.Length) : keys.Length;
            if (options.TopP < 1f)
            {
                double keptMass = 0;
                for (int c = 0; c < kept; c++) keptMass += probs[(int)keys[c]];
                double target = options.TopP * keptMass, acc = 0;
                int keep = 0;
                while (keep < kept)
                {
                    acc += probs[(int)keys[keep++]];
                    if (acc >= target) break; // the token that crosses P is kept
                }
                kept = keep;
            }
            for (int c = 0; c < kept; c++) candidates.Add((int)keys[c]);
            candidates.Sort();
        }
        else
        {
            for (int i = 0; i < probs.Length; i++) if (probs[i] > 0) candidates.Add(i);
        }
        if (options.MinP > 0) candidates.RemoveAll(i => probs[i] < options.MinP);
        return candidates;
    }

    /// <summary>
    /// The first index of the largest value, NaNs ignored (0 when nothing exceeds -inf): a vector pass for the maximum,
    /// then one for its first position (a 32k-vocabulary row per sequence per step).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static int ArgMax(ReadOnlySpan<float> v)
    {
        int i = 0;
        float max = float.NegativeInfinity;
        if (Avx.IsSupported && v.Length >= 16)
        {
            var m = Vector256.Create(float.NegativeInfinity);
            for (; i + 8 <= v.Length; i += 8) m = Avx.Max(Vector256.Create(v.Slice(i, 8)), m); // maxps keeps m when the value is NaN
            for (int l = 0; l < 8; l++) if (m.GetElement(l) > max) max = m.GetElement(l);
        }
        for (; i < v.Length; i++) if (v[i] > max) max = v[i];
        if (max == float.NegativeInfinity) return 0;
        i = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            var target = Vector256.Create(max);
            for (; i + 8 <= v.Length; i += 8)
            {
                uint hits = Vector256.Equals(Vector256.Create(v.Slice(i, 8)), target).ExtractMostSignificantBits();
                if (hits != 0) return i + System.Numerics.BitOperations.TrailingZeroCount(hits);
            }
        }
        for (; i < v.Length; i++) if (v[i] == max) return i;
        return 0;
    }

    /// <summary>
    /// <paramref name="token"/>'s log-probability in <paramref name="logits"/> (the usable vocabulary; NaN counts as
    /// -inf) and the <paramref name="top"/> most likely tokens with theirs, best first, ties to the lower id: the
    /// log-softmax of the raw logits, max subtracted, the partition summed in double.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static ScoredToken Score(ReadOnlySpan<float> logits, int token, int top)
    {
        if ((uint)token >= (uint)logits.Length) throw new ArgumentOutOfRangeException(nameof(token), token, $"outside the usable vocabulary [0, {logits.Length})");
        int n = Math.Min(Math.Max(top, 0), logits.Length);
        var ids = new int[n];
        var values = new float[n];
        int held = 0;
        float max = float.NegativeInfinity;
        for (int i = 0; i < logits.Length; i++)
        {
            float l = logits[i];
            if (!(l > float.NegativeInfinity)) continue; // -inf and NaN: no probability
            if (l > max) max = l;
            if (n == 0 || (held == n && !(l > values[n - 1]))) continue; // equal to the last kept: the lower id stays
            int at = held < n ? held++ : n - 1;
            while (at > 0 && l > values[at - 1])
            {
                values[at] = values[at - 1];
                ids[at] = ids[at - 1];
                at--;
            }
            values[at] = l;
            ids[at] = i;
        }
        if (max == float.NegativeInfinity) // nothing has probability: every log-probability is -inf
            return new ScoredToken(token, float.NegativeInfinity, ids[..held], values[..held]);
        double sum = 0;
        for (int i = 0; i < logits.Length; i++)
            if (logits[i] > float.NegativeInfinity) sum += Math.Exp(logits[i] - max);
        double logZ = max + Math.Log(sum);
        float LogProb(float l) => l > float.NegativeInfinity ? (float)(l - logZ) : float.NegativeInfinity;
        var topLogprobs = new float[held];
        for (int j = 0; j < held; j++) topLogprobs[j] = LogProb(values[j]);
        return new ScoredToken(token, LogProb(logits[token]), ids[..held], topLogprobs);
    }
}
