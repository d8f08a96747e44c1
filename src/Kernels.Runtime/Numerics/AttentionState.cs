// The one (o, lse) merge: combines normalized partial attention results over disjoint key sets exactly.
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace Kernels.Runtime.Numerics;

/// <summary>
/// A partial result over a key set X is o_X = sum_j e^{s_j} v_j / sum_j e^{s_j} and lse_X = ln sum_j e^{s_j}
/// (natural log). The empty state is (o = 0, lse = -inf). Merging with it is the identity, so shared levels,
/// suffixes and splits all go through this one routine (Hydragen, split-K decode, KIVI's two parts).
/// </summary>
internal static class AttentionState
{
    /// <summary>(o, lse) := merge((o, lse), (other, otherLse)).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Merge(Span<float> o, ref float lse, ReadOnlySpan<float> other, float otherLse)
    {
        if (float.IsNegativeInfinity(otherLse)) return;
        if (float.IsNegativeInfinity(lse))
        {
            other.CopyTo(o);
            lse = otherLse;
            return;
        }
        float m = Math.Max(lse, otherLse);
        float a = MathF.Exp(lse - m), b = MathF.Exp(otherLse - m);
        float inv = 1f / (a + b);
        float wa = a * inv, wb = b * inv;
        int i = 0;
        if (Vector256.IsHardwareAccelerated) // the same two products and sum per element, 8 at a time
        {
            var va = Vector256.Create(wa);
            var vb = Vector256.Create(wb);
            for (; i + 8 <= o.Length; i += 8)
                (va * Vector256.Create(o.Slice(i, 8)) + vb * Vector256.Create(other.Slice(i, 8))).CopyTo(o.Slice(i, 8));
        }
        for (; i < o.Length; i++) o[i] = wa * o[i] + wb * other[i];
        lse = m + MathF.Log(a + b);
    }
}
