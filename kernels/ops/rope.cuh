// rope: rotary position embedding applied in place to fp32 q and k, Hugging Face "rotate half" convention.
//
// Math:    for each token t, head h, and i < half = head_dim / 2:
//            angle = float(positions[t]) * inv_freq[i]                        (one rounded fp32 product)
//            c, s  = cos(angle), sin(angle)                                   (fp32, CUDA sincosf)
//            x0, x1 = row[i], row[i + half]
//            row[i]        = x0 * c - x1 * s                                  (each product rounded, then the sum;
//            row[i + half] = x1 * c + x0 * s                                   no FMA contraction: __fmul_rn etc.)
// Pointers:
//   q          [num_tokens, num_q_heads, head_dim]    fp32, rotated in place
//   k          [num_tokens, num_kv_heads, head_dim]   fp32, rotated in place (may be null when num_kv_heads == 0)
//   positions  [num_tokens]                           int32, absolute position of each token row, 0 <= pos < 2^24
//   inv_freq   [head_dim / 2]                         fp32, computed by the host (RopeFrequencies.Compute), which is
//                                                     where Llama-3.1 / linear scaling happens
// Layout:  dense row-major; head h of token t starts at (t * heads + h) * head_dim. q and k need not be adjacent.
// Grid:    one block per token, grid-stride over tokens (any gridDim.x >= 1; use min(num_tokens, 65535)).
// Block:   any blockDim.x >= 1 (128 recommended), blockDim.y = z = 1. The block first computes cos/sin for the
//          token's half angles into shared memory (once per token, not once per head), then its threads stride
//          over (head, i) pairs of q's heads followed by k's heads.
// Numerics: angle and the rotation are bit-identical to the CPU reference Rope written in the order above
//          (MathF, no FMA); cos/sin come from CUDA sincosf (full-range reduction, within 2 ulp of the correctly
//          rounded value), so results differ from MathF.Cos/MathF.Sin by a few ulp at most.
// Preconditions (launcher-checked): head_dim even, 2 <= head_dim <= ROPE_MAX_HEAD_DIM. If violated the kernel
//          returns without writing, rather than overrun its shared arrays.
// Empty:   num_tokens == 0, or no heads, writes nothing; the launcher skips the launch when num_tokens == 0.
#pragma once

#include "common.cuh"

// Largest head_dim rope supports: the per-token cos/sin tables live in 2 * (512 / 2) * 4 = 2 KiB of static shared
// memory. Mirrored by the C# launcher, which rejects larger head dims with a message naming the value.
#define ROPE_MAX_HEAD_DIM 512

namespace ops
{
// cos/sin of one token's half angles, angle = pos * inv_freq[i] (one rounded fp32 product), into the block's shared
// tables; the block's threads stride over i. Callers put a barrier before (the previous token's readers) and after.
__device__ __forceinline__ void rope_tables(float* cos_half, float* sin_half, float pos, const float* inv_freq, int half)
{
    for (int i = threadIdx.x; i < half; i += blockDim.x)
    {
        float s, c;
        sincosf(__fmul_rn(pos, inv_freq[i]), &s, &c);
        cos_half[i] = c;
        sin_half[i] = s;
    }
}

// The rotation of one pair (x0, x1) = (row[i], row[i + half]): each product rounded, then the sum (no FMA).
__device__ __forceinline__ void rope_rotate(float x0, float x1, float c, float s, float& y0, float& y1)
{
    y0 = __fsub_rn(__fmul_rn(x0, c), __fmul_rn(x1, s));
    y1 = __fadd_rn(__fmul_rn(x1, c), __fmul_rn(x0, s));
}

__device__ __forceinline__ bool rope_head_dim_ok(int head_dim)
{
    return head_dim >= 2 && head_dim <= ROPE_MAX_HEAD_DIM && head_dim % 2 == 0;
}

__device__ __forceinline__ void rope(float* q, float* k, const int* positions, const float* inv_freq, int num_tokens,
                                     int num_q_heads, int num_kv_heads, int head_dim)
{
    __shared__ float cos_half[ROPE_MAX_HEAD_DIM / 2];
    __shared__ float sin_half[ROPE_MAX_HEAD_DIM / 2];

    if (!rope_head_dim_ok(head_dim)) return; // uniform: whole block leaves
    const int half = head_dim / 2;
    const int pairs = (num_q_heads + num_kv_heads) * half;

    for (int t = blockIdx.x; t < num_tokens; t += gridDim.x)
    {
        __syncthreads(); // the previous token's readers are done with the tables
        rope_tables(cos_half, sin_half, static_cast<float>(positions[t]), inv_freq, half);
        __syncthreads();

        for (int p = threadIdx.x; p < pairs; p += blockDim.x)
        {
            const int h = p / half;
            const int i = p - h * half;
            float* row = h < num_q_heads
                ? q + (static_cast<int64_t>(t) * num_q_heads + h) * head_dim
                : k + (static_cast<int64_t>(t) * num_kv_heads + (h - num_q_heads)) * head_dim;
            rope_rotate(row[i], row[i + half], cos_half[i], sin_half[i], row[i], row[i + half]);
        }
    }
}
} // namespace ops

// rope has no templated operand (activations and inv_freq are fp32), so it has one entry with the _f32 suffix.
extern "C" __global__ void rope_f32(float* q, float* k, const int* positions, const float* inv_freq, int num_tokens,
                                    int num_q_heads, int num_kv_heads, int head_dim)
{
    ops::rope(q, k, positions, inv_freq, num_tokens, num_q_heads, num_kv_heads, head_dim);
}
