// paged_prefill_attention: causal attention of a chunk of new tokens per sequence over its paged KV cache (the chunk's
// own keys and values already appended), GQA. A tiled, FlashAttention-2-style loop on CUDA cores: the simpler
// correct kernel, not a tensor-core one (see "Performance" below).
//
// Math:    sequence s has L_s keys and n_s new query tokens; token i (0 <= i < n_s) sits at position
//          p = L_s - n_s + i and attends to keys t in [0, p]:
//            score_t = (q . k_t) * scale,  o = sum_t softmax(score)_t v_t,  lse = ln sum_t e^{score_t}  (natural log)
//          Query head h reads kv head h / (num_heads / num_kv_heads).
// Pointers (paged_prefill_attention_{f32,f16,bf16}):
//   o            [num_tokens, num_heads, head_dim]  fp32, written (num_tokens = q_starts[num_seqs])
//   lse          [num_tokens, num_heads]            fp32, written
//   q            [num_tokens, num_heads, head_dim]  fp32, read
//   k_cache, v_cache  [num_blocks, block_size, num_kv_heads * head_dim]  DT, read (as in paged_decode_attention)
//   block_tables [num_seqs, max_blocks_per_seq]     int32, read
//   seq_lens     [num_seqs]                         int32, read: L_s (clamped to max_blocks_per_seq * block_size)
//   q_starts     [num_seqs + 1]                     int32, read: CSR offsets; sequence s owns query rows
//                                                   [q_starts[s], q_starts[s + 1]) (n_s of them)
// Grid:    (ceil_div(max_s n_s, 16), num_heads, num_seqs); Block: 128 threads (4 warps), no dynamic shared memory.
//          A block owns 16 query rows of one head (4 per warp). Per key tile of 32: the block stages K (fp32, rows
//          padded by one float: conflict-free column reads) and V in shared memory; lane j scores key j for each of
//          the warp's rows, the warp updates the row's online-softmax state (warp max and sum), and each lane
//          accumulates head_dim / 32 output dimensions. Key tiles past the block's last position are skipped
//          (causal), keys past a row's position are masked with -inf.
// Performance: FP32 FMAs on CUDA cores, and each query head re-reads its kv head's tiles (from L2 for the other heads
//          of the group): fine for chunked prefill next to the GEMMs, far from FlashAttention-2 on tensor cores. The
//          next step is mma.sync m16n8k16 for S = Q K^T and O += P V with 64-row query tiles per kv-head group.
// Numerics: fp32 throughout (DT -> fp32 exact); expf and logf. Differs from the CPU reference Attention.Suffix by
//          summation order only.
// Empty:   a row with no key (p < 0, i.e. n_s > L_s) writes o = 0 and lse = -inf. Blocks past n_s exit.
// Guards:  a block id outside [0, num_blocks) reads zeros for its keys (they still count: the table is wrong, not
//          the kernel; the launcher's caller owns the tables).
// Preconditions (launcher-checked): head_dim in {64, 128}; num_heads % num_kv_heads == 0; block_size >= 1.
#pragma once

#include "common.cuh"

namespace ops
{
constexpr int kPrefillRowsPerWarp = 4, kPrefillWarps = 4, kPrefillRows = kPrefillRowsPerWarp * kPrefillWarps;
constexpr int kPrefillKeys = 32;

template <DType DT, int HEAD_DIM>
__device__ __forceinline__ void paged_prefill_attention(float* o, float* lse, const float* q,
                                                        const storage_t<DT>* k_cache, const storage_t<DT>* v_cache,
                                                        const int* block_tables, const int* seq_lens,
                                                        const int* q_starts, int num_heads, int num_kv_heads,
                                                        int block_size, int max_blocks_per_seq, int num_blocks,
                                                        float scale, float* smem)
{
    constexpr int KS = HEAD_DIM + 1; // padded K row
    constexpr int E = HEAD_DIM / 32;  // output dims per lane: lane + 32 e
    float* s_q = smem;                                  // [16][HEAD_DIM]
    float* s_k = s_q + kPrefillRows * HEAD_DIM;         // [32][KS]
    float* s_v = s_k + kPrefillKeys * KS;               // [32][HEAD_DIM]

    const int tile = blockIdx.x, h = blockIdx.y, seq = blockIdx.z;
    const int kvh = h / (num_heads / num_kv_heads);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int q0 = q_starts[seq], n = q_starts[seq + 1] - q0;
    if (tile * kPrefillRows >= n) return; // uniform per block
    const int len = min(seq_lens[seq], max_blocks_per_seq * block_size);
    const int first_pos = len - n + tile * kPrefillRows;                       // position of the tile's row 0
    const int rows_here = min(kPrefillRows, n - tile * kPrefillRows);
    const int last_pos = first_pos + rows_here - 1;                           // largest position in the tile

    for (int idx = threadIdx.x; idx < kPrefillRows * HEAD_DIM; idx += blockDim.x)
    {
        const int r = idx / HEAD_DIM, d = idx % HEAD_DIM;
        s_q[idx] = r < rows_here ? q[(static_cast<int64_t>(q0 + tile * kPrefillRows + r) * num_heads + h) * HEAD_DIM + d]
                                 : 0.f;
    }

    float m[kPrefillRowsPerWarp], l[kPrefillRowsPerWarp], acc[kPrefillRowsPerWarp][E];
#pragma unroll
    for (int rr = 0; rr < kPrefillRowsPerWarp; ++rr)
    {
        m[rr] = -INFINITY;
        l[rr] = 0.f;
#pragma unroll
        for (int e = 0; e < E; ++e) acc[rr][e] = 0.f;
    }

    const int64_t kv_stride = static_cast<int64_t>(num_kv_heads) * HEAD_DIM;
    const int* table = block_tables + static_cast<int64_t>(seq) * max_blocks_per_seq;
    const int key_end = min(len, last_pos + 1); // keys [0, key_end) can be seen by some row of this tile
    for (int k0 = 0; k0 < key_end; k0 += kPrefillKeys)
    {
        __syncthreads(); // the previous tile's K and V are consumed (and s_q is written, the first time)
        for (int idx = threadIdx.x; idx < kPrefillKeys * HEAD_DIM; idx += blockDim.x)
        {
            const int j = idx / HEAD_DIM, d = idx % HEAD_DIM, t = k0 + j;
            float kv = 0.f, vv = 0.f;
            if (t < key_end)
            {
                const int blk = table[t / block_size];
                if (blk >= 0 && blk < num_blocks)
                {
                    const int64_t off = (static_cast<int64_t>(blk) * block_size + t % block_size) * kv_stride +
                                        kvh * HEAD_DIM + d;
                    kv = load_as_float<DT>(k_cache, off);
                    vv = load_as_float<DT>(v_cache, off);
                }
            }
            s_k[j * KS + d] = kv;
            s_v[j * HEAD_DIM + d] = vv;
        }
        __syncthreads();
#pragma unroll
        for (int rr = 0; rr < kPrefillRowsPerWarp; ++rr)
        {
            const int r = warp * kPrefillRowsPerWarp + rr;
            const int pos = first_pos + r;
            if (r >= rows_here || pos < 0 || k0 > pos) continue; // uniform per warp
            const int t = k0 + lane;
            float s = -INFINITY;
            if (t <= pos && t < key_end)
            {
                float dot = 0.f;
                const float* qr = s_q + r * HEAD_DIM;
                const float* kr = s_k + lane * KS;
#pragma unroll 16
                for (int d = 0; d < HEAD_DIM; ++d) dot = fmaf(qr[d], kr[d], dot);
                s = dot * scale;
            }
            const float m_new = fmaxf(m[rr], warp_reduce(s, MaxOp{}));
            if (m_new == -INFINITY) continue; // only with -inf scores (infinite inputs); uniform per warp
            const float a = expf(m[rr] - m_new);
            const float p = expf(s - m_new); // 0 for masked keys
            l[rr] = l[rr] * a + warp_reduce(p, SumOp{});
#pragma unroll
            for (int e = 0; e < E; ++e) acc[rr][e] *= a;
#pragma unroll 8
            for (int j = 0; j < kPrefillKeys; ++j)
            {
                const float pj = __shfl_sync(0xffffffffu, p, j);
#pragma unroll
                for (int e = 0; e < E; ++e) acc[rr][e] = fmaf(pj, s_v[j * HEAD_DIM + lane + 32 * e], acc[rr][e]);
            }
            m[rr] = m_new;
        }
    }

#pragma unroll
    for (int rr = 0; rr < kPrefillRowsPerWarp; ++rr)
    {
        const int r = warp * kPrefillRowsPerWarp + rr;
        if (r >= rows_here) continue;
        const int64_t row = static_cast<int64_t>(q0 + tile * kPrefillRows + r) * num_heads + h;
        const float inv = l[rr] > 0.f ? 1.f / l[rr] : 0.f;
#pragma unroll
        for (int e = 0; e < E; ++e) o[row * HEAD_DIM + lane + 32 * e] = acc[rr][e] * inv;
        if (lane == 0) lse[row] = l[rr] > 0.f ? m[rr] + logf(l[rr]) : -INFINITY;
    }
}
} // namespace ops

#define PAGED_PREFILL_ATTENTION_ENTRY(suffix, DT)                                                                    \
    extern "C" __global__ void __launch_bounds__(ops::kPrefillWarps * 32) paged_prefill_attention_##suffix(          \
        float* o, float* lse, const float* q, const storage_t<DT>* k_cache, const storage_t<DT>* v_cache,            \
        const int* block_tables, const int* seq_lens, const int* q_starts, int num_seqs, int num_heads,              \
        int num_kv_heads, int head_dim, int block_size, int max_blocks_per_seq, int num_blocks, float scale)          \
    {                                                                                                                 \
        /* one buffer for both head_dim instantiations, sized for 128 */                                              \
        __shared__ float smem[ops::kPrefillRows * 128 + ops::kPrefillKeys * 129 + ops::kPrefillKeys * 128];           \
        if (static_cast<int>(blockIdx.z) >= num_seqs || num_kv_heads <= 0 || num_heads % num_kv_heads != 0 ||         \
            block_size <= 0)                                                                                          \
            return;                                                                                                   \
        if (head_dim == 64)                                                                                           \
            ops::paged_prefill_attention<DT, 64>(o, lse, q, k_cache, v_cache, block_tables, seq_lens, q_starts,       \
                                                 num_heads, num_kv_heads, block_size, max_blocks_per_seq, num_blocks, \
                                                 scale, smem);                                                        \
        else if (head_dim == 128)                                                                                     \
            ops::paged_prefill_attention<DT, 128>(o, lse, q, k_cache, v_cache, block_tables, seq_lens, q_starts,      \
                                                  num_heads, num_kv_heads, block_size, max_blocks_per_seq,            \
                                                  num_blocks, scale, smem);                                           \
    }
KERNELS_FOR_EACH_DTYPE(PAGED_PREFILL_ATTENTION_ENTRY)
#undef PAGED_PREFILL_ATTENTION_ENTRY
