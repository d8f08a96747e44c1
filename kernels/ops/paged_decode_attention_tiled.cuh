// paged_decode_attention_tiled: paged_decode_attention's contract (arguments, grid, splits, outputs, the merge), with
// the keys and values of a split streamed through shared memory in tiles of 32 keys by a two-stage cp.async pipeline
// (the FlashDecoding / FlashInfer decode design): while a tile is scored and accumulated, the next one is in flight,
// 16 KiB per stage at head_dim 128 (the CUDA-core kernel keeps ~1 KiB per warp in flight and waits on each key's
// block-table entry before loading it). The scores of a tile are computed once per (key, head), its softmax once per
// head by one warp, and its values accumulated with one exponential rescale per tile.
//
// Math: as paged_decode_attention.cuh (score_t = (q . k_t) * scale; o = softmax(score) V; lse = ln sum e^score), per
//       split; attention_merge_f32 combines splits. Results differ from the CPU reference by summation order only.
// Entries:  paged_decode_attention_tiled_hd{64,128}_{f16,bf16}: 16-bit KV (what the CUDA backend stores) and the head
//          dims of the Llama family; other dims and dtypes keep paged_decode_attention_*.
// Grid / block / arguments / preconditions / empty splits / guards: exactly paged_decode_attention's (block 128).
// Per CTA: kv head kvh and query heads [h0, h0 + gh), gh <= 4 (the chunk), of sequence blockIdx.y, split blockIdx.z.
// Shared memory (static): 2 stages x (K + V) x 32 keys x head_dim x 2 bytes (32 KiB at d 128) + scores [4][32] + each
//          stage's key validity + the per-head running max, sum and tile rescale.
// Threads: loading, each thread cp.asyncs (32 x head_dim / 8) / 128 16-byte chunks per matrix per tile (an invalid key
//          - past the split, or a block id outside [0, num_blocks) - is zero-filled and scored -inf); scoring, a warp
//          takes 8 keys, head_dim / 8 lanes per key (16-byte smem reads), shuffles reduce the dot; softmax, warp g for
//          head g (lane = key); values, thread t owns dimension t (t < head_dim) for every head of the chunk.
#pragma once

#include "attention_state.cuh"
#include "common.cuh"
#include "mma.cuh"
#include "paged_decode_attention.cuh" // kDecodeMaxHeadsPerBlock: the same grid contract

namespace ops
{
constexpr int kTiledKeys = 32;   // keys per tile (one warp lane per key in the softmax)
constexpr int kTiledThreads = 128;

template <DType DT, int HEAD_DIM>
struct TiledSmem
{
    storage_t<DT> k[2][kTiledKeys][HEAD_DIM];
    storage_t<DT> v[2][kTiledKeys][HEAD_DIM];
    float p[kDecodeMaxHeadsPerBlock][kTiledKeys]; // scores, then probabilities of the tile
    bool valid[2][kTiledKeys];                    // whether key j of a stage is attended (written by the loads)
    float m[kDecodeMaxHeadsPerBlock], l[kDecodeMaxHeadsPerBlock], alpha[kDecodeMaxHeadsPerBlock];
};

template <DType DT, int HEAD_DIM>
__device__ __forceinline__ void paged_decode_attention_tiled(float* o_partial, float* lse_partial, const float* q,
                                                             const storage_t<DT>* k_cache, const storage_t<DT>* v_cache,
                                                             const int* block_tables, const int* seq_lens, int num_heads,
                                                             int num_kv_heads, int kvh, int h0, int gh, int block_size,
                                                             int max_blocks_per_seq, int num_blocks, int tokens_per_split,
                                                             float scale, TiledSmem<DT, HEAD_DIM>& sm)
{
    static_assert(HEAD_DIM % 8 == 0 && HEAD_DIM <= kTiledThreads, "one thread per value dimension");
    constexpr int CPR = HEAD_DIM / 8;                        // 16-byte chunks per row
    constexpr int CHUNKS = kTiledKeys * CPR / kTiledThreads; // per thread per matrix per tile
    static_assert(kTiledKeys * CPR % kTiledThreads == 0, "chunks split evenly over the threads");
    constexpr int LPK = CPR;                                 // lanes per key when scoring
    constexpr int KPW = 32 / LPK;                            // keys a warp scores at once
    constexpr int KEYS_PER_WARP = kTiledKeys / (kTiledThreads / 32);
    static_assert(KEYS_PER_WARP % KPW == 0, "a warp's keys in whole passes");

    const int seq = blockIdx.y, split = blockIdx.z, num_splits = gridDim.z;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int len = seq_lens[seq];
    len = min(len, max_blocks_per_seq * block_size);
    const int t_begin = split * tokens_per_split;
    const int t_end = split == num_splits - 1 ? len : min(len, t_begin + tokens_per_split);
    const int64_t kv_stride = static_cast<int64_t>(num_kv_heads) * HEAD_DIM;
    const int* table = block_tables + static_cast<int64_t>(seq) * max_blocks_per_seq;

    // The query slice this lane scores with: dimensions part * 8 .. part * 8 + 7 of every head of the chunk.
    const int part = lane % LPK;
    float qr[kDecodeMaxHeadsPerBlock][8];
#pragma unroll
    for (int g = 0; g < kDecodeMaxHeadsPerBlock; ++g)
#pragma unroll
        for (int e = 0; e < 8; ++e)
            qr[g][e] = g < gh ? q[(static_cast<int64_t>(seq) * num_heads + h0 + g) * HEAD_DIM + part * 8 + e] : 0.f;

    if (threadIdx.x < kDecodeMaxHeadsPerBlock)
    {
        sm.m[threadIdx.x] = -INFINITY;
        sm.l[threadIdx.x] = 0.f;
    }
    float acc[kDecodeMaxHeadsPerBlock];
#pragma unroll
    for (int g = 0; g < kDecodeMaxHeadsPerBlock; ++g) acc[g] = 0.f;

    // Key t's row in a cache, or null when it is not attended (past the split, or a block id out of range).
    auto row_of = [&](int t) -> int64_t {
        if (t >= t_end) return -1;
        const int blk = table[t / block_size];
        if (blk < 0 || blk >= num_blocks) return -1;
        return (static_cast<int64_t>(blk) * block_size + t % block_size) * kv_stride + static_cast<int64_t>(kvh) * HEAD_DIM;
    };
    auto load_tile = [&](int tile, int stage) {
        const int base = t_begin + tile * kTiledKeys;
#pragma unroll
        for (int c = 0; c < CHUNKS; ++c)
        {
            const int chunk = threadIdx.x + c * kTiledThreads;
            const int j = chunk / CPR, col = (chunk % CPR) * 8;
            const int64_t row = row_of(base + j);
            const bool valid = row >= 0;
            cp_async16_zfill(&sm.k[stage][j][col], valid ? k_cache + row + col : k_cache, valid ? 16 : 0);
            cp_async16_zfill(&sm.v[stage][j][col], valid ? v_cache + row + col : v_cache, valid ? 16 : 0);
            if (col == 0) sm.valid[stage][j] = valid; // read after the tile's barrier, like the rows
        }
        cp_async_commit();
    };

    const int tiles = t_end > t_begin ? (t_end - t_begin + kTiledKeys - 1) / kTiledKeys : 0;
    if (tiles > 0) load_tile(0, 0);
    for (int tile = 0; tile < tiles; ++tile)
    {
        const int stage = tile & 1;
        if (tile + 1 < tiles)
        {
            load_tile(tile + 1, stage ^ 1); // the stage the previous iteration finished with (its last barrier)
            cp_async_wait<1>();
        }
        else
            cp_async_wait<0>();
        __syncthreads(); // this tile's K and V are in shared memory for every thread

        // ---- scores: a warp's 8 keys, LPK lanes per key ----
#pragma unroll
        for (int pass = 0; pass < KEYS_PER_WARP / KPW; ++pass)
        {
            const int j = warp * KEYS_PER_WARP + pass * KPW + lane / LPK;
            float kf[8];
            load128_as_float<DT>(&sm.k[stage][j][part * 8], kf);
            const bool valid = sm.valid[stage][j];
#pragma unroll
            for (int g = 0; g < kDecodeMaxHeadsPerBlock; ++g)
            {
                float dot = 0.f;
#pragma unroll
                for (int e = 0; e < 8; ++e) dot = fmaf(qr[g][e], kf[e], dot);
#pragma unroll
                for (int off = LPK / 2; off > 0; off >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, off);
                if (part == 0) sm.p[g][j] = valid ? dot * scale : -INFINITY;
            }
        }
        __syncthreads();

        // ---- softmax of the tile: warp g for head g, lane = key ----
        if (warp < gh)
        {
            const float s = sm.p[warp][lane];
            float tmax = s;
#pragma unroll
            for (int off = 16; off > 0; off >>= 1) tmax = fmaxf(tmax, __shfl_xor_sync(0xffffffffu, tmax, off));
            const float m_old = sm.m[warp];
            const float m_new = fmaxf(m_old, tmax);
            const float p = m_new == -INFINITY ? 0.f : expf(s - m_new);
            float sum = p;
#pragma unroll
            for (int off = 16; off > 0; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
            sm.p[warp][lane] = p;
            __syncwarp();
            if (lane == 0)
            {
                const float a = m_new == -INFINITY ? 1.f : expf(m_old - m_new); // expf(-inf) = 0 on the first keys
                sm.alpha[warp] = a;
                sm.l[warp] = sm.l[warp] * a + sum;
                sm.m[warp] = m_new;
            }
        }
        __syncthreads();

        // ---- values: thread t accumulates dimension t of every head ----
        if (threadIdx.x < HEAD_DIM)
        {
            const int d = threadIdx.x;
#pragma unroll
            for (int g = 0; g < kDecodeMaxHeadsPerBlock; ++g)
            {
                if (g >= gh) break;
                float a = acc[g] * sm.alpha[g];
#pragma unroll 8
                for (int j = 0; j < kTiledKeys; ++j) a = fmaf(sm.p[g][j], DTypeTraits<DT>::to_float(sm.v[stage][j][d]), a);
                acc[g] = a;
            }
        }
        __syncthreads(); // the stage and the probabilities are free for the next tile's load and scores
    }

    // ---- outputs: o = acc / l, lse = m + ln l, the empty split o = 0, lse = -inf ----
    if (threadIdx.x < HEAD_DIM)
    {
        const int d = threadIdx.x;
#pragma unroll
        for (int g = 0; g < kDecodeMaxHeadsPerBlock; ++g)
        {
            if (g >= gh) break;
            const float l = tiles > 0 ? sm.l[g] : 0.f, m = tiles > 0 ? sm.m[g] : -INFINITY;
            const int64_t row = (static_cast<int64_t>(seq) * num_heads + h0 + g) * num_splits + split;
            o_partial[row * HEAD_DIM + d] = l > 0.f ? acc[g] / l : 0.f;
            if (d == 0) lse_partial[row] = lse_of(m, l);
        }
    }
}

template <DType DT, int HEAD_DIM>
__device__ __forceinline__ void paged_decode_attention_tiled_dispatch(
    float* o_partial, float* lse_partial, const float* q, const storage_t<DT>* k_cache, const storage_t<DT>* v_cache,
    const int* block_tables, const int* seq_lens, int num_heads, int num_kv_heads, int head_dim, int block_size,
    int max_blocks_per_seq, int num_blocks, int tokens_per_split, float scale)
{
    int kvh, h0, gh;
    if (head_dim != HEAD_DIM || blockDim.x != kTiledThreads ||
        !decode_block_heads(num_heads, num_kv_heads, block_size, tokens_per_split, kvh, h0, gh))
        return;
    __shared__ __align__(16) TiledSmem<DT, HEAD_DIM> sm;
    paged_decode_attention_tiled<DT, HEAD_DIM>(o_partial, lse_partial, q, k_cache, v_cache, block_tables, seq_lens,
                                               num_heads, num_kv_heads, kvh, h0, gh, block_size, max_blocks_per_seq,
                                               num_blocks, tokens_per_split, scale, sm);
}
} // namespace ops

// The same entry as paged_decode_attention's (kDecodeWarps * 32 == kTiledThreads threads).
static_assert(ops::kDecodeWarps * 32 == ops::kTiledThreads, "the shared entry's launch bounds");
DECODE_ATTENTION_ENTRY(paged_decode_attention_tiled, f16, DType::F16, 64)
DECODE_ATTENTION_ENTRY(paged_decode_attention_tiled, f16, DType::F16, 128)
DECODE_ATTENTION_ENTRY(paged_decode_attention_tiled, bf16, DType::BF16, 64)
DECODE_ATTENTION_ENTRY(paged_decode_attention_tiled, bf16, DType::BF16, 128)
