// sample_tokens_f32 (bisection cuts; its coins-and-stride interface is new since the H200 run) and
// sample_tokens_radix_f32 (new: radix-selected cuts in fixed-point mass) on the host emulation, against a reference of
// the header's math written from its text (fp32 probabilities by the same expf, masses in fp64, Hugging Face's order
// top-k -> top-p -> min-p, the draw walking kept tokens in index order) and against each other: greedy rows and ties
// at the max, rows of NaN and -inf, ties at the top-k and top-p cuts, vocabularies over one tile of 512 threads, a
// logits stride wider than the vocabulary. Every row must give the reference's token on both kernels.
#include "ops/sample_tokens.cuh"

#include <algorithm>
#include <numeric>
#include <string>
#include <vector>

#include "emu_test.h"

namespace
{
struct RowSpec
{
    float temperature, top_p, min_p;
    int top_k;
    double coin;
};

// The header's math on one row (V candidates).
int reference(const float* logits, int vocab, const RowSpec& r)
{
    int best = 0;
    float mx = -INFINITY;
    for (int i = 0; i < vocab; ++i)
        if (logits[i] > mx) mx = logits[i], best = i; // NaN never compares greater; ties keep the lower index
    if (!(mx > -INFINITY)) best = 0;
    if (r.temperature <= 0.f || !std::isfinite(mx)) return best;
    const float inv_t = 1.f / r.temperature;
    std::vector<float> p(vocab);
    std::vector<int> kept;
    for (int i = 0; i < vocab; ++i)
    {
        p[i] = std::isnan(logits[i]) ? 0.f : expf((logits[i] - mx) * inv_t);
        if (p[i] > 0.f) kept.push_back(i);
    }
    std::stable_sort(kept.begin(), kept.end(), [&](int a, int b) { return p[a] > p[b]; }); // ties: lower index first
    if (r.top_k > 0 && static_cast<int>(kept.size()) > r.top_k) kept.resize(r.top_k);
    if (r.top_p < 1.f)
    {
        double mass = 0;
        for (int i : kept) mass += p[i];
        const double target = static_cast<double>(r.top_p) * mass;
        double acc = 0;
        size_t n = 0;
        while (n < kept.size())
        {
            acc += p[kept[n++]];
            if (acc >= target) break;
        }
        kept.resize(std::max<size_t>(n, 1));
    }
    std::vector<int> final;
    for (int i : kept)
        if (p[i] >= r.min_p) final.push_back(i);
    if (final.empty()) return best;
    std::sort(final.begin(), final.end());
    double total = 0;
    for (int i : final) total += p[i];
    const double target = r.coin * total;
    double run = 0;
    for (int i : final)
    {
        run += p[i];
        if (run > target) return i;
    }
    return final.back();
}

void run_vocab(int vocab, int stride, unsigned seed)
{
    emu_test::Rng rng(seed);
    std::vector<RowSpec> specs;
    for (float t : {0.f, 0.8f, 1.5f})
        for (int k : {0, 1, 5, 50})
            for (float tp : {1.f, 0.9f, 0.5f})
                for (float mp : {0.f, 0.05f})
                {
                    if (t == 0.f && (k != 0 || tp != 1.f || mp != 0.f)) continue;
                    specs.push_back({t, tp, mp, k, rng.uniform(0.f, 1.f)});
                }
    const int rows = static_cast<int>(specs.size()) + 3;
    specs.push_back({0.f, 1.f, 0.f, 0, 0.5});  // ties at the max, greedy
    specs.push_back({1.f, 0.7f, 0.f, 3, 0.99}); // ties at the max, sampled through top-k and top-p cuts inside the tie
    specs.push_back({1.f, 1.f, 0.f, 0, 0.3});   // NaN and -inf only: token 0
    std::vector<float> logits(static_cast<size_t>(rows) * stride, 1e9f); // past V: never read
    for (int r = 0; r < rows; ++r)
    {
        float* row = logits.data() + static_cast<size_t>(r) * stride;
        for (int i = 0; i < vocab; ++i) row[i] = std::round(rng.uniform(-4.f, 4.f) * 4.f) / 4.f; // many exact ties
        row[rng.below(vocab)] = NAN;
        row[rng.below(vocab)] = -INFINITY;
        if (r >= rows - 3 && r < rows - 1)
            for (int j = 0; j < 9; ++j) row[(j * 97 + 11) % vocab] = 6.f; // nine-way tie at the max
        if (r == rows - 1)
            for (int i = 0; i < vocab; ++i) row[i] = i % 2 ? NAN : -INFINITY;
    }
    std::vector<float> temperature(rows), top_p(rows), min_p(rows);
    std::vector<int> top_k(rows), bisect(rows, -7), radix(rows, -7);
    std::vector<double> coins(rows);
    for (int r = 0; r < rows; ++r)
        temperature[r] = specs[r].temperature, top_p[r] = specs[r].top_p, min_p[r] = specs[r].min_p, top_k[r] = specs[r].top_k, coins[r] = specs[r].coin;
    for (bool use_radix : {false, true})
        emu::launch(uint3{static_cast<unsigned>(rows), 1, 1}, uint3{ops::kSampleThreads, 1, 1}, 0, [&] {
            if (use_radix)
                ops::sample_tokens<true>(radix.data(), coins.data(), logits.data(), stride, temperature.data(), top_k.data(), top_p.data(), min_p.data(), rows, vocab);
            else
                ops::sample_tokens<false>(bisect.data(), coins.data(), logits.data(), stride, temperature.data(), top_k.data(), top_p.data(), min_p.data(), rows,
                                          vocab);
        });
    int bad_bisect = 0, bad_radix = 0;
    for (int r = 0; r < rows; ++r)
    {
        const int want = reference(logits.data() + static_cast<size_t>(r) * stride, vocab, specs[r]);
        if (bisect[r] != want || radix[r] != want)
            std::printf("  row %d (T %.1f k %d p %.1f min-p %.2f coin %.3f): reference %d, bisection %d, radix %d\n", r, specs[r].temperature, specs[r].top_k,
                        specs[r].top_p, specs[r].min_p, specs[r].coin, want, bisect[r], radix[r]);
        bad_bisect += bisect[r] != want;
        bad_radix += radix[r] != want;
    }
    emu_test::report(bad_bisect == 0 && bad_radix == 0, "sample_tokens V %d stride %d: %d rows, bisection off the reference %d, radix off %d", vocab, stride, rows,
                     bad_bisect, bad_radix);
}
} // namespace

int main(int argc, char** argv)
{
    const bool quick = argc > 1 && std::string(argv[1]) == "--quick";
    run_vocab(300, 301, 1);
    if (!quick) run_vocab(1500, 1536, 2); // three tiles of 512 threads, a stride wider than V
    return emu_test::finish();
}
