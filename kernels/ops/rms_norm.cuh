// rms_norm: root-mean-square normalization of each fp32 row, scaled by a weight vector stored as f32, f16 or bf16.
//
// Math:    inv_rms[t] = 1 / sqrt(sum_i x[t, i]^2 / dim + eps)          (fp32 throughout)
//          y[t, i]    = (x[t, i] * inv_rms[t]) * float(w[i])           (two rounded fp32 products, in this order)
// Pointers:
//   y      [num_tokens, dim]    fp32, written (may equal x: in place is allowed)
//   x      [num_tokens, dim]    fp32, read
//   w      [dim]                DT (f32 | f16 | bf16), read
// Layout:  dense row-major; row t starts at t * dim (64-bit offsets).
// Grid:    one block per row, grid-stride over rows (any gridDim.x >= 1; use min(num_tokens, 65535)).
// Block:   blockDim.x % 32 == 0 and <= 1024 (block_reduce's precondition), blockDim.y = z = 1; threads stride over
//          the row. The summation order depends on blockDim.x only, so fix it in the launcher (256 recommended;
//          1024 for dim >= 8192).
// Numerics: the sum of squares is accumulated per thread (FMA-contracted) and then tree-reduced, so it differs from
//          the CPU reference RmsNorm's sequential sum by rounding; 1/sqrt uses IEEE sqrtf and division (no rsqrtf,
//          no fast math) and the two products are __fmul_rn, so given the same sum the result is bit-identical.
// Empty:   num_tokens == 0 or dim == 0 writes nothing; the launcher skips the launch. A row of zeros gives
//          inv_rms = 1/sqrt(eps) and a zero output row.
// Preconditions (launcher-checked): eps > 0.
#pragma once

#include "common.cuh"
#include "convert.cuh"

namespace ops
{
// The norm of each row, handed to store(t, i, value) once per element (the entries below write it as fp32, and as
// fp32 plus a 16-bit copy).
template <DType DT, class Store>
__device__ __forceinline__ void rms_norm_rows(const float* x, const storage_t<DT>* w, int num_tokens, int dim, float eps, Store store)
{
    // The row loop bound depends on blockIdx only, so every thread of a block runs the same iterations and the
    // barriers inside block_reduce_sum are reached by all of them.
    for (int t = blockIdx.x; t < num_tokens; t += gridDim.x)
    {
        const float* xr = x + static_cast<int64_t>(t) * dim;

        float sum_sq = 0.0f;
        for (int i = threadIdx.x; i < dim; i += blockDim.x) sum_sq += xr[i] * xr[i];
        sum_sq = block_reduce_sum(sum_sq);

        const float inv_rms = 1.0f / sqrtf(sum_sq / static_cast<float>(dim) + eps);
        // In place is safe: each thread rewrites only the elements it read above, after the reduction's barriers.
        for (int i = threadIdx.x; i < dim; i += blockDim.x)
            store(t, i, __fmul_rn(__fmul_rn(xr[i], inv_rms), load_as_float<DT>(w, i)));
    }
}

template <DType DT>
__device__ __forceinline__ void rms_norm(float* y, const float* x, const storage_t<DT>* w, int num_tokens, int dim,
                                         float eps)
{
    rms_norm_rows<DT>(x, w, num_tokens, dim, eps, [&](int t, int i, float v) { y[static_cast<int64_t>(t) * dim + i] = v; });
}

// rms_norm plus y16 = round_to<OT>(y) (convert_f32_to_*'s rounding): the fp32 row and the 16-bit input of a cuBLASLt
// GEMM in one launch, the same bits as rms_norm then convert_f32_to_{f16,bf16}.
template <DType DT, DType OT>
__device__ __forceinline__ void rms_norm_to16(float* y, storage_t<OT>* y16, const float* x, const storage_t<DT>* w, int num_tokens,
                                              int dim, float eps)
{
    rms_norm_rows<DT>(x, w, num_tokens, dim, eps, [&](int t, int i, float v) {
        const int64_t at = static_cast<int64_t>(t) * dim + i;
        y[at] = v;
        y16[at] = round_to<OT>(v);
    });
}
} // namespace ops

#define RMS_NORM_ENTRY(suffix, DT)                                                                                 \
    extern "C" __global__ void rms_norm_##suffix(float* y, const float* x, const storage_t<DT>* w, int num_tokens, \
                                                 int dim, float eps)                                              \
    {                                                                                                              \
        ops::rms_norm<DT>(y, x, w, num_tokens, dim, eps);                                                          \
    }
KERNELS_FOR_EACH_DTYPE(RMS_NORM_ENTRY)
#undef RMS_NORM_ENTRY

// rms_norm_{f32,f16,bf16}_to_{f16,bf16}(y, y16, x, w, num_tokens, dim, eps): rms_norm, and y16 [num_tokens, dim] the
// same values rounded to the 16-bit type (as convert_f32_to_*). Grid and block as rms_norm; y16 overlaps nothing.
#define RMS_NORM_TO16_ENTRY(wsuffix, DT, osuffix, OT)                                                                 \
    extern "C" __global__ void rms_norm_##wsuffix##_to_##osuffix(float* y, storage_t<OT>* y16, const float* x,       \
                                                                 const storage_t<DT>* w, int num_tokens, int dim,      \
                                                                 float eps)                                           \
    {                                                                                                                \
        ops::rms_norm_to16<DT, OT>(y, y16, x, w, num_tokens, dim, eps);                                              \
    }
#define RMS_NORM_TO16_FOR_OUT(wsuffix, DT)                                                                           \
    RMS_NORM_TO16_ENTRY(wsuffix, DT, f16, DType::F16)                                                                \
    RMS_NORM_TO16_ENTRY(wsuffix, DT, bf16, DType::BF16)
KERNELS_FOR_EACH_DTYPE(RMS_NORM_TO16_FOR_OUT)
#undef RMS_NORM_TO16_FOR_OUT
#undef RMS_NORM_TO16_ENTRY
