// dense_gemm: y = x . W^T (+ bias) on tensor cores, for the dense linear layers (QKV, O, gate/up, down, LM head).
//
// Math:    y[m, n] = sum_k half(x[m, k]) * w[n, k]  (+ bias[n])     products exact, fp32 accumulate (mma.sync)
// Pointers:
//   y      [M, N]   fp32, written; must not overlap x, w or bias
//   x      [M, K]   fp32, read; each element is rounded to DT (round to nearest even) when its tile is staged in shared
//                   memory: tensor cores take f16/bf16 inputs only, and activations are fp32 everywhere else (abi.h)
//   w      [N, K]   DT (f16 | bf16), read: the weight as stored (a row of W is an output feature)
//   bias   [N]      DT, read, or null (0) for no bias
// Layout:  dense row-major, 64-bit offsets.
// Entries: dense_gemm_{f16,bf16}          the prefill tile: BM=64, BN=128, BK=32, 8 warps as 2 (M) x 4 (N), each warp
//                                         a 32x32 sub-tile; 3-stage cp.async pipeline (46 KiB of static shared memory)
//          dense_gemm_small_m_{f16,bf16}  the decode tile for M <= 16: BM=16, BN=16, BK=128, 4 warps that split each
//                                         BK=128 slice of K four ways (intra-block split-K, reduced through shared
//                                         memory at the end), 4-stage pipeline: many small blocks (N/16) keep enough
//                                         bytes of W in flight to stream it at memory bandwidth; x (<= 16 rows) is
//                                         re-read from L2 by every block.
// Grid:    (ceil_div(N, BN), ceil_div(M, BM)); Block: 256 threads (dense_gemm) or 128 (dense_gemm_small_m); no dynamic
//          shared memory. dense_gemm_small_m is correct for any M (grid y covers it) but meant for M <= 16.
// Pipeline: W tiles go global -> shared with cp.async.cg (16 B, zero-filled past N and K); x tiles are read as float4,
//          rounded to DT and stored to shared by the same threads (a synchronous load; x is small next to W for decode
//          and L2-resident for prefill). Fragments come from shared memory with ldmatrix.x4 (rows padded by 8
//          elements: conflict-free), mma.sync.m16n8k16.row.col with fp32 accumulators.
// Numerics: the only rounding before accumulation is x -> DT (relative 2^-11 for f16, 2^-8 for bf16); w is used as
//          stored and the products are exact in fp32. The accumulation order (mma's internal order per k16 step, k
//          steps in order, and for small_m four partial sums added in warp order) differs from the CPU reference's
//          8-lane SIMD dot, so results differ from MatMul.Multiply by about |x||w| sqrt(K) u_DT. x values beyond DT's
//          range become +-inf (f16 saturates at 65504); NaN propagates.
// Edges:   M, N arbitrary (rows past M are zero-filled and not stored; columns past N are zero-filled and not stored);
//          K: multiple of 8 (a 16-byte chunk of W is never split).
// Empty:   M == 0 or N == 0 writes nothing (the launcher skips the launch); K == 0 is rejected by the launcher.
// Preconditions (launcher-checked): K % 8 == 0, K > 0; x, w 16-byte aligned (device allocations are 256-byte aligned).
#pragma once

#include "common.cuh"
#include "mma.cuh"

namespace ops
{
template <int BM_, int BN_, int BK_, int WARPS_M_, int WARPS_N_, int WARPS_K_, int STAGES_>
struct GemmTile
{
    static constexpr int BM = BM_, BN = BN_, BK = BK_;
    static constexpr int WARPS_M = WARPS_M_, WARPS_N = WARPS_N_, WARPS_K = WARPS_K_, STAGES = STAGES_;
    static constexpr int THREADS = 32 * WARPS_M * WARPS_N * WARPS_K;
    static constexpr int WTM = BM / WARPS_M, WTN = BN / WARPS_N; // one warp's output sub-tile
    static constexpr int WKS = BK / WARPS_K;                      // one warp's share of a stage's K slice
    static constexpr int MT = WTM / 16, NT = WTN / 8;             // mma tiles per warp
    static constexpr int LDS = BK + 8;                            // shared row stride in elements (16 B of padding)
    static constexpr int STAGE_ELEMS = (BM + BN) * LDS;
    static constexpr int PIPE_BYTES = STAGES * STAGE_ELEMS * 2;
    static constexpr int RED_BYTES = WARPS_K > 1 ? WARPS_K * BM * BN * 4 : 0;
    static constexpr int SMEM_BYTES = PIPE_BYTES > RED_BYTES ? PIPE_BYTES : RED_BYTES;
    static_assert(WTM % 16 == 0 && WTN % 16 == 0 && WKS % 16 == 0, "warp tiles are whole m16 x (2 x n8) x k16 steps");
    static_assert((BM * BK / 4) % THREADS == 0 && (BN * BK / 8) % THREADS == 0, "every thread loads whole chunks");
    static_assert(SMEM_BYTES <= 48 * 1024, "static shared memory is limited to 48 KiB");
};

using GemmPrefillTile = GemmTile<64, 128, 32, 2, 4, 1, 3>;
using GemmDecodeTile = GemmTile<16, 16, 128, 1, 1, 4, 4>;

template <DType DT, typename Tile>
__device__ __forceinline__ void dense_gemm(float* __restrict__ y, const float* __restrict__ x,
                                           const storage_t<DT>* __restrict__ w, const storage_t<DT>* __restrict__ bias,
                                           int M, int N, int K)
{
    using T = storage_t<DT>;
    constexpr int BM = Tile::BM, BN = Tile::BN, BK = Tile::BK, LDS = Tile::LDS, STAGES = Tile::STAGES;
    __shared__ __align__(16) unsigned char smem[Tile::SMEM_BYTES];
    T* const pipe = reinterpret_cast<T*>(smem);

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int wk = warp / (Tile::WARPS_M * Tile::WARPS_N);
    const int wm = (warp % (Tile::WARPS_M * Tile::WARPS_N)) / Tile::WARPS_N;
    const int wn = warp % Tile::WARPS_N;
    const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;

    // Stage s holds A (x tile, [BM][LDS]) then B (W tile, [BN][LDS]).
    auto stage_a = [&](int s) { return pipe + s * Tile::STAGE_ELEMS; };
    auto stage_b = [&](int s) { return pipe + s * Tile::STAGE_ELEMS + BM * LDS; };

    auto load_stage = [&](int s, int k0) {
        T* b = stage_b(s);
#pragma unroll
        for (int i = 0; i < BN * BK / 8 / Tile::THREADS; ++i)
        {
            const int c = tid + i * Tile::THREADS;
            const int row = c / (BK / 8), kc = (c % (BK / 8)) * 8;
            const int n = n0 + row, k = k0 + kc;
            const bool ok = n < N && k < K;
            cp_async16_zfill(b + row * LDS + kc, ok ? static_cast<const void*>(w + static_cast<int64_t>(n) * K + k) : w,
                             ok ? 16 : 0);
        }
        T* a = stage_a(s);
#pragma unroll
        for (int i = 0; i < BM * BK / 4 / Tile::THREADS; ++i)
        {
            const int c = tid + i * Tile::THREADS;
            const int row = c / (BK / 4), kc = (c % (BK / 4)) * 4;
            const int m = m0 + row, k = k0 + kc;
            float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
            if (m < M && k < K) v = load_float4(x + static_cast<int64_t>(m) * K + k);
            *reinterpret_cast<uint2*>(a + row * LDS + kc) = make_uint2(pack2<DT>(v.x, v.y), pack2<DT>(v.z, v.w));
        }
    };

    float acc[Tile::MT][Tile::NT][4];
#pragma unroll
    for (int i = 0; i < Tile::MT; ++i)
#pragma unroll
        for (int j = 0; j < Tile::NT; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.f;

    auto compute_stage = [&](int s) {
        const T* a = stage_a(s);
        const T* b = stage_b(s);
#pragma unroll
        for (int kk = 0; kk < Tile::WKS; kk += 16)
        {
            const int kb = wk * Tile::WKS + kk;
            uint32_t af[Tile::MT][4];
#pragma unroll
            for (int i = 0; i < Tile::MT; ++i)
                // matrices: rows 0-7 / 8-15 of the m16 tile at k 0-7, then the same at k 8-15 (a0..a3).
                ldmatrix_x4(af[i], a + (wm * Tile::WTM + i * 16 + (lane & 15)) * LDS + kb + (lane >> 4) * 8);
#pragma unroll
            for (int jp = 0; jp < Tile::NT / 2; ++jp)
            {
                uint32_t bf[4];
                // matrices: n 0-7 at k 0-7 (b0 of tile 2jp), n 0-7 at k 8-15 (b1), n 8-15 at k 0-7, n 8-15 at k 8-15.
                ldmatrix_x4(bf, b + (wn * Tile::WTN + jp * 16 + (lane & 7) + (lane >> 4) * 8) * LDS + kb +
                                    ((lane >> 3) & 1) * 8);
#pragma unroll
                for (int i = 0; i < Tile::MT; ++i)
                {
                    mma_m16n8k16<DT>(acc[i][2 * jp], af[i], bf[0], bf[1]);
                    mma_m16n8k16<DT>(acc[i][2 * jp + 1], af[i], bf[2], bf[3]);
                }
            }
        }
    };

    const int ktiles = ceil_div(K, BK);
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s)
    {
        if (s < ktiles) load_stage(s, s * BK);
        cp_async_commit(); // an empty group keeps the wait count below uniform
    }
    for (int kt = 0; kt < ktiles; ++kt)
    {
        cp_async_wait<STAGES - 2>(); // this thread's copies of tile kt have landed ...
        __syncthreads();             // ... everyone's have, and everyone finished computing tile kt - 1
        const int next = kt + STAGES - 1;
        if (next < ktiles) load_stage(next % STAGES, next * BK); // overwrites the stage of tile kt - 1
        cp_async_commit();
        compute_stage(kt % STAGES);
    }

    const int g = lane >> 2, c2 = (lane & 3) * 2;
    if constexpr (Tile::WARPS_K == 1)
    {
#pragma unroll
        for (int i = 0; i < Tile::MT; ++i)
#pragma unroll
            for (int j = 0; j < Tile::NT; ++j)
#pragma unroll
                for (int e = 0; e < 4; ++e)
                {
                    const int m = m0 + wm * Tile::WTM + i * 16 + g + (e >> 1) * 8;
                    const int n = n0 + wn * Tile::WTN + j * 8 + c2 + (e & 1);
                    if (m < M && n < N)
                        y[static_cast<int64_t>(m) * N + n] =
                            bias ? acc[i][j][e] + DTypeTraits<DT>::to_float(bias[n]) : acc[i][j][e];
                }
    }
    else
    {
        // Intra-block split-K: each K-warp parks its partial tile, then the block adds them in warp order.
        cp_async_wait<0>();
        __syncthreads(); // the pipeline's shared memory is reused below
        float* red = reinterpret_cast<float*>(smem);
#pragma unroll
        for (int i = 0; i < Tile::MT; ++i)
#pragma unroll
            for (int j = 0; j < Tile::NT; ++j)
#pragma unroll
                for (int e = 0; e < 4; ++e)
                {
                    const int r = wm * Tile::WTM + i * 16 + g + (e >> 1) * 8;
                    const int cl = wn * Tile::WTN + j * 8 + c2 + (e & 1);
                    red[(wk * BM + r) * BN + cl] = acc[i][j][e];
                }
        __syncthreads();
        for (int idx = tid; idx < BM * BN; idx += Tile::THREADS)
        {
            const int r = idx / BN, cl = idx % BN, m = m0 + r, n = n0 + cl;
            if (m >= M || n >= N) continue;
            float sum = red[idx];
#pragma unroll
            for (int q = 1; q < Tile::WARPS_K; ++q) sum += red[q * BM * BN + idx];
            y[static_cast<int64_t>(m) * N + n] = bias ? sum + DTypeTraits<DT>::to_float(bias[n]) : sum;
        }
    }
}
} // namespace ops

#define DENSE_GEMM_ENTRY(suffix, DT)                                                                                  \
    extern "C" __global__ void __launch_bounds__(ops::GemmPrefillTile::THREADS)                                      \
        dense_gemm_##suffix(float* y, const float* x, const storage_t<DT>* w, const storage_t<DT>* bias, int M,       \
                            int N, int K)                                                                             \
    {                                                                                                                 \
        ops::dense_gemm<DT, ops::GemmPrefillTile>(y, x, w, bias, M, N, K);                                            \
    }                                                                                                                 \
    extern "C" __global__ void __launch_bounds__(ops::GemmDecodeTile::THREADS)                                       \
        dense_gemm_small_m_##suffix(float* y, const float* x, const storage_t<DT>* w, const storage_t<DT>* bias,      \
                                    int M, int N, int K)                                                              \
    {                                                                                                                 \
        ops::dense_gemm<DT, ops::GemmDecodeTile>(y, x, w, bias, M, N, K);                                             \
    }
KERNELS_FOR_EACH_HALF_DTYPE(DENSE_GEMM_ENTRY)
#undef DENSE_GEMM_ENTRY
