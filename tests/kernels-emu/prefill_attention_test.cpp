// paged_prefill_attention_hd{64,128} (the CUDA-core prefill kernel the CUDA backend runs by default) on the host
// emulation against a double-precision reference of its header's math: each sequence's new rows at positions
// L - n + i attend causally to keys [0, position]. Tolerance: fp32 throughout, so 2e-5 x max|o| plus what fp32 scores
// carry into the exponentials: an absolute score error of ~2^-22 max|score| is a relative error of the weights,
// 2^-22 max|score| max|o| in o (it matters only for very peaked softmaxes: scores in the thousands).
#include "ops/paged_prefill_attention.cuh"

#include <algorithm>
#include <string>
#include <vector>

#include "emu_test.h"

namespace
{
using emu_test::from_bits;
using emu_test::to_bits;

template <DType DT, int D>
void run_case(const char* dtype, int heads, int kv_heads, int bs, std::vector<std::pair<int, int>> seqs_nl, float magnitude, unsigned seed)
{
    emu_test::Rng rng(seed);
    const int seqs = static_cast<int>(seqs_nl.size());
    int max_len = 1, max_new = 0, rows = 0;
    std::vector<int> q_starts(seqs + 1, 0), lens(seqs);
    for (int s = 0; s < seqs; ++s)
    {
        lens[s] = seqs_nl[s].second;
        max_len = std::max(max_len, lens[s]);
        max_new = std::max(max_new, seqs_nl[s].first);
        q_starts[s + 1] = q_starts[s] + seqs_nl[s].first;
    }
    rows = q_starts[seqs];
    const int width = (max_len + bs - 1) / bs, num_blocks = seqs * width + 1;
    const int64_t kv_stride = static_cast<int64_t>(kv_heads) * D;
    std::vector<uint16_t> kc(num_blocks * bs * kv_stride), vc(kc.size());
    for (auto& x : kc) x = to_bits<DT>(rng.uniform(-magnitude, magnitude));
    for (auto& x : vc) x = to_bits<DT>(rng.uniform(-magnitude, magnitude));
    std::vector<int> tables(seqs * width);
    for (int i = 0; i < seqs * width; ++i) tables[i] = (i * 5 + 1) % num_blocks;
    std::vector<float> q(static_cast<size_t>(rows) * heads * D), o(q.size(), 1e30f), lse(static_cast<size_t>(rows) * heads, 1e30f);
    for (auto& x : q) x = rng.uniform(-magnitude, magnitude);
    const float scale = 1.f / std::sqrt(static_cast<float>(D));
    const auto* kp = reinterpret_cast<const storage_t<DT>*>(kc.data());
    const auto* vp = reinterpret_cast<const storage_t<DT>*>(vc.data());
    emu::launch(uint3{static_cast<unsigned>((max_new + 15) / 16), static_cast<unsigned>(heads), static_cast<unsigned>(seqs)}, uint3{128, 1, 1}, 0, [&] {
        static float smem[ops::PrefillSmem<D>::kFloats];
        ops::paged_prefill_attention<DT, D>(o.data(), lse.data(), q.data(), kp, vp, tables.data(), lens.data(), q_starts.data(), heads, kv_heads, bs, width,
                                            num_blocks, scale, smem);
    });
    double worst_o = 0, worst_l = 0, omax = 0, smax = 0;
    for (int s = 0; s < seqs; ++s)
        for (int i = 0; i < seqs_nl[s].first; ++i)
        {
            const int r = q_starts[s] + i, pos = lens[s] - seqs_nl[s].first + i;
            for (int h = 0; h < heads; ++h)
            {
                std::vector<double> sc;
                std::vector<int64_t> at;
                double m = -INFINITY;
                for (int t = 0; t <= pos; ++t)
                {
                    const int64_t row = (static_cast<int64_t>(tables[s * width + t / bs]) * bs + t % bs) * kv_stride + (h / (heads / kv_heads)) * D;
                    double dot = 0;
                    for (int d = 0; d < D; ++d) dot += static_cast<double>(q[(static_cast<size_t>(r) * heads + h) * D + d]) * from_bits<DT>(kc[row + d]);
                    sc.push_back(dot * scale);
                    at.push_back(row);
                    m = std::max(m, sc.back());
                    smax = std::max(smax, std::abs(sc.back()));
                }
                double sum = 0;
                for (double x : sc) sum += std::exp(x - m);
                for (int d = 0; d < D; ++d)
                {
                    double acc = 0;
                    for (size_t t = 0; t < sc.size(); ++t) acc += std::exp(sc[t] - m) * from_bits<DT>(vc[at[t] + d]);
                    omax = std::max(omax, std::abs(acc / sum));
                    worst_o = std::max(worst_o, std::abs(acc / sum - o[(static_cast<size_t>(r) * heads + h) * D + d]));
                }
                worst_l = std::max(worst_l, std::abs(m + std::log(sum) - lse[static_cast<size_t>(r) * heads + h]) / std::max(1.0, std::abs(m)));
            }
        }
    const double tol = 2e-5 * std::max(1.0, omax) + std::ldexp(smax, -22) * omax;
    const bool ok = worst_o <= tol && worst_l <= 2e-5;
    std::string shape;
    for (auto [n, l] : seqs_nl) shape += "(" + std::to_string(n) + "," + std::to_string(l) + ")";
    emu_test::report(ok, "prefill %-5s hd%-3d heads %d/%d block %d (n,L) %s |x| <= %g: max |o - ref| %.2e (tol %.1e), max rel |lse - ref| %.2e", dtype, D, heads,
                     kv_heads, bs, shape.c_str(), magnitude, worst_o, tol, worst_l);
}
} // namespace

int main(int argc, char** argv)
{
    const bool quick = argc > 1 && std::string(argv[1]) == "--quick";
    run_case<DType::F16, 64>("f16", 4, 2, 16, {{12, 12}}, 1.f, 1);      // synthetic:mini's prompt
    run_case<DType::F16, 64>("f16", 4, 2, 16, {{12, 12}}, 8.f, 2);      // large scores
    run_case<DType::BF16, 128>("bf16", 8, 2, 16, {{37, 37}, {16, 300}, {1, 50}}, 1.f, 3);
    if (!quick) run_case<DType::F16, 64>("f16", 4, 2, 16, {{40, 50}}, 30.f, 4); // very peaked softmax
    return emu_test::finish();
}
