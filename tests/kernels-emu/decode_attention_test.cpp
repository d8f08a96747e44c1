// paged_decode_attention (verified on an H200) and paged_decode_attention_tiled (new: K/V tiles through cp.async,
// one softmax per tile) on the host emulation, per split, against a double-precision reference: each split's
// (o, lse) over its keys [split * tokens_per_split, ...) (the last split up to the sequence's length). The CUDA-core
// kernel passing here also checks the emulation's shuffles and barriers against a kernel known to be right.
//
// Tolerance: q stays fp32 and K/V widen exactly, so only summation order and the online rescaling differ:
// |o - ref| <= 2e-5 and |lse - ref| <= 2e-5 for values of order 1.
#include "ops/paged_decode_attention_tiled.cuh"

#include <algorithm>
#include <string>
#include <vector>

#include "emu_test.h"

namespace
{
using emu_test::from_bits;
using emu_test::to_bits;

template <DType DT, int D>
void run_case(const char* dtype, bool tiled, int num_heads, int num_kv_heads, int block_size, std::vector<int> lens, int tokens_per_split,
              unsigned seed)
{
    emu_test::Rng rng(seed);
    const int seqs = static_cast<int>(lens.size());
    const int max_len = *std::max_element(lens.begin(), lens.end());
    const int width = std::max(1, (max_len + block_size - 1) / block_size);
    const int num_blocks = seqs * width + 2;
    const int64_t kv_stride = static_cast<int64_t>(num_kv_heads) * D;
    std::vector<uint16_t> kc(num_blocks * block_size * kv_stride), vc(kc.size());
    for (auto& x : kc) x = to_bits<DT>(rng.uniform(-1.f, 1.f));
    for (auto& x : vc) x = to_bits<DT>(rng.uniform(-1.f, 1.f));
    std::vector<int> perm(num_blocks), tables(seqs * width);
    for (int i = 0; i < num_blocks; ++i) perm[i] = i;
    std::shuffle(perm.begin(), perm.end(), rng.gen);
    for (int i = 0; i < seqs * width; ++i) tables[i] = perm[i];
    std::vector<float> q(static_cast<size_t>(seqs) * num_heads * D);
    for (auto& x : q) x = rng.uniform(-2.f, 2.f);
    const int splits = std::max(1, (max_len + tokens_per_split - 1) / tokens_per_split);
    std::vector<float> o(static_cast<size_t>(seqs) * num_heads * splits * D, 1e30f), lse(static_cast<size_t>(seqs) * num_heads * splits, 1e30f);
    const float scale = 1.f / std::sqrt(static_cast<float>(D));
    const int group = num_heads / num_kv_heads, chunks = (group + ops::kDecodeMaxHeadsPerBlock - 1) / ops::kDecodeMaxHeadsPerBlock;
    const auto* kp = reinterpret_cast<const storage_t<DT>*>(kc.data());
    const auto* vp = reinterpret_cast<const storage_t<DT>*>(vc.data());
    emu::launch(uint3{static_cast<unsigned>(num_kv_heads * chunks), static_cast<unsigned>(seqs), static_cast<unsigned>(splits)}, uint3{128, 1, 1}, 0, [&] {
        if (tiled)
            ops::paged_decode_attention_tiled_dispatch<DT, D>(o.data(), lse.data(), q.data(), kp, vp, tables.data(), lens.data(), num_heads, num_kv_heads, D,
                                                              block_size, width, num_blocks, tokens_per_split, scale);
        else
            ops::paged_decode_attention_dispatch<DT, D>(o.data(), lse.data(), q.data(), kp, vp, tables.data(), lens.data(), num_heads, num_kv_heads, D,
                                                        block_size, width, num_blocks, tokens_per_split, scale);
    });

    double worst_o = 0, worst_l = 0;
    int empty_bad = 0;
    for (int s = 0; s < seqs; ++s)
        for (int h = 0; h < num_heads; ++h)
            for (int z = 0; z < splits; ++z)
            {
                const int begin = z * tokens_per_split, end = z == splits - 1 ? lens[s] : std::min(lens[s], begin + tokens_per_split);
                const int64_t row = (static_cast<int64_t>(s) * num_heads + h) * splits + z;
                std::vector<double> sc;
                std::vector<int64_t> at;
                double m = -INFINITY;
                for (int t = begin; t < end; ++t)
                {
                    const int64_t r = (static_cast<int64_t>(tables[s * width + t / block_size]) * block_size + t % block_size) * kv_stride + (h / group) * D;
                    double dot = 0;
                    for (int d = 0; d < D; ++d) dot += static_cast<double>(q[(static_cast<size_t>(s) * num_heads + h) * D + d]) * from_bits<DT>(kc[r + d]);
                    sc.push_back(dot * scale);
                    at.push_back(r);
                    m = std::max(m, sc.back());
                }
                if (sc.empty())
                {
                    for (int d = 0; d < D; ++d) empty_bad += o[row * D + d] != 0.f;
                    empty_bad += !(std::isinf(lse[row]) && lse[row] < 0);
                    continue;
                }
                double sum = 0;
                for (double x : sc) sum += std::exp(x - m);
                for (int d = 0; d < D; ++d)
                {
                    double acc = 0;
                    for (size_t i = 0; i < sc.size(); ++i) acc += std::exp(sc[i] - m) * from_bits<DT>(vc[at[i] + d]);
                    worst_o = std::max(worst_o, std::abs(acc / sum - o[row * D + d]));
                }
                worst_l = std::max(worst_l, std::abs(m + std::log(sum) - lse[row]));
            }
    std::string shape;
    for (int l : lens) shape += std::to_string(l) + ",";
    const bool ok = worst_o <= 2e-5 && worst_l <= 2e-5 && empty_bad == 0;
    emu_test::report(ok, "%-9s %-5s hd%-3d heads %2d/%d block %2d lens %s split %d x %d: max |o - ref| %.2e, max |lse - ref| %.2e, empty bad %d",
                     tiled ? "tiled" : "cuda-core", dtype, D, num_heads, num_kv_heads, block_size, shape.c_str(), splits, tokens_per_split, worst_o,
                     worst_l, empty_bad);
}
} // namespace

int main(int argc, char** argv)
{
    const bool quick = argc > 1 && std::string(argv[1]) == "--quick";
    for (bool tiled : {false, true})
    {
        // A partial last tile, an empty sequence, splits, chunks of 4 and 3 query heads (G = 7), G = 1.
        run_case<DType::F16, 128>("f16", tiled, 8, 2, 16, {1, 100, 70}, 64, 1);
        run_case<DType::BF16, 64>("bf16", tiled, 14, 2, 16, {33, 0, 129}, 48, 2);
        if (!quick)
        {
            run_case<DType::BF16, 128>("bf16", tiled, 4, 4, 5, {97, 3}, 1000, 3);
            run_case<DType::F16, 64>("f16", tiled, 16, 2, 8, {300}, 96, 4);
        }
    }
    return emu_test::finish();
}
