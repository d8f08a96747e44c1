// squeezellm_gemv_b{3,4} (new: the table in lanes, never run on a GPU) on the host emulation against a double-precision
// reference of its header's math: y[m, n] = sum_k x[m, k] table[n, code(n, k)] + sum_e (value_e - table[n, code(n, col_e)]) x[m, col_e],
// every M from 1 to 8, K not a multiple of 8 or 32, rows without outliers and an outlier column out of range (skipped).
// Tolerance: fp32 sums in another order: |y - ref| <= 1e-5 sum |terms| (the header's and verify's bound).
#include "ops/squeezellm_gemv.cuh"

#include <string>
#include <vector>

#include "emu_test.h"

namespace
{
template <int BITS>
void run_case(int m, int n, int k, unsigned seed)
{
    emu_test::Rng rng(seed);
    constexpr int ENTRIES = 1 << BITS;
    const int words = (k + 31) / 32 * BITS;
    std::vector<int> codes(static_cast<size_t>(n) * words, 0);
    std::vector<int> code(static_cast<size_t>(n) * k);
    for (int r = 0; r < n; ++r)
    {
        auto* bytes = reinterpret_cast<uint8_t*>(codes.data() + static_cast<size_t>(r) * words);
        for (int c = 0; c < k; ++c)
        {
            const int v = rng.below(ENTRIES);
            code[static_cast<size_t>(r) * k + c] = v;
            for (int b = 0; b < BITS; ++b)
                if (v >> b & 1) bytes[(BITS * c + b) >> 3] |= static_cast<uint8_t>(1u << ((BITS * c + b) & 7));
        }
    }
    std::vector<__half> table(static_cast<size_t>(n) * ENTRIES);
    for (auto& t : table) t = __float2half_rn(rng.uniform(-1.f, 1.f));
    std::vector<int> rows(n + 1, 0), cols;
    std::vector<float> values;
    for (int r = 0; r < n; ++r)
    {
        const int count = r % 3 == 0 ? 0 : rng.below(40); // some rows without outliers, some with more than a warp
        for (int e = 0; e < count; ++e)
        {
            cols.push_back(e == 5 ? k + 3 : rng.below(k)); // one column out of range: skipped
            values.push_back(rng.uniform(-8.f, 8.f));
        }
        rows[r + 1] = static_cast<int>(cols.size());
    }
    if (cols.empty()) cols.push_back(0), values.push_back(0.f);
    std::vector<float> x(static_cast<size_t>(m) * k), y(static_cast<size_t>(m) * n, 1e30f);
    for (auto& v : x) v = rng.uniform(-1.f, 1.f);

    emu::launch(uint3{static_cast<unsigned>((n + ops::kSqueezeWarps - 1) / ops::kSqueezeWarps), 1, 1}, uint3{ops::kSqueezeWarps * 32, 1, 1}, 0, [&] {
        ops::squeezellm_gemv_dispatch<BITS>(y.data(), x.data(), codes.data(), table.data(), rows.data(), cols.data(), values.data(), m, n, k);
    });

    double worst = 0;
    int bad = 0;
    for (int mm = 0; mm < m; ++mm)
        for (int r = 0; r < n; ++r)
        {
            double sum = 0, mag = 0;
            for (int c = 0; c < k; ++c)
            {
                const double term = static_cast<double>(x[static_cast<size_t>(mm) * k + c]) *
                                    __half2float(table[static_cast<size_t>(r) * ENTRIES + code[static_cast<size_t>(r) * k + c]]);
                sum += term;
                mag += std::abs(term);
            }
            for (int e = rows[r]; e < rows[r + 1]; ++e)
            {
                if (cols[e] >= k) continue;
                const double delta = static_cast<double>(values[e]) - __half2float(table[static_cast<size_t>(r) * ENTRIES + code[static_cast<size_t>(r) * k + cols[e]]]);
                sum += delta * x[static_cast<size_t>(mm) * k + cols[e]];
                mag += std::abs(delta * x[static_cast<size_t>(mm) * k + cols[e]]);
            }
            const double err = std::abs(sum - y[static_cast<size_t>(mm) * n + r]);
            worst = std::max(worst, err / std::max(mag, 1e-30));
            bad += !(err <= 1e-5 * mag);
        }
    emu_test::report(bad == 0, "squeezellm_gemv_b%d M %d N %d K %d: max |y - ref| / sum|terms| %.2e, outside 1e-5: %d", BITS, m, n, k, worst, bad);
}
} // namespace

int main(int argc, char** argv)
{
    const bool quick = argc > 1 && std::string(argv[1]) == "--quick";
    for (int m : quick ? std::vector<int>{1, 8} : std::vector<int>{1, 2, 3, 4, 5, 6, 7, 8})
    {
        run_case<3>(m, 9, 300, 10u + m);
        run_case<4>(m, 9, 300, 20u + m);
    }
    run_case<3>(2, 5, 37, 31);    // K < 64: one partial group of 32 lanes
    run_case<4>(3, 6, 1029, 32);  // K past 32 groups per lane pass, not a multiple of 8
    return emu_test::finish();
}
