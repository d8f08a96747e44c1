// The one translation unit of kernels.fatbin: every op is a header included here, so a single `nvcc -fatbin`
// produces one module (non-relocatable device code cannot be linked from several fatbins without -rdc).
// To add an op: write kernels/ops/<op>.cuh (header block per STYLE habit 1), include it below with its `defines:`
// line, add its entry names to kernels/exports.txt, and list it in kernels/README.md with its CPU reference.

#include "abi.h"     // defines: kernels_abi_version, DType, KERNELS_FOR_EACH_DTYPE
#include "common.cuh" // defines: dtype loads, 128-bit access, ceil_div, warp/block reductions

#include "ops/embedding_gather.cuh" // defines: embedding_gather_{f32,f16,bf16}
#include "ops/kivi.cuh"             // defines: kivi_quantize_block_f32, kivi_decode_attention_f32, kivi_merge_partials_f32,
                                    //          kivi_decode_attention_split_b{2,4}_hd{64,128}
#include "ops/residual_add.cuh"     // defines: residual_add_f32, bias_add_f32
#include "ops/convert.cuh"          // defines: convert_f32_to_{f16,bf16}
#include "ops/rms_norm.cuh"         // defines: rms_norm_{f32,f16,bf16}, rms_norm_{f32,f16,bf16}_to_{f16,bf16}
#include "ops/rms_norm_quant.cuh"   // defines: rms_norm_quant_int8_{f32,f16,bf16}, quantize_int8_f32
#include "ops/rope.cuh"             // defines: rope_f32
#include "ops/swiglu.cuh"           // defines: swiglu_f32, swiglu_fused_f32, swiglu_fused_f32_to_{f16,bf16}
#include "ops/kv_append.cuh"        // defines: kv_append_{f32,f16,bf16}
#include "ops/rope_kv_append.cuh"   // defines: rope_kv_append_{f32,f16,bf16}

#include "mma.cuh" // defines: cp.async, ldmatrix, mma.sync m16n8k16 wrappers, fp32 -> f16/bf16 packing

#include "ops/dense_gemm.cuh" // defines: dense_gemm_{f16,bf16}, dense_gemm_small_m_{f16,bf16}
#include "ops/dense_gemv.cuh" // defines: dense_gemv_{f16,bf16}, dense_gemv_{residual,qkv,swiglu}_{f16,bf16},
                              //          dense_gemv_{qkv,swiglu}_norm_{f16,bf16}

#include "attention_state.cuh"            // defines: AttnPartial, online-softmax add, (o, lse) merge
#include "ops/paged_decode_attention.cuh" // defines: paged_decode_attention_{f32,f16,bf16}, attention_merge_f32
#include "ops/paged_decode_attention_tiled.cuh" // defines: paged_decode_attention_tiled_hd{64,128}_{f16,bf16}
#include "ops/paged_prefill_attention.cuh" // defines: paged_prefill_attention_{f32,f16,bf16}
#include "ops/paged_attention_mma.cuh"    // defines: paged_attention_mma_hd{64,128}_k{32,64}_{f16,bf16}, attention_merge_slots_f32
#include "ops/sample_tokens.cuh"           // defines: sample_tokens_f32, sample_tokens_radix_f32
#include "ops/squeezellm_gemv.cuh"        // defines: squeezellm_gemv_b{3,4}
#include "ops/w4a8_gemm.cuh" // defines: w4a8_gemm_{group,channel}_{m16,m64,splitk}, w4a8_splitk_reduce
