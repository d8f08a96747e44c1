// residual_add: the residual connection, x += y over n fp32 elements, in place.
//
// Math:    x[j] = x[j] + y[j]           for j < n (one rounded fp32 add: bit-identical to the CPU reference)
// Pointers:
//   x      [n]    fp32, read and written (any tensor viewed flat, e.g. the hidden state [num_tokens, dim])
//   y      [n]    fp32, read (may equal x: then x doubles)
// Layout:  flat, contiguous.
// Grid:    1-D grid stride; any gridDim.x >= 1 (use min(ceil_div(ceil_div(n, 4), blockDim.x), 65535)).
// Block:   any blockDim.x >= 1 (256 recommended). When x and y are both 16-byte aligned, each thread step handles a
//          float4 (128-bit loads and store) and the n % 4 tail is scalar; otherwise every access is scalar.
// Empty:   n == 0 writes nothing; the launcher skips the launch.
// Aliasing: x and y must be equal or disjoint.
//
// bias_add_f32(y, bias, rows, n): y[r, j] += bias[j] for r < rows, j < n (one rounded fp32 add, as the CPU adds a
//   quantized layer's bias after its GEMM). y [rows, n] fp32 read and written, bias [n] fp32 read, disjoint. Grid
//   (ceil_div(n, blockDim.x), min(rows, 65535)), rows past gridDim.y by grid stride; any block (256).
#pragma once

#include "common.cuh"

namespace ops
{
__device__ __forceinline__ void residual_add(float* x, const float* y, int n)
{
    const int64_t start = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
    int64_t scalar_from = 0;
    if (is_aligned16(x) && is_aligned16(y))
    {
        const int64_t n4 = n / 4;
        for (int64_t j = start; j < n4; j += stride)
        {
            float4 a = load_float4(x + 4 * j);
            const float4 b = load_float4(y + 4 * j);
            a.x += b.x;
            a.y += b.y;
            a.z += b.z;
            a.w += b.w;
            store_float4(x + 4 * j, a);
        }
        scalar_from = 4 * n4;
    }
    for (int64_t j = scalar_from + start; j < n; j += stride) x[j] += y[j];
}

__device__ __forceinline__ void bias_add(float* y, const float* bias, int rows, int n)
{
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= n) return;
    const float b = bias[j];
    for (int r = blockIdx.y; r < rows; r += gridDim.y) y[static_cast<int64_t>(r) * n + j] += b;
}
} // namespace ops

extern "C" __global__ void residual_add_f32(float* x, const float* y, int n)
{
    ops::residual_add(x, y, n);
}

extern "C" __global__ void bias_add_f32(float* y, const float* bias, int rows, int n)
{
    ops::bias_add(y, bias, rows, n);
}
