// w4a8_gemm: y = x . W^T with per-token int8 activations and QServe/QoQ 4-bit weights on int8 tensor cores
// (mma.sync.m16n8k32.s8), bit-exact with the CPU's W4A8Gemm (src/Kernels.Runtime/Backends/Cpu/W4A8Gemm.cs).
//
// Math:    acc[m, n] = sum_k xq[m, k] * w8[n, k] - zc[n] * x_sum[m]                      (int32, exact)
//          y[m, n]   = __fmul_rn(__fmul_rn(__int2float_rn(acc), x_scale[m]), w_scale[n])  (this order, as the CPU)
//          per group (group_size > 0): w8 = byte(q * s1 + zs) as int8, s1 = scales2[g, col(n)], zs = zeros[g, col(n)]
//              (= -z*s1 mod 256; __vadd4), zc = 0 (the quantizer guarantees the byte is the exact int8 (q-z)*s1);
//          per channel (group_size == 0): w8 = q (0..15), zc = zeros[n] (integer zero point).
// Pointers:
//   y        [M, N]               fp32, written
//   xq       [M, Kpad]            int8, per-token activations, zero in the padding (rms_norm_quant_int8 writes it)
//   x_scale  [M]                  fp32, per-token scale (amax / 127)
//   x_sum    [M]                  int32, per-token sum of xq (per channel only; may be null per group)
//   qweight  [Npad/32][Kpad/32][32 lanes][16 bytes]   4-bit codes: n = 32nt + 16a + 8b + c, k = 32kt + 16e + 4f + h
//            sits in lane 4c + f at byte 8e + 4b + h, low nibble for a = 0, high for a = 1 (W4A8Layout.cs). A lane's
//            uint4 {x, y, z, w} is: x = B frag b0 of subtile 0 (low nibbles) / 2 (high), y = b0 of subtile 1 / 3,
//            z, w = the b1 (k + 16) halves; so no ldmatrix and no shuffles are needed for the weights.
//   w_scale  [N]                  fp16, level-0 (per group) or the per-channel scale
//   scales2  [K/group, Npad]      uint8 s1 (per group only), columns permuted: col(n) = 32nt + 4c + j for n = 32nt + 8j + c,
//                                 so the 32-bit word at 32nt + 4c holds subtiles 0..3 of lane group c
//   zeros    [K/group, Npad] int8 (per group, same permutation) or [N] uint8 (per channel)
// Grid:    (Npad / 128 rounded up, ceil(M / CTA_M)); block 128 threads = 4 warps, warp w owns channels
//          128 * blockIdx.x + 32 w .. + 31, all CTA_M rows. CTA_M = 16 (decode: M <= 16) or 64 (prefill).
// Pipeline: CTA_K = 64 (two 32-wide k tiles), two cp.async stages; A rows padded to 80 bytes in shared memory so the
//          32-bit fragment loads hit 32 distinct banks; B is copied in its tile layout and read with one 128-bit
//          load per lane per k tile. No split-K: each int32 sum runs over the whole K in one thread.
// Preconditions (launcher-checked): Npad % 32 == 0, Kpad % 32 == 0, group_size % 32 == 0 and K % group_size == 0
//          when group_size > 0, K <= 131072 (int32 cannot overflow: |xq * w8| <= 127 * 127); 16-byte aligned
//          pointers for xq and qweight, 4-byte aligned scales2/zeros. Rows m >= M and channels n >= N are not written.
// Empty:   M == 0 or N == 0: the launcher skips the launch.
#pragma once

#include <cstdint>
#include <cuda_fp16.h>

#include "common.cuh"
#include "mma.cuh"

namespace gemm
{
constexpr int kW4A8Threads = 128;
constexpr int kW4A8CtaN = 128;
constexpr int kW4A8CtaK = 64;
constexpr int kW4A8RowBytes = kW4A8CtaK + 16; // padded shared-memory row of A (bank-conflict-free fragments)

// One 16-byte copy of a tile; an invalid source (rows past M, tiles past K) zero-fills without reading.
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid)
{
    cp_async16_zfill(smem, gmem, valid ? 16 : 0);
}

// Four 4-bit codes (one per byte, already masked to 0x0F0F0F0F) -> four int8 weights: q*s1 lane-packed (q*s1 <= 255,
// so no carry crosses a byte), then + zs in every byte modulo 256 ("scale then subtract").
template <bool kGroup>
__device__ __forceinline__ uint32_t dequant4(uint32_t codes, uint32_t s1, uint32_t zs4)
{
    if constexpr (kGroup) return __vadd4(codes * s1, zs4);
    else return codes;
}

// The four 8-channel subtiles' B fragments of one 32 x 32 tile from a lane's 16 code bytes `raw` (x, z: subtiles 0/2 in
// low/high nibbles; y, w: 1/3; z, w hold k + 16), dequantized with k tile kt's group scales and zeros (per group).
template <bool kGroup>
__device__ __forceinline__ void w4a8_b_fragments(uint32_t (&b)[4][2], uint4 raw, const uint8_t* scales2, const uint8_t* zeros, int kt,
                                                 int group_size, int n_pad, int nb, int group_id)
{
    uint32_t s1 = 0x01010101u, zs = 0;
    if constexpr (kGroup)
    {
        const int64_t col = static_cast<int64_t>(kt * 32 / group_size) * n_pad + nb * 32 + 4 * group_id;
        s1 = __ldg(reinterpret_cast<const uint32_t*>(scales2 + col));
        zs = __ldg(reinterpret_cast<const uint32_t*>(zeros + col));
    }
#pragma unroll
    for (int j = 0; j < 4; ++j)
    {
        const uint32_t scale = (s1 >> (8 * j)) & 0xFFu, zero4 = __byte_perm(zs, 0, 0x1111u * j);
        const uint32_t k0 = (j & 1) ? raw.y : raw.x, k1 = (j & 1) ? raw.w : raw.z; // b0: k half 0, b1: k + 16
        const int shift = (j >> 1) * 4;
        b[j][0] = dequant4<kGroup>((k0 >> shift) & 0x0F0F0F0Fu, scale, zero4);
        b[j][1] = dequant4<kGroup>((k1 >> shift) & 0x0F0F0F0Fu, scale, zero4);
    }
}

// A fragment of m16n8k32 (row-major) from shared memory: `base` is row g, k 4 tig of the tile; a0/a1 rows g, g + 8,
// a2/a3 the same at k + 16.
__device__ __forceinline__ void w4a8_a_fragment(uint32_t (&a)[4], const uint8_t* base, int row_bytes)
{
    a[0] = *reinterpret_cast<const uint32_t*>(base);
    a[1] = *reinterpret_cast<const uint32_t*>(base + 8 * row_bytes);
    a[2] = *reinterpret_cast<const uint32_t*>(base + 16);
    a[3] = *reinterpret_cast<const uint32_t*>(base + 8 * row_bytes + 16);
}

// y[m, n] from the exact int32 sum: the per-channel zero term, then (acc x s_x) x s_w in this order (the CPU's).
template <bool kGroup>
__device__ __forceinline__ float w4a8_epilogue(int acc, int m, int n, const float* x_scale, const int* x_sum, const __half* w_scale,
                                               const uint8_t* zeros)
{
    if constexpr (!kGroup) acc -= static_cast<int>(zeros[n]) * x_sum[m];
    return __fmul_rn(__fmul_rn(__int2float_rn(acc), x_scale[m]), __half2float(w_scale[n]));
}

template <bool kGroup, int CTA_M>
__device__ __forceinline__ void w4a8_gemm(float* __restrict__ y, const int8_t* __restrict__ xq, const float* __restrict__ x_scale,
                                          const int* __restrict__ x_sum, const uint8_t* __restrict__ qweight,
                                          const __half* __restrict__ w_scale, const uint8_t* __restrict__ scales2,
                                          const uint8_t* __restrict__ zeros, int M, int N, int K, int group_size)
{
    constexpr int MI = CTA_M / 16;
    __shared__ __align__(16) uint8_t a_smem[2][CTA_M * kW4A8RowBytes];
    __shared__ __align__(16) uint8_t b_smem[2][4 * 2 * 512]; // [warp n-block][k tile][lane][16]

    const int n_pad = (N + 31) / 32 * 32, k_pad = (K + 31) / 32 * 32, k_tiles = k_pad / 32, n_blocks = n_pad / 32;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int group_id = lane >> 2, tig = lane & 3;
    const int m0 = blockIdx.y * CTA_M;
    const int nb0 = blockIdx.x * 4; // first 32-channel block of this CTA

    // One stage: A rows m0..m0+CTA_M x k 64s..64s+63, B tiles of the CTA's 4 n-blocks x k tiles 2s, 2s+1.
    auto load_stage = [&](int stage, int buf) {
        for (int chunk = threadIdx.x; chunk < CTA_M * 4; chunk += kW4A8Threads)
        {
            const int row = chunk >> 2, col = (chunk & 3) * 16, k = stage * kW4A8CtaK + col;
            const bool valid = m0 + row < M && k < k_pad;
            const int8_t* src = valid ? xq + static_cast<int64_t>(m0 + row) * k_pad + k : xq;
            cp_async16(&a_smem[buf][row * kW4A8RowBytes + col], src, valid);
        }
        for (int chunk = threadIdx.x; chunk < 4 * 2 * 32; chunk += kW4A8Threads)
        {
            const int nb = chunk >> 6, kt = stage * 2 + ((chunk >> 5) & 1), l = chunk & 31;
            const bool valid = nb0 + nb < n_blocks && kt < k_tiles;
            const uint8_t* src = valid ? qweight + (static_cast<int64_t>(nb0 + nb) * k_tiles + kt) * 512 + l * 16 : qweight;
            cp_async16(&b_smem[buf][chunk * 16], src, valid);
        }
        cp_async_commit();
    };

    int acc[MI][4][4];
#pragma unroll
    for (int i = 0; i < MI; ++i)
#pragma unroll
        for (int s = 0; s < 4; ++s)
#pragma unroll
            for (int r = 0; r < 4; ++r) acc[i][s][r] = 0;

    const int nb = nb0 + warp;
    const int stages = (k_tiles + 1) / 2;
    load_stage(0, 0);
    for (int stage = 0; stage < stages; ++stage)
    {
        const int buf = stage & 1;
        if (stage + 1 < stages)
        {
            load_stage(stage + 1, buf ^ 1);
            cp_async_wait<1>();
        }
        else cp_async_wait<0>();
        __syncthreads();

#pragma unroll
        for (int half = 0; half < 2; ++half)
        {
            const int kt = stage * 2 + half;
            if (kt >= k_tiles || nb >= n_blocks) continue; // uniform per warp: no mma with a partial warp
            const uint4 raw = *reinterpret_cast<const uint4*>(&b_smem[buf][((warp * 2 + half) * 32 + lane) * 16]);
            uint32_t b[4][2];
            w4a8_b_fragments<kGroup>(b, raw, scales2, zeros, kt, group_size, n_pad, nb, group_id);
#pragma unroll
            for (int i = 0; i < MI; ++i)
            {
                uint32_t a[4];
                w4a8_a_fragment(a, &a_smem[buf][(i * 16 + group_id) * kW4A8RowBytes + half * 32 + tig * 4], kW4A8RowBytes);
#pragma unroll
                for (int j = 0; j < 4; ++j) mma_m16n8k32_s8(acc[i][j], a, b[j][0], b[j][1]);
            }
        }
        __syncthreads(); // the next iteration's cp.async overwrites this buffer
    }

    // Epilogue: C fragment rows g / g + 8, columns 2 * tig + {0, 1} of subtile j = channels nb*32 + 8j + 2tig + {0,1}.
#pragma unroll
    for (int i = 0; i < MI; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int r = 0; r < 4; ++r)
            {
                const int m = m0 + i * 16 + group_id + (r >> 1) * 8;
                const int n = nb * 32 + 8 * j + 2 * tig + (r & 1);
                if (m >= M || n >= N || nb >= n_blocks) continue;
                y[static_cast<int64_t>(m) * N + n] = w4a8_epilogue<kGroup>(acc[i][j][r], m, n, x_scale, x_sum, w_scale, zeros);
            }
}

// ---- w4a8_gemm_{group,channel}_splitk: M <= 16 in the Marlin manner -------------------------------------------------
// The same math, layouts and exactness as w4a8_gemm, for decode (M <= 16): K split over gridDim.y, so the grid fills
// the GPU for every layer shape, and K tiles of 128 in a 4-stage cp.async pipeline (32 KiB of weights in flight per
// CTA, against 8 KiB in the two-stage kernel). Split s covers k tiles [s T, min((s + 1) T, Kpad / 32)), T =
// tiles_per_split. With one split the epilogue writes y; with several each CTA writes its exact int32 sums to
// partial[s, m, n] and w4a8_splitk_reduce sums them in split order (integer: the same y bits whatever the split).
//
// w4a8_gemm_{group,channel}_splitk(y, xq, x_scale, x_sum, qweight, w_scale, scales2, zeros, M, N, K, group_size,
//                                  partial, tiles_per_split):
//   as w4a8_gemm, plus partial [gridDim.y, M, N] int32 (written when gridDim.y > 1; may be null otherwise).
//   Grid (ceil(Npad / 128), splits); block 128. Preconditions as w4a8_gemm's, M <= 16, tiles_per_split >= 1.
// w4a8_splitk_reduce(y, partial, x_scale, x_sum, w_scale, zeros, M, N, splits, group_size):
//   y[m, n] = fl(fl(float(sum_s partial[s, m, n] - zc[n] x_sum[m]) x_scale[m]) w_scale[n]), zc = 0 per group.
//   Grid ceil(M N / 256), block 256.
constexpr int kSplitStages = 4;
constexpr int kSplitTilesPerStage = 4; // k tiles of 32 per stage: CTA_K = 128
constexpr int kSplitRowBytes = 32 * kSplitTilesPerStage + 16; // padded A row: 36 words, rows g land on banks 4g + tig

template <bool kGroup>
__device__ __forceinline__ void w4a8_gemm_splitk(float* __restrict__ y, const int8_t* __restrict__ xq, const float* __restrict__ x_scale,
                                                 const int* __restrict__ x_sum, const uint8_t* __restrict__ qweight,
                                                 const __half* __restrict__ w_scale, const uint8_t* __restrict__ scales2,
                                                 const uint8_t* __restrict__ zeros, int M, int N, int K, int group_size,
                                                 int* __restrict__ partial, int tiles_per_split)
{
    __shared__ __align__(16) uint8_t a_smem[kSplitStages][16 * kSplitRowBytes];
    __shared__ __align__(16) uint8_t b_smem[kSplitStages][4 * kSplitTilesPerStage * 512]; // [warp][k tile][lane][16]

    const int n_pad = (N + 31) / 32 * 32, k_pad = (K + 31) / 32 * 32, k_tiles = k_pad / 32, n_blocks = n_pad / 32;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int group_id = lane >> 2, tig = lane & 3;
    const int nb0 = blockIdx.x * 4, nb = nb0 + warp;
    const int kt_begin = blockIdx.y * tiles_per_split;
    const int kt_end = min(k_tiles, kt_begin + tiles_per_split);
    const int stages = kt_end > kt_begin ? (kt_end - kt_begin + kSplitTilesPerStage - 1) / kSplitTilesPerStage : 0;

    // Stage st: A rows 0..15 x k tiles kt_begin + 4 st .. + 3, B tiles of the CTA's 4 n-blocks for the same k tiles.
    auto load_stage = [&](int st) {
        const int buf = st % kSplitStages, kt0 = kt_begin + st * kSplitTilesPerStage;
        for (int chunk = threadIdx.x; chunk < 16 * 2 * kSplitTilesPerStage; chunk += kW4A8Threads)
        {
            const int row = chunk / (2 * kSplitTilesPerStage), part = chunk % (2 * kSplitTilesPerStage); // 16-byte parts of 128 bytes
            const int kt = kt0 + part / 2;
            const bool valid = row < M && kt < kt_end;
            const int8_t* src = valid ? xq + static_cast<int64_t>(row) * k_pad + kt * 32 + (part & 1) * 16 : xq;
            cp_async16(&a_smem[buf][row * kSplitRowBytes + part * 16], src, valid);
        }
        for (int chunk = threadIdx.x; chunk < 4 * kSplitTilesPerStage * 32; chunk += kW4A8Threads)
        {
            const int w = chunk / (kSplitTilesPerStage * 32), t = (chunk / 32) % kSplitTilesPerStage, l = chunk & 31;
            const int kt = kt0 + t;
            const bool valid = nb0 + w < n_blocks && kt < kt_end;
            const uint8_t* src = valid ? qweight + (static_cast<int64_t>(nb0 + w) * k_tiles + kt) * 512 + l * 16 : qweight;
            cp_async16(&b_smem[buf][chunk * 16], src, valid);
        }
    };

    int acc[4][4];
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0;

#pragma unroll
    for (int st = 0; st < kSplitStages - 1; ++st)
    {
        if (st < stages) load_stage(st);
        cp_async_commit(); // one group per stage slot, empty or not: the wait below counts them
    }
    for (int st = 0; st < stages; ++st)
    {
        cp_async_wait<kSplitStages - 2>();
        __syncthreads(); // stage st is in shared memory; the slot of stage st - 1 is free
        if (st + kSplitStages - 1 < stages) load_stage(st + kSplitStages - 1);
        cp_async_commit();
        const int buf = st % kSplitStages;
        if (nb >= n_blocks) continue; // uniform per warp (the barriers above are every thread's)
#pragma unroll
        for (int t = 0; t < kSplitTilesPerStage; ++t)
        {
            const int kt = kt_begin + st * kSplitTilesPerStage + t;
            if (kt >= kt_end) break; // uniform
            const uint4 raw = *reinterpret_cast<const uint4*>(&b_smem[buf][((warp * kSplitTilesPerStage + t) * 32 + lane) * 16]);
            uint32_t b[4][2], a[4];
            w4a8_b_fragments<kGroup>(b, raw, scales2, zeros, kt, group_size, n_pad, nb, group_id);
            w4a8_a_fragment(a, &a_smem[buf][group_id * kSplitRowBytes + t * 32 + tig * 4], kSplitRowBytes);
#pragma unroll
            for (int j = 0; j < 4; ++j) mma_m16n8k32_s8(acc[j], a, b[j][0], b[j][1]);
        }
    }
    cp_async_wait<0>(); // nothing in flight when the block ends

    const bool split = gridDim.y > 1;
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int r = 0; r < 4; ++r)
        {
            const int m = group_id + (r >> 1) * 8;
            const int n = nb * 32 + 8 * j + 2 * tig + (r & 1);
            if (m >= M || n >= N || nb >= n_blocks) continue;
            if (split)
            {
                partial[(static_cast<int64_t>(blockIdx.y) * M + m) * N + n] = acc[j][r];
                continue;
            }
            y[static_cast<int64_t>(m) * N + n] = w4a8_epilogue<kGroup>(acc[j][r], m, n, x_scale, x_sum, w_scale, zeros);
        }
}

__device__ __forceinline__ void w4a8_splitk_reduce(float* __restrict__ y, const int* __restrict__ partial, const float* __restrict__ x_scale,
                                                   const int* __restrict__ x_sum, const __half* __restrict__ w_scale,
                                                   const uint8_t* __restrict__ zeros, int M, int N, int splits, int group_size)
{
    const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= static_cast<int64_t>(M) * N) return;
    const int m = static_cast<int>(i / N), n = static_cast<int>(i % N);
    int total = 0;
    for (int s = 0; s < splits; ++s) total += partial[static_cast<int64_t>(s) * M * N + i];
    y[i] = group_size > 0 ? w4a8_epilogue<true>(total, m, n, x_scale, x_sum, w_scale, zeros)
                          : w4a8_epilogue<false>(total, m, n, x_scale, x_sum, w_scale, zeros);
}
} // namespace gemm

#define W4A8_GEMM_ENTRY(name, GROUP, CTA_M)                                                                        \
    extern "C" __global__ void __launch_bounds__(gemm::kW4A8Threads)                                              \
        name(float* y, const int8_t* xq, const float* x_scale, const int* x_sum, const uint8_t* qweight,          \
             const __half* w_scale, const uint8_t* scales2, const uint8_t* zeros, int M, int N, int K,            \
             int group_size)                                                                                       \
    {                                                                                                              \
        gemm::w4a8_gemm<GROUP, CTA_M>(y, xq, x_scale, x_sum, qweight, w_scale, scales2, zeros, M, N, K,           \
                                      group_size);                                                                 \
    }
W4A8_GEMM_ENTRY(w4a8_gemm_group_m16, true, 16)
W4A8_GEMM_ENTRY(w4a8_gemm_group_m64, true, 64)
W4A8_GEMM_ENTRY(w4a8_gemm_channel_m16, false, 16)
W4A8_GEMM_ENTRY(w4a8_gemm_channel_m64, false, 64)
#undef W4A8_GEMM_ENTRY

#define W4A8_SPLITK_ENTRY(name, GROUP)                                                                             \
    extern "C" __global__ void __launch_bounds__(gemm::kW4A8Threads)                                              \
        name(float* y, const int8_t* xq, const float* x_scale, const int* x_sum, const uint8_t* qweight,          \
             const __half* w_scale, const uint8_t* scales2, const uint8_t* zeros, int M, int N, int K,            \
             int group_size, int* partial, int tiles_per_split)                                                   \
    {                                                                                                              \
        if (M > 16 || tiles_per_split < 1) return;                                                                 \
        gemm::w4a8_gemm_splitk<GROUP>(y, xq, x_scale, x_sum, qweight, w_scale, scales2, zeros, M, N, K,           \
                                      group_size, partial, tiles_per_split);                                       \
    }
W4A8_SPLITK_ENTRY(w4a8_gemm_group_splitk, true)
W4A8_SPLITK_ENTRY(w4a8_gemm_channel_splitk, false)
#undef W4A8_SPLITK_ENTRY

extern "C" __global__ void __launch_bounds__(256)
    w4a8_splitk_reduce(float* y, const int* partial, const float* x_scale, const int* x_sum, const __half* w_scale,
                       const uint8_t* zeros, int M, int N, int splits, int group_size)
{
    gemm::w4a8_splitk_reduce(y, partial, x_scale, x_sum, w_scale, zeros, M, N, splits, group_size);
}
