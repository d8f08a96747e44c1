// The one (o, lse) state merge on the GPU (STYLE habit 4), the device twin of Numerics/AttentionState.Merge.
//
// A partial result over a key set X is kept unnormalized while it is being built: m = max_j s_j, l = sum_j e^{s_j - m},
// acc = sum_j e^{s_j - m} v_j; then o = acc / l and lse = m + ln l (natural log, fp32). The empty state is m = -inf,
// l = 0, acc = 0, and it reads out as o = 0, lse = -inf. Merging with the empty state is the identity, and two empty
// states merge to the empty state (no -inf - -inf = NaN: the max is tested first).
//
// defines: AttnPartial<N>, attn_partial_init, attn_partial_add, attn_partial_merge, lse_of
#pragma once

#include <cmath>

template <int N>
struct AttnPartial
{
    float m, l;
    float acc[N];
};

template <int N>
__device__ __forceinline__ void attn_partial_init(AttnPartial<N>& p)
{
    p.m = -INFINITY;
    p.l = 0.f;
#pragma unroll
    for (int i = 0; i < N; ++i) p.acc[i] = 0.f;
}

// Adds one key with score s and value elements v (this thread's N of them). A score of -inf adds nothing.
template <int N>
__device__ __forceinline__ void attn_partial_add(AttnPartial<N>& p, float s, const float (&v)[N])
{
    const float m_new = fmaxf(p.m, s);
    if (m_new == -INFINITY) return;
    const float a = expf(p.m - m_new), e = expf(s - m_new); // expf(-inf) = 0 for the first key
    p.l = p.l * a + e;
#pragma unroll
    for (int i = 0; i < N; ++i) p.acc[i] = fmaf(e, v[i], p.acc[i] * a);
    p.m = m_new;
}

// p := merge(p, (m, l, acc)) over disjoint key sets.
template <int N>
__device__ __forceinline__ void attn_partial_merge(AttnPartial<N>& p, float m, float l, const float (&acc)[N])
{
    const float m_new = fmaxf(p.m, m);
    if (m_new == -INFINITY) return;
    const float a = expf(p.m - m_new), b = expf(m - m_new);
    p.l = p.l * a + l * b;
#pragma unroll
    for (int i = 0; i < N; ++i) p.acc[i] = p.acc[i] * a + acc[i] * b;
    p.m = m_new;
}

// ln(sum e^{s_j}) of a state; -inf for the empty state.
__device__ __forceinline__ float lse_of(float m, float l)
{
    return l > 0.f ? m + logf(l) : -INFINITY;
}
