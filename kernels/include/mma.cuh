// Tensor-core and async-copy primitives (sm_80+), as inline PTX: cp.async with zero fill, ldmatrix, mma.sync
// m16n8k16 with f16 or bf16 inputs and fp32 accumulators, and fp32 -> 16-bit packing. Written once, used by every
// tensor-core kernel (STYLE habit 5).
//
// defines: cp_async16_zfill, cp_async_commit, cp_async_wait<N>, ldmatrix_x4, ldmatrix_x4_trans, mma_m16n8k16<DT>,
//          mma_m16n8k32_s8, pack2<DT>,
//          smem_u32
//
// Fragment layouts (PTX ISA, "Matrix Fragments for mma.m16n8k16"), lane = threadIdx.x % 32, g = lane / 4, c = lane % 4:
//   A (16x16, row-major)   a0: (g,   2c..2c+1)  a1: (g+8, 2c..2c+1)  a2: (g,   2c+8..2c+9)  a3: (g+8, 2c+8..2c+9)
//   B (16x8, "col": stored as [n][k], i.e. rows of W)  b0: (k = 2c..2c+1, n = g)  b1: (k = 2c+8..2c+9, n = g)
//   C/D (16x8, fp32)       d0, d1: (g, 2c..2c+1)     d2, d3: (g+8, 2c..2c+1)
// ldmatrix.x4 loads four 8x8 16-bit matrices; lanes 8j..8j+7 give the row addresses of matrix j, and lane l receives
// row l/4, columns 2(l%4)..2(l%4)+1 of each matrix, which is exactly the A/B fragment layout above when the four
// matrices are chosen as documented at each call site.
#pragma once

#include <cstdint>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "abi.h"

__device__ __forceinline__ uint32_t smem_u32(const void* p)
{
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte global -> shared copy that bypasses L1 (.cg). src_bytes < 16 zero-fills the rest (0: all zeros, and the
// source is not read, so an out-of-range row can pass any valid pointer). Preconditions: dst and src 16-byte aligned.
__device__ __forceinline__ void cp_async16_zfill(void* dst, const void* src, int src_bytes)
{
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(dst)), "l"(src), "r"(src_bytes));
}

__device__ __forceinline__ void cp_async_commit()
{
    asm volatile("cp.async.commit_group;\n" ::);
}

// Waits until at most N committed groups of this thread are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait()
{
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// Precondition: every lane's address is 16-byte aligned and in shared memory.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* row_address)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(row_address)));
}

// ldmatrix_x4 with .trans: each 8x8 matrix is transposed on the way, so lane l receives rows 2(l%4), 2(l%4)+1 of
// column l/4 (a B fragment of mma.m16n8k16 read from a [k][n] row-major tile, e.g. V stored [key][dim]).
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* row_address)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(row_address)));
}

// d += a * b for one 16x8x16 tile, fp32 accumulate.
template <DType DT>
__device__ __forceinline__ void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);

template <>
__device__ __forceinline__ void mma_m16n8k16<DType::F16>(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
                 "{%0, %1, %2, %3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

template <>
__device__ __forceinline__ void mma_m16n8k16<DType::BF16>(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
                 "{%0, %1, %2, %3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// d += a * b for one 16x8x32 int8 tile, int32 accumulate (exact). Fragments (PTX ISA, m16n8k32 .s8), g = lane / 4,
// c = lane % 4, four int8 per register, lowest k in the low byte: a0 (row g, k 4c..4c+3), a1 (row g+8, same k),
// a2 (row g, k 16+4c..), a3 (row g+8, k 16+4c..); b0 (k 4c..4c+3, n = g), b1 (k 16+4c.., n = g); C as m16n8k16's.
__device__ __forceinline__ void mma_m16n8k32_s8(int (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1)
{
    asm volatile(
        "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two fp32 values rounded to nearest-even into one 32-bit register of DT pairs (lo in the low half).
template <DType DT>
__device__ __forceinline__ uint32_t pack2(float lo, float hi);

template <>
__device__ __forceinline__ uint32_t pack2<DType::F16>(float lo, float hi)
{
    __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
}

template <>
__device__ __forceinline__ uint32_t pack2<DType::BF16>(float lo, float hi)
{
    __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&h);
}
