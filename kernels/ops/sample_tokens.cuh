// sample_tokens: logits -> one token id per row on the GPU (greedy, or temperature -> top-k -> top-p -> min-p -> draw),
// with the engine's coin per row, so only token ids cross to the host. Mirrors Backends/Sampler.Sample (without the
// repetition penalty, which needs the host's per-sequence seen set: such rows are chosen on the host).
//
// Math (row r, V = vocab):
//   best  = argmax_i logits[i], ties to the lowest index, NaN never wins; best = 0 when no logit is > -inf
//   greedy (temperature[r] <= 0) or a non-finite max: token = best
//   p_i   = exp((logits[i] - max) / T) (fp32; NaN logits -> 0); p_best = 1 exactly, so min-p is relative to it
//   kept  = { i : p_i > 0 }
//   top-k (top_k[r] > 0): the k largest p of kept, ties broken by lower index (the CPU's sort order)
//   top-p (top_p[r] < 1): walking what top-k kept in that order, the shortest prefix whose mass reaches
//         top_p * (its mass); the token that crosses is kept
//   min-p (min_p[r] > 0): of what top-p kept, the i with p_i >= min_p (Hugging Face's order: top-k, top-p, min-p)
//   draw:  coin = coins[r] in [0, 1); r = coin * (mass of kept); the token is the first kept i
//          in INDEX order whose running mass exceeds r (the last kept index if rounding leaves r uncovered)
// Pointers:
//   tokens      [rows]  int32, written
//   coins       [rows]  fp64, read: the uniform draw in [0, 1) the engine took for the row (TokenChoice.Coin: one
//                       SamplerRng.NextDouble() per sample per step, greedy rows too), so the GPU uses the CPU's coins
//   logits      [rows, logits_stride]  fp32, read (not modified: temperature and masks are applied on the fly); only
//                       the first V of each row are candidates (V <= logits_stride: a tokenizer smaller than the LM head)
//   temperature, top_p, min_p [rows] fp32; top_k [rows] int32; read. Off values: top_k 0, top_p 1, min_p 0.
// Grid:    rows (one block per row; gridDim.x = rows, <= 2^31 - 1); Block: 512 threads (1024 spills under the 64-register cap).
// Cost:    top-k and top-p thresholds are found by binary search over the fp32 bit patterns of p (31 passes over
//          the row, each a block reduction; ~17 more over indices for ties), the draw by an ordered block scan.
//          Without top-k/top-p: three passes. Meant for one call per decode step.
// Equality with the CPU sampler: greedy is exact (same argmax and tie rule). A random draw walks the kept tokens in
//          index order on both sides (Backends/Sampler.Keep sorts its kept set by id), so the same coin gives the same
//          token up to fp rounding: the kept set at a top-p boundary and the running mass at the coin's boundary (masses
//          are summed in fp64 on both sides, in different orders).
// Empty:   rows == 0 launches nothing; V >= 1 (launcher-checked).
#pragma once

#include <climits>

#include "common.cuh"

namespace ops
{
constexpr int kSampleThreads = 512;

// Block-wide sum/max of any arithmetic type (common.cuh's block_reduce is fp32 only). Every thread gets the result;
// every thread must call it; safe to call repeatedly.
template <typename T, typename Op>
__device__ __forceinline__ T block_allreduce(T v, Op op, T identity)
{
    __shared__ T partials[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, off));
    __syncthreads();
    if (lane == 0) partials[warp] = v;
    __syncthreads();
    v = lane < warps ? partials[lane] : identity;
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, off));
    return v;
}

struct SampleRow
{
    const float* logits;
    int vocab;
    float max, inv_t, min_p;
    // top-k cut: p > k_value, or p == k_value and index < k_index. k_value = -1 keeps everything.
    float k_value;
    int k_index;
    // top-p cut, the same form.
    float p_value;
    int p_index;

    __device__ __forceinline__ float prob(int i) const
    {
        const float x = logits[i];
        return isnan(x) ? 0.f : expf((x - max) * inv_t);
    }
    __device__ __forceinline__ bool kept0(float p) const { return p > 0.f; }
    __device__ __forceinline__ bool kept1(int i, float p) const
    {
        return kept0(p) && (p > k_value || (p == k_value && i < k_index));
    }
    __device__ __forceinline__ bool kept2(int i, float p) const
    {
        return kept1(i, p) && (p > p_value || (p == p_value && i < p_index)) && p >= min_p;
    }
};

// Smallest index c in [0, V] such that at least `need` elements with p == value (and kept by `level`) have index < c.
template <typename Kept>
__device__ int tie_cutoff(const SampleRow& s, float value, int need, Kept kept)
{
    int lo = 0, hi = s.vocab; // count(< hi) >= need holds for hi = V
    while (lo < hi)
    {
        const int mid = (lo + hi) >> 1;
        int c = 0;
        for (int i = threadIdx.x; i < mid; i += blockDim.x)
        {
            const float p = s.prob(i);
            c += (p == value && kept(i, p)) ? 1 : 0;
        }
        c = block_allreduce(c, [](int a, int b) { return a + b; }, 0);
        if (c >= need) hi = mid;
        else lo = mid + 1;
    }
    return lo;
}


// ---- radix selection (sample_tokens_radix_f32): the cuts in 4 passes of 8-bit digits instead of ~31 bisection passes,
// and tie cut-offs by one ordered scan instead of ~17 passes. Probabilities are in (0, 1], so their bit patterns order
// as the values do. Masses are fixed point (p x 2^40 truncated, one integer per token, at most 2^23 tokens before the
// sum could overflow 64 bits): integer sums are exact in any order, so the shared-memory atomics that build the
// histograms give the same cut every run. A token below 2^-40 adds 0 to a mass; the CPU adds it in fp64 (a
// difference under 2^-40 x V of a mass of at least 1: it moves a top-p cut only at a boundary that close).
constexpr double kMassScale = 1099511627776.0; // 2^40

__device__ __forceinline__ unsigned long long fixed_mass(float p)
{
    return static_cast<unsigned long long>(static_cast<double>(p) * kMassScale);
}

struct RadixCut
{
    unsigned key;            // the largest key u with weight(keys >= u) >= need
    unsigned long long above; // weight of the kept keys > key
    int ties;                // kept tokens whose key == key
};

// The largest key u (a probability's bits) such that the kept tokens with key >= u weigh at least `need` (weight 1 per
// token for top-k, fixed_mass(p) for top-p). The caller guarantees the kept tokens weigh at least `need` in total.
template <typename Kept, typename Weight>
__device__ RadixCut radix_select(const SampleRow& s, unsigned long long need, Kept kept, Weight weight)
{
    __shared__ unsigned long long w_hist[256];
    __shared__ int c_hist[256];
    __shared__ unsigned s_digit;
    __shared__ unsigned long long s_above;
    __shared__ int s_ties;
    unsigned prefix = 0, mask = 0;
    unsigned long long above = 0;
    for (int shift = 24; shift >= 0; shift -= 8)
    {
        __syncthreads(); // every thread has read the previous level's (or call's) shared results
        for (int b = threadIdx.x; b < 256; b += blockDim.x)
        {
            w_hist[b] = 0;
            c_hist[b] = 0;
        }
        __syncthreads();
        for (int i = threadIdx.x; i < s.vocab; i += blockDim.x)
        {
            const float p = s.prob(i);
            if (!kept(i, p)) continue;
            const unsigned key = __float_as_uint(p);
            if ((key & mask) != prefix) continue;
            const unsigned b = (key >> shift) & 0xFFu;
            atomicAdd(&w_hist[b], weight(p));
            if (shift == 0) atomicAdd(&c_hist[b], 1);
        }
        __syncthreads();
        if (threadIdx.x == 0)
        {
            unsigned long long run = 0;
            int d = 0;
            for (int b = 255; b >= 0; --b)
            {
                if (above + run + w_hist[b] >= need)
                {
                    d = b;
                    break;
                }
                run += w_hist[b];
            }
            s_digit = static_cast<unsigned>(d);
            s_above = above + run;
            s_ties = c_hist[d];
        }
        __syncthreads();
        prefix |= s_digit << shift;
        mask |= 0xFFu << shift;
        above = s_above;
    }
    const RadixCut cut{prefix, above, s_ties};
    __syncthreads(); // s_ties read by every thread before a later call overwrites it
    return cut;
}

// tie_cutoff by one ordered scan: the smallest c such that `need` kept tokens with p == value have index < c.
template <typename Kept>
__device__ int tie_cutoff_scan(const SampleRow& s, float value, int need, Kept kept)
{
    __shared__ int s_counts[32];
    __shared__ int s_cut;
    __syncthreads(); // a previous call's s_cut has been read by every thread
    if (threadIdx.x == 0) s_cut = INT_MAX;
    int running = 0;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    for (int base = 0; base < s.vocab; base += blockDim.x)
    {
        const int i = base + threadIdx.x;
        bool hit = false;
        if (i < s.vocab)
        {
            const float p = s.prob(i);
            hit = p == value && kept(i, p);
        }
        const unsigned ballot = __ballot_sync(0xffffffffu, hit);
        const int incl = __popc(ballot & (0xffffffffu >> (31 - lane))); // hits in lanes 0..lane
        __syncthreads(); // the previous tile's s_counts are consumed; s_cut's reset is visible
        if (lane == 31) s_counts[warp] = incl;
        __syncthreads();
        int offset = 0, tile = 0;
        for (int w = 0; w < warps; ++w)
        {
            if (w < warp) offset += s_counts[w];
            tile += s_counts[w];
        }
        if (hit && running + offset + incl == need) s_cut = i + 1; // the need-th tie: one thread
        __syncthreads();
        if (s_cut != INT_MAX) break; // uniform: read after the barrier
        running += tile;
    }
    const int cut = s_cut == INT_MAX ? s.vocab : s_cut;
    __syncthreads();
    return cut;
}

template <bool RADIX>
__device__ void sample_tokens(int* tokens, const double* coins, const float* logits, int logits_stride, const float* temperature,
                              const int* top_k, const float* top_p, const float* min_p, int rows, int vocab)
{
    const int row = blockIdx.x;
    if (row >= rows) return;
    const float* lr = logits + static_cast<int64_t>(row) * logits_stride;
    const double s_coin = coins[row];

    // ---- argmax, lowest index on ties ----
    float bv = -INFINITY;
    int bi = INT_MAX;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x)
        if (lr[i] > bv)
        {
            bv = lr[i];
            bi = i;
        }
    // Reduce the value first, then the lowest index among the threads holding it.
    const float row_max = block_allreduce(bv, [](float a, float b) { return fmaxf(a, b); }, -INFINITY);
    int best = block_allreduce(bv == row_max && row_max > -INFINITY ? bi : INT_MAX, [](int a, int b) { return min(a, b); }, INT_MAX);
    if (best == INT_MAX) best = 0; // every logit -inf or NaN: the CPU's ArgMax returns 0

    const float t = temperature[row];
    if (!(t > 0.f) || !isfinite(row_max))
    {
        if (threadIdx.x == 0) tokens[row] = best;
        return;
    }

    SampleRow s{lr, vocab, row_max, 1.f / t, min_p[row] > 0.f ? min_p[row] : 0.f, -1.f, 0, -1.f, 0};
    const auto add_i = [](int a, int b) { return a + b; };
    const auto add_d = [](double a, double b) { return a + b; };

    // ---- top-k ----
    const int k = top_k[row];
    if (k > 0)
    {
        int count = 0;
        for (int i = threadIdx.x; i < vocab; i += blockDim.x) count += s.kept0(s.prob(i)) ? 1 : 0;
        count = block_allreduce(count, add_i, 0);
        if (count > k)
        {
            if constexpr (RADIX)
            {
                const RadixCut cut = radix_select(s, static_cast<unsigned long long>(k), [&](int, float p) { return s.kept0(p); },
                                                  [](float) { return 1ull; });
                const float kv = __uint_as_float(cut.key);
                s.k_index = tie_cutoff_scan(s, kv, k - static_cast<int>(cut.above), [&](int, float p) { return s.kept0(p); });
                s.k_value = kv;
            }
            else
            {
            // Largest bit pattern u with count(p >= u) >= k: the k-th largest p (positive floats order as uints).
            unsigned lo = 0, hi = 0x3F800001u;
            while (hi - lo > 1)
            {
                const unsigned mid = lo + ((hi - lo) >> 1);
                const float v = __uint_as_float(mid);
                int c = 0;
                for (int i = threadIdx.x; i < vocab; i += blockDim.x)
                {
                    const float p = s.prob(i);
                    c += (s.kept0(p) && p >= v) ? 1 : 0;
                }
                c = block_allreduce(c, add_i, 0);
                if (c >= k) lo = mid;
                else hi = mid;
            }
            const float kv = __uint_as_float(lo);
            int greater = 0;
            for (int i = threadIdx.x; i < vocab; i += blockDim.x)
            {
                const float p = s.prob(i);
                greater += (s.kept0(p) && p > kv) ? 1 : 0;
            }
            greater = block_allreduce(greater, add_i, 0);
            s.k_index = tie_cutoff(s, kv, k - greater, [&](int, float p) { return s.kept0(p); });
            s.k_value = kv;
            }
        }
    }

    // ---- top-p ----
    const float tp = top_p[row];
    if (RADIX && tp < 1.f)
    {
        unsigned long long mass = 0;
        for (int i = threadIdx.x; i < vocab; i += blockDim.x)
        {
            const float p = s.prob(i);
            if (s.kept1(i, p)) mass += fixed_mass(p);
        }
        mass = block_allreduce(mass, [](unsigned long long a, unsigned long long b) { return a + b; }, 0ull);
        // The walk stops at the first token where the kept mass reaches tp x mass (the CPU's acc >= target).
        unsigned long long need = static_cast<unsigned long long>(ceil(static_cast<double>(tp) * static_cast<double>(mass)));
        if (need < 1) need = 1;
        const auto kept1 = [&](int i, float p) { return s.kept1(i, p); };
        const RadixCut cut = radix_select(s, need, kept1, [](float p) { return fixed_mass(p); });
        const float pv = __uint_as_float(cut.key);
        const unsigned long long per = fixed_mass(pv);
        // Ties at pv are taken in index order until the running mass reaches the target (all of them when one weighs 0).
        int take = cut.ties;
        if (per > 0 && cut.above < need)
        {
            const unsigned long long n = (need - cut.above + per - 1) / per;
            take = n < static_cast<unsigned long long>(cut.ties) ? static_cast<int>(n) : cut.ties;
        }
        if (take < 1) take = 1;
        if (cut.ties > 0)
        {
            s.p_index = tie_cutoff_scan(s, pv, take, kept1);
            s.p_value = pv;
        }
    }
    else if (tp < 1.f)
    {
        double mass = 0;
        for (int i = threadIdx.x; i < vocab; i += blockDim.x)
        {
            const float p = s.prob(i);
            if (s.kept1(i, p)) mass += p;
        }
        mass = block_allreduce(mass, add_d, 0.0);
        const double target = static_cast<double>(tp) * mass;
        // Largest u with mass(p >= u) >= target: the p of the last token the sorted walk takes.
        unsigned lo = 0, hi = 0x3F800001u;
        while (hi - lo > 1)
        {
            const unsigned mid = lo + ((hi - lo) >> 1);
            const float v = __uint_as_float(mid);
            double m = 0;
            for (int i = threadIdx.x; i < vocab; i += blockDim.x)
            {
                const float p = s.prob(i);
                if (s.kept1(i, p) && p >= v) m += p;
            }
            m = block_allreduce(m, add_d, 0.0);
            if (m >= target) lo = mid;
            else hi = mid;
        }
        const float pv = __uint_as_float(lo);
        double above = 0;
        int ties = 0;
        for (int i = threadIdx.x; i < vocab; i += blockDim.x)
        {
            const float p = s.prob(i);
            if (s.kept1(i, p) && p > pv) above += p;
            if (s.kept1(i, p) && p == pv) ++ties;
        }
        above = block_allreduce(above, add_d, 0.0);
        ties = block_allreduce(ties, add_i, 0);
        // Ties at pv are taken in index order until the running mass reaches the target.
        int need = 1;
        while (need < ties && above + static_cast<double>(need) * pv < target) ++need;
        if (ties > 0)
        {
            s.p_index = tie_cutoff(s, pv, need, [&](int i, float p) { return s.kept1(i, p); });
            s.p_value = pv;
        }
    }

    // ---- draw ----
    double total = 0;
    int last = -1;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x)
    {
        const float p = s.prob(i);
        if (s.kept2(i, p))
        {
            total += p;
            last = i;
        }
    }
    total = block_allreduce(total, add_d, 0.0);
    last = block_allreduce(last, [](int a, int b) { return max(a, b); }, -1);
    if (last < 0)
    {
        if (threadIdx.x == 0) tokens[row] = best;
        return;
    }
    const double r = s_coin * total;
    // Ordered scan in tiles of blockDim.x: the first kept index whose inclusive running mass exceeds r.
    __shared__ double s_warp[32];
    __shared__ int s_found;
    if (threadIdx.x == 0) s_found = INT_MAX;
    double running = 0;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    for (int base = 0; base < vocab; base += blockDim.x)
    {
        const int i = base + threadIdx.x;
        double v = 0;
        if (i < vocab)
        {
            const float p = s.prob(i);
            if (s.kept2(i, p)) v = p;
        }
        // inclusive warp scan, then warp offsets
        double incl = v;
#pragma unroll
        for (int off = 1; off < 32; off <<= 1)
        {
            const double u = __shfl_up_sync(0xffffffffu, incl, off);
            if (lane >= off) incl += u;
        }
        __syncthreads(); // s_warp of the previous tile is consumed; s_found's init is visible
        if (lane == 31) s_warp[warp] = incl;
        __syncthreads();
        double offset = 0, tile_total = 0;
        for (int w = 0; w < warps; ++w)
        {
            if (w < warp) offset += s_warp[w];
            tile_total += s_warp[w];
        }
        if (v > 0 && running + offset + incl > r) atomicMin(&s_found, i);
        __syncthreads();
        if (s_found != INT_MAX) break; // uniform: read after the barrier
        running += tile_total;
    }
    if (threadIdx.x == 0) tokens[row] = s_found != INT_MAX ? s_found : last;
}
} // namespace ops

extern "C" __global__ void __launch_bounds__(ops::kSampleThreads)
    sample_tokens_f32(int* tokens, const double* coins, const float* logits, int logits_stride, const float* temperature,
                      const int* top_k, const float* top_p, const float* min_p, int rows, int vocab)
{
    ops::sample_tokens<false>(tokens, coins, logits, logits_stride, temperature, top_k, top_p, min_p, rows, vocab);
}

// The same contract with radix-selected cuts (4 digit passes per cut, one ordered scan per tie cut-off).
extern "C" __global__ void __launch_bounds__(ops::kSampleThreads)
    sample_tokens_radix_f32(int* tokens, const double* coins, const float* logits, int logits_stride, const float* temperature,
                            const int* top_k, const float* top_p, const float* min_p, int rows, int vocab)
{
    ops::sample_tokens<true>(tokens, coins, logits, logits_stride, temperature, top_k, top_p, min_p, rows, vocab);
}
