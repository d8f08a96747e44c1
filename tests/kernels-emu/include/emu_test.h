// What the kernels-emu tests share: a seeded RNG, 16-bit conversions by dtype, and the pass/fail tally.
#pragma once

#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <random>

#include "abi.h"
#include "mma.cuh"

namespace emu_test
{
struct Rng
{
    std::mt19937 gen;
    explicit Rng(unsigned seed) : gen(seed) {}
    float uniform(float lo, float hi) { return std::uniform_real_distribution<float>(lo, hi)(gen); }
    int below(int n) { return std::uniform_int_distribution<int>(0, n - 1)(gen); }
};

template <DType DT>
uint16_t to_bits(float f)
{
    if constexpr (DT == DType::F16) return __float2half_rn(f).bits;
    else return __float2bfloat16_rn(f).bits;
}

template <DType DT>
float from_bits(uint16_t b)
{
    return emu::b16_to_float<DT>(b);
}

inline int& failures()
{
    static int f = 0;
    return f;
}

// Prints the case line and counts it.
inline void report(bool ok, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
inline void report(bool ok, const char* fmt, ...)
{
    std::printf("%s", ok ? "ok   " : "FAIL ");
    va_list args;
    va_start(args, fmt);
    std::vprintf(fmt, args);
    va_end(args);
    std::printf("\n");
    failures() += !ok;
}

inline int finish()
{
    std::printf(failures() == 0 ? "PASS\n" : "FAIL\n");
    return failures() == 0 ? 0 : 1;
}
} // namespace emu_test
