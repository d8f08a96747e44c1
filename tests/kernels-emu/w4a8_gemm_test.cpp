// w4a8_gemm_{group,channel}_{m16,m64} (bit-exact against the CPU on an H200: a check of the packing below and of the
// emulation's int8 mma) and the split-K decode kernels w4a8_gemm_{group,channel}_splitk + w4a8_splitk_reduce (new) on
// the host emulation, against the header's math computed here in integers: every y must be bit-identical.
// The weights are packed from the header's layout text: (n, k) with n = 32nt + 16a + 8b + c, k = 32kt + 16e + 4f + h
// sits in tile (nt, kt), lane 4c + f, byte 8e + 4b + h, low nibble for a = 0; group scales and zeros at column
// 32nt + 4c + j for n = 32nt + 8j + c.
#include "ops/w4a8_gemm.cuh"

#include <string>
#include <tuple>
#include <vector>

#include "emu_test.h"

namespace
{
struct Layer
{
    int n, k, n_pad, k_pad, group;
    std::vector<uint8_t> qweight, scales2, zeros;
    std::vector<__half> w_scale;
    std::vector<int> w8; // [n, k] the effective int8 weight
};

Layer make_layer(int n, int k, int group, emu_test::Rng& rng)
{
    Layer L{n, k, (n + 31) / 32 * 32, (k + 31) / 32 * 32, group};
    L.qweight.assign(static_cast<size_t>(L.n_pad) * L.k_pad / 2, 0);
    L.w8.assign(static_cast<size_t>(n) * k, 0);
    L.w_scale.resize(n);
    for (auto& s : L.w_scale) s = __float2half_rn(rng.uniform(0.001f, 0.02f));
    const int groups = group > 0 ? k / group : 0;
    if (group > 0)
    {
        L.scales2.assign(static_cast<size_t>(groups) * L.n_pad, 0);
        L.zeros.assign(static_cast<size_t>(groups) * L.n_pad, 0);
    }
    else
        L.zeros.resize(n);
    auto col = [](int nn) { return nn / 32 * 32 + 4 * (nn % 8) + (nn % 32) / 8; };
    for (int nn = 0; nn < n; ++nn)
    {
        if (group == 0) L.zeros[nn] = static_cast<uint8_t>(rng.below(16));
        for (int g = 0; g < groups; ++g)
        {
            L.scales2[static_cast<size_t>(g) * L.n_pad + col(nn)] = static_cast<uint8_t>(1 + rng.below(17)); // q * s1 <= 255
            L.zeros[static_cast<size_t>(g) * L.n_pad + col(nn)] = static_cast<uint8_t>(rng.below(256));
        }
        for (int kk = 0; kk < k; ++kk)
        {
            const int q = rng.below(16);
            const int nt = nn / 32, r = nn % 32, a = r / 16, b = (r / 8) % 2, c = r % 8;
            const int kt = kk / 32, kr = kk % 32, e = kr / 16, f = (kr / 4) % 4, h = kr % 4;
            uint8_t& byte = L.qweight[((static_cast<size_t>(nt) * (L.k_pad / 32) + kt) * 32 + 4 * c + f) * 16 + 8 * e + 4 * b + h];
            byte |= static_cast<uint8_t>(a ? q << 4 : q);
            if (group > 0)
            {
                const size_t at = static_cast<size_t>(kk / group) * L.n_pad + col(nn);
                L.w8[static_cast<size_t>(nn) * k + kk] = static_cast<int8_t>(static_cast<uint8_t>(q * L.scales2[at] + L.zeros[at]));
            }
            else
                L.w8[static_cast<size_t>(nn) * k + kk] = q;
        }
    }
    return L;
}

enum class Kernel
{
    M16,
    M64,
    SplitK
};

void run_case(Kernel kernel, bool group, int m, int n, int k, int splits, unsigned seed)
{
    emu_test::Rng rng(seed);
    Layer L = make_layer(n, k, group ? 128 : 0, rng);
    std::vector<int8_t> xq(static_cast<size_t>(m) * L.k_pad, 0);
    std::vector<float> x_scale(m);
    std::vector<int> x_sum(m, 0);
    for (int r = 0; r < m; ++r)
    {
        for (int kk = 0; kk < k; ++kk) x_sum[r] += xq[static_cast<size_t>(r) * L.k_pad + kk] = static_cast<int8_t>(rng.below(255) - 127);
        x_scale[r] = rng.uniform(0.001f, 0.05f);
    }
    std::vector<float> y(static_cast<size_t>(m) * n, NAN);
    const int k_tiles = L.k_pad / 32, tiles = (k_tiles + splits - 1) / splits;
    std::vector<int> partial(static_cast<size_t>(splits) * m * n, 0);
    const auto* qw = L.qweight.data();
    const uint8_t* s2 = group ? L.scales2.data() : nullptr;
    const unsigned grid_n = (L.n_pad + 127) / 128;
    if (kernel == Kernel::SplitK)
    {
        emu::launch(uint3{grid_n, static_cast<unsigned>(splits), 1}, uint3{128, 1, 1}, 0, [&] {
            if (group)
                gemm::w4a8_gemm_splitk<true>(y.data(), xq.data(), x_scale.data(), x_sum.data(), qw, L.w_scale.data(), s2, L.zeros.data(), m, n, k, 128,
                                             partial.data(), tiles);
            else
                gemm::w4a8_gemm_splitk<false>(y.data(), xq.data(), x_scale.data(), x_sum.data(), qw, L.w_scale.data(), s2, L.zeros.data(), m, n, k, 0,
                                              partial.data(), tiles);
        });
        if (splits > 1)
            emu::launch(uint3{static_cast<unsigned>((m * n + 255) / 256), 1, 1}, uint3{256, 1, 1}, 0, [&] {
                gemm::w4a8_splitk_reduce(y.data(), partial.data(), x_scale.data(), x_sum.data(), L.w_scale.data(), L.zeros.data(), m, n, splits,
                                         group ? 128 : 0);
            });
    }
    else
    {
        const int cta_m = kernel == Kernel::M16 ? 16 : 64;
        emu::launch(uint3{grid_n, static_cast<unsigned>((m + cta_m - 1) / cta_m), 1}, uint3{128, 1, 1}, 0, [&] {
            if (kernel == Kernel::M16 && group)
                gemm::w4a8_gemm<true, 16>(y.data(), xq.data(), x_scale.data(), x_sum.data(), qw, L.w_scale.data(), s2, L.zeros.data(), m, n, k, 128);
            else if (kernel == Kernel::M16)
                gemm::w4a8_gemm<false, 16>(y.data(), xq.data(), x_scale.data(), x_sum.data(), qw, L.w_scale.data(), s2, L.zeros.data(), m, n, k, 0);
            else if (group)
                gemm::w4a8_gemm<true, 64>(y.data(), xq.data(), x_scale.data(), x_sum.data(), qw, L.w_scale.data(), s2, L.zeros.data(), m, n, k, 128);
            else
                gemm::w4a8_gemm<false, 64>(y.data(), xq.data(), x_scale.data(), x_sum.data(), qw, L.w_scale.data(), s2, L.zeros.data(), m, n, k, 0);
        });
    }
    int differ = 0;
    for (int r = 0; r < m; ++r)
        for (int nn = 0; nn < n; ++nn)
        {
            long long acc = 0;
            for (int kk = 0; kk < k; ++kk) acc += static_cast<long long>(xq[static_cast<size_t>(r) * L.k_pad + kk]) * L.w8[static_cast<size_t>(nn) * k + kk];
            if (!group) acc -= static_cast<long long>(L.zeros[nn]) * x_sum[r];
            const float want = (static_cast<float>(static_cast<int>(acc)) * x_scale[r]) * __half2float(L.w_scale[nn]);
            const float got = y[static_cast<size_t>(r) * n + nn];
            differ += std::memcmp(&want, &got, 4) != 0;
        }
    const char* name = kernel == Kernel::M16 ? "m16" : kernel == Kernel::M64 ? "m64" : "splitk";
    emu_test::report(differ == 0, "w4a8_gemm_%s_%-6s M %2d N %3d K %3d splits %d: %d of %d outputs not bit-identical", group ? "group" : "channel", name, m, n, k,
                     splits, differ, m * n);
}
} // namespace

int main(int argc, char** argv)
{
    const bool quick = argc > 1 && std::string(argv[1]) == "--quick";
    for (bool group : {true, false})
    {
        const int k = group ? 640 : 600; // per channel: K not a multiple of 32 (padded tiles)
        run_case(Kernel::M16, group, 5, 200, k, 1, 1);
        run_case(Kernel::SplitK, group, 5, 200, k, 1, 2);
        run_case(Kernel::SplitK, group, 16, 200, k, 3, 3); // 20 k tiles in splits of 7: partial last stages
        if (!quick)
        {
            run_case(Kernel::M64, group, 40, 136, k, 1, 4);
            run_case(Kernel::SplitK, group, 1, 300, k, 5, 5);
            run_case(Kernel::SplitK, group, 9, 96, k, 20, 6); // one k tile per split, a CTA with an idle warp
        }
        // synthetic:mini's layers (hidden 256, intermediate 768, kv 128) at decode and a 12-token prompt
        for (auto [m, n, kk] : {std::tuple{1, 128, 256}, std::tuple{12, 768, 256}, std::tuple{1, 256, 768}, std::tuple{12, 256, 768}})
        {
            run_case(Kernel::M16, group, m, n, kk, 1, 7);
            run_case(Kernel::SplitK, group, m, n, kk, 2, 8);
        }
    }
    return emu_test::finish();
}
