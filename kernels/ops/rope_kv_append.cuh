// rope_kv_append: rope then kv_append in one launch (issue 16 item 1), reading q, k and v from separate buffers or
// from the rows of one q|k|v GEMM: q rotated into a dense q_out, the rotated k row and the v row written into the
// token's slot of one layer's paged cache, as rope_f32 then kv_append_* do.
//
// Math:    rope_f32's (rope.cuh: the same rope_tables and rope_rotate) and kv_append's (the same from_float rounding),
//          so q_out and the cache rows are the same bits as the two launches.
// Pointers (rope_kv_append_{f32,f16,bf16}):
//   q_out      [num_tokens, num_q_heads * head_dim]   fp32, written (may equal q when q_stride = num_q_heads * head_dim)
//   q          rows of num_q_heads * head_dim, q_stride floats apart    fp32, read
//   k, v       rows of kv_dim, kv_stride floats apart                   fp32, read; kv_dim = num_kv_heads * head_dim
//              (separate buffers: q_stride = q_dim, kv_stride = kv_dim; one [T, q_dim + 2 kv_dim] GEMM output: q, k, v
//              at column 0, q_dim and q_dim + kv_dim, both strides q_dim + 2 kv_dim)
//   k_cache, v_cache [num_slots, kv_dim]              DT, written at rows slots[t] (a negative slot, or one >= num_slots,
//                                                     writes no cache row; q_out is still written)
//   positions  [num_tokens]                           int32, 0 <= pos < 2^24
//   inv_freq   [head_dim / 2]                         fp32
//   slots      [num_tokens]                           int32
// Grid:    one block per token, grid-stride over tokens (min(num_tokens, 65535)); Block: any multiple of 32 (128).
//          Threads stride over the token's (head, i) pairs of q's heads then k's, then over the v row.
// Preconditions (launcher-checked): head_dim even, 2 <= head_dim <= ROPE_MAX_HEAD_DIM (otherwise nothing is written);
//          strides >= the row widths. k is not written back (the cache holds the rotated rows).
// Aliasing: q_out overlaps q only as the same rows in place; the caches overlap nothing else.
#pragma once

#include "common.cuh"
#include "kv_append.cuh"
#include "rope.cuh"

namespace ops
{
template <DType DT>
__device__ __forceinline__ void rope_kv_append(float* q_out, const float* q, const float* k, const float* v, int q_stride, int kv_stride,
                                               storage_t<DT>* k_cache, storage_t<DT>* v_cache, const int* positions,
                                               const float* inv_freq, const int* slots, int num_tokens, int num_q_heads,
                                               int num_kv_heads, int head_dim, int num_slots)
{
    __shared__ float cos_half[ROPE_MAX_HEAD_DIM / 2];
    __shared__ float sin_half[ROPE_MAX_HEAD_DIM / 2];

    if (!rope_head_dim_ok(head_dim)) return; // uniform: whole block leaves
    const int half = head_dim / 2;
    const int pairs = (num_q_heads + num_kv_heads) * half;
    const int q_dim = num_q_heads * head_dim, kv_dim = num_kv_heads * head_dim;

    for (int t = blockIdx.x; t < num_tokens; t += gridDim.x)
    {
        __syncthreads(); // the previous token's readers are done with the tables
        rope_tables(cos_half, sin_half, static_cast<float>(positions[t]), inv_freq, half);
        __syncthreads();

        const int slot = slots[t];
        const bool store = slot >= 0 && slot < num_slots;
        storage_t<DT>* kd = k_cache + static_cast<int64_t>(store ? slot : 0) * kv_dim;
        storage_t<DT>* vd = v_cache + static_cast<int64_t>(store ? slot : 0) * kv_dim;
        const float* qs = q + static_cast<int64_t>(t) * q_stride;
        const float* ks = k + static_cast<int64_t>(t) * kv_stride;
        float* qd = q_out + static_cast<int64_t>(t) * q_dim;
        for (int p = threadIdx.x; p < pairs; p += blockDim.x)
        {
            const int h = p / half;
            const int i = p - h * half;
            if (h < num_q_heads)
            {
                const int j = h * head_dim + i;
                float y0, y1;
                rope_rotate(qs[j], qs[j + half], cos_half[i], sin_half[i], y0, y1);
                qd[j] = y0;
                qd[j + half] = y1;
            }
            else if (store)
            {
                const int j = (h - num_q_heads) * head_dim + i;
                float y0, y1;
                rope_rotate(ks[j], ks[j + half], cos_half[i], sin_half[i], y0, y1);
                kd[j] = from_float<DT>(y0);
                kd[j + half] = from_float<DT>(y1);
            }
        }
        if (store)
        {
            const float* vs = v + static_cast<int64_t>(t) * kv_stride;
            for (int i = threadIdx.x; i < kv_dim; i += blockDim.x) vd[i] = from_float<DT>(vs[i]);
        }
    }
}
} // namespace ops

#define ROPE_KV_APPEND_ENTRY(suffix, DT)                                                                             \
    extern "C" __global__ void rope_kv_append_##suffix(float* q_out, const float* q, const float* k, const float* v,  \
                                                       int q_stride, int kv_stride, storage_t<DT>* k_cache,          \
                                                       storage_t<DT>* v_cache, const int* positions,                \
                                                       const float* inv_freq, const int* slots, int num_tokens,     \
                                                       int num_q_heads, int num_kv_heads, int head_dim, int num_slots) \
    {                                                                                                                \
        ops::rope_kv_append<DT>(q_out, q, k, v, q_stride, kv_stride, k_cache, v_cache, positions, inv_freq, slots,   \
                                num_tokens, num_q_heads, num_kv_heads, head_dim, num_slots);                         \
    }
KERNELS_FOR_EACH_DTYPE(ROPE_KV_APPEND_ENTRY)
#undef ROPE_KV_APPEND_ENTRY
