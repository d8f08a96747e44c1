// squeezellm_gemv: y[M, N] = x[M, K] . W[N, K]^T for SqueezeLLM dense-and-sparse weights (Quantization/SqueezeLlm),
// M <= 8: per output row a packed 3/4-bit code stream into the row's 2^bits-entry fp16 lookup table, plus the row's
// CSR outliers. The CUDA C++ twin of the ILGPU LUT GEMV, for the CUDA backend (issue 18).
//
// Math:    y[m, n] = sum_k x[m, k] * table[n, code(n, k)] + sum_{e in row n} delta_e * x[m, col_e],
//          delta_e = value_e - table[n, code(n, col_e)]  (fp32, as SqueezeLlmLinear.Delta on the CPU)
//          code(n, k): bits [bits*k, bits*k + bits) of row n's little-endian bit stream (SqueezeLlmCodes)
// Entries:  squeezellm_gemv_b3, squeezellm_gemv_b4 (the code width fixed at compile time).
// Pointers:
//   y        [M, N]           fp32, written
//   x        [M, K]           fp32, read
//   codes    [N, words]       int32, read; words = ceil(K / 32) * bits (rows padded to 32 codes)
//   table    [N, 2^bits]      fp16, read
//   rows     [N + 1]          int32, read: CSR row pointers
//   cols     [nnz]            int32, read
//   values   [nnz]            fp32, read: the outliers' original weights
// Grid:    ceil_div(N, 4); Block: 128 threads (4 warps), one warp per output row. Lane l takes the groups of 8 codes
//          g = l, l + 32, ... (a group is `bits` consecutive bytes of the row: consecutive lanes read consecutive
//          bytes), decodes them with constant shifts, and looks each code up with a shuffle from the lane holding that
//          table entry (lanes hold entry lane % 2^bits: a register table, no local memory); x[m, 8g .. 8g + 7] read
//          per element (the 8 floats of a group share their cache lines). Warp shuffles reduce; lanes then stride
//          over the row's outliers.
// Numerics: fp32; the summation order differs from LutMatMul's (lanes, then a butterfly), so results agree to the
//          order of rounding: verify compares within 1e-5 of sum |terms|.
// Preconditions (launcher-checked): 1 <= M <= 8, K >= 1, a CSR of N + 1 pointers.
#pragma once

#include "common.cuh"

namespace ops
{
constexpr int kSqueezeWarps = 4;
constexpr int kSqueezeMaxRows = 8;

template <int BITS>
__device__ __forceinline__ int squeeze_code(const uint8_t* row, int k)
{
    const int bit = k * BITS, b = bit >> 3, shift = bit & 7;
    int v = row[b];
    if (shift + BITS > 8) v |= static_cast<int>(row[b + 1]) << 8;
    return (v >> shift) & ((1 << BITS) - 1);
}

template <int BITS, int M>
__device__ __forceinline__ void squeezellm_gemv(float* y, const float* x, const int* codes, const __half* table, const int* rows,
                                                const int* cols, const float* values, int n_out, int k_in)
{
    constexpr int ENTRIES = 1 << BITS;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int n = blockIdx.x * kSqueezeWarps + warp;
    if (n >= n_out) return; // whole warps leave together
    const int words = (k_in + 31) / 32 * BITS;
    const uint8_t* row = reinterpret_cast<const uint8_t*>(codes + static_cast<int64_t>(n) * words);
    const float entry = __half2float(table[static_cast<int64_t>(n) * ENTRIES + (lane & (ENTRIES - 1))]);

    float acc[M];
#pragma unroll
    for (int m = 0; m < M; ++m) acc[m] = 0.f;

    const int groups = (k_in + 7) / 8;
    for (int base = 0; base < groups; base += 32)
    {
        const int g = base + lane;
        const bool active = g < groups;
        // The group's 8 codes: `BITS` bytes at byte BITS * g.
        uint32_t packed = 0;
        if (active)
        {
            const uint8_t* p = row + BITS * g;
            packed = p[0] | (static_cast<uint32_t>(p[1]) << 8) | (static_cast<uint32_t>(p[2]) << 16);
            if (BITS == 4) packed |= static_cast<uint32_t>(p[3]) << 24;
        }
#pragma unroll
        for (int i = 0; i < 8; ++i)
        {
            const int code = (packed >> (BITS * i)) & (ENTRIES - 1);
            const float w = __shfl_sync(0xffffffffu, entry, code); // every lane takes part: the table lives in lanes
            const int k = 8 * g + i;
            if (active && k < k_in)
            {
#pragma unroll
                for (int m = 0; m < M; ++m) acc[m] = fmaf(x[static_cast<int64_t>(m) * k_in + k], w, acc[m]);
            }
        }
    }
#pragma unroll
    for (int m = 0; m < M; ++m)
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) acc[m] += __shfl_xor_sync(0xffffffffu, acc[m], off);

    // Outliers: delta_e x[m, col_e], delta_e = value_e - table[code(col_e)], lanes over the row's entries.
    const int e0 = rows[n], e1 = rows[n + 1];
    float extra[M];
#pragma unroll
    for (int m = 0; m < M; ++m) extra[m] = 0.f;
    for (int e = e0 + lane; e < e1; e += 32)
    {
        const int col = cols[e];
        if (col < 0 || col >= k_in) continue;
        const float t = __half2float(table[static_cast<int64_t>(n) * ENTRIES + squeeze_code<BITS>(row, col)]);
        const float delta = values[e] - t;
#pragma unroll
        for (int m = 0; m < M; ++m) extra[m] = fmaf(delta, x[static_cast<int64_t>(m) * k_in + col], extra[m]);
    }
#pragma unroll
    for (int m = 0; m < M; ++m)
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) extra[m] += __shfl_xor_sync(0xffffffffu, extra[m], off);
    if (lane == 0)
#pragma unroll
        for (int m = 0; m < M; ++m) y[static_cast<int64_t>(m) * n_out + n] = acc[m] + extra[m];
}

template <int BITS>
__device__ __forceinline__ void squeezellm_gemv_dispatch(float* y, const float* x, const int* codes, const __half* table, const int* rows,
                                                         const int* cols, const float* values, int m, int n, int k)
{
    switch (m)
    {
#define SQUEEZE_CASE(MM) \
    case MM: squeezellm_gemv<BITS, MM>(y, x, codes, table, rows, cols, values, n, k); break;
        SQUEEZE_CASE(1)
        SQUEEZE_CASE(2)
        SQUEEZE_CASE(3)
        SQUEEZE_CASE(4)
        SQUEEZE_CASE(5)
        SQUEEZE_CASE(6)
        SQUEEZE_CASE(7)
        SQUEEZE_CASE(8)
#undef SQUEEZE_CASE
    default: break; // the launcher allows 1..8
    }
}
} // namespace ops

extern "C" __global__ void __launch_bounds__(ops::kSqueezeWarps * 32)
    squeezellm_gemv_b3(float* y, const float* x, const int* codes, const __half* table, const int* rows, const int* cols,
                       const float* values, int m, int n, int k)
{
    ops::squeezellm_gemv_dispatch<3>(y, x, codes, table, rows, cols, values, m, n, k);
}

extern "C" __global__ void __launch_bounds__(ops::kSqueezeWarps * 32)
    squeezellm_gemv_b4(float* y, const float* x, const int* codes, const __half* table, const int* rows, const int* cols,
                       const float* values, int m, int n, int k)
{
    ops::squeezellm_gemv_dispatch<4>(y, x, codes, table, rows, cols, values, m, n, k);
}
