// Picks the next token from logits: repetition penalty, then greedy, or temperature -> top-k -> top-p -> min-p -> draw.
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Kernels.Runtime.Engine;

public static class Sampler
{
    /// <summary>
    /// Chooses a token. <paramref name="logits"/> is modified (penalties, temperature). <paramref name="coin"/> is a
    /// uniform draw in [0, 1) that decides among the kept tokens (unused when greedy). Ties go to the lowest id.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static int Sample(Span<float> logits, SamplingOptions options, IReadOnlySet<int>? seen, double coin)
    {
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
        double sum = 0;
        for (int i = 0; i < logits.Length; i++)
        {
            float p = float.IsNaN(logits[i]) ? 0f : MathF.Exp((logits[i] - max) * invT);
            probs[i] = p;
            sum += p;
        }
        // probs of the best token is exactly 1 before normalization; min-p is relative to it.
        var candidates = new List<int>(64);
        float minKeep = options.MinP > 0 ? options.MinP : 0f;
        for (int i = 0; i < probs.Length; i++)
            if (probs[i] > 0 && probs[i] >= minKeep) candidates.Add(i);

        bool sortNeeded = options.TopK > 0 || options.TopP < 1f;
        if (sortNeeded)
        {
            candidates.Sort((a, b) => probs[b] != probs[a] ? probs[b].CompareTo(probs[a]) : a.CompareTo(b));
            if (options.TopK > 0 && candidates.Count > options.TopK) candidates.RemoveRange(options.TopK, candidates.Count - options.TopK);
            if (options.TopP < 1f)
            {
                double keptMass = candidates.Sum(i => (double)probs[i]);
                double target = options.TopP * keptMass, acc = 0;
                int keep = 0;
                while (keep < candidates.Count)
                {
                    acc += probs[candidates[keep++]];
                    if (acc >= target) break;
                }
                candidates.RemoveRange(keep, candidates.Count - keep);
            }
        }
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
}
