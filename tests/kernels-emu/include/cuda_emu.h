// A CUDA execution model on the host, so a tensor-core kernel's fragment bookkeeping (ldmatrix, mma.sync, shuffles,
// barriers, shared memory) can be tested on a machine without a GPU. Every thread of a block is a fiber on one OS
// thread (switched by a few instructions of x86-64 assembly; ucontext elsewhere); a barrier (block or warp) parks the
// fiber until every live participant has arrived, and a
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

#if defined(__x86_64__)
// Saves the callee-saved registers on the running stack and its stack pointer in *from, then resumes the stack `to`
// (a pointer saved the same way, or a fresh stack prepared by prepare_stack). No system call and no signal-mask or
// unwinding work per switch (ucontext and glibc's longjmp spent most of an emulated kernel's time on both).
extern "C" void emu_switch(void** from, void* to);
asm(R"(
    .text
    .p2align 4
    .type emu_switch,@function
emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size emu_switch, .-emu_switch
)");

// A fresh stack whose first switch "returns" into entry with the alignment of a call (entry must never return).
inline void* prepare_stack(char* stack, size_t bytes, void (*entry)())
{
    auto** sp = reinterpret_cast<void**>((reinterpret_cast<uintptr_t>(stack) + bytes) & ~uintptr_t(15));
    *--sp = nullptr;                              // entry's (never used) return address
    *--sp = reinterpret_cast<void*>(entry);       // where emu_switch's ret goes
    for (int i = 0; i < 6; ++i) *--sp = nullptr;  // rbp rbx r12 r13 r14 r15
    return sp;
}
#endif

struct Fiber
{
#if defined(__x86_64__)
    void* sp = nullptr;
#else
    ucontext_t context;
#endif
    char* stack = nullptr;
    bool done = false;
    uint3 thread;
};

struct Block
{
#if defined(__x86_64__)
    void* scheduler = nullptr;
#else
    ucontext_t scheduler;
#endif
    std::vector<Fiber> fibers;
    int current = 0;
    Barrier block;
    std::vector<Barrier> warps;
    // Per warp: two slots (exchange_slot) of 32 lanes x 64 bytes (a shuffle's value, an ldmatrix address, an mma's fragments).
    std::vector<unsigned char> exchange;
    // Per warp: an mma's 16 x 8 product, computed once by lane 0 and read by every lane.
    std::vector<float> product;
    const std::function<void()>* body = nullptr;
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
// Back to the scheduler from fiber f.
inline void to_scheduler(Block* b, Fiber& f)
{
#if defined(__x86_64__)
    emu_switch(&f.sp, b->scheduler);
#else
    swapcontext(&f.context, &b->scheduler);
#endif
}

inline void yield()
{
    Block* b = current_block();
    Fiber& f = b->fibers[b->current];
    f.thread = threadIdx;
    to_scheduler(b, f);
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
// A warp collective posts to the exchange slots of the warp barrier's generation parity, meets once, and reads: a lane
// can post again only after passing the next warp barrier, which every lane reaches after its reads, so the other
// slot is free and one barrier per collective suffices.
inline int exchange_slot() { return static_cast<int>(warp_barrier().generation & 1); }
inline unsigned char* warp_exchange(int lane, int slot)
{
    return current_block()->exchange.data() + (((threadIdx.x >> 5) * 2 + slot) * 32 + lane) * 64;
}

inline void fiber_entry()
{
    Block* b = current_block();
    (*b->body)();
    Fiber& f = b->fibers[b->current];
    f.done = true;
    drop(b->block);
    drop(warp_barrier());
    to_scheduler(b, f); // never resumed
    std::abort();
}

// Runs body() for every thread of every block, blocks in order; dynamic shared memory of smem_bytes (zeroed). One
// Block is reused by every block of the launch (its vectors keep their storage).
inline void launch(uint3 grid, uint3 block, size_t smem_bytes, const std::function<void()>& body)
{
    dynamic_buffer().assign(smem_bytes + 16, 0);
    const int threads = static_cast<int>(block.x * block.y * block.z);
    Block b;
    b.body = &body;
    b.warps.resize((threads + 31) / 32);
    b.fibers.resize(threads);
    for (unsigned bz = 0; bz < grid.z; ++bz)
        for (unsigned by = 0; by < grid.y; ++by)
            for (unsigned bx = 0; bx < grid.x; ++bx)
            {
                b.block = Barrier{};
                b.block.expected = threads;
                for (int w = 0; w < static_cast<int>(b.warps.size()); ++w)
                {
                    b.warps[w] = Barrier{};
                    b.warps[w].expected = std::min(32, threads - 32 * w);
                }
                b.exchange.assign(b.warps.size() * 2 * 32 * 64, 0);
                b.product.assign(b.warps.size() * 128, 0.f);
                current_block() = &b;
                gridDim = grid;
                blockDim = block;
                blockIdx = uint3{bx, by, bz};
                for (int t = 0; t < threads; ++t)
                {
                    Fiber& f = b.fibers[t];
                    f.done = false;
                    f.stack = fiber_stack(t);
                    f.thread = uint3{static_cast<unsigned>(t % block.x), static_cast<unsigned>(t / block.x % block.y),
                                     static_cast<unsigned>(t / (block.x * block.y))};
#if defined(__x86_64__)
                    f.sp = prepare_stack(f.stack, kFiberStack, fiber_entry);
#else
                    getcontext(&f.context);
                    f.context.uc_stack.ss_sp = f.stack;
                    f.context.uc_stack.ss_size = kFiberStack;
                    f.context.uc_link = &b.scheduler;
                    makecontext(&f.context, fiber_entry, 0);
#endif
                }
                for (bool live = true; live;)
                {
                    live = false;
                    for (int t = 0; t < threads; ++t)
                    {
                        Fiber& f = b.fibers[t];
                        if (f.done) continue;
                        live = true;
                        b.current = t;
                        threadIdx = f.thread;
#if defined(__x86_64__)
                        emu_switch(&b.scheduler, f.sp); // back here when the fiber yields or finishes
#else
                        swapcontext(&b.scheduler, &f.context);
#endif
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
    const int slot = exchange_slot();
    std::memcpy(warp_exchange(lane_id(), slot), &mine, sizeof(T));
    arrive_and_wait(warp_barrier());
    T v;
    std::memcpy(&v, warp_exchange(from_lane, slot), sizeof(T));
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
    const int slot = emu::exchange_slot();
    std::memcpy(emu::warp_exchange(lane, slot), &mine, sizeof(int));
    emu::arrive_and_wait(emu::warp_barrier());
    unsigned bits = 0;
    for (int l = 0; l < 32; ++l)
    {
        int p;
        std::memcpy(&p, emu::warp_exchange(l, slot), sizeof(int));
        bits |= static_cast<unsigned>(p != 0) << l;
    }
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
