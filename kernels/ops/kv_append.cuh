// kv_append: writes a step's new key and value rows (fp32, after RoPE) into their slots of one layer's paged KV cache.
//
// Math:    k_cache[slots[t], :] = DT(k[t, :]),  v_cache[slots[t], :] = DT(v[t, :])   (round to nearest even; exact
//          for f32). The same rounding as __float2half_rn / __float2bfloat16_rn and DTypeConvert on the CPU.
// Pointers (kv_append_{f32,f16,bf16}):
//   k_cache, v_cache [num_slots, kv_dim]  DT, written: one layer's blocks [num_blocks, block_size, kv_dim] viewed as
//                                         rows; slot = block * block_size + position % block_size
//   k, v             [num_tokens, kv_dim] fp32, read
//   slots            [num_tokens]         int32, read: the destination row of each token; a negative slot (padding)
//                                         or one >= num_slots writes nothing
// Layout:  dense row-major; kv_dim = num_kv_heads * head_dim; 64-bit offsets into the cache.
// Grid:    min(num_tokens, 65535) blocks, grid-stride over tokens; Block: any multiple of 32 (256 recommended), each
//          thread a strided set of the row's elements.
// Empty:   num_tokens == 0 or kv_dim == 0 writes nothing; the launcher skips the launch.
// Aliasing: k and v may be the same buffer (then both caches get the same rows); the caches must not overlap k or v.
#pragma once

#include "common.cuh"

namespace ops
{
template <DType DT>
__device__ __forceinline__ storage_t<DT> from_float(float v);
template <>
__device__ __forceinline__ float from_float<DType::F32>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<DType::F16>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<DType::BF16>(float v) { return __float2bfloat16_rn(v); }

template <DType DT>
__device__ __forceinline__ void kv_append(storage_t<DT>* k_cache, storage_t<DT>* v_cache, const float* k, const float* v,
                                          const int* slots, int num_tokens, int kv_dim, int num_slots)
{
    for (int t = blockIdx.x; t < num_tokens; t += gridDim.x)
    {
        const int slot = slots[t];
        if (slot < 0 || slot >= num_slots) continue;
        storage_t<DT>* kd = k_cache + static_cast<int64_t>(slot) * kv_dim;
        storage_t<DT>* vd = v_cache + static_cast<int64_t>(slot) * kv_dim;
        const float* ks = k + static_cast<int64_t>(t) * kv_dim;
        const float* vs = v + static_cast<int64_t>(t) * kv_dim;
        for (int i = threadIdx.x; i < kv_dim; i += blockDim.x)
        {
            kd[i] = from_float<DT>(ks[i]);
            vd[i] = from_float<DT>(vs[i]);
        }
    }
}
} // namespace ops

#define KV_APPEND_ENTRY(suffix, DT)                                                                                  \
    extern "C" __global__ void kv_append_##suffix(storage_t<DT>* k_cache, storage_t<DT>* v_cache, const float* k,    \
                                                  const float* v, const int* slots, int num_tokens, int kv_dim,      \
                                                  int num_slots)                                                     \
    {                                                                                                                \
        ops::kv_append<DT>(k_cache, v_cache, k, v, slots, num_tokens, kv_dim, num_slots);                            \
    }
KERNELS_FOR_EACH_DTYPE(KV_APPEND_ENTRY)
#undef KV_APPEND_ENTRY
