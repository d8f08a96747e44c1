"""PyTorch decode baseline for the GPU engine (issue 16): the Llama-3-8B decode step written the way a strong plain
PyTorch engine runs it, timed on the same GPU in the same device call as ours (kernels-bench e2e).

Random fp16 weights with the 8B shapes (q|k|v and gate|up fused into one matrix each, as vLLM and gpt-fast load them),
a static KV cache [layers, batch, kv_heads, context + 1, head_dim] per K and V, RMSNorm, RoPE, SDPA for attention
(decode: the GQA group's query heads as the query rows of their kv head, so K and V are read once per kv head and
never copied; prefill: causal SDPA with K and V expanded to the query heads), cuBLAS GEMMs, SiLU-and-multiply, the LM
head and a greedy argmax. The decode step is captured as a CUDA graph once per batch and replayed (no Python or launch
overhead in the timing); every sequence attends over `context` cached keys plus its new one.

Reported per batch: ms per decode step (median of --iterations graph replays, CUDA events), tokens/s (batch / step),
the bytes the step must read (weights once + the KV it attends over) and what that is at the measured copy bandwidth;
and the prefill of one --prefill-token prompt (median, eager). JSON with --json.

    python3 tools/torch_decode_baseline.py [--batches 1,16,64,256] [--context 1024] [--prefill 2048] [--json OUT]
    python3 tools/torch_decode_baseline.py --tiny --device cpu      # a smoke test of the code path, any machine
"""
import argparse, json, statistics, sys, time

import torch
import torch.nn.functional as F

ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
ap.add_argument("--batches", default="1,16,64,256")
ap.add_argument("--context", type=int, default=1024, help="cached keys per sequence before the step's token")
ap.add_argument("--prefill", type=int, default=2048, help="prompt tokens of the prefill timing (0: skip)")
ap.add_argument("--iterations", type=int, default=20)
ap.add_argument("--layers", type=int, default=32)
ap.add_argument("--hidden", type=int, default=4096)
ap.add_argument("--heads", type=int, default=32)
ap.add_argument("--kv-heads", type=int, default=8)
ap.add_argument("--ffn", type=int, default=14336)
ap.add_argument("--vocab", type=int, default=128256)
ap.add_argument("--tiny", action="store_true", help="a 2-layer model of width 256 (smoke test)")
ap.add_argument("--device", default="cuda")
ap.add_argument("--no-graph", action="store_true", help="time eager steps instead of CUDA graph replays")
ap.add_argument("--json")
args = ap.parse_args()
if args.tiny:
    args.layers, args.hidden, args.heads, args.kv_heads, args.ffn, args.vocab = 2, 256, 8, 2, 512, 1000
    args.context, args.prefill = min(args.context, 64), min(args.prefill, 48)

dev = torch.device(args.device)
cuda = dev.type == "cuda"
dtype = torch.float16 if cuda else torch.float32  # CPU: a smoke test; fp16 matmuls are not what a CPU runs
L, H, NH, KVH, FF, V = args.layers, args.hidden, args.heads, args.kv_heads, args.ffn, args.vocab
D = H // NH
G = NH // KVH
batches = [int(b) for b in args.batches.split(",") if b]
ctx = args.context
theta = 500000.0
torch.manual_seed(0)


def rand(*shape, scale=0.02):
    return (torch.randn(*shape, device=dev, dtype=torch.float32) * scale).to(dtype)


# ---- weights: [in, out] so that y = x @ w ------------------------------------------------------------------------
embed = rand(V, H, scale=1.0)
lm_head = rand(H, V)
final_norm = torch.ones(H, device=dev, dtype=dtype)
layers = []
for _ in range(L):
    layers.append(dict(
        attn_norm=torch.ones(H, device=dev, dtype=dtype), ffn_norm=torch.ones(H, device=dev, dtype=dtype),
        wqkv=rand(H, (NH + 2 * KVH) * D), wo=rand(NH * D, H), wgu=rand(H, 2 * FF), wdown=rand(FF, H)))
weight_bytes = sum(t.numel() * t.element_size() for t in [embed, lm_head, final_norm] +
                   [w for layer in layers for w in layer.values()])
# A decode step reads every weight once except the embedding table (one row per sequence).
step_weight_bytes = weight_bytes - embed.numel() * embed.element_size()

inv_freq = 1.0 / (theta ** (torch.arange(0, D, 2, device=dev, dtype=torch.float32) / D))


def rope_tables(positions):
    f = positions.to(torch.float32)[:, None] * inv_freq[None, :]
    return torch.cos(f), torch.sin(f)  # [T, D/2]


def rope(x, cos, sin):
    # x [..., T, D] (rotate-half form, as Llama's HF checkpoints use); cos/sin [T, D/2]
    x1, x2 = x[..., : D // 2].float(), x[..., D // 2:].float()
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)


def rms_norm(x, w, eps=1e-5):
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * w


sdpa = getattr(F, "scaled_dot_product_attention", None)


def attention(q, k, v, causal):
    """q [B, h, Tq, D], k/v [B, h, Tk, D] with the same h."""
    if sdpa is not None:
        return sdpa(q, k, v, is_causal=causal)
    # torch < 2.0 (the CPU smoke test only): the same math written out
    s = (q.float() @ k.float().transpose(-1, -2)) / D ** 0.5
    if causal:
        s = s.masked_fill(torch.ones(s.shape[-2:], dtype=torch.bool, device=s.device).triu(1), float("-inf"))
    return (s.softmax(-1) @ v.float()).to(q.dtype)


def decode_step(tokens, k_cache, v_cache, cos, sin, out_tokens):
    """One token per sequence at position ctx: appends its K/V at index ctx and attends over ctx + 1 keys."""
    B = tokens.shape[0]
    x = embed[tokens]  # [B, H]
    for i, w in enumerate(layers):
        h = rms_norm(x, w["attn_norm"])
        qkv = h @ w["wqkv"]
        q = qkv[:, : NH * D].view(B, KVH, G, D)           # the group's query heads as rows of their kv head
        k = qkv[:, NH * D: (NH + KVH) * D].view(B, KVH, 1, D)
        v = qkv[:, (NH + KVH) * D:].view(B, KVH, 1, D)
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        k_cache[i, :B, :, ctx: ctx + 1] = k
        v_cache[i, :B, :, ctx: ctx + 1] = v
        o = attention(q, k_cache[i, :B, :, : ctx + 1], v_cache[i, :B, :, : ctx + 1], causal=False)  # [B, KVH, G, D]
        x = x + o.reshape(B, NH * D) @ w["wo"]
        h = rms_norm(x, w["ffn_norm"])
        gu = h @ w["wgu"]
        x = x + (F.silu(gu[:, :FF]) * gu[:, FF:]) @ w["wdown"]
    logits = rms_norm(x, final_norm) @ lm_head
    out_tokens.copy_(logits.argmax(-1))


def prefill(tokens):
    T = tokens.shape[0]
    cos, sin = rope_tables(torch.arange(T, device=dev))
    x = embed[tokens]
    for w in layers:
        h = rms_norm(x, w["attn_norm"])
        qkv = h @ w["wqkv"]
        q = qkv[:, : NH * D].view(T, NH, D).transpose(0, 1)[None]
        k = qkv[:, NH * D: (NH + KVH) * D].view(T, KVH, D).transpose(0, 1)[None]
        v = qkv[:, (NH + KVH) * D:].view(T, KVH, D).transpose(0, 1)[None]
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        k, v = k.repeat_interleave(G, dim=1), v.repeat_interleave(G, dim=1)
        o = attention(q, k, v, causal=True)[0].transpose(0, 1).reshape(T, NH * D)
        x = x + o @ w["wo"]
        h = rms_norm(x, w["ffn_norm"])
        gu = h @ w["wgu"]
        x = x + (F.silu(gu[:, :FF]) * gu[:, FF:]) @ w["wdown"]
    return (rms_norm(x[-1:], final_norm) @ lm_head).argmax(-1)


def sync():
    if cuda:
        torch.cuda.synchronize()


def median_ms(fn, iterations):
    for _ in range(2):
        fn()
    sync()
    times = []
    for _ in range(iterations):
        if cuda:
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record(); fn(); e.record(); e.synchronize()
            times.append(s.elapsed_time(e))
        else:
            t0 = time.perf_counter(); fn(); times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def copy_bandwidth():
    """Device-to-device copy of 1 GiB (read + write counted), the practical ceiling a memory-bound step can reach."""
    if not cuda:
        return None
    a = torch.empty(1 << 30, dtype=torch.uint8, device=dev)
    b = torch.empty_like(a)
    ms = median_ms(lambda: b.copy_(a), 10)
    del a, b
    return 2 * (1 << 30) / (ms * 1e-3)


bandwidth = copy_bandwidth()
max_b = max(batches)
k_cache = torch.zeros(L, max_b, KVH, ctx + 1, D, device=dev, dtype=dtype)
v_cache = torch.zeros_like(k_cache)
k_cache.normal_(0, 1)
v_cache.normal_(0, 1)
cos, sin = rope_tables(torch.tensor([ctx], device=dev))
kv_token_bytes = 2 * L * KVH * D * k_cache.element_size()

results = []
with torch.inference_mode():
    for B in batches:
        tokens = torch.randint(0, V, (B,), device=dev)
        out = torch.empty(B, dtype=torch.long, device=dev)
        step = lambda: decode_step(tokens, k_cache, v_cache, cos, sin, out)
        graph = None
        if cuda and not args.no_graph:
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(2):
                    step()  # warm up cuBLAS and allocator outside the capture
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                step()
        run = graph.replay if graph is not None else step
        ms = median_ms(run, args.iterations)
        read = step_weight_bytes + B * (ctx + 1) * kv_token_bytes
        row = dict(batch=B, context=ctx, ms=ms, tokens_per_s=B / (ms * 1e-3), bytes_read=read, graph=graph is not None)
        if bandwidth:
            row["roofline_ms"] = read / bandwidth * 1e3
            row["fraction_of_roofline"] = row["roofline_ms"] / ms
        results.append(row)
        print(f"decode batch {B:4d} context {ctx}: {ms:8.3f} ms/step  {row['tokens_per_s']:10.1f} tok/s" +
              (f"  {100 * row['fraction_of_roofline']:5.1f}% of {row['roofline_ms']:.3f} ms (weights + KV at copy bandwidth)" if bandwidth else ""),
              flush=True)
        del graph
    prefill_row = None
    if args.prefill > 0:
        prompt = torch.randint(0, V, (args.prefill,), device=dev)
        ms = median_ms(lambda: prefill(prompt), max(3, args.iterations // 4))
        prefill_row = dict(tokens=args.prefill, ms=ms, tokens_per_s=args.prefill / (ms * 1e-3))
        print(f"prefill {args.prefill} tokens: {ms:.2f} ms ({prefill_row['tokens_per_s']:.0f} tok/s)", flush=True)

doc = dict(
    device=torch.cuda.get_device_name(dev) if cuda else "cpu", torch=torch.__version__,
    dtype=str(dtype).replace("torch.", ""), sdpa=sdpa is not None,
    shapes=dict(layers=L, hidden=H, heads=NH, kv_heads=KVH, head_dim=D, ffn=FF, vocab=V),
    weight_bytes=weight_bytes, copy_bandwidth_bytes_per_s=bandwidth, decode=results, prefill=prefill_row)
if args.json:
    with open(args.json, "w") as f:
        json.dump(doc, f, indent=2)
    print(f"wrote {args.json}")
