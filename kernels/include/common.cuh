// Shared device helpers, written once: dtype loads, ceil_div, 128-bit vector access, warp and block reductions.
//
// defines: DTypeTraits<DT>, storage_t<DT>, load_as_float<DT>, kVec128<DT>, load128_as_float<DT>, is_aligned16,
//          load_float4, store_float4, ceil_div, SumOp, MaxOp, warp_reduce, block_reduce, block_reduce_sum,
//          block_reduce_max, KERNELS_DYNAMIC_SMEM
#pragma once

#include <cmath>
#include <cstdint>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "abi.h"

// A kernel's dynamic shared memory as 16-byte aligned bytes, declared through this one macro (an emulation on the
// host, tests/kernels-emu, supplies its own definition).
#ifndef KERNELS_DYNAMIC_SMEM
#define KERNELS_DYNAMIC_SMEM(name) extern __shared__ __align__(16) unsigned char name[]
#endif

// ---------------------------------------------------------------------------------------------------------------
// Element types
// ---------------------------------------------------------------------------------------------------------------

template <DType DT>
struct DTypeTraits;

template <>
struct DTypeTraits<DType::F32>
{
    using storage = float;
    __device__ __forceinline__ static float to_float(float v) { return v; }
};

template <>
struct DTypeTraits<DType::F16>
{
    using storage = __half;
    __device__ __forceinline__ static float to_float(__half v) { return __half2float(v); }
};

// bf16 -> fp32 is exact (bf16 is the top half of an fp32), the same as DTypeConvert.BFloat16ToSingle on the CPU.
template <>
struct DTypeTraits<DType::BF16>
{
    using storage = __nv_bfloat16;
    __device__ __forceinline__ static float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
};

template <DType DT>
using storage_t = typename DTypeTraits<DT>::storage;

template <DType DT>
__device__ __forceinline__ float load_as_float(const storage_t<DT>* p, int64_t i)
{
    return DTypeTraits<DT>::to_float(p[i]);
}

// ---------------------------------------------------------------------------------------------------------------
// Sizes and 128-bit vector access
// ---------------------------------------------------------------------------------------------------------------

template <typename T>
__host__ __device__ __forceinline__ constexpr T ceil_div(T a, T b)
{
    return (a + b - 1) / b;
}

// Elements of DT in one 128-bit load: 4 for f32, 8 for f16/bf16.
template <DType DT>
constexpr int kVec128 = 16 / static_cast<int>(sizeof(storage_t<DT>));

__device__ __forceinline__ bool is_aligned16(const void* p)
{
    return (reinterpret_cast<uintptr_t>(p) & 15u) == 0;
}

// Precondition: p is 16-byte aligned.
template <DType DT>
__device__ __forceinline__ void load128_as_float(const storage_t<DT>* p, float (&out)[kVec128<DT>])
{
    const uint4 raw = *reinterpret_cast<const uint4*>(p);
    const storage_t<DT>* e = reinterpret_cast<const storage_t<DT>*>(&raw);
#pragma unroll
    for (int j = 0; j < kVec128<DT>; ++j) out[j] = DTypeTraits<DT>::to_float(e[j]);
}

// Precondition: p is 16-byte aligned.
__device__ __forceinline__ float4 load_float4(const float* p)
{
    return *reinterpret_cast<const float4*>(p);
}

// Precondition: p is 16-byte aligned.
__device__ __forceinline__ void store_float4(float* p, float4 v)
{
    *reinterpret_cast<float4*>(p) = v;
}

// ---------------------------------------------------------------------------------------------------------------
// Reductions
//
// The summation order is fixed by blockDim.x alone (butterfly within warps, then over warps), so a given launch
// configuration is deterministic run to run; it is not the CPU reference's sequential order, so sums differ from
// the reference by rounding (tests use a relative + absolute tolerance).
// ---------------------------------------------------------------------------------------------------------------

struct SumOp
{
    static constexpr float identity = 0.0f;
    __device__ __forceinline__ float operator()(float a, float b) const { return a + b; }
};

// fmaxf returns the other operand when one is NaN, so a NaN input does not win a max reduction.
struct MaxOp
{
    static constexpr float identity = -INFINITY;
    __device__ __forceinline__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

// Every lane ends up with the reduction of all 32 lanes. Precondition: all 32 lanes of the warp are active.
template <typename Op>
__device__ __forceinline__ float warp_reduce(float v, Op op)
{
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, offset));
    return v;
}

// Every thread of the block gets the reduction of all threads' v.
// Preconditions: blockDim.x % 32 == 0, blockDim.x <= 1024, blockDim.y == blockDim.z == 1, and every thread of the
// block calls it (it contains __syncthreads). Safe to call several times in a row: the first barrier keeps a call
// from overwriting partials that the previous call's threads are still reading.
template <typename Op>
__device__ __forceinline__ float block_reduce(float v, Op op)
{
    __shared__ float partials[32];
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int num_warps = blockDim.x >> 5;

    v = warp_reduce(v, op);
    __syncthreads();
    if (lane == 0) partials[warp] = v;
    __syncthreads();
    // Every warp reduces the partials itself, so all threads hold the result without a broadcast barrier.
    v = lane < num_warps ? partials[lane] : Op::identity;
    return warp_reduce(v, op);
}

__device__ __forceinline__ float block_reduce_sum(float v) { return block_reduce(v, SumOp{}); }
__device__ __forceinline__ float block_reduce_max(float v) { return block_reduce(v, MaxOp{}); }
