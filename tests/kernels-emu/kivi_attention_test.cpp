// kivi_decode_attention_split_b{2,4}_hd{64,128} (new: a CTA per kv head and split, code words through cp.async) and,
// as a check of the emulation and of the packing below, kivi_decode_attention_f32 (per block, verified on an H200),
// each followed by kivi_merge_partials_f32, against a double-precision reference over the dequantized cache
// (x^ = fmaf(s, code, z) in fp32, as both kernels dequantize). Codes, scales and mins are random, packed by the
// header's layout: keys per channel (channel c, token j: word c * (G / per) + j / per), values per token (token j,
// channel c: word kvd * G / per + j * (kvd / per) + c / per), scales fp16 / mins fp32 [2 kvd] per block (values' of
// token j, group g at kvd + j * (kvd / G) + g).
// Tolerance: |o - ref| <= 2e-5 and |lse - ref| <= 2e-5 (values of order 1; fp32 sums in other orders).
#include "ops/kivi.cuh"

#include <string>
#include <vector>

#include "emu_test.h"

namespace
{
void run_case(bool split, int bits, int d, int group, int heads, int kv_heads, std::vector<int> compact, int blocks_per_split, unsigned seed)
{
    emu_test::Rng rng(seed);
    const int per = 32 / bits, kvd = kv_heads * d, seqs = static_cast<int>(compact.size());
    int max_blocks = 1;
    for (int c : compact) max_blocks = std::max(max_blocks, c);
    const int num_ids = seqs * max_blocks + 1;
    const int64_t block_words = 2LL * kvd * group / per;
    std::vector<uint32_t> codes(num_ids * block_words);
    for (auto& w : codes) w = static_cast<uint32_t>(rng.gen());
    std::vector<__half> scales(static_cast<size_t>(num_ids) * 2 * kvd);
    std::vector<float> mins(scales.size());
    for (auto& s : scales) s = __float2half_rn(rng.uniform(0.01f, 0.3f));
    for (auto& m : mins) m = rng.uniform(-1.f, 0.5f);
    std::vector<int> tables(static_cast<size_t>(seqs) * max_blocks);
    for (int i = 0; i < seqs * max_blocks; ++i) tables[i] = (i * 7 + 3) % num_ids;
    std::vector<float> q(static_cast<size_t>(seqs) * heads * d);
    for (auto& x : q) x = rng.uniform(-1.f, 1.f);

    auto code = [&](const uint32_t* words, int index) { return (words[index / per] >> (bits * (index % per))) & ((1u << bits) - 1u); };
    auto key = [&](int id, int c, int j) {
        const uint32_t* w = codes.data() + id * block_words + static_cast<int64_t>(c) * (group / per);
        return std::fma(__half2float(scales[static_cast<size_t>(id) * 2 * kvd + c]), static_cast<float>(code(w, j)), mins[static_cast<size_t>(id) * 2 * kvd + c]);
    };
    auto value = [&](int id, int j, int c) {
        const uint32_t* w = codes.data() + id * block_words + static_cast<int64_t>(kvd) * (group / per) + static_cast<int64_t>(j) * (kvd / per);
        const size_t at = static_cast<size_t>(id) * 2 * kvd + kvd + static_cast<size_t>(j) * (kvd / group) + c / group;
        return std::fma(__half2float(scales[at]), static_cast<float>(code(w, c)), mins[at]);
    };

    const int splits = split ? std::max(1, (max_blocks + blocks_per_split - 1) / blocks_per_split) : max_blocks;
    std::vector<float> po(static_cast<size_t>(seqs) * heads * splits * d, 1e30f), pl(static_cast<size_t>(seqs) * heads * splits, 1e30f);
    std::vector<float> o(static_cast<size_t>(seqs) * heads * d, 0.f), lse(static_cast<size_t>(seqs) * heads, -INFINITY);
    if (split)
        emu::launch(uint3{static_cast<unsigned>(kv_heads), static_cast<unsigned>(seqs), static_cast<unsigned>(splits)}, uint3{ops::kKiviSplitThreads, 1, 1}, 0,
                    [&] {
                        if (bits == 2 && d == 64)
                        {
                            static ops::KiviSplitSmem<2, 64> sm;
                            ops::kivi_decode_attention_split<2, 64>(po.data(), pl.data(), q.data(), codes.data(), scales.data(), mins.data(), tables.data(),
                                                                    compact.data(), max_blocks, heads, kv_heads, group, blocks_per_split, sm);
                        }
                        else if (bits == 2)
                        {
                            static ops::KiviSplitSmem<2, 128> sm;
                            ops::kivi_decode_attention_split<2, 128>(po.data(), pl.data(), q.data(), codes.data(), scales.data(), mins.data(), tables.data(),
                                                                     compact.data(), max_blocks, heads, kv_heads, group, blocks_per_split, sm);
                        }
                        else if (d == 64)
                        {
                            static ops::KiviSplitSmem<4, 64> sm;
                            ops::kivi_decode_attention_split<4, 64>(po.data(), pl.data(), q.data(), codes.data(), scales.data(), mins.data(), tables.data(),
                                                                    compact.data(), max_blocks, heads, kv_heads, group, blocks_per_split, sm);
                        }
                        else
                        {
                            static ops::KiviSplitSmem<4, 128> sm;
                            ops::kivi_decode_attention_split<4, 128>(po.data(), pl.data(), q.data(), codes.data(), scales.data(), mins.data(), tables.data(),
                                                                     compact.data(), max_blocks, heads, kv_heads, group, blocks_per_split, sm);
                        }
                    });
    else
        emu::launch(uint3{static_cast<unsigned>(seqs), static_cast<unsigned>(heads), static_cast<unsigned>(max_blocks)}, uint3{static_cast<unsigned>(group), 1, 1}, 0,
                    [&] {
                        ops::kivi_decode_attention(po.data(), pl.data(), q.data(), codes.data(), scales.data(), mins.data(), tables.data(), compact.data(),
                                                   max_blocks, heads, kv_heads, d, group, bits);
                    });
    emu::launch(uint3{static_cast<unsigned>(seqs), static_cast<unsigned>(heads), 1}, uint3{128, 1, 1}, 0,
                [&] { ops::kivi_merge_partials(o.data(), lse.data(), po.data(), pl.data(), heads, splits, d); });

    double worst_o = 0, worst_l = 0;
    int empty_bad = 0;
    const double scale = 1.0 / std::sqrt(static_cast<double>(d));
    for (int s = 0; s < seqs; ++s)
        for (int h = 0; h < heads; ++h)
        {
            const int c0 = h / (heads / kv_heads) * d;
            const float* qr = q.data() + (static_cast<size_t>(s) * heads + h) * d;
            std::vector<double> sc;
            std::vector<std::pair<int, int>> at;
            double m = -INFINITY;
            for (int b = 0; b < compact[s]; ++b)
                for (int j = 0; j < group; ++j)
                {
                    const int id = tables[static_cast<size_t>(s) * max_blocks + b];
                    double dot = 0;
                    for (int i = 0; i < d; ++i) dot += static_cast<double>(qr[i]) * key(id, c0 + i, j);
                    sc.push_back(dot * scale);
                    at.push_back({id, j});
                    m = std::max(m, sc.back());
                }
            const size_t row = static_cast<size_t>(s) * heads + h;
            if (sc.empty())
            {
                for (int i = 0; i < d; ++i) empty_bad += o[row * d + i] != 0.f;
                empty_bad += !(std::isinf(lse[row]) && lse[row] < 0);
                continue;
            }
            double sum = 0;
            for (double x : sc) sum += std::exp(x - m);
            for (int i = 0; i < d; ++i)
            {
                double acc = 0;
                for (size_t t = 0; t < sc.size(); ++t) acc += std::exp(sc[t] - m) * value(at[t].first, at[t].second, c0 + i);
                worst_o = std::max(worst_o, std::abs(acc / sum - o[row * d + i]));
            }
            worst_l = std::max(worst_l, std::abs(m + std::log(sum) - lse[row]));
        }
    std::string shape;
    for (int c : compact) shape += std::to_string(c) + ",";
    const bool ok = worst_o <= 2e-5 && worst_l <= 2e-5 && empty_bad == 0;
    emu_test::report(ok, "%-9s kivi%d hd%-3d G %3d heads %2d/%d compact %s splits %d: max |o - ref| %.2e, max |lse - ref| %.2e, empty bad %d",
                     split ? "split" : "per-block", bits, d, group, heads, kv_heads, shape.c_str(), splits, worst_o, worst_l, empty_bad);
}
} // namespace

int main(int argc, char** argv)
{
    const bool quick = argc > 1 && std::string(argv[1]) == "--quick";
    for (bool split : {false, true})
    {
        run_case(split, 2, 128, 32, 8, 2, {9, 0, 5}, 4, 1);    // partial tiles, an empty sequence, 3 splits of 4 blocks
        run_case(split, 4, 64, 64, 14, 2, {6, 3}, 2, 2);       // G = 7, two blocks a tile
        if (!quick)
        {
            run_case(split, 4, 128, 128, 4, 4, {3, 1}, 2, 3);  // G = 1, one block a tile, a group spanning the head
            run_case(split, 2, 64, 128, 16, 2, {4}, 1, 4);     // a group wider than the head (two heads per group), G = 8
        }
    }
    return emu_test::finish();
}
