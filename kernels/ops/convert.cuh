// convert: fp32 activations rounded to the 16-bit type of the weights they meet, the input of a cuBLASLt GEMM
// (A and B of one 16-bit type, fp32 accumulation and output; issue 16's dense GEMM path).
//
// Math:    dst[j] = round_to_nearest_even(src[j]) in DT  for j < n (__float2half_rn / __float2bfloat16_rn: the CPU's
//          (Half)x and DTypeConvert.SingleToBFloat16, bit for bit; overflow gives inf, NaN stays NaN)
// Pointers:
//   dst    [n]   DT (f16 or bf16), written
//   src    [n]   fp32, read
// Layout:  flat, contiguous (any tensor viewed flat).
// Grid:    1-D grid stride; any gridDim.x >= 1 (use min(ceil_div(ceil_div(n, 4), blockDim.x), 65535)).
// Block:   any blockDim.x >= 1 (256 recommended). When src is 16-byte and dst 8-byte aligned, a thread step converts
//          a float4 into four 16-bit values (128-bit load, 64-bit store); the n % 4 tail is scalar.
// Empty:   n == 0 writes nothing; the launcher skips the launch.
// Aliasing: dst and src must not overlap.
#pragma once

#include "common.cuh"

namespace ops
{
template <DType DT>
__device__ __forceinline__ storage_t<DT> round_to(float v);
template <>
__device__ __forceinline__ __half round_to<DType::F16>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 round_to<DType::BF16>(float v) { return __float2bfloat16_rn(v); }

template <DType DT>
__device__ __forceinline__ void convert_from_f32(storage_t<DT>* dst, const float* src, int n)
{
    const int64_t start = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
    int64_t scalar_from = 0;
    if (is_aligned16(src) && (reinterpret_cast<uintptr_t>(dst) & 7) == 0)
    {
        const int64_t n4 = n / 4;
        for (int64_t j = start; j < n4; j += stride)
        {
            const float4 v = load_float4(src + 4 * j);
            struct alignas(8) Four
            {
                storage_t<DT> e[4];
            } out;
            out.e[0] = round_to<DT>(v.x);
            out.e[1] = round_to<DT>(v.y);
            out.e[2] = round_to<DT>(v.z);
            out.e[3] = round_to<DT>(v.w);
            *reinterpret_cast<Four*>(dst + 4 * j) = out;
        }
        scalar_from = 4 * n4;
    }
    for (int64_t j = scalar_from + start; j < n; j += stride) dst[j] = round_to<DT>(src[j]);
}
} // namespace ops

extern "C" __global__ void convert_f32_to_f16(__half* dst, const float* src, int n)
{
    ops::convert_from_f32<DType::F16>(dst, src, n);
}

extern "C" __global__ void convert_f32_to_bf16(__nv_bfloat16* dst, const float* src, int n)
{
    ops::convert_from_f32<DType::BF16>(dst, src, n);
}
