// paged_attention_mma and attention_merge_slots_f32 run on the host emulation (include/cuda_emu.h) against a
// double-precision reference of the header's math, for every compiled (dtype, head dim, keys per tile): causal chunks
// of several sequences (row tiles, GQA groups of 1, 4 and 7), a Hydragen level over scattered rows with a range that
// starts and ends inside blocks, a level split in two and merged, an empty range, a block id out of range (its keys
// not attended) and a block size that does not divide the tile.
//
// Tolerance: the reference rounds q to the cache dtype as the kernel does and keeps P exact; the kernel rounds P to
// the dtype for the P V product (relative 2^-11 f16, 2^-8 bf16 per weight; the weights sum to 1), so
// |o - ref| <= 2^-11 max|v| (f16) or 2^-8 max|v| (bf16), and
// |lse - ref| <= 1e-4 (lse does not see P's rounding).
// Build and run: tests/kernels-emu/run.sh (the NUnit test KernelEmulationTests does it). Prints one line per case and
// ends with "PASS" (exit 0) or "FAIL" (exit 1).
#include "ops/paged_attention_mma.cuh"

#include <algorithm>
#include <string>

#include "emu_test.h"

namespace
{
using emu_test::from_bits;
using emu_test::Rng;
using emu_test::to_bits;

struct Item
{
    std::vector<int> rows; // q row ids
    int table, key_begin, key_end, pos0, out_row;
};

template <DType DT, int D, int KEYS>
void run_case(const char* dtype, int num_heads, int num_kv_heads, int block_size, unsigned seed)
{
    Rng rng(seed);
    const int G = num_heads / num_kv_heads;
    const int num_blocks = 40;
    const int64_t kv_stride = static_cast<int64_t>(num_kv_heads) * D;
    std::vector<uint16_t> kc(num_blocks * block_size * kv_stride), vc(kc.size());
    for (auto& x : kc) x = to_bits<DT>(rng.uniform(-1.f, 1.f));
    for (auto& x : vc) x = to_bits<DT>(rng.uniform(-1.f, 1.f));

    // Two block tables (a permutation of the blocks each), one with a broken entry at index 3.
    const int width = num_blocks;
    std::vector<int> tables(2 * width);
    for (int t = 0; t < 2; ++t)
    {
        std::vector<int> perm(num_blocks);
        for (int i = 0; i < num_blocks; ++i) perm[i] = i;
        std::shuffle(perm.begin(), perm.end(), rng.gen);
        std::copy(perm.begin(), perm.end(), tables.begin() + t * width);
    }
    tables[width + 3] = num_blocks + 5; // out of range: those keys are not attended

    const int q_rows = 90;
    std::vector<float> q(static_cast<size_t>(q_rows) * num_heads * D);
    for (auto& x : q) x = rng.uniform(-2.f, 2.f);
    const float scale = 1.f / std::sqrt(static_cast<float>(D));

    // Items: a causal chunk of 40 rows at positions 110..149 (table 0) in row tiles; a level of 23 scattered rows over
    // keys [21, 133) of table 1 (broken block inside), whole and split at 77; an empty range.
    const int tile_rows = ops::kMmaRows / G;
    std::vector<Item> items;
    int out_rows = 0;
    std::vector<int> causal_rows(40);
    for (int i = 0; i < 40; ++i) causal_rows[i] = 3 + i;
    for (int r0 = 0; r0 < 40; r0 += tile_rows)
    {
        Item it;
        const int n = std::min(tile_rows, 40 - r0);
        it.rows.assign(causal_rows.begin() + r0, causal_rows.begin() + r0 + n);
        it.table = 0, it.key_begin = 0, it.pos0 = 110 + r0, it.key_end = 110 + r0 + n, it.out_row = out_rows;
        out_rows += n;
        items.push_back(it);
    }
    std::vector<int> level_rows;
    for (int i = 0; i < 23; ++i) level_rows.push_back((i * 37 + 5) % q_rows);
    const int whole_first = static_cast<int>(items.size());
    auto add_level = [&](int kb, int ke) {
        for (int r0 = 0; r0 < static_cast<int>(level_rows.size()); r0 += tile_rows)
        {
            Item it;
            const int n = std::min(tile_rows, static_cast<int>(level_rows.size()) - r0);
            it.rows.assign(level_rows.begin() + r0, level_rows.begin() + r0 + n);
            it.table = width, it.key_begin = kb, it.key_end = ke, it.pos0 = ops::kMmaNoMask, it.out_row = out_rows + r0;
            items.push_back(it);
        }
        out_rows += static_cast<int>(level_rows.size());
    };
    add_level(21, 133);
    const int whole_out = items[whole_first].out_row;
    const int split_first = static_cast<int>(items.size());
    add_level(21, 77);
    const int split_a = items[split_first].out_row;
    add_level(77, 133);
    const int split_b = split_a + static_cast<int>(level_rows.size());
    add_level(50, 50); // empty
    const int empty_out = split_b + static_cast<int>(level_rows.size());

    std::vector<int> item_ints, row_ids;
    for (auto& it : items)
    {
        item_ints.insert(item_ints.end(), {static_cast<int>(row_ids.size()), static_cast<int>(it.rows.size()), it.table,
                                           it.key_begin, it.key_end, it.pos0, it.out_row, 0});
        row_ids.insert(row_ids.end(), it.rows.begin(), it.rows.end());
    }
    std::vector<float> o(static_cast<size_t>(out_rows) * num_heads * D, 1e30f), lse(static_cast<size_t>(out_rows) * num_heads, 1e30f);

    const auto* kp = reinterpret_cast<const storage_t<DT>*>(kc.data());
    const auto* vp = reinterpret_cast<const storage_t<DT>*>(vc.data());
    const int num_items = static_cast<int>(items.size());
    emu::launch(uint3{static_cast<unsigned>(num_items), static_cast<unsigned>(num_kv_heads), 1}, uint3{ops::kMmaThreads, 1, 1},
                ops::paged_attention_mma_smem_bytes(D, KEYS), [&] {
                    if (static_cast<int>(blockIdx.x) >= num_items) return;
                    ops::paged_attention_mma<DT, D, KEYS>(o.data(), lse.data(), q.data(), kp, vp, item_ints.data(), row_ids.data(),
                                                          tables.data(), num_heads, num_kv_heads, block_size, num_blocks, scale,
                                                          emu::dynamic_smem());
                });

    // Merge: each level row's two split slots -> compared with the whole level.
    const int lr = static_cast<int>(level_rows.size());
    std::vector<int> slot_starts(lr + 1), slots;
    for (int r = 0; r < lr; ++r)
    {
        slot_starts[r] = static_cast<int>(slots.size());
        slots.push_back(split_a + r);
        slots.push_back(split_b + r);
    }
    slot_starts[lr] = static_cast<int>(slots.size());
    std::vector<float> mo(static_cast<size_t>(lr) * num_heads * D), ml(static_cast<size_t>(lr) * num_heads);
    emu::launch(uint3{static_cast<unsigned>(std::min(lr * num_heads, 65535)), 1, 1}, uint3{128, 1, 1}, 0, [&] {
        ops::attention_merge_slots(mo.data(), ml.data(), o.data(), lse.data(), slot_starts.data(), slots.data(), lr, num_heads, D);
    });

    // Reference: for an output row and head, the softmax over the keys the item's row sees.
    const double tol_o = DT == DType::F16 ? std::ldexp(1.0, -11) : std::ldexp(1.0, -8); // max|v| = 1
    double worst_o = 0, worst_l = 0;
    int empty_bad = 0;
    auto check = [&](const float* out_o, const float* out_l, int qrow, int h, int table, int kb, int ke, int last_pos) {
        const int kvh = h / G;
        std::vector<double> s, w;
        std::vector<int64_t> at;
        double m = -INFINITY;
        for (int t = kb; t < ke && t <= last_pos; ++t)
        {
            const int blk = tables[table + t / block_size];
            if (blk < 0 || blk >= num_blocks) continue;
            const int64_t row = (static_cast<int64_t>(blk) * block_size + t % block_size) * kv_stride + kvh * D;
            double dot = 0;
            for (int d = 0; d < D; ++d)
                dot += static_cast<double>(from_bits<DT>(to_bits<DT>(q[(static_cast<size_t>(qrow) * num_heads + h) * D + d]))) *
                       from_bits<DT>(kc[row + d]);
            s.push_back(dot * scale);
            at.push_back(row);
            m = std::max(m, s.back());
        }
        if (s.empty())
        {
            for (int d = 0; d < D; ++d) empty_bad += out_o[d] != 0.f;
            empty_bad += !(std::isinf(*out_l) && *out_l < 0);
            return;
        }
        double sum = 0;
        for (double x : s) sum += std::exp(x - m);
        for (int d = 0; d < D; ++d)
        {
            double acc = 0;
            for (size_t i = 0; i < s.size(); ++i) acc += std::exp(s[i] - m) * from_bits<DT>(vc[at[i] + d]);
            worst_o = std::max(worst_o, std::abs(acc / sum - out_o[d]));
        }
        worst_l = std::max(worst_l, std::abs(m + std::log(sum) - *out_l));
    };
    for (auto& it : items)
        for (int j = 0; j < static_cast<int>(it.rows.size()); ++j)
            for (int h = 0; h < num_heads; ++h)
            {
                const int64_t out = static_cast<int64_t>(it.out_row + j) * num_heads + h;
                const int last = it.pos0 >= ops::kMmaNoMask ? INT_MAX : it.pos0 + j;
                check(o.data() + out * D, lse.data() + out, it.rows[j], h, it.table, it.key_begin, it.key_end, last);
            }
    double merge_o = 0, merge_l = 0;
    for (int r = 0; r < lr; ++r)
        for (int h = 0; h < num_heads; ++h)
        {
            const int64_t whole = static_cast<int64_t>(whole_out + r) * num_heads + h, merged = static_cast<int64_t>(r) * num_heads + h;
            for (int d = 0; d < D; ++d) merge_o = std::max(merge_o, static_cast<double>(std::abs(o[whole * D + d] - mo[merged * D + d])));
            merge_l = std::max(merge_l, static_cast<double>(std::abs(lse[whole] - ml[merged])));
        }
    (void)empty_out;
    const bool ok = worst_o <= tol_o && worst_l <= 1e-4 && empty_bad == 0 && merge_o <= tol_o && merge_l <= 1e-4;
    emu_test::report(ok, "%-5s hd%-3d k%-2d heads %2d/%d block %2d: items %3d, max |o - ref| %.2e (tol %.1e), max |lse - ref| %.2e, "
                     "split+merge vs whole %.2e / %.2e, empty rows bad %d",
                     dtype, D, KEYS, num_heads, num_kv_heads, block_size, num_items, worst_o, tol_o, worst_l, merge_o, merge_l, empty_bad);
}

template <int D, int KEYS>
void run_shape()
{
    run_case<DType::F16, D, KEYS>("f16", 8, 2, 16, 1u + D + KEYS);
    run_case<DType::BF16, D, KEYS>("bf16", 8, 2, 16, 2u + D + KEYS);
}
} // namespace

int main(int argc, char** argv)
{
    const bool quick = argc > 1 && std::string(argv[1]) == "--quick";
    run_shape<64, 32>();
    run_shape<64, 64>();
    run_shape<128, 32>();
    run_shape<128, 64>();
    if (!quick)
    {
        run_case<DType::F16, 128, 64>("f16", 4, 4, 16, 11u);  // G = 1
        run_case<DType::BF16, 64, 32>("bf16", 14, 2, 5, 12u); // G = 7, block size 5
        run_case<DType::F16, 64, 64>("f16", 28, 4, 7, 13u);   // G = 7 (Qwen2's 28 / 4), block size 7
    }
    return emu_test::finish();
}
