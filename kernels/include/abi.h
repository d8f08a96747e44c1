// The contract between kernels.fatbin and the C# launchers: ABI version, dtype codes, naming and argument rules.
//
// Exported symbols (all `extern "C"`, so cuModuleGetFunction/cuModuleGetGlobal find them by their plain name):
//   - kernels_abi_version  `__constant__ int`, read with cuModuleGetGlobal + cuMemcpyDtoH at module load.
//     KernelModule.Load compares it with the C# constant and refuses a mismatched fatbin.
//   - one `__global__` entry per (op, dtype): `<op>_<dtype>`, dtype in {f32, f16, bf16}. The suffix names the
//     storage type of the templated operand (weights / embedding table); activations are fp32 in every entry, and
//     ops without a templated operand carry `_f32`. Ops compiled per head dim (the attention kernels) insert
//     `_hd<D>` before the dtype: `<op>_hd<D>_<dtype>`, D from KERNELS_FOR_EACH_HEAD_DIM.
//     Full list with signatures: kernels/README.md, kernels/exports.txt.
//
// Argument rules (the C# side mirrors them with plain IntPtr/int/float arguments, no structs):
//   - order: outputs (or in/out) first, then inputs, then sizes (int32), then scalars (float);
//   - pointers are device pointers to dense row-major tensors; no strides unless the op documents one;
//   - sizes are int32 and every tensor has fewer than 2^31 elements (kernels index with 64-bit offsets anyway);
//   - kernels never fail at run time: the launcher validates shapes and preconditions and throws (STYLE habit 7);
//     a kernel guards its memory accesses, so a violated precondition writes nothing rather than out of bounds.
//
// ABI version rule: bump KERNELS_ABI_VERSION whenever an exported name, an argument list, an argument's meaning,
// a dtype code or a documented launch requirement changes. Adding a new entry point needs no bump.
#pragma once

// 2: paged_{decode,prefill}_attention_{dtype} became one entry per head dim, paged_*_attention_hd<D>_{dtype}, and
//    decode's grid x became num_kv_heads * ceil_div(G, 4) (any GQA group, 4 query heads per block).
// 3: sample_tokens_f32 takes the engine's coins (fp64 per row) instead of SplitMix64 states, and a logits row stride.
// 4: kivi_quantize_block_f32 takes `sources` after block_ids: block i is read from [sources[i], G, kvd] of keys and
//    values (the paged full-precision slots), or from block i when sources is null.
#define KERNELS_ABI_VERSION 4

// Element type of a templated operand. Values match Kernels.Runtime.Models.TensorDType (F32 = 0, F16 = 1, BF16 = 2);
// a C# test should assert that they stay equal (STYLE habit 6).
enum class DType : int
{
    F32 = 0,
    F16 = 1,
    BF16 = 2,
};

// X-macro over the weight dtypes every templated op is exported for: X(suffix, DType::value).
// An op defines a one-line ENTRY macro and expands KERNELS_FOR_EACH_DTYPE(ENTRY): one template, three entries.
#define KERNELS_FOR_EACH_DTYPE(X) \
    X(f32, DType::F32)            \
    X(f16, DType::F16)            \
    X(bf16, DType::BF16)

// The 16-bit subset, for ops whose templated operand feeds tensor cores (mma.sync has f16 and bf16 inputs, no f32).
#define KERNELS_FOR_EACH_HALF_DTYPE(X) \
    X(f16, DType::F16)                 \
    X(bf16, DType::BF16)

// X-macro over the head dims the attention kernels are compiled for: X(suffix, DT, D), one entry each. Each entry is
// its own instantiation, so a small head dim does not carry the registers or shared memory of the largest.
#define KERNELS_FOR_EACH_HEAD_DIM(X, suffix, DT) \
    X(suffix, DT, 8)                             \
    X(suffix, DT, 16)                            \
    X(suffix, DT, 32)                            \
    X(suffix, DT, 64)                            \
    X(suffix, DT, 128)                           \
    X(suffix, DT, 256)

#ifdef __CUDACC__
// Defined here, and this header is included by exactly one translation unit (kernels/kernels.cu).
// __constant__ and not const: a const variable may be folded away and then cuModuleGetGlobal cannot find it.
extern "C" __constant__ int kernels_abi_version = KERNELS_ABI_VERSION;
#endif
