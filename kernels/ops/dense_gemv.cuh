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
// Grid:    (ceil_div(N, 4), ceil_div(M, 4)); Block: 256 threads. Block b computes output features n = 4 b .. 4 b + 3 for
//          the block's (up to) 4 rows m = 4 blockIdx.y + 0..3; its 256 threads split K between them.
// Per thread: chunks of 8 elements of K (c = threadIdx.x + 256 i, k = 8 c): one 16-byte streaming load (ld.global.cs,
//          W is read once) of each of the 4 W rows and two float4 loads of each x row per chunk; consecutive threads
//          read consecutive 16 bytes (coalesced), and a block's 4 x 2 x K bytes of W are in flight after at most
//          ceil(K / 2048) dependent rounds (1 for K = 2048, 7 for K = 14336): the first version gave each warp two
//          whole rows, 16 dependent rounds at K = 4096, and reached 42 % of the copy bandwidth on an H200.
//          When K % 8 != 0 (or a pointer is not 16-byte aligned) the threads stride K one element at a time instead.
//          Reduction: a butterfly per warp, then warp 0 adds the 8 warps' partials from shared memory in warp order.
// Numerics: per output: each thread sums its k in increasing order (fp32 FMA), then threads are added by a fixed tree;
//          the CPU reference (MatMul.Multiply) sums the same products in 8-lane SIMD order, so results differ by
//          summation rounding only (verify: 2e-5 of max|y|).
// Empty:   M == 0 or N == 0 writes nothing (the launcher skips the launch); K == 0 is rejected by the launcher.
// Preconditions (launcher-checked): K > 0; sizes as above. Any M works (grid y); the plan uses it for M <= 4 and
//          for any M when K % 8 != 0 (dense_gemm needs K % 8 == 0).
#pragma once

#include "common.cuh"
#include "swiglu.cuh"

namespace ops
{
constexpr int kGemvThreads = 256;
constexpr int kGemvN = 4; // output features per block: each x load serves four W rows
constexpr int kGemvM = 4; // x rows per block (grid y covers larger M)

template <DType DT>
__device__ __forceinline__ void gemv_load_w(const storage_t<DT>* p, float (&out)[8])
{
    const uint4 raw = __ldcs(reinterpret_cast<const uint4*>(p)); // streamed: W is read once, keep L1/L2 for x
    const storage_t<DT>* e = reinterpret_cast<const storage_t<DT>*>(&raw);
#pragma unroll
    for (int j = 0; j < 8; ++j) out[j] = DTypeTraits<DT>::to_float(e[j]);
}

// The block's 4 x 4 tile of sums: W rows n0 .. n0 + 3 (of N) against x rows m0 .. m0 + 3 (of M); store(m, r, sum) is
// called once per valid (row m0 + m, feature n0 + r) by one thread, after the block's reduction. Every thread of the
// block must call it (it synchronizes), and it ends with a barrier, so a block may run it again (dense_gemv_swiglu).
//
// NORM: x is the residual stream, not yet normalized: the tile multiplies W by x * g (g the RMSNorm weight, fp32) and
// sums each row's squares in the same pass (every block covers all of K), then hands store sum * inv_rms, inv_rms =
// 1 / sqrt(sum x^2 / K + eps): the norm costs no launch and no extra read of x. Mathematically rms_norm then the GEMV;
// the roundings differ (x g w summed, then scaled, instead of ((x r) g) w), at fp32 precision.
template <DType DT, class Store, bool NORM = false>
__device__ __forceinline__ void gemv_tile(const float* __restrict__ x, const storage_t<DT>* __restrict__ w, int n0, int m0, int M, int N, int K,
                                          Store store, const float* __restrict__ g = nullptr, float eps = 0.0f)
{
    __shared__ float partial[kGemvThreads / 32][kGemvN][kGemvM];
    __shared__ float squares[kGemvThreads / 32][kGemvM];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    if (n0 >= N || m0 >= M) return; // uniform per block
    const int nRows = min(kGemvN, N - n0), mRows = min(kGemvM, M - m0);
    const storage_t<DT>* wr[kGemvN];
#pragma unroll
    for (int r = 0; r < kGemvN; ++r) wr[r] = w + (int64_t)(n0 + min(r, nRows - 1)) * K; // missing rows re-read the last, not stored
    const float* xm = x + (int64_t)m0 * K;

    float acc[kGemvN][kGemvM], sq[kGemvM];
#pragma unroll
    for (int r = 0; r < kGemvN; ++r)
#pragma unroll
        for (int m = 0; m < kGemvM; ++m) acc[r][m] = 0.0f;
#pragma unroll
    for (int m = 0; m < kGemvM; ++m) sq[m] = 0.0f;

    if ((K % 8) == 0 && is_aligned16(w) && is_aligned16(x) && (!NORM || is_aligned16(g)))
    {
#pragma unroll 2
        for (int64_t k = (int64_t)threadIdx.x * 8; k < K; k += kGemvThreads * 8)
        {
            float wv[kGemvN][8], gv[8];
#pragma unroll
            for (int r = 0; r < kGemvN; ++r) gemv_load_w<DT>(wr[r] + k, wv[r]);
            if constexpr (NORM)
            {
                const float4 glo = load_float4(g + k), ghi = load_float4(g + k + 4);
                gv[0] = glo.x; gv[1] = glo.y; gv[2] = glo.z; gv[3] = glo.w; gv[4] = ghi.x; gv[5] = ghi.y; gv[6] = ghi.z; gv[7] = ghi.w;
            }
#pragma unroll
            for (int m = 0; m < kGemvM; ++m)
            {
                if (m < mRows)
                {
                    const float4 lo = load_float4(xm + m * (int64_t)K + k), hi = load_float4(xm + m * (int64_t)K + k + 4);
                    float xv[8] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};
                    if constexpr (NORM)
                    {
#pragma unroll
                        for (int j = 0; j < 8; ++j)
                        {
                            sq[m] = fmaf(xv[j], xv[j], sq[m]);
                            xv[j] = __fmul_rn(xv[j], gv[j]);
                        }
                    }
#pragma unroll
                    for (int r = 0; r < kGemvN; ++r)
#pragma unroll
                        for (int j = 0; j < 8; ++j) acc[r][m] = fmaf(xv[j], wv[r][j], acc[r][m]);
                }
            }
        }
    }
    else
    {
        for (int64_t k = threadIdx.x; k < K; k += kGemvThreads)
        {
            float xk[kGemvM];
#pragma unroll
            for (int m = 0; m < kGemvM; ++m)
            {
                xk[m] = m < mRows ? xm[m * (int64_t)K + k] : 0.0f;
                if constexpr (NORM)
                {
                    sq[m] = fmaf(xk[m], xk[m], sq[m]);
                    xk[m] = __fmul_rn(xk[m], g[k]);
                }
            }
#pragma unroll
            for (int r = 0; r < kGemvN; ++r)
            {
                const float wv = DTypeTraits<DT>::to_float(wr[r][k]);
#pragma unroll
                for (int m = 0; m < kGemvM; ++m)
                    if (m < mRows) acc[r][m] = fmaf(xk[m], wv, acc[r][m]);
            }
        }
    }

#pragma unroll
    for (int r = 0; r < kGemvN; ++r)
#pragma unroll
        for (int m = 0; m < kGemvM; ++m)
        {
            const float v = warp_reduce(acc[r][m], SumOp{});
            if (lane == 0) partial[warp][r][m] = v;
        }
    if constexpr (NORM)
    {
#pragma unroll
        for (int m = 0; m < kGemvM; ++m)
        {
            const float v = warp_reduce(sq[m], SumOp{});
            if (lane == 0) squares[warp][m] = v;
        }
    }
    __syncthreads();
    if (threadIdx.x < kGemvN * kGemvM)
    {
        const int r = threadIdx.x / kGemvM, m = threadIdx.x % kGemvM;
        if (r < nRows && m < mRows)
        {
            float sum = 0.0f;
#pragma unroll
            for (int i = 0; i < kGemvThreads / 32; ++i) sum += partial[i][r][m];
            if constexpr (NORM)
            {
                float ss = 0.0f;
#pragma unroll
                for (int i = 0; i < kGemvThreads / 32; ++i) ss += squares[i][m];
                sum = __fmul_rn(sum, 1.0f / sqrtf(ss / static_cast<float>(K) + eps));
            }
            store(m, r, sum);
        }
    }
    __syncthreads(); // partial and what store wrote are settled before a second tile
}

// y = x W^T + bias: the tile of block (blockIdx.x - block_base, blockIdx.y).
template <DType DT, bool NORM = false>
__device__ __forceinline__ void dense_gemv(float* __restrict__ y, const float* __restrict__ x, const storage_t<DT>* __restrict__ w,
                                           const storage_t<DT>* __restrict__ bias, int M, int N, int K, int block_base = 0,
                                           const float* __restrict__ g = nullptr, float eps = 0.0f)
{
    const int n0 = (blockIdx.x - block_base) * kGemvN, m0 = blockIdx.y * kGemvM;
    auto store = [&](int m, int r, float sum) {
        const float b = bias != nullptr ? DTypeTraits<DT>::to_float(bias[n0 + r]) : 0.0f;
        y[(int64_t)(m0 + m) * N + n0 + r] = sum + b;
    };
    gemv_tile<DT, decltype(store), NORM>(x, w, n0, m0, M, N, K, store, g, eps);
}

// y += x W^T (the o and down projections into the residual stream): one rounded add of the same sum the plain GEMV
// writes, so the same bits as dense_gemv into a scratch row and residual_add.
template <DType DT>
__device__ __forceinline__ void dense_gemv_residual(float* __restrict__ y, const float* __restrict__ x, const storage_t<DT>* __restrict__ w,
                                                    int M, int N, int K)
{
    const int n0 = blockIdx.x * kGemvN, m0 = blockIdx.y * kGemvM;
    gemv_tile<DT>(x, w, n0, m0, M, N, K, [&](int m, int r, float sum) {
        float* out = y + (int64_t)(m0 + m) * N + n0 + r;
        *out = *out + (sum + 0.0f); // + 0.0f: dense_gemv's bias-free sum + b, so -0 sums round alike
    });
}

// out = silu(x Wg^T) * (x Wu^T) (a Llama MLP's gate and up, SwiGLU in the epilogue): the block's gate tile first,
// kept in shared memory, then its up tile; the same sums as two dense_gemv launches and swiglu_f32, so the same bits.
template <DType DT, bool NORM = false>
__device__ __forceinline__ void dense_gemv_swiglu(float* __restrict__ out, const float* __restrict__ x, const storage_t<DT>* __restrict__ wg,
                                                  const storage_t<DT>* __restrict__ wu, int M, int N, int K,
                                                  const float* __restrict__ g = nullptr, float eps = 0.0f)
{
    __shared__ float gate[kGemvM][kGemvN];
    const int n0 = blockIdx.x * kGemvN, m0 = blockIdx.y * kGemvM;
    auto keep = [&](int m, int r, float sum) { gate[m][r] = sum + 0.0f; };
    auto finish = [&](int m, int r, float sum) { out[(int64_t)(m0 + m) * N + n0 + r] = __fmul_rn(silu(gate[m][r]), sum + 0.0f); };
    gemv_tile<DT, decltype(keep), NORM>(x, wg, n0, m0, M, N, K, keep, g, eps);
    gemv_tile<DT, decltype(finish), NORM>(x, wu, n0, m0, M, N, K, finish, g, eps);
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

// dense_gemv_residual_{f16,bf16}(y, x, w, M, N, K): y [M, N] += x W^T (no bias). Grid and block as dense_gemv.
#define DENSE_GEMV_RESIDUAL_ENTRY(suffix, DT)                                                                         \
    extern "C" __global__ void __launch_bounds__(256)                                                               \
        dense_gemv_residual_##suffix(float* y, const float* x, const storage_t<DT>* w, int M, int N, int K)         \
    {                                                                                                               \
        ops::dense_gemv_residual<DT>(y, x, w, M, N, K);                                                             \
    }
KERNELS_FOR_EACH_HALF_DTYPE(DENSE_GEMV_RESIDUAL_ENTRY)
#undef DENSE_GEMV_RESIDUAL_ENTRY

// dense_gemv_qkv_{f16,bf16}(yq, yk, yv, x, wq, wk, wv, bq, bk, bv, M, Nq, Nkv, K): the three projections of one x in
// one launch (biases may be null): grid x = ceil_div(Nq, 4) + 2 ceil_div(Nkv, 4) blocks, q's first, then k's, v's;
// grid y and block as dense_gemv. Each output the same bits as its own dense_gemv.
#define DENSE_GEMV_QKV_ENTRY(suffix, DT)                                                                              \
    extern "C" __global__ void __launch_bounds__(256) dense_gemv_qkv_##suffix(                                      \
        float* yq, float* yk, float* yv, const float* x, const storage_t<DT>* wq, const storage_t<DT>* wk,          \
        const storage_t<DT>* wv, const storage_t<DT>* bq, const storage_t<DT>* bk, const storage_t<DT>* bv, int M,  \
        int Nq, int Nkv, int K)                                                                                      \
    {                                                                                                               \
        const int q_blocks = (Nq + ops::kGemvN - 1) / ops::kGemvN, kv_blocks = (Nkv + ops::kGemvN - 1) / ops::kGemvN; \
        const int b = blockIdx.x;                                                                                   \
        if (b < q_blocks) ops::dense_gemv<DT>(yq, x, wq, bq, M, Nq, K, 0);                                          \
        else if (b < q_blocks + kv_blocks) ops::dense_gemv<DT>(yk, x, wk, bk, M, Nkv, K, q_blocks);                 \
        else ops::dense_gemv<DT>(yv, x, wv, bv, M, Nkv, K, q_blocks + kv_blocks);                                   \
    }
KERNELS_FOR_EACH_HALF_DTYPE(DENSE_GEMV_QKV_ENTRY)
#undef DENSE_GEMV_QKV_ENTRY

// dense_gemv_swiglu_{f16,bf16}(out, x, wg, wu, M, N, K): out [M, N] = silu(x Wg^T) * (x Wu^T), no biases. Grid and
// block as dense_gemv over N.
#define DENSE_GEMV_SWIGLU_ENTRY(suffix, DT)                                                                           \
    extern "C" __global__ void __launch_bounds__(256) dense_gemv_swiglu_##suffix(                                   \
        float* out, const float* x, const storage_t<DT>* wg, const storage_t<DT>* wu, int M, int N, int K)         \
    {                                                                                                               \
        ops::dense_gemv_swiglu<DT>(out, x, wg, wu, M, N, K);                                                        \
    }
KERNELS_FOR_EACH_HALF_DTYPE(DENSE_GEMV_SWIGLU_ENTRY)
#undef DENSE_GEMV_SWIGLU_ENTRY

// dense_gemv_qkv_norm_{f16,bf16}(yq, yk, yv, x, g, eps, wq, wk, wv, bq, bk, bv, M, Nq, Nkv, K): dense_gemv_qkv of
// RMSNorm(x) with the norm folded into the tile (gemv_tile's NORM): x the fp32 residual rows [M, K], g [K] the norm
// weight in fp32. Grid and block as dense_gemv_qkv.
#define DENSE_GEMV_QKV_NORM_ENTRY(suffix, DT)                                                                         \
    extern "C" __global__ void __launch_bounds__(256) dense_gemv_qkv_norm_##suffix(                                 \
        float* yq, float* yk, float* yv, const float* x, const float* g, float eps, const storage_t<DT>* wq,        \
        const storage_t<DT>* wk, const storage_t<DT>* wv, const storage_t<DT>* bq, const storage_t<DT>* bk,         \
        const storage_t<DT>* bv, int M, int Nq, int Nkv, int K)                                                      \
    {                                                                                                               \
        const int q_blocks = (Nq + ops::kGemvN - 1) / ops::kGemvN, kv_blocks = (Nkv + ops::kGemvN - 1) / ops::kGemvN; \
        const int b = blockIdx.x;                                                                                   \
        if (b < q_blocks) ops::dense_gemv<DT, true>(yq, x, wq, bq, M, Nq, K, 0, g, eps);                            \
        else if (b < q_blocks + kv_blocks) ops::dense_gemv<DT, true>(yk, x, wk, bk, M, Nkv, K, q_blocks, g, eps);   \
        else ops::dense_gemv<DT, true>(yv, x, wv, bv, M, Nkv, K, q_blocks + kv_blocks, g, eps);                     \
    }
KERNELS_FOR_EACH_HALF_DTYPE(DENSE_GEMV_QKV_NORM_ENTRY)
#undef DENSE_GEMV_QKV_NORM_ENTRY

// dense_gemv_swiglu_norm_{f16,bf16}(out, x, g, eps, wg, wu, M, N, K): dense_gemv_swiglu of RMSNorm(x), the norm folded
// in as above. Grid and block as dense_gemv_swiglu.
#define DENSE_GEMV_SWIGLU_NORM_ENTRY(suffix, DT)                                                                      \
    extern "C" __global__ void __launch_bounds__(256) dense_gemv_swiglu_norm_##suffix(                              \
        float* out, const float* x, const float* g, float eps, const storage_t<DT>* wg, const storage_t<DT>* wu,    \
        int M, int N, int K)                                                                                         \
    {                                                                                                               \
        ops::dense_gemv_swiglu<DT, true>(out, x, wg, wu, M, N, K, g, eps);                                          \
    }
KERNELS_FOR_EACH_HALF_DTYPE(DENSE_GEMV_SWIGLU_NORM_ENTRY)
#undef DENSE_GEMV_SWIGLU_NORM_ENTRY
