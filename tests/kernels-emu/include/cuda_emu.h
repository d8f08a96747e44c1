// A CUDA execution model on the host, so a tensor-core kernel's fragment bookkeeping (ldmatrix, mma.sync, shuffles,
// barriers, shared memory) can be tested on a machine without a GPU. Every thread of a block is a fiber (ucontext)
// on one OS thread; a barrier (block or warp) parks the fiber until every live participant has arrived, and a
// thread that returns drops out of both, as exited threads do on sm_70+. Blocks run one after another, so a
// function-local `__shared__` (a static here) is the block's shared memory. Warp collectives (shuffles, ldmatrix,
// mma) exchange through a per-warp buffer between two warp barriers, with the data layouts of the PTX ISA.
//
// What it does not model: timing, memory ordering beyond barriers (cp.async copies at once; a missing wait is not
// caught), bank conflicts, divergence within a warp at a collective (all 32 lanes must call it, as the kernels
// require). Compile with -include cuda_emu.h -I tests/kernels-emu/include -I kernels/include (this folder first:
// it replaces mma.cuh, cuda_fp16.h and cuda_bf16.h) and -fno-strict-aliasing (kernels read a uint4 through __half*,
// which nvcc allows and g++ -O2 would miscompile).
#pragma once

#include <climits>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <csetjmp>
#include <immintrin.h>
#include <math.h>
#include <ucontext.h>
#include <vector>

#define __global__
#define __device__ inline
#define __host__
#define __forceinline__
#define __constant__
#define __shared__ static
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __restrict__ __restrict
#define KERNELS_DYNAMIC_SMEM(name) unsigned char* name = emu::dynamic_smem()

struct uint3
{
    unsigned x = 0, y = 0, z = 0;
};
struct alignas(8) float2
{
    float x, y;
};
struct alignas(16) float4
{
    float x, y, z, w;
};
struct alignas(16) uint4
{
    unsigned x, y, z, w;
};
struct alignas(8) uint2
{
    unsigned x, y;
};
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }
inline uint2 make_uint2(unsigned x, unsigned y) { return uint2{x, y}; }

namespace emu
{
constexpr size_t kFiberStack = 256 * 1024;

struct Barrier
{
    int expected = 0, arrived = 0;
    long generation = 0;
};

// A fiber starts once through its ucontext and switches afterwards by _setjmp / _longjmp (no signal-mask system
// call per switch, which swapcontext makes).
struct Fiber
{
    ucontext_t context;
    std::jmp_buf jump;
    char* stack = nullptr;
    bool started = false, done = false;
    uint3 thread;
};

struct Block
{
    ucontext_t scheduler;
    std::jmp_buf back;
    std::vector<Fiber> fibers;
    int current = 0;
    Barrier block;
    std::vector<Barrier> warps;
    // Per warp: 32 lanes x 64 bytes of exchange (a shuffle's value, an ldmatrix address, an mma's fragments).
    std::vector<unsigned char> exchange;
    // Per warp: an mma's 16 x 8 product, computed once by lane 0 and read by every lane.
    std::vector<float> product;
    std::function<void()> body;
};

inline Block*& current_block()
{
    static Block* b = nullptr;
    return b;
}
inline std::vector<unsigned char>& dynamic_buffer()
{
    static std::vector<unsigned char> b;
    return b;
}
// Fiber stacks, allocated once and reused by every block (zeroing fresh stacks per block costs more than the kernel).
inline char* fiber_stack(int t)
{
    static std::vector<std::vector<char>> stacks;
    while (static_cast<int>(stacks.size()) <= t) stacks.emplace_back(kFiberStack);
    return stacks[t].data();
}
inline unsigned char* dynamic_smem()
{
    return reinterpret_cast<unsigned char*>((reinterpret_cast<uintptr_t>(dynamic_buffer().data()) + 15) & ~uintptr_t(15));
}
} // namespace emu

// The launch's indices: one per fiber (swapped in and out by the scheduler).
inline uint3 threadIdx, blockIdx, blockDim, gridDim;

namespace emu
{
inline void yield()
{
    Block* b = current_block();
    Fiber& f = b->fibers[b->current];
    f.thread = threadIdx;
    if (!_setjmp(f.jump)) _longjmp(b->back, 1);
    threadIdx = b->fibers[b->current].thread;
}

inline void arrive_and_wait(Barrier& bar)
{
    const long gen = bar.generation;
    if (++bar.arrived == bar.expected)
    {
        bar.arrived = 0;
        ++bar.generation;
        return;
    }
    while (bar.generation == gen) yield();
}

inline void drop(Barrier& bar)
{
    --bar.expected;
    if (bar.arrived > 0 && bar.arrived == bar.expected)
    {
        bar.arrived = 0;
        ++bar.generation;
    }
}

inline int lane_id() { return static_cast<int>(threadIdx.x & 31); }
inline Barrier& warp_barrier() { return current_block()->warps[threadIdx.x >> 5]; }
inline float* warp_product() { return current_block()->product.data() + (threadIdx.x >> 5) * 128; }
inline unsigned char* warp_exchange(int lane)
{
    return current_block()->exchange.data() + ((threadIdx.x >> 5) * 32 + lane) * 64;
}

inline void fiber_entry()
{
    Block* b = current_block();
    b->body();
    Fiber& f = b->fibers[b->current];
    f.done = true;
    drop(b->block);
    drop(warp_barrier());
    _longjmp(b->back, 1);
}

// Runs body() for every thread of every block, blocks in order; dynamic shared memory of smem_bytes (zeroed).
inline void launch(uint3 grid, uint3 block, size_t smem_bytes, const std::function<void()>& body)
{
    dynamic_buffer().assign(smem_bytes + 16, 0);
    const int threads = static_cast<int>(block.x * block.y * block.z);
    for (unsigned bz = 0; bz < grid.z; ++bz)
        for (unsigned by = 0; by < grid.y; ++by)
            for (unsigned bx = 0; bx < grid.x; ++bx)
            {
                Block b;
                b.body = body;
                b.block.expected = threads;
                b.warps.resize((threads + 31) / 32);
                for (int w = 0; w < static_cast<int>(b.warps.size()); ++w) b.warps[w].expected = std::min(32, threads - 32 * w);
                b.exchange.assign(b.warps.size() * 32 * 64, 0);
                b.product.assign(b.warps.size() * 128, 0.f);
                b.fibers.resize(threads);
                current_block() = &b;
                gridDim = grid;
                blockDim = block;
                blockIdx = uint3{bx, by, bz};
                for (int t = 0; t < threads; ++t)
                {
                    Fiber& f = b.fibers[t];
                    f.stack = fiber_stack(t);
                    f.thread = uint3{static_cast<unsigned>(t % block.x), static_cast<unsigned>(t / block.x % block.y),
                                     static_cast<unsigned>(t / (block.x * block.y))};
                    getcontext(&f.context);
                    f.context.uc_stack.ss_sp = f.stack;
                    f.context.uc_stack.ss_size = kFiberStack;
                    f.context.uc_link = &b.scheduler;
                    makecontext(&f.context, fiber_entry, 0);
                }
                for (bool live = true; live;)
                {
                    live = false;
                    for (int t = 0; t < threads; ++t)
                    {
                        if (b.fibers[t].done) continue;
                        live = true;
                        b.current = t;
                        threadIdx = b.fibers[t].thread;
                        if (_setjmp(b.back)) continue; // the fiber yielded or finished
                        if (!b.fibers[t].started)
                        {
                            b.fibers[t].started = true;
                            setcontext(&b.fibers[t].context);
                        }
                        _longjmp(b.fibers[t].jump, 1);
                    }
                }
                current_block() = nullptr;
            }
}

// Every lane posts `bytes` from `mine`, the warp meets, `read(lane)` reads what a lane posted, the warp meets again.
template <class T>
inline T exchange(const T& mine, int from_lane)
{
    static_assert(sizeof(T) <= 64, "one exchange slot");
    std::memcpy(warp_exchange(lane_id()), &mine, sizeof(T));
    arrive_and_wait(warp_barrier());
    T v;
    std::memcpy(&v, warp_exchange(from_lane), sizeof(T));
    arrive_and_wait(warp_barrier());
    return v;
}
} // namespace emu

// CUDA's integer min / max overloads.
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }

inline void __syncthreads() { emu::arrive_and_wait(emu::current_block()->block); }
inline void __syncwarp(unsigned = 0xffffffffu) { emu::arrive_and_wait(emu::warp_barrier()); }
template <class T>
inline T __shfl_xor_sync(unsigned, T v, int mask)
{
    return emu::exchange(v, emu::lane_id() ^ mask);
}
template <class T>
inline T __shfl_sync(unsigned, T v, int src)
{
    return emu::exchange(v, src & 31);
}
template <class T>
inline T __shfl_down_sync(unsigned, T v, int delta)
{
    const int src = emu::lane_id() + delta;
    return emu::exchange(v, src < 32 ? src : emu::lane_id());
}

template <class T>
inline T __shfl_up_sync(unsigned, T v, int delta)
{
    const int src = emu::lane_id() - delta;
    return emu::exchange(v, src >= 0 ? src : emu::lane_id());
}
inline unsigned __ballot_sync(unsigned, int predicate)
{
    const int lane = emu::lane_id();
    const int mine = predicate != 0;
    std::memcpy(emu::warp_exchange(lane), &mine, sizeof(int));
    emu::arrive_and_wait(emu::warp_barrier());
    unsigned bits = 0;
    for (int l = 0; l < 32; ++l)
    {
        int p;
        std::memcpy(&p, emu::warp_exchange(l), sizeof(int));
        bits |= static_cast<unsigned>(p != 0) << l;
    }
    emu::arrive_and_wait(emu::warp_barrier());
    return bits;
}
inline int __popc(unsigned x) { return __builtin_popcount(x); }
// Byte i of the result is byte (s >> 4i) & 7 of the 8 bytes {x, y} (x's bytes 0-3, y's 4-7); no sign mode.
inline unsigned __byte_perm(unsigned x, unsigned y, unsigned s)
{
    const uint64_t both = static_cast<uint64_t>(y) << 32 | x;
    unsigned r = 0;
    for (int i = 0; i < 4; ++i) r |= static_cast<unsigned>((both >> (8 * ((s >> (4 * i)) & 7))) & 0xFF) << (8 * i);
    return r;
}
// Per-byte sum modulo 256.
inline unsigned __vadd4(unsigned a, unsigned b)
{
    unsigned r = 0;
    for (int i = 0; i < 4; ++i) r |= (((a >> (8 * i)) + (b >> (8 * i))) & 0xFFu) << (8 * i);
    return r;
}
template <class T>
inline T __ldg(const T* p)
{
    return *p;
}
inline float __int2float_rn(int v) { return static_cast<float>(v); } // round to nearest even, as the default mode
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline int __float2int_rn(float x) { return static_cast<int>(lrintf(x)); } // nearest even, as the default mode
template <class T>
inline T __ldcs(const T* p)
{
    return *p;
}
inline unsigned __float_as_uint(float f)
{
    unsigned u;
    std::memcpy(&u, &f, 4);
    return u;
}
inline float __uint_as_float(unsigned u)
{
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
// Fibers never interleave inside a statement, so read-modify-write is atomic here.
template <class T>
inline T atomicAdd(T* address, T value)
{
    const T old = *address;
    *address = old + value;
    return old;
}
inline int atomicMin(int* address, int value)
{
    const int old = *address;
    *address = old < value ? old : value;
    return old;
}

// ---- 16-bit floats: storage types and the conversions the kernels use (round to nearest even) ----
struct __half
{
    unsigned short bits;
};
struct __nv_bfloat16
{
    unsigned short bits;
};
struct __half2
{
    __half x, y;
};
struct __nv_bfloat162
{
    __nv_bfloat16 x, y;
};

inline __half __float2half_rn(float f) { return __half{static_cast<unsigned short>(_cvtss_sh(f, 0))}; }
inline float __half2float(__half h) { return _cvtsh_ss(h.bits); }
inline __half __float2half(float f) { return __float2half_rn(f); }
inline __half __float2half_ru(float f) { return __half{static_cast<unsigned short>(_cvtss_sh(f, _MM_FROUND_TO_POS_INF))}; }
inline __nv_bfloat16 __float2bfloat16_rn(float f)
{
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return __nv_bfloat16{static_cast<unsigned short>((u >> 16) | 0x40)}; // NaN
    u += 0x7fffu + ((u >> 16) & 1u);
    return __nv_bfloat16{static_cast<unsigned short>(u >> 16)};
}
inline float __bfloat162float(__nv_bfloat16 b)
{
    const uint32_t u = static_cast<uint32_t>(b.bits) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
inline __half2 __floats2half2_rn(float lo, float hi) { return __half2{__float2half_rn(lo), __float2half_rn(hi)}; }
inline __nv_bfloat162 __floats2bfloat162_rn(float lo, float hi)
{
    return __nv_bfloat162{__float2bfloat16_rn(lo), __float2bfloat16_rn(hi)};
}
