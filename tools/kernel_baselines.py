"""PyTorch baselines for kernels.json (written by `kernels-bench kernels`), timed on the same GPU in the same session:
torch.matmul (cuBLAS) for dense_gemm, scaled_dot_product_attention (FlashAttention) for paged decode/prefill attention
(contiguous KV, so the baseline does not pay for paging), torch.argmax / softmax+multinomial for sampling. Fills
Baseline and BaselineMicroseconds of each record in place. Timing: CUDA events, L2 flushed (zeroing a 512 MiB buffer)
before every call, median of N calls, like KernelTimings.cs.

    python3 tools/kernel_baselines.py OUT/kernels.json [--iterations 50]
"""
import argparse, json, statistics, sys
import torch
import torch.nn.functional as F

ap = argparse.ArgumentParser()
ap.add_argument("path")
ap.add_argument("--iterations", type=int, default=50)
args = ap.parse_args()
doc = json.load(open(args.path))
dev = torch.device("cuda")
flush = torch.empty(512 << 20, dtype=torch.uint8, device=dev)


def median_us(fn):
    for _ in range(3): fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(args.iterations):
        flush.zero_()
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record(); fn(); e.record(); e.synchronize()
        times.append(s.elapsed_time(e) * 1e3)
    return statistics.median(times)


weights = {}
for r in doc["results"]:
    p, k = r.get("Params", {}), r["Kernel"]
    try:
        if k.startswith("dense_gemm"):
            M, N, K = p["M"], p["N"], p["K"]
            if (N, K) not in weights:
                weights.clear(); torch.cuda.empty_cache()
                weights[(N, K)] = torch.randn(N, K, device=dev, dtype=torch.float16)
            w = weights[(N, K)]
            x = torch.randn(M, K, device=dev, dtype=torch.float16)
            r["Baseline"], r["BaselineMicroseconds"] = "torch.matmul fp16 (cuBLAS)", median_us(lambda: x @ w.t())
        elif k.startswith("paged_decode_attention"):
            B, L, Hq, Hkv, D = p["B"], p["L"], p["Hq"], p["Hkv"], p["D"]
            q = torch.randn(B, Hq, 1, D, device=dev, dtype=torch.float16)
            kk = torch.randn(B, Hkv, L, D, device=dev, dtype=torch.float16); vv = torch.randn_like(kk)
            r["Baseline"] = "SDPA fp16 (contiguous KV, GQA)"
            r["BaselineMicroseconds"] = median_us(lambda: F.scaled_dot_product_attention(q, kk, vv, enable_gqa=True))
        elif k.startswith("paged_prefill_attention"):
            B, L, Hq, Hkv, D = p["B"], p["L"], p["Hq"], p["Hkv"], p["D"]
            q = torch.randn(B, Hq, L, D, device=dev, dtype=torch.float16)
            kk = torch.randn(B, Hkv, L, D, device=dev, dtype=torch.float16); vv = torch.randn_like(kk)
            r["Baseline"] = "SDPA fp16 causal (contiguous KV, GQA)"
            r["BaselineMicroseconds"] = median_us(lambda: F.scaled_dot_product_attention(q, kk, vv, is_causal=True, enable_gqa=True))
        elif k.startswith("sample_tokens"):
            rows, V = p["Rows"], p["V"]
            logits = torch.randn(rows, V, device=dev) * 10
            if p.get("Filtered"):
                def samp():
                    probs = torch.softmax(logits / 0.8, dim=-1)
                    top, idx = probs.topk(50, dim=-1)
                    cum = top.cumsum(-1); top = torch.where(cum - top < 0.9 * cum[:, -1:], top, torch.zeros_like(top))
                    return idx.gather(1, torch.multinomial(top, 1))
                r["Baseline"], r["BaselineMicroseconds"] = "torch softmax+topk+top-p+multinomial", median_us(samp)
            else:
                r["Baseline"], r["BaselineMicroseconds"] = "torch.argmax", median_us(lambda: logits.argmax(-1))
        elif k.startswith("squeezellm"):  # kernels-bench squeeze-gpu: the fp16 GEMM the SqueezeLLM LUT GEMV replaces
            M, N, K = p["M"], p["N"], p["K"]
            if (N, K) not in weights:
                weights.clear(); torch.cuda.empty_cache()
                weights[(N, K)] = torch.randn(N, K, device=dev, dtype=torch.float16)
            w = weights[(N, K)].t()  # K x N (a view: cuBLAS runs it transposed, as nn.Linear does)
            x = torch.randn(M, K, device=dev, dtype=torch.float16)
            r["Baseline"], r["BaselineMicroseconds"] = "torch.matmul fp16 (cuBLAS)", median_us(lambda: torch.matmul(x, w))
    except Exception as ex:  # one failing baseline must not lose the others
        r["Baseline"] = f"error: {ex!r}"[:200]
    if r.get("BaselineMicroseconds"):
        print(f"{k:30} {r['Shape']:36} ours {r['Microseconds']:9.1f} us  {r['Baseline']}: {r['BaselineMicroseconds']:9.1f} us "
              f"({r['BaselineMicroseconds'] / r['Microseconds']:.2f}x)", flush=True)

doc["baselineTorch"] = torch.__version__
json.dump(doc, open(args.path, "w"), indent=2)
print(f"# baselines written into {args.path}")
