// paged_decode_attention: one new query token per sequence against its paged KV cache, GQA, optionally split over
// the context (flash-decoding); attention_merge combines the splits with the (o, lse) merge.
//
// Math:    for sequence s, query head h (kv head kh = h / G, G = num_heads / num_kv_heads), keys t in [0, L_s):
//            score_t = (q[s, h] . k_t) * scale       (scale = 1/sqrt(head_dim) from the launcher, as the CPU's)
//            o[s, h] = sum_t softmax(score)_t v_t,   lse[s, h] = ln sum_t e^{score_t}   (natural log, fp32)
//          Split z covers t in [z * tokens_per_split, (z + 1) * tokens_per_split), the last split up to L_s, and
//          writes its own normalized (o, lse); attention_merge_f32 merges them exactly as AttentionState.Merge does.
// Entries:  paged_decode_attention_hd{8,16,32,64,128,256}_{f32,f16,bf16}: one entry per head dim, so each is compiled
//          (registers, shared memory) for its own head_dim only; the head_dim argument must equal the entry's.
// Pointers:
//   o_partial    [num_seqs, num_heads, num_splits, head_dim]  fp32, written (num_splits = gridDim.z; with one split
//                this is o [num_seqs, num_heads, head_dim] itself)
//   lse_partial  [num_seqs, num_heads, num_splits]            fp32, written (with one split: lse [num_seqs, num_heads])
//   q            [num_seqs, num_heads, head_dim]              fp32, read
//   k_cache      [num_blocks, block_size, num_kv_heads * head_dim]  DT, read: one layer's key blocks, the CPU's block
//                layout (CpuKvStorage) with DT storage; position t of sequence s lives in block
//                block_tables[s, t / block_size], row t % block_size
//   v_cache      same layout as k_cache
//   block_tables [num_seqs, max_blocks_per_seq]               int32, read
//   seq_lens     [num_seqs]                                   int32, read: L_s, keys per sequence (the new token's
//                key and value already appended)
// KV dtype: a CUDA backend stores f16 (or bf16 for bf16 models): half the bytes of the CPU's fp32 blocks, which is
//          what decode attention is bound by. f32 is exported too (the CPU layout as is; exact-input verification).
// Grid:    (num_kv_heads * ceil_div(G, 4), num_seqs, num_splits); Block: 128 threads (4 warps), no dynamic shared
//          memory. Block x handles query heads [c * 4, min(G, c * 4 + 4)) of kv head x / chunks (c = x % chunks,
//          chunks = ceil_div(G, 4)): with G <= 4 one block covers the whole group, so each key and value row is read
//          once for the group; larger groups re-read a kv head's rows once per chunk of 4 (from L2).
//          Registers (nvcc 11.8, sm_80): 109-110 for f16/bf16 at every head dim, 64 for f32 up to d 128, 114 at d 256.
//          A lane group of LPK = min(32, head_dim / (16 B / sizeof(DT))) lanes owns one key at a time (16-byte
//          loads, head_dim / LPK elements per lane); 32 / LPK keys per warp are in flight per step, each lane group
//          keeps its own online-softmax state per query head, and the states are merged across lane groups
//          (shuffles) and warps (shared memory) at the end.
// Numerics: fp32 throughout; DT -> fp32 widening is exact. expf and logf (no fast math). Results differ from the CPU
//          reference Attention.Suffix by summation order only (tree vs sequential), about 1e-6 relative.
// Empty:   num_seqs == 0 launches nothing. A split with no keys (L_s <= its start, or L_s == 0) writes o = 0 and
//          lse = -inf: the empty state, which attention_merge skips.
// Guards:  L_s is clamped to max_blocks_per_seq * block_size; a block id outside [0, num_blocks) makes its keys
//          count as absent (no read), so a bad table cannot read out of bounds.
// Preconditions (launcher-checked): head_dim equal to the entry's; num_heads % num_kv_heads == 0 (any G >= 1);
//          block_size >= 1; tokens_per_split >= 1; gridDim.x == num_kv_heads * ceil_div(G, 4). A block that breaks
//          them writes nothing.
//
// attention_merge_f32(o, lse, o_partial, lse_partial, rows, num_splits, head_dim):
//   o [rows, head_dim], lse [rows] written; o_partial [rows, num_splits, head_dim], lse_partial [rows, num_splits]
//   read. o = sum_z w_z o_z / sum_z w_z with w_z = e^{lse_z - max lse}; lse = max + ln sum_z w_z. All-empty rows give
//   o = 0, lse = -inf. Grid min(rows, 65535) (grid-stride), block 128.
#pragma once

#include "attention_state.cuh"
#include "common.cuh"

namespace ops
{
constexpr int kDecodeWarps = 4;
// Query heads of one kv head a block handles (the chunk). 4 and not 8: every head keeps its q slice and online-softmax
// state in registers (8 floats each per lane for 16-bit KV at every head dim), and the largest chunk sets the entry's
// register count: 110 registers for f16/bf16 (4 blocks of 128 threads per SM) with 4, 182 (2 blocks per SM) with 8.
// A group of 8 re-reads its kv head's rows once more, from L2. Mirrored by OpsLaunchPlans.DecodeHeadsPerBlock.
constexpr int kDecodeMaxHeadsPerBlock = 4;

template <DType DT, int HEAD_DIM>
struct DecodeLanes
{
    static constexpr int VEC = kVec128<DT>;                                          // elements per 16-byte load
    static constexpr int LPK = HEAD_DIM / VEC < 32 ? HEAD_DIM / VEC : 32;            // lanes per key
    static constexpr int ELEMS = HEAD_DIM / LPK;                                     // elements per lane
    static constexpr int LOADS = ELEMS / VEC;                                        // 16-byte loads per lane per row
    static constexpr int KPW = 32 / LPK;                                             // keys per warp per step
    static_assert(HEAD_DIM % (LPK * VEC) == 0 && 32 % LPK == 0, "head_dim must split into 16-byte lane chunks");
    // Element e of load j of lane-in-group i sits at dimension (j * LPK + i) * VEC + e: consecutive lanes read
    // consecutive 16-byte chunks (coalesced).
    __device__ __forceinline__ static int dim(int i, int j, int e) { return (j * LPK + i) * VEC + e; }
};

template <DType DT, int HEAD_DIM>
__device__ __forceinline__ void load_row(float (&out)[DecodeLanes<DT, HEAD_DIM>::ELEMS], const storage_t<DT>* row, int lig)
{
    using L = DecodeLanes<DT, HEAD_DIM>;
#pragma unroll
    for (int j = 0; j < L::LOADS; ++j)
    {
        float tmp[L::VEC];
        load128_as_float<DT>(row + L::dim(lig, j, 0), tmp);
#pragma unroll
        for (int e = 0; e < L::VEC; ++e) out[j * L::VEC + e] = tmp[e];
    }
}

// Query heads [h0, h0 + G) (G <= GMAX) of kv head kvh.
template <DType DT, int HEAD_DIM, int GMAX>
__device__ __forceinline__ void paged_decode_attention(float* o_partial, float* lse_partial, const float* q,
                                                       const storage_t<DT>* k_cache, const storage_t<DT>* v_cache,
                                                       const int* block_tables, const int* seq_lens, int num_heads,
                                                       int num_kv_heads, int kvh, int h0, int G, int block_size,
                                                       int max_blocks_per_seq, int num_blocks, int tokens_per_split,
                                                       float scale, float* smem)
{
    using L = DecodeLanes<DT, HEAD_DIM>;
    constexpr int E = L::ELEMS;
    const int seq = blockIdx.y, split = blockIdx.z, num_splits = gridDim.z;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int lig = lane % L::LPK, slot = warp * L::KPW + lane / L::LPK;
    constexpr int kSlots = kDecodeWarps * L::KPW;

    int len = seq_lens[seq];
    len = min(len, max_blocks_per_seq * block_size);
    const int t_begin = split * tokens_per_split;
    const int t_end = split == num_splits - 1 ? len : min(len, t_begin + tokens_per_split);

    float qr[GMAX][E];
#pragma unroll
    for (int g = 0; g < GMAX; ++g)
    {
        const int h = h0 + g;
#pragma unroll
        for (int j = 0; j < L::LOADS; ++j)
#pragma unroll
            for (int e = 0; e < L::VEC; ++e)
                qr[g][j * L::VEC + e] =
                    g < G ? q[(static_cast<int64_t>(seq) * num_heads + h) * HEAD_DIM + L::dim(lig, j, e)] : 0.f;
    }

    AttnPartial<E> st[GMAX];
#pragma unroll
    for (int g = 0; g < GMAX; ++g) attn_partial_init(st[g]);

    const int64_t kv_stride = static_cast<int64_t>(num_kv_heads) * HEAD_DIM;
    const int* table = block_tables + static_cast<int64_t>(seq) * max_blocks_per_seq;
    // Uniform trip count for the whole warp (the shuffles below need every lane), keys predicated.
    for (int base = t_begin; base < t_end; base += kSlots)
    {
        const int t = base + slot;
        int blk = t < t_end ? table[t / block_size] : -1;
        const bool valid = blk >= 0 && blk < num_blocks;
        float kr[E], vr[E];
        if (valid)
        {
            const int64_t row = (static_cast<int64_t>(blk) * block_size + t % block_size) * kv_stride + kvh * HEAD_DIM;
            load_row<DT, HEAD_DIM>(kr, k_cache + row, lig);
            load_row<DT, HEAD_DIM>(vr, v_cache + row, lig);
        }
        else
        {
#pragma unroll
            for (int e = 0; e < E; ++e) kr[e] = vr[e] = 0.f;
        }
#pragma unroll
        for (int g = 0; g < GMAX; ++g)
        {
            float dot = 0.f;
#pragma unroll
            for (int e = 0; e < E; ++e) dot = fmaf(qr[g][e], kr[e], dot);
#pragma unroll
            for (int off = L::LPK / 2; off > 0; off >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, off);
            if (valid) attn_partial_add(st[g], dot * scale, vr);
        }
    }

    // Merge the lane groups of a warp: after the butterfly every group holds the warp's state.
#pragma unroll
    for (int off = L::LPK; off < 32; off <<= 1)
#pragma unroll
        for (int g = 0; g < GMAX; ++g)
        {
            const float m = __shfl_xor_sync(0xffffffffu, st[g].m, off);
            const float l = __shfl_xor_sync(0xffffffffu, st[g].l, off);
            float acc[E];
#pragma unroll
            for (int e = 0; e < E; ++e) acc[e] = __shfl_xor_sync(0xffffffffu, st[g].acc[e], off);
            attn_partial_merge(st[g], m, l, acc);
        }

    // Merge the warps through shared memory (one buffer for every instantiation: see the dispatch).
    auto s_m = reinterpret_cast<float (*)[GMAX]>(smem);
    auto s_l = reinterpret_cast<float (*)[GMAX]>(smem + kDecodeWarps * GMAX);
    auto s_acc = reinterpret_cast<float (*)[GMAX][HEAD_DIM]>(smem + 2 * kDecodeWarps * GMAX);
    if (lane < L::LPK)
    {
#pragma unroll
        for (int g = 0; g < GMAX; ++g)
        {
            if (lane == 0)
            {
                s_m[warp][g] = st[g].m;
                s_l[warp][g] = st[g].l;
            }
#pragma unroll
            for (int j = 0; j < L::LOADS; ++j)
#pragma unroll
                for (int e = 0; e < L::VEC; ++e) s_acc[warp][g][L::dim(lig, j, e)] = st[g].acc[j * L::VEC + e];
        }
    }
    __syncthreads();
    for (int idx = threadIdx.x; idx < G * HEAD_DIM; idx += blockDim.x)
    {
        const int g = idx / HEAD_DIM, d = idx % HEAD_DIM;
        float m = -INFINITY;
#pragma unroll
        for (int w = 0; w < kDecodeWarps; ++w) m = fmaxf(m, s_m[w][g]);
        float l = 0.f, acc = 0.f;
        if (m != -INFINITY)
        {
#pragma unroll
            for (int w = 0; w < kDecodeWarps; ++w)
            {
                const float a = expf(s_m[w][g] - m);
                l = fmaf(s_l[w][g], a, l);
                acc = fmaf(s_acc[w][g][d], a, acc);
            }
        }
        const int h = h0 + g;
        const int64_t row = (static_cast<int64_t>(seq) * num_heads + h) * num_splits + split;
        o_partial[row * HEAD_DIM + d] = l > 0.f ? acc / l : 0.f;
        if (d == 0) lse_partial[row] = lse_of(m, l);
    }
}

// The decode grid's contract, shared by paged_decode_attention and paged_decode_attention_tiled: checks the launch's
// preconditions (false: the block writes nothing) and gives this block's kv head and its chunk of query heads
// [h0, h0 + gh), gh <= kDecodeMaxHeadsPerBlock, from blockIdx.x = kv head * chunks + chunk.
__device__ __forceinline__ bool decode_block_heads(int num_heads, int num_kv_heads, int block_size, int tokens_per_split,
                                                   int& kvh, int& h0, int& gh)
{
    if (num_kv_heads <= 0 || num_heads % num_kv_heads != 0 || block_size <= 0 || tokens_per_split <= 0) return false;
    const int group = num_heads / num_kv_heads;
    const int chunks = ceil_div(group, kDecodeMaxHeadsPerBlock);
    if (static_cast<int64_t>(gridDim.x) != static_cast<int64_t>(num_kv_heads) * chunks) return false;
    kvh = blockIdx.x / chunks;
    const int g0 = (blockIdx.x % chunks) * kDecodeMaxHeadsPerBlock;
    gh = min(kDecodeMaxHeadsPerBlock, group - g0);
    h0 = kvh * group + g0;
    return true;
}

// One head dim: picks the chunk of query heads from blockIdx.x and the smallest GMAX that holds it.
template <DType DT, int HEAD_DIM>
__device__ __forceinline__ void paged_decode_attention_dispatch(
    float* o_partial, float* lse_partial, const float* q, const storage_t<DT>* k_cache, const storage_t<DT>* v_cache,
    const int* block_tables, const int* seq_lens, int num_heads, int num_kv_heads, int head_dim, int block_size,
    int max_blocks_per_seq, int num_blocks, int tokens_per_split, float scale)
{
    int kvh, h0, gh;
    if (head_dim != HEAD_DIM || !decode_block_heads(num_heads, num_kv_heads, block_size, tokens_per_split, kvh, h0, gh)) return;
    // Declared once here: __shared__ arrays inside each inlined instantiation would each get their own allocation.
    __shared__ float smem[2 * kDecodeWarps * kDecodeMaxHeadsPerBlock + kDecodeWarps * kDecodeMaxHeadsPerBlock * HEAD_DIM];
#define DECODE_CASE(GM)                                                                                             \
    ops::paged_decode_attention<DT, HEAD_DIM, GM>(o_partial, lse_partial, q, k_cache, v_cache, block_tables,        \
                                                  seq_lens, num_heads, num_kv_heads, kvh, h0, gh, block_size,       \
                                                  max_blocks_per_seq, num_blocks, tokens_per_split, scale, smem)
    static_assert(kDecodeMaxHeadsPerBlock == 4, "the cases below cover chunks of 1 to 4 query heads");
    if (gh == 1) DECODE_CASE(1);
    else if (gh == 2) DECODE_CASE(2);
    else DECODE_CASE(4);
#undef DECODE_CASE
}

// The exact (o, lse) merge of n partial results of one (row, head): lse_at(z) and row_at(z) give partial z's lse and
// its o row (head_dim floats). Threads of the block split the dimensions; the order over z is the list's.
template <class LseAt, class RowAt>
__device__ __forceinline__ void merge_partials(float* o, float* lse, int n, int head_dim, LseAt lse_at, RowAt row_at)
{
    float m = -INFINITY;
    for (int z = 0; z < n; ++z) m = fmaxf(m, lse_at(z));
    float sum = 0.f;
    if (m != -INFINITY)
        for (int z = 0; z < n; ++z) sum += expf(lse_at(z) - m);
    const float inv = sum > 0.f ? 1.f / sum : 0.f;
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x)
    {
        float acc = 0.f;
        if (m != -INFINITY)
            for (int z = 0; z < n; ++z)
            {
                const float w = expf(lse_at(z) - m); // 0 for an empty partial, whose o is 0 anyway
                acc = fmaf(w, row_at(z)[d], acc);
            }
        o[d] = acc * inv;
    }
    if (threadIdx.x == 0) *lse = sum > 0.f ? m + logf(sum) : -INFINITY;
}

__device__ __forceinline__ void attention_merge(float* o, float* lse, const float* o_partial, const float* lse_partial,
                                                int rows, int num_splits, int head_dim)
{
    for (int r = blockIdx.x; r < rows; r += gridDim.x)
    {
        const float* lp = lse_partial + static_cast<int64_t>(r) * num_splits;
        merge_partials(
            o + static_cast<int64_t>(r) * head_dim, lse + r, num_splits, head_dim, [&](int z) { return lp[z]; },
            [&](int z) { return o_partial + (static_cast<int64_t>(r) * num_splits + z) * head_dim; });
    }
}
} // namespace ops

// One entry of the decode attention contract (the arguments every decode kernel takes): `op`_hd<D>_<suffix>, which runs
// ops::`op`_dispatch<DT, D>. Kept defined for paged_decode_attention_tiled.cuh, which shares the contract.
#define DECODE_ATTENTION_ENTRY(op, suffix, DT, D)                                                                   \
    extern "C" __global__ void __launch_bounds__(ops::kDecodeWarps * 32) op##_hd##D##_##suffix(                     \
        float* o_partial, float* lse_partial, const float* q, const storage_t<DT>* k_cache,                          \
        const storage_t<DT>* v_cache, const int* block_tables, const int* seq_lens, int num_seqs, int num_heads,      \
        int num_kv_heads, int head_dim, int block_size, int max_blocks_per_seq, int num_blocks, int tokens_per_split, \
        float scale)                                                                                                  \
    {                                                                                                                 \
        if (static_cast<int>(blockIdx.y) >= num_seqs) return;                                                         \
        ops::op##_dispatch<DT, D>(o_partial, lse_partial, q, k_cache, v_cache, block_tables, seq_lens, num_heads,     \
                                  num_kv_heads, head_dim, block_size, max_blocks_per_seq, num_blocks,                 \
                                  tokens_per_split, scale);                                                           \
    }
#define PAGED_DECODE_ATTENTION_ENTRY_HD(suffix, DT, D) DECODE_ATTENTION_ENTRY(paged_decode_attention, suffix, DT, D)
#define PAGED_DECODE_ATTENTION_ENTRY(suffix, DT) KERNELS_FOR_EACH_HEAD_DIM(PAGED_DECODE_ATTENTION_ENTRY_HD, suffix, DT)
KERNELS_FOR_EACH_DTYPE(PAGED_DECODE_ATTENTION_ENTRY)
#undef PAGED_DECODE_ATTENTION_ENTRY
#undef PAGED_DECODE_ATTENTION_ENTRY_HD

extern "C" __global__ void attention_merge_f32(float* o, float* lse, const float* o_partial, const float* lse_partial,
                                               int rows, int num_splits, int head_dim)
{
    ops::attention_merge(o, lse, o_partial, lse_partial, rows, num_splits, head_dim);
}
