// Host emulation of kernels/include/mma.cuh (same names and signatures), with the fragment layouts of the PTX ISA
// ("Matrix Fragments for mma.m16n8k16", "ldmatrix"): lane = threadIdx.x % 32, g = lane / 4, c = lane % 4.
//   A 16x16: a0 (g, 2c..2c+1), a1 (g+8, 2c..), a2 (g, 2c+8..), a3 (g+8, 2c+8..)      (row, col), low half first
//   B 16x8:  b0 (k = 2c..2c+1, n = g), b1 (k = 2c+8..2c+9, n = g)
//   C 16x8:  c0, c1 (g, 2c..2c+1), c2, c3 (g+8, 2c..2c+1)
//   m16n8k32 .s8 (four int8 a register, lowest k in the low byte): a0 (g, 4c..4c+3), a1 (g+8, 4c..), a2 (g, 16+4c..),
//            a3 (g+8, 16+4c..); b0 (k = 4c..4c+3, n = g), b1 (k = 16+4c.., n = g); C as above, int32
//   ldmatrix: lanes 8j..8j+7 address the rows of matrix j; lane l gets row l/4, elements 2(l%4), 2(l%4)+1;
//   with .trans it gets elements (2(l%4), l/4) and (2(l%4)+1, l/4).
// Written independently of the kernels, from the ISA text, so a kernel that misplaces a fragment fails here.
#pragma once

#include <cstdint>
#include <cstring>

#include "abi.h"
#include "cuda_emu.h"

inline uint32_t smem_u32(const void* p)
{
    return static_cast<uint32_t>(reinterpret_cast<uintptr_t>(p));
}

inline void cp_async16_zfill(void* dst, const void* src, int src_bytes)
{
    unsigned char tmp[16] = {};
    if (src_bytes > 0) std::memcpy(tmp, src, src_bytes > 16 ? 16 : src_bytes);
    std::memcpy(dst, tmp, 16);
}
inline void cp_async_commit() {}
template <int N>
inline void cp_async_wait()
{
}

namespace emu
{
inline uint16_t b16_at(const void* row, int element)
{
    uint16_t v;
    std::memcpy(&v, static_cast<const unsigned char*>(row) + 2 * element, 2);
    return v;
}

inline void ldmatrix(uint32_t (&r)[4], const void* row_address, bool trans)
{
    const int l = lane_id();
    const void* mine = row_address;
    const int slot = exchange_slot();
    std::memcpy(warp_exchange(l, slot), &mine, sizeof(mine));
    arrive_and_wait(warp_barrier());
    for (int j = 0; j < 4; ++j)
    {
        const void* rows[8];
        for (int i = 0; i < 8; ++i) std::memcpy(&rows[i], warp_exchange(8 * j + i, slot), sizeof(void*));
        uint16_t lo, hi;
        if (!trans)
            lo = b16_at(rows[l / 4], 2 * (l % 4)), hi = b16_at(rows[l / 4], 2 * (l % 4) + 1);
        else
            lo = b16_at(rows[2 * (l % 4)], l / 4), hi = b16_at(rows[2 * (l % 4) + 1], l / 4);
        r[j] = static_cast<uint32_t>(lo) | static_cast<uint32_t>(hi) << 16;
    }
}

template <DType DT>
inline float b16_to_float(uint16_t bits)
{
    if constexpr (DT == DType::F16) return _cvtsh_ss(bits);
    else
    {
        const uint32_t u = static_cast<uint32_t>(bits) << 16;
        float f;
        std::memcpy(&f, &u, 4);
        return f;
    }
}

template <DType DT>
inline float half_of(uint32_t reg, int which)
{
    return b16_to_float<DT>(static_cast<uint16_t>(which ? reg >> 16 : reg & 0xffffu));
}
} // namespace emu

inline void ldmatrix_x4(uint32_t (&r)[4], const void* row_address) { emu::ldmatrix(r, row_address, false); }
inline void ldmatrix_x4_trans(uint32_t (&r)[4], const void* row_address) { emu::ldmatrix(r, row_address, true); }

// Every lane posts its fragments; lane 0 rebuilds A and B from them and computes the 16 x 8 product once for the
// warp; each lane adds its four elements of it.
template <DType DT>
inline void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1)
{
    struct Frag
    {
        uint32_t a[4], b[2];
    };
    const int l = emu::lane_id();
    Frag mine{{a[0], a[1], a[2], a[3]}, {b0, b1}};
    const int slot = emu::exchange_slot();
    std::memcpy(emu::warp_exchange(l, slot), &mine, sizeof(mine));
    emu::arrive_and_wait(emu::warp_barrier());
    float* product = emu::warp_product();
    if (l == 0)
    {
        float A[16][16], B[16][8];
        for (int lane = 0; lane < 32; ++lane)
        {
            Frag f;
            std::memcpy(&f, emu::warp_exchange(lane, slot), sizeof(f));
            const int g = lane / 4, c = lane % 4;
            for (int h = 0; h < 2; ++h)
            {
                A[g][2 * c + h] = emu::half_of<DT>(f.a[0], h);
                A[g + 8][2 * c + h] = emu::half_of<DT>(f.a[1], h);
                A[g][2 * c + 8 + h] = emu::half_of<DT>(f.a[2], h);
                A[g + 8][2 * c + 8 + h] = emu::half_of<DT>(f.a[3], h);
                B[2 * c + h][g] = emu::half_of<DT>(f.b[0], h);
                B[2 * c + 8 + h][g] = emu::half_of<DT>(f.b[1], h);
            }
        }
        for (int row = 0; row < 16; ++row)
            for (int col = 0; col < 8; ++col)
            {
                float sum = 0.f;
                for (int k = 0; k < 16; ++k) sum += A[row][k] * B[k][col];
                product[row * 8 + col] = sum;
            }
    }
    emu::arrive_and_wait(emu::warp_barrier());
    const int g = l / 4, c = l % 4;
    for (int i = 0; i < 4; ++i) d[i] += product[(g + 8 * (i / 2)) * 8 + 2 * c + i % 2];
}

inline void mma_m16n8k32_s8(int (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1)
{
    struct Frag
    {
        uint32_t a[4], b[2];
    };
    const int l = emu::lane_id();
    Frag mine{{a[0], a[1], a[2], a[3]}, {b0, b1}};
    const int slot = emu::exchange_slot();
    std::memcpy(emu::warp_exchange(l, slot), &mine, sizeof(mine));
    emu::arrive_and_wait(emu::warp_barrier());
    int* product = reinterpret_cast<int*>(emu::warp_product());
    if (l == 0)
    {
        int A[16][32], B[32][8];
        auto byte = [](uint32_t reg, int i) { return static_cast<int>(static_cast<int8_t>(reg >> (8 * i))); };
        for (int lane = 0; lane < 32; ++lane)
        {
            Frag f;
            std::memcpy(&f, emu::warp_exchange(lane, slot), sizeof(f));
            const int g = lane / 4, c = lane % 4;
            for (int i = 0; i < 4; ++i)
            {
                A[g][4 * c + i] = byte(f.a[0], i);
                A[g + 8][4 * c + i] = byte(f.a[1], i);
                A[g][16 + 4 * c + i] = byte(f.a[2], i);
                A[g + 8][16 + 4 * c + i] = byte(f.a[3], i);
                B[4 * c + i][g] = byte(f.b[0], i);
                B[16 + 4 * c + i][g] = byte(f.b[1], i);
            }
        }
        for (int row = 0; row < 16; ++row)
            for (int col = 0; col < 8; ++col)
            {
                int sum = 0;
                for (int k = 0; k < 32; ++k) sum += A[row][k] * B[k][col];
                product[row * 8 + col] = sum;
            }
    }
    emu::arrive_and_wait(emu::warp_barrier());
    const int g = l / 4, c = l % 4;
    for (int i = 0; i < 4; ++i) d[i] += product[(g + 8 * (i / 2)) * 8 + 2 * c + i % 2];
}

template <DType DT>
inline uint32_t pack2(float lo, float hi)
{
    uint16_t a, b;
    if constexpr (DT == DType::F16)
        a = __float2half_rn(lo).bits, b = __float2half_rn(hi).bits;
    else
        a = __float2bfloat16_rn(lo).bits, b = __float2bfloat16_rn(hi).bits;
    return static_cast<uint32_t>(a) | static_cast<uint32_t>(b) << 16;
}
