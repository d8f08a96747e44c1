// embedding_gather: token ids -> fp32 rows of an embedding table stored as f32, f16 or bf16.
//
// Math:    out[t, :] = float(table[ids[t], :])            for 0 <= ids[t] < vocab
//          out[t, :] = 0                                  otherwise (see "Out-of-range ids")
// Pointers:
//   out    [num_tokens, dim]    fp32, written
//   table  [vocab, dim]         DT (f32 | f16 | bf16), read
//   ids    [num_tokens]         int32, read
// Layout:  dense row-major; row t of out starts at t * dim, row v of table at v * dim (64-bit offsets).
// Grid:    one block per token row, grid-stride over rows (any gridDim.x >= 1; use min(num_tokens, 65535)).
// Block:   threads stride over the row's dim columns; any blockDim.x >= 1 (256 recommended), blockDim.y = z = 1.
//          Uses 128-bit loads (8 f16/bf16 or 4 f32 per thread step) when dim % kVec128<DT> == 0 and table and out
//          are 16-byte aligned; scalar loads otherwise. Both paths give identical results.
// Numerics: exact (f16/bf16 -> fp32 widening is exact), bit-identical to the CPU reference Embedding.
// Out-of-range ids: the host validates ids; the kernel still guards id < 0 || id >= vocab and writes a zero row,
//          so a bad id can never read outside the table (the CPU reference throws instead).
// Empty:   num_tokens == 0 or dim == 0 writes nothing; the launcher skips the launch (a zero grid is an error).
// Aliasing: out must not overlap table or ids.
#pragma once

#include "common.cuh"

namespace ops
{
template <DType DT>
__device__ __forceinline__ void embedding_gather(float* out, const storage_t<DT>* table, const int* ids,
                                                 int num_tokens, int dim, int vocab)
{
    constexpr int kVec = kVec128<DT>;
    const bool vectorized = dim % kVec == 0 && is_aligned16(table) && is_aligned16(out);

    for (int t = blockIdx.x; t < num_tokens; t += gridDim.x)
    {
        const int id = ids[t];
        float* dst = out + static_cast<int64_t>(t) * dim;
        if (id < 0 || id >= vocab)
        {
            for (int i = threadIdx.x; i < dim; i += blockDim.x) dst[i] = 0.0f;
            continue;
        }
        const storage_t<DT>* src = table + static_cast<int64_t>(id) * dim;
        if (vectorized)
        {
            for (int i = threadIdx.x * kVec; i < dim; i += blockDim.x * kVec)
            {
                float v[kVec];
                load128_as_float<DT>(src + i, v);
#pragma unroll
                for (int j = 0; j < kVec; j += 4) store_float4(dst + i + j, make_float4(v[j], v[j + 1], v[j + 2], v[j + 3]));
            }
        }
        else
        {
            for (int i = threadIdx.x; i < dim; i += blockDim.x) dst[i] = load_as_float<DT>(src, i);
        }
    }
}
} // namespace ops

#define EMBEDDING_GATHER_ENTRY(suffix, DT)                                                                        \
    extern "C" __global__ void embedding_gather_##suffix(float* out, const storage_t<DT>* table, const int* ids, \
                                                         int num_tokens, int dim, int vocab)                      \
    {                                                                                                             \
        ops::embedding_gather<DT>(out, table, ids, num_tokens, dim, vocab);                                       \
    }
KERNELS_FOR_EACH_DTYPE(EMBEDDING_GATHER_ENTRY)
#undef EMBEDDING_GATHER_ENTRY
