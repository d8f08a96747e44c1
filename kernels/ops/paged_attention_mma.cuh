// paged_attention_mma: FlashAttention-2 on tensor cores over the paged KV cache, for a list of work items. One kernel
// serves chunked causal prefill, Hydragen shared-prefix levels (every member sequence's rows against the shared block
// range, unmasked) and per-sequence suffixes; long key ranges are split into several items whose (o, lse) slots
// attention_merge_slots_f32 combines exactly.
//
// Math:    an item has query rows R (a list of row indices into q), keys [key_begin, key_end) read through one block
//          table, and a causal bound: its j-th row, at position pos0 + j, sees key t iff t <= pos0 + j (pos0 >= 2^30:
//          every key, a shared level). For each row r and query head h:
//            score_t = (q_rh . k_t) * scale,  o = sum_t softmax(score)_t v_t,  lse = ln sum_t e^{score_t}  (natural log)
//          over the keys it sees; a row that sees no key writes o = 0, lse = -inf (the empty state the merge skips).
//          Query head h reads kv head h / G, G = num_heads / num_kv_heads.
// Entries: paged_attention_mma_hd{64,128}_k{32,64}_{f16,bf16}: head dim D and KEYS keys per tile (compile-time), the
//          KV cache's dtype (q and P are rounded to it for the tensor cores).
// Pointers:
//   o, lse       [out_rows, num_heads, D], [out_rows, num_heads]  fp32, written: item i's j-th row goes to out row
//                items[i].out_row + j (the step's attention output directly, or a slot of the merge's partials)
//   q            [rows, num_heads, D]  fp32, read (16-byte aligned)
//   k_cache, v_cache  [num_blocks, block_size, num_kv_heads * D]  DT, read (16-byte aligned rows)
//   items        [num_items][8] int32: row_list, rows, table, key_begin, key_end, pos0, out_row, 0
//                (row_ids[row_list .. row_list + rows) are the item's q rows; tables + table is its block table)
//   row_ids      int32 q row indices;  tables  int32 block tables (key t is in block tables[table + t / block_size])
// Grid:    (num_items, num_kv_heads); block 128 threads (4 warps); dynamic shared memory
//          paged_attention_mma_smem_bytes(D, KEYS): 4 KEYS D 2 bytes (K and V, two stages) + 2 KEYS validity ints,
//          above 48 KiB for D = 128, KEYS = 64 (the launcher raises the function's limit).
// Design:  a CTA owns one kv head and 64 (query row, head) pairs packed row-major (pair rG + g: row r, query head
//          kvh G + g), so each K/V tile is read once for the whole GQA group: rows * G <= 64. Q is rounded to DT into
//          shared memory and held in registers as mma A fragments (ldmatrix); K and V tiles of KEYS keys go straight
//          from their pages into shared memory by cp.async (16-byte chunks, zero-filled past the range or for a block
//          id outside [0, num_blocks)), two stages: the next tile is in flight while this one is computed. Rows of
//          D * 2 bytes are swizzled (16-byte chunk c of row j stored at chunk c ^ (j % 8)), so ldmatrix's eight row
//          addresses hit eight different bank groups. Per tile and warp (16 packed rows): S = Q K^T by
//          mma.m16n8k16 (K fragments by ldmatrix), masked, scaled by scale * log2(e), one online-softmax update per
//          row (exp2f; the running sum kept per thread and reduced at the end), then O += P V with P rounded to DT
//          straight from the S accumulators (the C layout of two n-tiles is the A layout of one k-step) and V
//          fragments by ldmatrix.trans.
// Numerics: S and O accumulate in fp32; q and P are rounded to DT (as every FlashAttention kernel does), so results
//          differ from the fp32 CPU reference (Attention.Level / Attention.Suffix) by that rounding plus summation
//          order: verify compares with stated tolerances.
// Preconditions (launcher-checked): head_dim == D; num_heads % num_kv_heads == 0; every item's rows * G <= 64; its
//          row ids < rows of q, out rows < rows of o, table entries cover [key_begin, key_end). A CTA whose item
//          breaks the first two writes nothing.
//
// attention_merge_slots_f32(o, lse, o_partial, lse_partial, slot_starts, slots, rows, num_heads, head_dim):
//          row r's partial results are the rows slots[slot_starts[r] .. slot_starts[r + 1]) of o_partial
//          [*, num_heads, head_dim] / lse_partial [*, num_heads]; o[r], lse[r] = their exact (o, lse) merge, in list
//          order (deterministic). No slot: o = 0, lse = -inf. Grid (min(rows, 65535)), block 128 (grid-stride rows).
#pragma once

#include "attention_state.cuh"
#include "common.cuh"
#include "mma.cuh"
#include "paged_decode_attention.cuh" // merge_partials: the one (o, lse) merge of a row's partial results

namespace ops
{
constexpr int kMmaThreads = 128;  // 4 warps
constexpr int kMmaRows = 64;      // packed (query row, head) pairs per CTA: 16 per warp
constexpr int kMmaItemInts = 8;
constexpr int kMmaNoMask = 1 << 30; // pos0 from which an item is unmasked

__host__ __device__ constexpr int paged_attention_mma_smem_bytes(int d, int keys)
{
    return 4 * keys * d * 2 + 2 * keys * 4;
}

// Element offset of (row, 16-byte chunk) in a swizzled [rows][D] 16-bit tile.
template <int D>
__device__ __forceinline__ int mma_swizzle(int row, int chunk)
{
    static_assert(D / 8 >= 8, "the XOR over 8 chunks stays inside the row");
    return row * D + ((chunk ^ (row & 7)) << 3);
}

template <DType DT, int D, int KEYS>
__device__ __forceinline__ void paged_attention_mma(float* o, float* lse, const float* q, const storage_t<DT>* k_cache,
                                                    const storage_t<DT>* v_cache, const int* items, const int* row_ids,
                                                    const int* tables, int num_heads, int num_kv_heads, int block_size,
                                                    int num_blocks, float scale, unsigned char* smem)
{
    using T = storage_t<DT>;
    constexpr int CPR = D / 8;             // 16-byte chunks per row
    constexpr int MAT = KEYS * D;          // elements of one K or V tile
    constexpr int LOADS = KEYS * CPR / kMmaThreads;
    static_assert(KEYS % 16 == 0 && D % 16 == 0 && KEYS * CPR % kMmaThreads == 0, "whole mma tiles and loads");
    static_assert(kMmaRows * D <= 2 * MAT, "Q's staging fits in the second stage");
    T* tiles_smem = reinterpret_cast<T*>(smem);                         // [stage][K, V][KEYS][D]
    int* valid = reinterpret_cast<int*>(smem + 4 * MAT * sizeof(T));    // [stage][KEYS]
    T* s_q = tiles_smem + 2 * MAT;                                      // [64][D], the second stage until tile 1

    const int* item = items + static_cast<int64_t>(blockIdx.x) * kMmaItemInts;
    const int row_list = item[0], rows = item[1], key_begin = item[3], key_end = item[4], pos0 = item[5], out_row = item[6];
    const int* table = tables + item[2];
    const int kvh = blockIdx.y, G = num_heads / num_kv_heads, packed = rows * G;
    if (packed > kMmaRows || rows < 0) return; // uniform: a broken item writes nothing
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int64_t kv_stride = static_cast<int64_t>(num_kv_heads) * D;

    // ---- Q: packed pairs rounded to DT, swizzled; pairs past `packed` are zeros (computed, never written) ----
    for (int idx = tid; idx < kMmaRows * CPR; idx += kMmaThreads)
    {
        const int pr = idx / CPR, ch = idx % CPR;
        float v[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
        if (pr < packed)
        {
            const int r = pr / G, g = pr % G;
            const float* src = q + (static_cast<int64_t>(row_ids[row_list + r]) * num_heads + kvh * G + g) * D + ch * 8;
            const float4 a = load_float4(src), b = load_float4(src + 4);
            v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
        }
        uint4 packed16;
        packed16.x = pack2<DT>(v[0], v[1]);
        packed16.y = pack2<DT>(v[2], v[3]);
        packed16.z = pack2<DT>(v[4], v[5]);
        packed16.w = pack2<DT>(v[6], v[7]);
        *reinterpret_cast<uint4*>(s_q + mma_swizzle<D>(pr, ch)) = packed16;
    }

    // ---- K/V tiles: KEYS keys from their pages, one cp.async group per tile ----
    auto load_tile = [&](int tile, int stage) {
        T* sk = tiles_smem + stage * 2 * MAT;
        T* sv = sk + MAT;
        const int base = key_begin + tile * KEYS;
#pragma unroll
        for (int c = 0; c < LOADS; ++c)
        {
            const int chunk = tid + c * kMmaThreads;
            const int j = chunk / CPR, ch = chunk % CPR, t = base + j;
            int64_t row = -1;
            if (t < key_end)
            {
                const int blk = table[t / block_size];
                if (blk >= 0 && blk < num_blocks)
                    row = (static_cast<int64_t>(blk) * block_size + t % block_size) * kv_stride + static_cast<int64_t>(kvh) * D;
            }
            const bool ok = row >= 0;
            cp_async16_zfill(sk + mma_swizzle<D>(j, ch), ok ? k_cache + row + ch * 8 : k_cache, ok ? 16 : 0);
            cp_async16_zfill(sv + mma_swizzle<D>(j, ch), ok ? v_cache + row + ch * 8 : v_cache, ok ? 16 : 0);
            if (ch == 0) valid[stage * KEYS + j] = ok; // read after the tile's barrier, like the rows
        }
        cp_async_commit();
    };

    const int tiles = key_end > key_begin ? (key_end - key_begin + KEYS - 1) / KEYS : 0;
    if (tiles > 0) load_tile(0, 0);
    __syncthreads(); // s_q is written

    // A fragments of the warp's 16 packed rows, every 16-dim k-step: matrices (rows 0-7 | 8-15) x (dims lo | hi).
    uint32_t qf[D / 16][4];
    {
        const int r = warp * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) ldmatrix_x4(qf[kk], s_q + mma_swizzle<D>(r, kk * 2 + (lane >> 4)));
    }
    __syncthreads(); // s_q's stage is free for tile 1

    // This lane's two packed rows (g and g + 8 of the warp's 16) and the positions they see up to.
    const int g4 = lane >> 2, c4 = lane & 3;
    int pos[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) pos[i] = pos0 >= kMmaNoMask ? INT_MAX : pos0 + (warp * 16 + g4 + 8 * i) / G;
    const float scale_log2 = scale * 1.4426950408889634f;
    float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.f, 0.f};
    float acc[D / 8][4];
#pragma unroll
    for (int n = 0; n < D / 8; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.f;

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
        __syncthreads(); // this tile's K, V and validity are in shared memory for every thread
        const T* sk = tiles_smem + stage * 2 * MAT;
        const T* sv = sk + MAT;

        // ---- S = Q K^T: an ldmatrix.x4 gives the B fragments of two 8-key n-tiles for one k-step ----
        float s[KEYS / 8][4];
#pragma unroll
        for (int n = 0; n < KEYS / 8; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk)
#pragma unroll
            for (int n2 = 0; n2 < KEYS / 16; ++n2)
            {
                uint32_t b[4]; // matrices: (keys 0-7, dims lo), (keys 0-7, dims hi), (keys 8-15, lo), (keys 8-15, hi)
                ldmatrix_x4(b, sk + mma_swizzle<D>(n2 * 16 + (lane & 7) + ((lane >> 4) << 3), kk * 2 + ((lane >> 3) & 1)));
                mma_m16n8k16<DT>(s[2 * n2], qf[kk], b[0], b[1]);
                mma_m16n8k16<DT>(s[2 * n2 + 1], qf[kk], b[2], b[3]);
            }

        // ---- mask, scale, online softmax: element e of n-tile n is row g4 + 8 (e / 2), key n 8 + 2 c4 + e % 2 ----
        const int base = key_begin + tile * KEYS;
        float mx[2] = {m_run[0], m_run[1]};
#pragma unroll
        for (int n = 0; n < KEYS / 8; ++n)
#pragma unroll
            for (int e = 0; e < 4; ++e)
            {
                const int j = n * 8 + 2 * c4 + (e & 1);
                const bool seen = valid[stage * KEYS + j] && base + j <= pos[e >> 1];
                s[n][e] = seen ? s[n][e] * scale_log2 : -INFINITY;
                mx[e >> 1] = fmaxf(mx[e >> 1], s[n][e]);
            }
        float alpha[2];
#pragma unroll
        for (int i = 0; i < 2; ++i)
        {
            mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 1)); // the quad holding the row
            mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 2));
            alpha[i] = mx[i] == -INFINITY ? 1.f : exp2f(m_run[i] - mx[i]); // exp2f(-inf) = 0: the first seen keys
            m_run[i] = mx[i];
            l_run[i] *= alpha[i];
        }
#pragma unroll
        for (int n = 0; n < KEYS / 8; ++n)
#pragma unroll
            for (int e = 0; e < 4; ++e)
            {
                const float m = mx[e >> 1];
                const float p = m == -INFINITY ? 0.f : exp2f(s[n][e] - m);
                s[n][e] = p;
                l_run[e >> 1] += p;
            }
#pragma unroll
        for (int n = 0; n < D / 8; ++n)
        {
            acc[n][0] *= alpha[0], acc[n][1] *= alpha[0];
            acc[n][2] *= alpha[1], acc[n][3] *= alpha[1];
        }

        // ---- O += P V: the C fragments of n-tiles 2kk, 2kk + 1 are the A fragment of key step kk ----
#pragma unroll
        for (int kk = 0; kk < KEYS / 16; ++kk)
        {
            const uint32_t a[4] = {pack2<DT>(s[2 * kk][0], s[2 * kk][1]), pack2<DT>(s[2 * kk][2], s[2 * kk][3]),
                                   pack2<DT>(s[2 * kk + 1][0], s[2 * kk + 1][1]), pack2<DT>(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
            for (int n2 = 0; n2 < D / 16; ++n2)
            {
                uint32_t b[4]; // transposed: (keys 0-7, dims lo), (keys 8-15, lo), (keys 0-7, hi), (keys 8-15, hi)
                ldmatrix_x4_trans(b, sv + mma_swizzle<D>(kk * 16 + (lane & 7) + (((lane >> 3) & 1) << 3), n2 * 2 + (lane >> 4)));
                mma_m16n8k16<DT>(acc[2 * n2], a, b[0], b[1]);
                mma_m16n8k16<DT>(acc[2 * n2 + 1], a, b[2], b[3]);
            }
        }
        __syncthreads(); // the stage is free for the load two tiles on
    }

    // ---- outputs: o = acc / l, lse = (m + log2 l) ln 2; the quad's partial sums first ----
#pragma unroll
    for (int i = 0; i < 2; ++i)
    {
        float l = l_run[i];
        l += __shfl_xor_sync(0xffffffffu, l, 1);
        l += __shfl_xor_sync(0xffffffffu, l, 2);
        const int pr = warp * 16 + g4 + 8 * i;
        if (pr >= packed) continue;
        const int r = pr / G, g = pr % G;
        const int64_t out = static_cast<int64_t>(out_row + r) * num_heads + kvh * G + g;
        const float inv = l > 0.f ? 1.f / l : 0.f;
#pragma unroll
        for (int n = 0; n < D / 8; ++n)
        {
            float2 v;
            v.x = acc[n][2 * i] * inv;
            v.y = acc[n][2 * i + 1] * inv;
            *reinterpret_cast<float2*>(o + out * D + n * 8 + 2 * c4) = v;
        }
        if (c4 == 0) lse[out] = l > 0.f ? (m_run[i] + log2f(l)) * 0.6931471805599453f : -INFINITY;
    }
}

__device__ __forceinline__ void attention_merge_slots(float* o, float* lse, const float* o_partial, const float* lse_partial,
                                                      const int* slot_starts, const int* slots, int rows, int num_heads,
                                                      int head_dim)
{
    const int64_t pairs = static_cast<int64_t>(rows) * num_heads;
    for (int64_t rh = blockIdx.x; rh < pairs; rh += gridDim.x)
    {
        const int r = static_cast<int>(rh / num_heads), h = static_cast<int>(rh % num_heads);
        const int* list = slots + slot_starts[r];
        const int n = slot_starts[r + 1] - slot_starts[r];
        merge_partials(
            o + rh * head_dim, lse + rh, n, head_dim,
            [&](int z) { return lse_partial[static_cast<int64_t>(list[z]) * num_heads + h]; },
            [&](int z) { return o_partial + (static_cast<int64_t>(list[z]) * num_heads + h) * head_dim; });
    }
}
} // namespace ops

#define PAGED_ATTENTION_MMA_ENTRY(suffix, DT, D, KEYS)                                                                \
    extern "C" __global__ void __launch_bounds__(ops::kMmaThreads) paged_attention_mma_hd##D##_k##KEYS##_##suffix(    \
        float* o, float* lse, const float* q, const storage_t<DT>* k_cache, const storage_t<DT>* v_cache,              \
        const int* items, const int* row_ids, const int* tables, int num_items, int num_heads, int num_kv_heads,       \
        int head_dim, int block_size, int num_blocks, float scale)                                                     \
    {                                                                                                                  \
        KERNELS_DYNAMIC_SMEM(paged_attention_mma_smem);                                                                \
        if (static_cast<int>(blockIdx.x) >= num_items || head_dim != D || num_kv_heads <= 0 ||                          \
            num_heads % num_kv_heads != 0 || static_cast<int>(blockIdx.y) >= num_kv_heads || block_size <= 0 ||        \
            blockDim.x != ops::kMmaThreads)                                                                            \
            return;                                                                                                    \
        ops::paged_attention_mma<DT, D, KEYS>(o, lse, q, k_cache, v_cache, items, row_ids, tables, num_heads,          \
                                              num_kv_heads, block_size, num_blocks, scale, paged_attention_mma_smem);  \
    }
PAGED_ATTENTION_MMA_ENTRY(f16, DType::F16, 64, 32)
PAGED_ATTENTION_MMA_ENTRY(f16, DType::F16, 64, 64)
PAGED_ATTENTION_MMA_ENTRY(f16, DType::F16, 128, 32)
PAGED_ATTENTION_MMA_ENTRY(f16, DType::F16, 128, 64)
PAGED_ATTENTION_MMA_ENTRY(bf16, DType::BF16, 64, 32)
PAGED_ATTENTION_MMA_ENTRY(bf16, DType::BF16, 64, 64)
PAGED_ATTENTION_MMA_ENTRY(bf16, DType::BF16, 128, 32)
PAGED_ATTENTION_MMA_ENTRY(bf16, DType::BF16, 128, 64)
#undef PAGED_ATTENTION_MMA_ENTRY

extern "C" __global__ void attention_merge_slots_f32(float* o, float* lse, const float* o_partial, const float* lse_partial,
                                                     const int* slot_starts, const int* slots, int rows, int num_heads,
                                                     int head_dim)
{
    ops::attention_merge_slots(o, lse, o_partial, lse_partial, slot_starts, slots, rows, num_heads, head_dim);
}
