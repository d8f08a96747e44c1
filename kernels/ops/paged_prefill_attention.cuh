// paged_prefill_attention: causal attention of a chunk of new tokens per sequence over its paged KV cache (the chunk's
// own keys and values already appended), GQA. A tiled, FlashAttention-2-style loop on CUDA cores: the simpler
// correct kernel, not a tensor-core one (see "Performance" below).
//
// Math:    sequence s has L_s keys and n_s new query tokens; token i (0 <= i < n_s) sits at position
//          p = L_s - n_s + i and attends to keys t in [0, p]:
//            score_t = (q . k_t) * scale,  o = sum_t softmax(score)_t v_t,  lse = ln sum_t e^{score_t}  (natural log)
//          Query head h reads kv head h / (num_heads / num_kv_heads).
// Entries:  paged_prefill_attention_hd{8,16,32,64,128,256}_{f32,f16,bf16}: one entry per head dim (its own registers
//          and shared memory); the head_dim argument must equal the entry's.
// Pointers:
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
//          accumulates head_dim / 32 output dimensions (head_dim < 32: lanes [0, head_dim) one each, the rest idle).
//          Key tiles past the block's last position are skipped (causal), keys past a row's position are masked
//          with -inf. head_dim 256 stages only K (Q, K and V would need 82 KB, over the 48 KB of static shared
//          memory): its Q rows and V rows are read from global memory (L1/L2), Q as a warp broadcast and V coalesced.
// Performance: FP32 FMAs on CUDA cores, and each query head re-reads its kv head's tiles (from L2 for the other heads
//          of the group): fine for chunked prefill next to the GEMMs, far from FlashAttention-2 on tensor cores. The
//          next step is mma.sync m16n8k16 for S = Q K^T and O += P V with 64-row query tiles per kv-head group.
// Numerics: fp32 throughout (DT -> fp32 exact); expf and logf. Differs from the CPU reference Attention.Suffix by
//          summation order only.
// Empty:   a row with no key (p < 0, i.e. n_s > L_s) writes o = 0 and lse = -inf. Blocks past n_s exit.
// Guards:  a block id outside [0, num_blocks) reads zeros for its keys (they still count: the table is wrong, not
//          the kernel; the launcher's caller owns the tables).
// Preconditions (launcher-checked): head_dim equal to the entry's; num_heads % num_kv_heads == 0; block_size >= 1.
//          A block that breaks them writes nothing.
#pragma once

#include "common.cuh"

namespace ops
{
constexpr int kPrefillRowsPerWarp = 4, kPrefillWarps = 4, kPrefillRows = kPrefillRowsPerWarp * kPrefillWarps;
constexpr int kPrefillKeys = 32;

// Shared memory layout per head dim: Q [16][D] and V [32][D] staged only when they fit next to K [32][D + 1].
template <int HEAD_DIM>
struct PrefillSmem
{
    static constexpr bool kStageQV = HEAD_DIM <= 128;
    static constexpr int KS = HEAD_DIM + 1; // padded K row: lane j reads row j, column d without bank conflicts
    static constexpr int kQ = kStageQV ? kPrefillRows * HEAD_DIM : 0;
    static constexpr int kK = kPrefillKeys * KS;
    static constexpr int kV = kStageQV ? kPrefillKeys * HEAD_DIM : 0;
    static constexpr int kFloats = kQ + kK + kV;
    static_assert(kFloats * sizeof(float) <= 48 * 1024, "static shared memory is limited to 48 KB");
};

template <DType DT, int HEAD_DIM>
__device__ __forceinline__ void paged_prefill_attention(float* o, float* lse, const float* q,
                                                        const storage_t<DT>* k_cache, const storage_t<DT>* v_cache,
                                                        const int* block_tables, const int* seq_lens,
                                                        const int* q_starts, int num_heads, int num_kv_heads,
                                                        int block_size, int max_blocks_per_seq, int num_blocks,
                                                        float scale, float* smem)
{
    using S = PrefillSmem<HEAD_DIM>;
    constexpr int KS = S::KS;
    constexpr int E = HEAD_DIM >= 32 ? HEAD_DIM / 32 : 1; // output dims per lane: lane + 32 e
    float* s_q = smem;          // [16][HEAD_DIM] when staged
    float* s_k = s_q + S::kQ;   // [32][KS]
    float* s_v = s_k + S::kK;   // [32][HEAD_DIM] when staged

    const int tile = blockIdx.x, h = blockIdx.y, seq = blockIdx.z;
    const int kvh = h / (num_heads / num_kv_heads);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const bool lane_has_dims = HEAD_DIM >= 32 || lane < HEAD_DIM; // uniform unless head_dim < 32
    const int q0 = q_starts[seq], n = q_starts[seq + 1] - q0;
    if (tile * kPrefillRows >= n) return; // uniform per block
    const int len = min(seq_lens[seq], max_blocks_per_seq * block_size);
    const int first_pos = len - n + tile * kPrefillRows;                       // position of the tile's row 0
    const int rows_here = min(kPrefillRows, n - tile * kPrefillRows);
    const int last_pos = first_pos + rows_here - 1;                           // largest position in the tile
    const float* q_tile = q + (static_cast<int64_t>(q0 + tile * kPrefillRows) * num_heads + h) * HEAD_DIM;
    const int64_t q_row_stride = static_cast<int64_t>(num_heads) * HEAD_DIM;

    if constexpr (S::kStageQV)
        for (int idx = threadIdx.x; idx < kPrefillRows * HEAD_DIM; idx += blockDim.x)
        {
            const int r = idx / HEAD_DIM, d = idx % HEAD_DIM;
            s_q[idx] = r < rows_here ? q_tile[r * q_row_stride + d] : 0.f;
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
                    if constexpr (S::kStageQV) vv = load_as_float<DT>(v_cache, off);
                }
            }
            s_k[j * KS + d] = kv;
            if constexpr (S::kStageQV) s_v[j * HEAD_DIM + d] = vv;
        }
        // Unstaged V: lane j holds the row offset of key k0 + j (-1: absent), shuffled to the warp below.
        int64_t v_off = -1;
        if constexpr (!S::kStageQV)
        {
            const int t = k0 + lane;
            if (t < key_end)
            {
                const int blk = table[t / block_size];
                if (blk >= 0 && blk < num_blocks)
                    v_off = (static_cast<int64_t>(blk) * block_size + t % block_size) * kv_stride + kvh * HEAD_DIM;
            }
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
                const float* qr;
                if constexpr (S::kStageQV) qr = s_q + r * HEAD_DIM;
                else qr = q_tile + r * q_row_stride;
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
                if constexpr (S::kStageQV)
                {
                    if (lane_has_dims)
#pragma unroll
                        for (int e = 0; e < E; ++e)
                            acc[rr][e] = fmaf(pj, s_v[j * HEAD_DIM + lane + 32 * e], acc[rr][e]);
                }
                else
                {
                    const int64_t off = __shfl_sync(0xffffffffu, v_off, j);
                    if (off >= 0 && pj != 0.f)
#pragma unroll
                        for (int e = 0; e < E; ++e)
                            acc[rr][e] = fmaf(pj, load_as_float<DT>(v_cache, off + lane + 32 * e), acc[rr][e]);
                }
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
        if (lane_has_dims)
#pragma unroll
            for (int e = 0; e < E; ++e) o[row * HEAD_DIM + lane + 32 * e] = acc[rr][e] * inv;
        if (lane == 0) lse[row] = l[rr] > 0.f ? m[rr] + logf(l[rr]) : -INFINITY;
    }
}
} // namespace ops

#define PAGED_PREFILL_ATTENTION_ENTRY_HD(suffix, DT, D)                                                             \
    extern "C" __global__ void __launch_bounds__(ops::kPrefillWarps * 32) paged_prefill_attention_hd##D##_##suffix(  \
        float* o, float* lse, const float* q, const storage_t<DT>* k_cache, const storage_t<DT>* v_cache,            \
        const int* block_tables, const int* seq_lens, const int* q_starts, int num_seqs, int num_heads,              \
        int num_kv_heads, int head_dim, int block_size, int max_blocks_per_seq, int num_blocks, float scale)          \
    {                                                                                                                 \
        __shared__ float smem[ops::PrefillSmem<D>::kFloats];                                                          \
        if (static_cast<int>(blockIdx.z) >= num_seqs || head_dim != D || num_kv_heads <= 0 ||                         \
            num_heads % num_kv_heads != 0 || block_size <= 0)                                                         \
            return;                                                                                                   \
        ops::paged_prefill_attention<DT, D>(o, lse, q, k_cache, v_cache, block_tables, seq_lens, q_starts, num_heads, \
                                            num_kv_heads, block_size, max_blocks_per_seq, num_blocks, scale, smem);   \
    }
#define PAGED_PREFILL_ATTENTION_ENTRY(suffix, DT) KERNELS_FOR_EACH_HEAD_DIM(PAGED_PREFILL_ATTENTION_ENTRY_HD, suffix, DT)
KERNELS_FOR_EACH_DTYPE(PAGED_PREFILL_ATTENTION_ENTRY)
#undef PAGED_PREFILL_ATTENTION_ENTRY
#undef PAGED_PREFILL_ATTENTION_ENTRY_HD
