// kivi: KIVI 2/4-bit KV cache on the GPU: quantize full blocks into the packed layout, decode attention over them with
// the dequantization fused into the dot products (one split per KV block), and the (o, lse) merge of the splits.
// Verified against the CPU reference on an H200 (kernels-bench verify, 2026-11-26); about 0.1x fp16 SDPA so far: the
// per-block partials written and merged cost as much as reading the 2-bit cache.
//
// Layout (identical to src/Kernels.Runtime/Quantization/Kivi.cs; per layer, compact block `id` of G tokens,
// kvd = kv_heads * head_dim channels, per = 32 / bits codes a uint32, lowest index in the least significant bits):
//   codes  uint32 [num_ids, 2 * kvd * G / per]: keys per channel (channel c, token j at word c * (G / per) + j / per,
//          bits bits * (j % per)), then values per token (token j, channel c at word kvd * G / per + j * (kvd / per)
//          + c / per, bits bits * (c % per)).
//   scales fp16 [num_ids, 2 * kvd], mins fp32 [num_ids, 2 * kvd]: keys' per channel at [c]; values' of token j,
//          group g (channels g*G .. g*G+G-1) at [kvd + j * (kvd / G) + g].
// Quantizer: z = min, s = (max - min) / (2^bits - 1) rounded up to fp16 (1 for a constant group), q = clamp(rint((x -
//   z) / s), 0, 2^bits - 1), x^ = q * s + z: the CPU's math (IEEE division, round-half-even), so codes should match.
//
// kivi_quantize_block_f32(codes, scales, mins, keys, values, block_ids, sources, num_blocks, kvd, group, bits)
//   keys, values fp16 [*, G, kvd]: the full-precision rows of the blocks to compact; block i is read from block
//   sources[i] of them (the paged slots; i when sources is null) and written to compact id block_ids[i]. Grid num_blocks, block 256 (any). Thread per packed word: no atomics.
// kivi_decode_attention_f32(partial_o, partial_lse, q, codes, scales, mins, block_tables, num_compact, num_seqs,
//   max_blocks, heads, kv_heads, head_dim, group, bits)
//   q fp32 [num_seqs, heads, head_dim] (one decode row per sequence); block_tables int [num_seqs, max_blocks];
//   sequence s reads its first num_compact[s] blocks quantized. Output per (s, head, block b): the normalized partial
//   partial_o [num_seqs, heads, max_blocks, head_dim] and its natural-log partial_lse [.., max_blocks]; b >=
//   num_compact[s] gives the empty state (o = 0, lse = -inf). Grid (num_seqs, heads, max_blocks), block G threads
//   (one per token; G % 32 == 0, G <= KIVI_MAX_GROUP = 1024), no dynamic shared memory (a static KIVI_MAX_GROUP floats).
// kivi_merge_partials_f32(o, lse, partial_o, partial_lse, num_seqs, heads, max_blocks, head_dim)
//   (o, lse) [num_seqs, heads, head_dim] / [num_seqs, heads] := merge of (o, lse) with every split (the CPU's
//   AttentionState.Merge, in one pass); so the fp16 window's partial can be merged before or after. Grid (num_seqs,
//   heads), block any.
#pragma once

#include <cuda_fp16.h>
#include <stdint.h>

#include "common.cuh"
#include "mma.cuh" // cp_async16_zfill

// Largest G the decode kernel takes (its block is G threads; OpsLaunchPlans.KiviMaxGroup mirrors it).
#define KIVI_MAX_GROUP 1024

namespace ops
{
__device__ __forceinline__ uint32_t kivi_code(const uint32_t* words, int index, int bits)
{
    const int per = 32 / bits;
    return (words[index / per] >> (bits * (index % per))) & ((1u << bits) - 1u);
}

// The guarded (scale, min) of a group; the scale is the fp16 value that is stored.
__device__ __forceinline__ void kivi_group_parameters(float lo, float hi, int bits, __half* scale, float* min)
{
    const float exact = (hi - lo) / static_cast<float>((1 << bits) - 1);
    *scale = exact > 0.0f ? __float2half_ru(exact) : __float2half(1.0f);
    *min = lo;
}

__device__ __forceinline__ uint32_t kivi_encode(float x, float scale, float min, int bits)
{
    const float q = rintf((x - min) / scale);
    return static_cast<uint32_t>(fminf(fmaxf(q, 0.0f), static_cast<float>((1 << bits) - 1)));
}

__device__ void kivi_quantize_block(uint32_t* codes, __half* scales, float* mins, const __half* keys, const __half* values,
                                    const int* block_ids, const int* sources, int i, int kvd, int group, int bits)
{
    const int per = 32 / bits, k_words = group / per, v_words = kvd / per, groups = kvd / group;
    const int64_t id = block_ids[i];
    const int64_t source = sources != nullptr ? sources[i] : i; // which [group, kvd] block of keys / values
    const __half* k = keys + source * group * kvd;
    const __half* v = values + source * group * kvd;
    uint32_t* c_out = codes + id * (2 * kvd * k_words);
    __half* s_out = scales + id * 2 * kvd;
    float* m_out = mins + id * 2 * kvd;
    for (int t = threadIdx.x; t < kvd * k_words; t += blockDim.x) // keys: per channel over the block's tokens
    {
        const int c = t / k_words, w = t % k_words;
        float lo = INFINITY, hi = -INFINITY;
        for (int j = 0; j < group; j++)
        {
            const float x = __half2float(k[static_cast<int64_t>(j) * kvd + c]);
            lo = fminf(lo, x);
            hi = fmaxf(hi, x);
        }
        __half s;
        float z;
        kivi_group_parameters(lo, hi, bits, &s, &z);
        const float sf = __half2float(s);
        uint32_t word = 0;
        for (int e = 0; e < per; e++)
            word |= kivi_encode(__half2float(k[static_cast<int64_t>(w * per + e) * kvd + c]), sf, z, bits) << (bits * e);
        c_out[c * k_words + w] = word;
        if (w == 0)
        {
            s_out[c] = s;
            m_out[c] = z;
        }
    }
    uint32_t* v_codes = c_out + kvd * k_words;
    for (int t = threadIdx.x; t < group * v_words; t += blockDim.x) // values: per token over groups of G channels
    {
        const int j = t / v_words, w = t % v_words, c0 = w * per, g = c0 / group;
        const __half* row = v + static_cast<int64_t>(j) * kvd;
        float lo = INFINITY, hi = -INFINITY;
        for (int c = g * group; c < (g + 1) * group; c++)
        {
            lo = fminf(lo, __half2float(row[c]));
            hi = fmaxf(hi, __half2float(row[c]));
        }
        __half s;
        float z;
        kivi_group_parameters(lo, hi, bits, &s, &z);
        const float sf = __half2float(s);
        uint32_t word = 0;
        for (int e = 0; e < per; e++) word |= kivi_encode(__half2float(row[c0 + e]), sf, z, bits) << (bits * e);
        v_codes[j * v_words + w] = word;
        if (c0 % group == 0)
        {
            s_out[kvd + j * groups + g] = s;
            m_out[kvd + j * groups + g] = z;
        }
    }
}

__device__ void kivi_decode_attention(float* partial_o, float* partial_lse, const float* q, const uint32_t* codes,
                                      const __half* scales, const float* mins, const int* block_tables, const int* num_compact,
                                      int max_blocks, int heads, int kv_heads, int head_dim, int group, int bits)
{
    __shared__ float weights[KIVI_MAX_GROUP]; // [group]: static, so the launch needs no dynamic shared memory
    const int seq = blockIdx.x, head = blockIdx.y, b = blockIdx.z, j = threadIdx.x;
    const int64_t out = (static_cast<int64_t>(seq) * heads + head) * max_blocks + b;
    if (b >= num_compact[seq]) // the empty state: merging it changes nothing
    {
        for (int i = threadIdx.x; i < head_dim; i += blockDim.x) partial_o[out * head_dim + i] = 0.0f;
        if (threadIdx.x == 0) partial_lse[out] = -INFINITY;
        return;
    }
    const int per = 32 / bits, kvd = kv_heads * head_dim, k_words = group / per, v_words = kvd / per, groups = kvd / group;
    const int c0 = head / (heads / kv_heads) * head_dim;
    const int64_t id = block_tables[static_cast<int64_t>(seq) * max_blocks + b];
    const uint32_t* c_in = codes + id * (2 * kvd * k_words);
    const __half* s_in = scales + id * 2 * kvd;
    const float* m_in = mins + id * 2 * kvd;
    const float* qr = q + (static_cast<int64_t>(seq) * heads + head) * head_dim;

    // Score of token j: sum_c q_c (s_c code_cj + z_c), dequantized in registers.
    float score = 0.0f;
    for (int i = 0; i < head_dim; i++)
    {
        const int c = c0 + i;
        score = fmaf(qr[i], fmaf(__half2float(s_in[c]), static_cast<float>(kivi_code(c_in + c * k_words, j, bits)), m_in[c]), score);
    }
    score *= 1.0f / sqrtf(static_cast<float>(head_dim));
    const float max = block_reduce_max(score);
    const float e = expf(score - max);
    const float sum = block_reduce_sum(e);
    weights[j] = e / sum;
    __syncthreads();

    // Output channel i: sum_j p_j (s_jg code_jc + z_jg).
    const uint32_t* v_codes = c_in + kvd * k_words;
    for (int i = threadIdx.x; i < head_dim; i += blockDim.x)
    {
        const int c = c0 + i;
        float acc = 0.0f;
        for (int t = 0; t < group; t++)
        {
            const int g = kvd + t * groups + c / group;
            acc = fmaf(weights[t], fmaf(__half2float(s_in[g]), static_cast<float>(kivi_code(v_codes + t * v_words, c, bits)), m_in[g]), acc);
        }
        partial_o[out * head_dim + i] = acc;
    }
    if (threadIdx.x == 0) partial_lse[out] = max + logf(sum);
}

__device__ void kivi_merge_partials(float* o, float* lse, const float* partial_o, const float* partial_lse, int heads,
                                    int max_blocks, int head_dim)
{
    const int64_t row = static_cast<int64_t>(blockIdx.x) * heads + blockIdx.y;
    const float* pl = partial_lse + row * max_blocks;
    float m = lse[row];
    for (int b = 0; b < max_blocks; b++) m = fmaxf(m, pl[b]);
    if (m == -INFINITY) return; // every part empty
    const float w0 = lse[row] == -INFINITY ? 0.0f : expf(lse[row] - m);
    float total = w0;
    for (int b = 0; b < max_blocks; b++) total += expf(pl[b] - m);
    for (int i = threadIdx.x; i < head_dim; i += blockDim.x)
    {
        float acc = w0 == 0.0f ? 0.0f : w0 * o[row * head_dim + i];
        for (int b = 0; b < max_blocks; b++)
            acc = fmaf(expf(pl[b] - m), partial_o[(row * max_blocks + b) * head_dim + i], acc);
        o[row * head_dim + i] = acc / total;
    }
    __syncthreads(); // every thread read lse[row] before it changes
    if (threadIdx.x == 0) lse[row] = m + logf(total);
}
} // namespace ops

extern "C" __global__ void kivi_quantize_block_f32(uint32_t* codes, __half* scales, float* mins, const __half* keys,
                                                   const __half* values, const int* block_ids, const int* sources,
                                                   int num_blocks, int kvd, int group, int bits)
{
    if (blockIdx.x < num_blocks)
        ops::kivi_quantize_block(codes, scales, mins, keys, values, block_ids, sources, blockIdx.x, kvd, group, bits);
}

extern "C" __global__ void kivi_decode_attention_f32(float* partial_o, float* partial_lse, const float* q, const uint32_t* codes,
                                                     const __half* scales, const float* mins, const int* block_tables,
                                                     const int* num_compact, int num_seqs, int max_blocks, int heads,
                                                     int kv_heads, int head_dim, int group, int bits)
{
    if (blockIdx.x < num_seqs)
        ops::kivi_decode_attention(partial_o, partial_lse, q, codes, scales, mins, block_tables, num_compact, max_blocks, heads,
                                   kv_heads, head_dim, group, bits);
}

extern "C" __global__ void kivi_merge_partials_f32(float* o, float* lse, const float* partial_o, const float* partial_lse,
                                                   int num_seqs, int heads, int max_blocks, int head_dim)
{
    if (blockIdx.x < num_seqs) ops::kivi_merge_partials(o, lse, partial_o, partial_lse, heads, max_blocks, head_dim);
}

// ---- kivi_decode_attention_split_b{2,4}_hd{64,128}: the FlashDecoding form ---------------------------------------------
// The math and the partial layout of kivi_decode_attention_f32, with the partials per split of the compact blocks
// instead of per block (so kivi_merge_partials_f32 merges `splits` of them, passed as its max_blocks), and one CTA per
// (kv head, sequence, split) holding every query head of the GQA group: each code word is read once for the group.
//   kivi_decode_attention_split_b<B>_hd<D>(partial_o, partial_lse, q, codes, scales, mins, block_tables, num_compact,
//       num_seqs, max_blocks, heads, kv_heads, head_dim, group, blocks_per_split)
//   partial_o [num_seqs, heads, splits, D], partial_lse [num_seqs, heads, splits] (splits = gridDim.z): split z covers
//   compact blocks [z * blocks_per_split, min((z + 1) * blocks_per_split, num_compact[s])); an empty split writes the
//   empty state. Grid (kv_heads, num_seqs, splits), block 128. Preconditions (launcher-checked): head_dim == D, G in
//   {32, 64, 128}, blocks_per_split a multiple of 128 / G, heads / kv_heads <= 8.
// Tiles of 128 tokens (128 / G blocks): the key and value code words go through a two-stage cp.async pipeline (16-byte
// chunks: a block's key words for the head are contiguous, a token's value words too); scales and mins are read per
// tile. Scores: thread t takes token t, sum_c q_c fmaf(s_c, code, z_c) in the reference's order (then x 1/sqrt(D)),
// for every query head; softmax per head and tile by a warp; values: thread c takes channel c.
// Numerics: the scores are the per-block kernel's bit for bit; the values accumulate online (one rescale per tile)
// where the per-block kernel normalizes first: results differ by rounding (verify: KiviAttentionTol).
namespace ops
{
constexpr int kKiviSplitThreads = 128, kKiviTileTokens = 128, kKiviMaxGqa = 8;

template <int BITS, int D>
struct KiviSplitSmem
{
    static constexpr int kPer = 32 / BITS;
    static constexpr int kWords = kKiviTileTokens * D / kPer; // key (or value) code words of one tile for one kv head
    uint32_t k[2][kWords];
    uint32_t v[2][kWords];
    __half ks[kKiviTileTokens / 32][D]; // per block of the tile (at most 4 blocks: G >= 32)
    float km[kKiviTileTokens / 32][D];
    __half vs[kKiviTileTokens][D / 32]; // per token, per group of G channels inside the head (at most D / 32 of them)
    float vm[kKiviTileTokens][D / 32];
    float q[kKiviMaxGqa][D];
    float p[kKiviMaxGqa][kKiviTileTokens];
    float m[kKiviMaxGqa], l[kKiviMaxGqa], alpha[kKiviMaxGqa];
};

template <int BITS, int D>
__device__ __forceinline__ void kivi_decode_attention_split(float* partial_o, float* partial_lse, const float* q, const uint32_t* codes,
                                                            const __half* scales, const float* mins, const int* block_tables,
                                                            const int* num_compact, int max_blocks, int heads, int kv_heads, int group,
                                                            int blocks_per_split, KiviSplitSmem<BITS, D>& sm)
{
    constexpr int PER = 32 / BITS, MASK = (1 << BITS) - 1;
    const int kvh = blockIdx.x, seq = blockIdx.y, split = blockIdx.z, splits = gridDim.z;
    const int gq = heads / kv_heads, kvd = kv_heads * D, c0 = kvh * D;
    const int tile_blocks = kKiviTileTokens / group, k_words = group / PER; // key words per channel of one block
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int b_begin = split * blocks_per_split;
    const int b_end = min(num_compact[seq], b_begin + blocks_per_split);
    const int tiles = b_end > b_begin ? (b_end - b_begin + tile_blocks - 1) / tile_blocks : 0;
    const int* table = block_tables + static_cast<int64_t>(seq) * max_blocks;
    const int64_t block_words = 2LL * kvd * k_words;
    const float scale = 1.0f / sqrtf(static_cast<float>(D));

    for (int i = tid; i < gq * D; i += kKiviSplitThreads)
        sm.q[i / D][i % D] = q[(static_cast<int64_t>(seq) * heads + kvh * gq + i / D) * D + i % D];
    if (tid < kKiviMaxGqa)
    {
        sm.m[tid] = -INFINITY;
        sm.l[tid] = 0.f;
    }

    // Code words of tile `tile` into stage `st`: per block, its D * k_words key words (contiguous from channel c0) and
    // each token's D / PER value words (contiguous from channel c0); blocks past b_end are zero-filled.
    auto load_codes = [&](int tile, int st) {
        constexpr int KCH = kKiviTileTokens * D / PER / 4; // 16-byte chunks of the tile's key words
        for (int ch = tid; ch < KCH; ch += kKiviSplitThreads)
        {
            const int word = ch * 4, bi = word / (D * k_words), within = word % (D * k_words);
            const int b = b_begin + tile * tile_blocks + bi;
            const bool ok = b < b_end;
            const uint32_t* src = ok ? codes + table[b] * block_words + static_cast<int64_t>(c0) * k_words + within : codes;
            cp_async16_zfill(&sm.k[st][word], src, ok ? 16 : 0);
        }
        constexpr int VCH = kKiviTileTokens * D / PER / 4;
        for (int ch = tid; ch < VCH; ch += kKiviSplitThreads)
        {
            const int word = ch * 4, t = word / (D / PER), within = word % (D / PER);
            const int b = b_begin + tile * tile_blocks + t / group, j = t % group;
            const bool ok = b < b_end;
            const uint32_t* src = ok ? codes + table[b] * block_words + static_cast<int64_t>(kvd) * k_words + static_cast<int64_t>(j) * (kvd / PER) + c0 / PER + within
                                     : codes;
            cp_async16_zfill(&sm.v[st][word], src, ok ? 16 : 0);
        }
        cp_async_commit();
    };

    float acc[kKiviMaxGqa];
#pragma unroll
    for (int h = 0; h < kKiviMaxGqa; ++h) acc[h] = 0.f;
    const int groups_in_head = D >= group ? D / group : 1;

    if (tiles > 0) load_codes(0, 0);
    for (int tile = 0; tile < tiles; ++tile)
    {
        const int st = tile & 1;
        __syncthreads(); // the previous tile is consumed: its scales and the other stage may be overwritten
        // Scales and mins of the tile (plain loads; small next to the codes).
        for (int i = tid; i < tile_blocks * D; i += kKiviSplitThreads)
        {
            const int bi = i / D, c = i % D, b = b_begin + tile * tile_blocks + bi;
            const int64_t id = b < b_end ? table[b] : -1;
            sm.ks[bi][c] = id >= 0 ? scales[id * 2 * kvd + c0 + c] : __float2half(0.f);
            sm.km[bi][c] = id >= 0 ? mins[id * 2 * kvd + c0 + c] : 0.f;
        }
        for (int i = tid; i < kKiviTileTokens * groups_in_head; i += kKiviSplitThreads)
        {
            const int t = i / groups_in_head, g = i % groups_in_head, b = b_begin + tile * tile_blocks + t / group, j = t % group;
            const int64_t id = b < b_end ? table[b] : -1;
            const int64_t at = id * 2 * kvd + kvd + static_cast<int64_t>(j) * (kvd / group) + c0 / group + g;
            sm.vs[t][g] = id >= 0 ? scales[at] : __float2half(0.f);
            sm.vm[t][g] = id >= 0 ? mins[at] : 0.f;
        }
        if (tile + 1 < tiles)
        {
            load_codes(tile + 1, st ^ 1); // that stage was consumed before the barrier above
            cp_async_wait<1>();
        }
        else
            cp_async_wait<0>();
        __syncthreads();

        // ---- scores: thread t = token t of the tile ----
        {
            const int t = tid, bi = t / group, j = t % group;
            const bool ok = b_begin + tile * tile_blocks + bi < b_end;
            float s[kKiviMaxGqa];
#pragma unroll
            for (int h = 0; h < kKiviMaxGqa; ++h) s[h] = 0.f;
            const uint32_t* kw = &sm.k[st][bi * D * k_words + j / PER];
            const int shift = BITS * (j % PER);
#pragma unroll 4
            for (int c = 0; c < D; ++c)
            {
                const float code = static_cast<float>((kw[c * k_words] >> shift) & MASK);
                const float x = fmaf(__half2float(sm.ks[bi][c]), code, sm.km[bi][c]);
#pragma unroll
                for (int h = 0; h < kKiviMaxGqa; ++h)
                    if (h < gq) s[h] = fmaf(sm.q[h][c], x, s[h]);
            }
#pragma unroll
            for (int h = 0; h < kKiviMaxGqa; ++h)
                if (h < gq) sm.p[h][t] = ok ? s[h] * scale : -INFINITY;
        }
        __syncthreads();

        // ---- softmax of the tile, warp w for heads w, w + 4 ----
        for (int h = warp; h < gq; h += kKiviSplitThreads / 32)
        {
            float v[kKiviTileTokens / 32], tmax = -INFINITY;
#pragma unroll
            for (int e = 0; e < kKiviTileTokens / 32; ++e) tmax = fmaxf(tmax, v[e] = sm.p[h][lane + 32 * e]);
            tmax = warp_reduce(tmax, MaxOp{});
            const float m_old = sm.m[h], m_new = fmaxf(m_old, tmax);
            float sum = 0.f;
#pragma unroll
            for (int e = 0; e < kKiviTileTokens / 32; ++e)
            {
                const float p = m_new == -INFINITY ? 0.f : expf(v[e] - m_new);
                sm.p[h][lane + 32 * e] = p;
                sum += p;
            }
            sum = warp_reduce(sum, SumOp{});
            if (lane == 0)
            {
                const float a = m_new == -INFINITY ? 1.f : expf(m_old - m_new);
                sm.alpha[h] = a;
                sm.l[h] = sm.l[h] * a + sum;
                sm.m[h] = m_new;
            }
        }
        __syncthreads();

        // ---- values: thread c = channel c ----
        if (tid < D)
        {
            const int c = tid, g = D >= group ? c / group : 0, shift = BITS * (c % PER);
#pragma unroll
            for (int h = 0; h < kKiviMaxGqa; ++h)
                if (h < gq) acc[h] *= sm.alpha[h];
            for (int t = 0; t < kKiviTileTokens; ++t)
            {
                const float code = static_cast<float>((sm.v[st][t * (D / PER) + c / PER] >> shift) & MASK);
                const float x = fmaf(__half2float(sm.vs[t][g]), code, sm.vm[t][g]);
#pragma unroll
                for (int h = 0; h < kKiviMaxGqa; ++h)
                    if (h < gq) acc[h] = fmaf(sm.p[h][t], x, acc[h]);
            }
        }
    }
    __syncthreads();
    if (tid < D)
#pragma unroll
        for (int h = 0; h < kKiviMaxGqa; ++h)
        {
            if (h >= gq) break;
            const float l = tiles > 0 ? sm.l[h] : 0.f;
            const int64_t row = (static_cast<int64_t>(seq) * heads + kvh * gq + h) * splits + split;
            partial_o[row * D + tid] = l > 0.f ? acc[h] / l : 0.f;
            if (tid == 0) partial_lse[row] = l > 0.f ? sm.m[h] + logf(l) : -INFINITY;
        }
}
} // namespace ops

#define KIVI_SPLIT_ENTRY(BITS, D)                                                                                      \
    extern "C" __global__ void __launch_bounds__(ops::kKiviSplitThreads) kivi_decode_attention_split_b##BITS##_hd##D(   \
        float* partial_o, float* partial_lse, const float* q, const uint32_t* codes, const __half* scales, const float* mins, \
        const int* block_tables, const int* num_compact, int num_seqs, int max_blocks, int heads, int kv_heads,          \
        int head_dim, int group, int blocks_per_split)                                                                  \
    {                                                                                                                   \
        __shared__ __align__(16) ops::KiviSplitSmem<BITS, D> sm;                                                        \
        if (static_cast<int>(blockIdx.y) >= num_seqs || head_dim != D || kv_heads <= 0 || heads % kv_heads != 0 ||      \
            heads / kv_heads > ops::kKiviMaxGqa || !(group == 32 || group == 64 || group == 128) ||                      \
            blocks_per_split % (ops::kKiviTileTokens / group) != 0 || blockDim.x != ops::kKiviSplitThreads)              \
            return;                                                                                                     \
        ops::kivi_decode_attention_split<BITS, D>(partial_o, partial_lse, q, codes, scales, mins, block_tables, num_compact, \
                                                  max_blocks, heads, kv_heads, group, blocks_per_split, sm);            \
    }
KIVI_SPLIT_ENTRY(2, 64)
KIVI_SPLIT_ENTRY(2, 128)
KIVI_SPLIT_ENTRY(4, 64)
KIVI_SPLIT_ENTRY(4, 128)
#undef KIVI_SPLIT_ENTRY
