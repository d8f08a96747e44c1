// dense_gemv: y = x . W^T (+ bias) on CUDA cores for a few rows of x (single-sequence and small-batch decode): every
// weight byte is read once, with enough 16-byte loads in flight per SM to stream W at memory bandwidth.
//
// Math:    y[m, n] = sum_k x[m, k] * float(w[n, k])  (+ float(bias[n]))     fp32 FMA; x is NOT rounded (unlike dense_gemm)
// Pointers:
//   y      [M, N]   fp32, written; must not overlap x, w or bias
//   x      [M, K]   fp32, read (small: every block re-reads it from L1/L2)
//   w      [N, K]   DT (f16 | bf16), read as stored
//   bias   [N]      DT, read, or null (0) for no bias
// Layout:  dense row-major, 64-bit offsets.
// Entries: dense_gemv_{f16,bf16}
// Grid:    (ceil_div(N, 16), ceil_div(M, 4)); Block: 256 threads = 8 warps; warp w of block b computes output features
//          n = 16 b + 2 w and 16 b + 2 w + 1 for the block's (up to) 4 rows m = 4 blockIdx.y + 0..3.
// Per warp: lanes stride K in chunks of 8 elements: one 16-byte load of each of the two W rows and two float4 loads of
//          each x row per chunk, two chunks in flight per lane; 2 x 4 accumulators per lane, then a butterfly sum.
//          When K % 8 != 0 (or a row is not 16-byte aligned) the lanes stride K one element at a time instead.
// Numerics: per output: each lane sums its k in increasing order (fp32 FMA), then lanes are added by a 5-step
//          butterfly; the CPU reference (MatMul.Multiply) sums the same products in 8-lane SIMD order, so results
//          differ by summation rounding only: |y - ref| <= ~K u32 sum_k |x w| (verify: 1e-5 of sum |x w|).
// Empty:   M == 0 or N == 0 writes nothing (the launcher skips the launch); K == 0 is rejected by the launcher.
// Preconditions (launcher-checked): K > 0; sizes as above. Any M works (grid y); the plan uses it for M <= 4 and
//          for any M when K % 8 != 0 (dense_gemm needs K % 8 == 0).
#pragma once

#include "common.cuh"

namespace ops
{
constexpr int kGemvWarps = 8;
constexpr int kGemvRowsPerWarp = 2; // output features per warp: x loads shared by two W rows
constexpr int kGemvM = 4;           // x rows per block (grid y covers larger M)

template <DType DT>
__device__ __forceinline__ void gemv_chunk(const storage_t<DT>* w0, const storage_t<DT>* w1, const float* x, int64_t ldx, int mRows,
                                           int64_t k, float (&acc)[kGemvRowsPerWarp][kGemvM])
{
    float a[8], b[8];
    load128_as_float<DT>(w0 + k, a);
    load128_as_float<DT>(w1 + k, b);
#pragma unroll
    for (int m = 0; m < kGemvM; ++m)
    {
        if (m < mRows)
        {
            const float4 lo = load_float4(x + m * ldx + k), hi = load_float4(x + m * ldx + k + 4);
            const float xv[8] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};
#pragma unroll
            for (int j = 0; j < 8; ++j)
            {
                acc[0][m] = fmaf(xv[j], a[j], acc[0][m]);
                acc[1][m] = fmaf(xv[j], b[j], acc[1][m]);
            }
        }
    }
}

template <DType DT>
__device__ __forceinline__ void dense_gemv(float* __restrict__ y, const float* __restrict__ x, const storage_t<DT>* __restrict__ w,
                                           const storage_t<DT>* __restrict__ bias, int M, int N, int K)
{
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int n0 = (blockIdx.x * kGemvWarps + warp) * kGemvRowsPerWarp;
    const int m0 = blockIdx.y * kGemvM;
    if (n0 >= N || m0 >= M) return; // whole warps leave together: the butterfly below needs all 32 lanes
    const int mRows = min(kGemvM, M - m0);
    const int n1 = min(n0 + 1, N - 1); // a missing second feature re-reads the first and is not stored
    const storage_t<DT>* w0 = w + (int64_t)n0 * K;
    const storage_t<DT>* w1 = w + (int64_t)n1 * K;
    const float* xm = x + (int64_t)m0 * K;

    float acc[kGemvRowsPerWarp][kGemvM];
#pragma unroll
    for (int r = 0; r < kGemvRowsPerWarp; ++r)
#pragma unroll
        for (int m = 0; m < kGemvM; ++m) acc[r][m] = 0.0f;

    const bool vector = (K % 8) == 0 && is_aligned16(w) && is_aligned16(x);
    if (vector)
    {
        // Two chunks of 8 per lane per iteration: 64 bytes of W in flight per lane before the FMAs need them.
        int64_t k = (int64_t)lane * 8;
        for (; k + 256 < K; k += 512)
        {
            gemv_chunk<DT>(w0, w1, xm, K, mRows, k, acc);
            gemv_chunk<DT>(w0, w1, xm, K, mRows, k + 256, acc);
        }
        for (; k < K; k += 256) gemv_chunk<DT>(w0, w1, xm, K, mRows, k, acc);
    }
    else
    {
        for (int64_t k = lane; k < K; k += 32)
        {
            const float a = DTypeTraits<DT>::to_float(w0[k]), b = DTypeTraits<DT>::to_float(w1[k]);
#pragma unroll
            for (int m = 0; m < kGemvM; ++m)
                if (m < mRows)
                {
                    const float xv = xm[m * (int64_t)K + k];
                    acc[0][m] = fmaf(xv, a, acc[0][m]);
                    acc[1][m] = fmaf(xv, b, acc[1][m]);
                }
        }
    }

#pragma unroll
    for (int r = 0; r < kGemvRowsPerWarp; ++r)
#pragma unroll
        for (int m = 0; m < kGemvM; ++m) acc[r][m] = warp_reduce(acc[r][m], SumOp{});

    if (lane == 0)
    {
        const float b0 = bias != nullptr ? DTypeTraits<DT>::to_float(bias[n0]) : 0.0f;
        const float b1 = bias != nullptr ? DTypeTraits<DT>::to_float(bias[n1]) : 0.0f;
        for (int m = 0; m < mRows; ++m)
        {
            y[(int64_t)(m0 + m) * N + n0] = acc[0][m] + b0;
            if (n0 + 1 < N) y[(int64_t)(m0 + m) * N + n0 + 1] = acc[1][m] + b1;
        }
    }
}
} // namespace ops

#define DENSE_GEMV_ENTRY(suffix, DT)                                                                                  \
    extern "C" __global__ void __launch_bounds__(256)                                                               \
        dense_gemv_##suffix(float* y, const float* x, const storage_t<DT>* w, const storage_t<DT>* bias, int M, int N, int K) \
    {                                                                                                               \
        ops::dense_gemv<DT>(y, x, w, bias, M, N, K);                                                                \
    }
KERNELS_FOR_EACH_HALF_DTYPE(DENSE_GEMV_ENTRY)
#undef DENSE_GEMV_ENTRY
