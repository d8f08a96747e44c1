// swiglu: the gated activation of a Llama MLP, out = silu(gate) * up, from separate or fused gate/up tensors.
//
// Math:    silu(g)    = g / (1 + exp(-g))
//          out[t, i]  = silu(gate[t, i]) * up[t, i]       for i < inter
// Pointers (swiglu_f32):
//   out      [num_tokens, inter]       fp32, written (may equal gate or up: in place is allowed)
//   gate     [num_tokens, inter]       fp32, read
//   up       [num_tokens, inter]       fp32, read
// Pointers (swiglu_fused_f32):
//   out      [num_tokens, inter]       fp32, written; must not overlap gate_up
//   gate_up  [num_tokens, 2 * inter]   fp32, read; row t = gate[t, 0..inter) then up[t, 0..inter), i.e. the output
//                                      of one GEMM against the concatenated [gate; up] weight
// Layout:  dense row-major; both entries run the same body with an input row stride (inter, or 2 * inter).
// Grid:    2-D. blockIdx.x covers columns: gridDim.x = ceil_div(inter, blockDim.x). blockIdx.y covers rows with a
//          grid stride: any gridDim.y in [1, 65535] (use min(num_tokens, 65535)).
// Block:   any blockDim.x >= 1 (256 recommended), blockDim.y = z = 1; one element per thread.
// Numerics: expf (no fast math, within 2 ulp), IEEE division, and a __fmul_rn product. The CPU reference SwiGlu
//          computes g / (1 + MathF.Exp(-g)) * u; results differ only through exp, by a few ulp. Large negative g
//          gives exp(-g) = inf and silu = -0; large positive g gives silu = g; NaN propagates.
// Empty:   num_tokens == 0 or inter == 0 writes nothing; the launcher skips the launch.
#pragma once

#include "common.cuh"
#include "convert.cuh"

namespace ops
{
__device__ __forceinline__ float silu(float g)
{
    return g / (1.0f + expf(-g));
}

// out = silu(gate) * up; with OT a 16-bit type, also out16 = round_to<OT>(out) (convert_f32_to_*'s rounding).
template <DType OT = DType::F32>
__device__ __forceinline__ void swiglu(float* out, const float* gate, const float* up, int num_tokens, int inter,
                                       int in_row_stride, storage_t<OT>* out16 = nullptr)
{
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= inter) return;
    for (int t = blockIdx.y; t < num_tokens; t += gridDim.y)
    {
        const int64_t in = static_cast<int64_t>(t) * in_row_stride + i, at = static_cast<int64_t>(t) * inter + i;
        const float v = __fmul_rn(silu(gate[in]), up[in]);
        out[at] = v;
        if constexpr (OT != DType::F32) out16[at] = round_to<OT>(v);
    }
}
} // namespace ops

extern "C" __global__ void swiglu_f32(float* out, const float* gate, const float* up, int num_tokens, int inter)
{
    ops::swiglu(out, gate, up, num_tokens, inter, inter);
}

extern "C" __global__ void swiglu_fused_f32(float* out, const float* gate_up, int num_tokens, int inter)
{
    ops::swiglu(out, gate_up, gate_up + inter, num_tokens, inter, 2 * inter);
}

// swiglu_fused_f32_to_{f16,bf16}(out, out16, gate_up, num_tokens, inter): swiglu_fused_f32, and out16 [num_tokens,
// inter] the same values rounded to the 16-bit type (the down projection's cuBLASLt input). Grid and block as swiglu.
extern "C" __global__ void swiglu_fused_f32_to_f16(float* out, __half* out16, const float* gate_up, int num_tokens, int inter)
{
    ops::swiglu<DType::F16>(out, gate_up, gate_up + inter, num_tokens, inter, 2 * inter, out16);
}

extern "C" __global__ void swiglu_fused_f32_to_bf16(float* out, __nv_bfloat16* out16, const float* gate_up, int num_tokens, int inter)
{
    ops::swiglu<DType::BF16>(out, gate_up, gate_up + inter, num_tokens, inter, 2 * inter, out16);
}
