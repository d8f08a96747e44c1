// rms_norm_quant_int8: RMSNorm fused with W4A8's per-token int8 activation quantization (Int8Activations.cs on the CPU).
//
// Math:    n[t, i]     = (x[t, i] * inv_rms[t]) * float(w[i])        exactly as rms_norm (same reduction, same products)
//          amax[t]     = max_i |n[t, i]|;  x_scale[t] = amax / 127 (IEEE division; 0 for an all-zero row)
//          xq[t, i]    = clamp(__float2int_rn(__fmul_rn(n[t, i], __fdiv_rn(127, amax))), -127, 127)
//          x_sum[t]    = sum_i xq[t, i]  (int; reduced in fp32, exact because |sum| <= 127 * dim < 2^24 for dim <= 132000)
// Pointers:
//   xq       [num_tokens, dim_padded]  int8, written; columns dim..dim_padded-1 are written as 0 (the GEMM's K padding)
//   x_scale  [num_tokens]              fp32, written
//   x_sum    [num_tokens]              int32, written (the per-channel W4A8 zero term)
//   x        [num_tokens, dim]         fp32, read
//   w        [dim]                     DT (f32 | f16 | bf16), read
// Grid/block: as rms_norm (one block per row, grid-stride; blockDim.x % 32 == 0, <= 1024; 256 recommended).
// Numerics: given the same normalized row, xq, x_scale and x_sum equal the CPU's bit for bit (the normalized row
//          itself differs from the CPU's RmsNorm by the sum-of-squares rounding, as rms_norm documents).
// Preconditions (launcher-checked): eps > 0, dim_padded >= dim, dim_padded % 32 == 0, dim <= 132000, finite x.
//
// quantize_int8_f32(xq, x_scale, x_sum, x, num_tokens, dim, dim_padded): the same quantization of x itself (no norm),
//          for the inputs of W4A8 layers that no RMSNorm produces (the o projection's attention output, the down
//          projection's SwiGLU output): Int8Activations.QuantizeRow's bytes, scale and sum bit for bit. Same grid/block.
#pragma once

#include "common.cuh"

namespace ops
{
template <DType DT>
__device__ __forceinline__ float rms_norm_value(const float* xr, const storage_t<DT>* w, int i, float inv_rms)
{
    return __fmul_rn(__fmul_rn(xr[i], inv_rms), load_as_float<DT>(w, i));
}

// Row t's per-token int8 quantization of the values value(i), i < dim (Int8Activations): codes (zero-padded to
// dim_padded), scale and code sum. Every thread of the block calls it (block reductions).
template <typename Value>
__device__ __forceinline__ void quantize_row_int8(int8_t* qr, float* x_scale, int* x_sum, int t, int dim, int dim_padded, Value value)
{
    float amax = 0.0f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) amax = fmaxf(amax, fabsf(value(i)));
    amax = block_reduce_max(amax);
    const float inverse = amax > 0.0f ? __fdiv_rn(127.0f, amax) : 0.0f;

    float sum_q = 0.0f;
    for (int i = threadIdx.x; i < dim_padded; i += blockDim.x)
    {
        int q = 0;
        if (i < dim)
        {
            q = __float2int_rn(__fmul_rn(value(i), inverse));
            q = q < -127 ? -127 : (q > 127 ? 127 : q);
        }
        qr[i] = static_cast<int8_t>(q);
        sum_q += static_cast<float>(q);
    }
    sum_q = block_reduce_sum(sum_q);
    if (threadIdx.x == 0)
    {
        x_scale[t] = amax > 0.0f ? __fdiv_rn(amax, 127.0f) : 0.0f;
        x_sum[t] = static_cast<int>(sum_q);
    }
}

template <DType DT>
__device__ __forceinline__ void rms_norm_quant_int8(int8_t* xq, float* x_scale, int* x_sum, const float* x,
                                                    const storage_t<DT>* w, int num_tokens, int dim, int dim_padded,
                                                    float eps)
{
    for (int t = blockIdx.x; t < num_tokens; t += gridDim.x)
    {
        const float* xr = x + static_cast<int64_t>(t) * dim;
        float sum_sq = 0.0f;
        for (int i = threadIdx.x; i < dim; i += blockDim.x) sum_sq += xr[i] * xr[i];
        sum_sq = block_reduce_sum(sum_sq);
        const float inv_rms = 1.0f / sqrtf(sum_sq / static_cast<float>(dim) + eps);
        quantize_row_int8(xq + static_cast<int64_t>(t) * dim_padded, x_scale, x_sum, t, dim, dim_padded,
                          [&](int i) { return rms_norm_value<DT>(xr, w, i, inv_rms); });
    }
}

__device__ __forceinline__ void quantize_int8(int8_t* xq, float* x_scale, int* x_sum, const float* x, int num_tokens, int dim,
                                              int dim_padded)
{
    for (int t = blockIdx.x; t < num_tokens; t += gridDim.x)
    {
        const float* xr = x + static_cast<int64_t>(t) * dim;
        quantize_row_int8(xq + static_cast<int64_t>(t) * dim_padded, x_scale, x_sum, t, dim, dim_padded, [&](int i) { return xr[i]; });
    }
}
} // namespace ops

#define RMS_NORM_QUANT_ENTRY(suffix, DT)                                                                          \
    extern "C" __global__ void rms_norm_quant_int8_##suffix(int8_t* xq, float* x_scale, int* x_sum, const float* x, \
                                                            const storage_t<DT>* w, int num_tokens, int dim,       \
                                                            int dim_padded, float eps)                             \
    {                                                                                                               \
        ops::rms_norm_quant_int8<DT>(xq, x_scale, x_sum, x, w, num_tokens, dim, dim_padded, eps);                  \
    }
KERNELS_FOR_EACH_DTYPE(RMS_NORM_QUANT_ENTRY)
#undef RMS_NORM_QUANT_ENTRY

extern "C" __global__ void quantize_int8_f32(int8_t* xq, float* x_scale, int* x_sum, const float* x, int num_tokens, int dim,
                                             int dim_padded)
{
    ops::quantize_int8(xq, x_scale, x_sum, x, num_tokens, dim, dim_padded);
}
