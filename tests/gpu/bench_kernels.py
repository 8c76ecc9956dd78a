"""Kernel benchmark for GPUs: achieved bandwidth of each CUDA kernel against the device's peak.

    python -m tests.gpu.bench_kernels [--iters 20] [--peak-gbps 3350]

As in llm.c's dev/cuda, every case is first checked against its plain-PyTorch reference on the very
inputs it is timed on, and only then timed: CUDA events around each call, the L2 cache flushed before
each, the median of --iters calls. Bandwidth counts the bytes the op cannot avoid (its inputs read
once, its outputs written once), so 100% of peak is the roofline; patch_embed is mostly its GEMM, so it
also reports TFLOP/s. Peak DRAM bandwidths come from the vendors' datasheets (PEAK_GBPS); --peak-gbps
overrides them. Without a CUDA device it exits with status 2.
"""
import argparse
import re
import statistics
import sys

import torch

import minilvlm
from minilvlm.ops import fused_adamw_reference, mm_adapter_reference, patch_embed_reference

# (pattern on torch.cuda.get_device_name(), peak GB/s), the most specific first.
PEAK_GBPS = [
    (r"H200", 4800), (r"H100 NVL", 3900), (r"H100 PCIe", 2000), (r"H100", 3350),
    (r"A100[- ]SXM4[- ]80GB", 2039), (r"A100 80GB PCIe", 1935), (r"A100", 1555),
    (r"\bL4\b", 300), (r"RTX 4090", 1008),
]


def peak_gbps(name):
    """The datasheet DRAM bandwidth of a GPU named `name`, or None if it is not in the table."""
    return next((gbps for pattern, gbps in PEAK_GBPS if re.search(pattern, name)), None)


def rel_err(actual, expected):
    actual, expected = actual.double(), expected.double()
    return ((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-30)).item()


def check(name, ours, torch_low, exact, dtype):
    """The project's rule: fp32 within 1e-5 of exact; bf16/fp16 within twice torch's own error."""
    bound = 1e-5 if dtype == torch.float32 else 2 * rel_err(torch_low, exact) + 1e-6
    if rel_err(ours, exact) > bound:
        raise SystemExit(f"bench_kernels: {name} ({dtype}) is wrong: error {rel_err(ours, exact):.3g} > {bound:.3g}")


class Timer:
    """Median milliseconds of a call, timed with CUDA events, the L2 flushed before each call."""

    def __init__(self, iters):
        self.iters = iters
        l2 = torch.cuda.get_device_properties(torch.cuda.current_device()).L2_cache_size
        self.scratch = torch.empty(max(2 * l2, 1 << 20), dtype=torch.uint8, device="cuda")

    def __call__(self, fn):
        for _ in range(3):
            fn()
        times = []
        for _ in range(self.iters):
            self.scratch.zero_()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        return statistics.median(times)


def bench_fused_adamw(timer, dtype, n=1 << 26):
    """One AdamW step over n params: fp32 reads param, grad, m, v and writes param, m, v (28 bytes);
    bf16/fp16 with fp32 masters read grad, master, m, v and write master, m, v, param (also 28)."""
    master = dtype != torch.float32
    weights = torch.randn(n, device="cuda")
    bufs = dict(param=weights.to(dtype), grad=torch.randn(n, device="cuda").to(dtype),
                exp_avg=torch.zeros(n, device="cuda"), exp_avg_sq=torch.zeros(n, device="cuda"),
                master=weights.clone() if master else None)
    segs = ([0, n // 2, n // 2, n], [1e-3, 1e-4], [0.1, 0.0], [1, 1], 0.9, 0.999, 1e-8)
    ref = {k: (None if v is None else v.clone()) for k, v in bufs.items()}
    torch.ops.minilvlm.fused_adamw_(*bufs.values(), *segs, None)
    fused_adamw_reference(*ref.values(), *segs)
    key = "master" if master else "param"
    check("fused_adamw_", bufs[key], ref[key], ref[key].double(), torch.float32)
    ms = timer(lambda: torch.ops.minilvlm.fused_adamw_(*bufs.values(), *segs, None))
    return "fused_adamw_", f"n={n}", ms, 28 * n, None


def mm_adapter_inputs(dtype, B, T, D, r=8, groups=2, P=2):
    x = torch.randn(B, T, D, device="cuda").to(dtype)
    p = dict(t=torch.randn(B, D, device="cuda"), router_w=torch.randn(P, D, device="cuda") * 0.3,
             router_b=torch.randn(P, device="cuda"), down_w=torch.randn(r, D, device="cuda") * D ** -0.5,
             down_b=torch.randn(r, device="cuda") * 0.1, up_w=torch.randn(P, D, r // groups, device="cuda") * 0.5,
             up_b=torch.randn(P, D, device="cuda") * 0.1)
    return x, p, (5.0, 0.7, groups)


def bench_mm_adapter(timer, dtype, B=8, T=512, D=4096):
    """LLaVA-7B's decoder width: forward reads x and writes out; backward reads x and dy, writes dx."""
    x, p, (tau, scale, groups) = mm_adapter_inputs(dtype, B, T, D)
    args = (x, *p.values(), tau, scale, groups)
    out = torch.ops.minilvlm.mm_adapter(*args)
    exact = mm_adapter_reference(x.double(), **{k: v.double() for k, v in p.items()}, temperature=tau, scale=scale,
                                 groups=groups)
    low = mm_adapter_reference(x, **{k: v.to(dtype) for k, v in p.items()}, temperature=tau, scale=scale, groups=groups)
    check("mm_adapter", out, low, exact, dtype)
    dy = torch.randn_like(x)
    forward = timer(lambda: torch.ops.minilvlm.mm_adapter(*args))
    backward = timer(lambda: torch.ops.minilvlm.mm_adapter_backward(dy, *args))
    shape = f"B={B} T={T} D={D}"
    return [("mm_adapter", shape, forward, 2 * x.nbytes, None),
            ("mm_adapter_backward", shape, backward, 3 * x.nbytes, None)]


def bench_patch_embed(timer, dtype, batch=64, size=224, patch=14, dim=1024):
    """ViT-L's stem on uint8 images: reads the pixels and the weight, writes the tokens; mostly a GEMM
    of 2 * B * N * K * D flops (K = 3 * p * p), reported as TFLOP/s beside the bandwidth."""
    pixels = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device="cuda")
    n = (size // patch) ** 2
    weight = (torch.randn(dim, 3, patch, patch, device="cuda") * (3 * patch * patch) ** -0.5).to(dtype)
    bias, pos, cls = (torch.randn(*s, device="cuda").to(dtype) for s in ((dim,), (n + 1, dim), (dim,)))
    norm = ([0.48, 0.46, 0.41], [0.27, 0.26, 0.28])
    args = (pixels, weight, bias, pos, cls, patch, *norm, False)
    out = torch.ops.minilvlm.patch_embed(*args)
    kw = dict(patch_size=patch, mean=norm[0], std=norm[1], cls_token=cls)
    exact = patch_embed_reference(pixels, weight.double(), bias.double(), pos.double(), **dict(kw, cls_token=cls.double()))
    check("patch_embed", out, patch_embed_reference(pixels, weight, bias, pos, **kw), exact, dtype)
    ms = timer(lambda: torch.ops.minilvlm.patch_embed(*args))
    flops = 2 * batch * n * 3 * patch * patch * dim
    return "patch_embed", f"B={batch} {size}px p={patch} D={dim}", ms, pixels.nbytes + weight.nbytes + out.nbytes, flops


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--peak-gbps", type=float, default=None, help="override the table's peak bandwidth")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench_kernels: no CUDA device", file=sys.stderr)
        return 2
    if not torch.ops.minilvlm.built_with_cuda():
        print("bench_kernels: minilvlm._C was built without its CUDA kernels", file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name()
    peak = args.peak_gbps or peak_gbps(name)
    print(f"{name} (sm_{''.join(map(str, torch.cuda.get_device_capability()))}), peak "
          f"{f'{peak:.0f} GB/s' if peak else 'unknown (pass --peak-gbps)'}; kernels built for "
          f"{minilvlm.ops.cuda_archs()}; torch {torch.__version__}; median of {args.iters}, L2 flushed")
    timer = Timer(args.iters)
    rows = []
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        rows += [(*bench_fused_adamw(timer, dtype), dtype), *[(*r, dtype) for r in bench_mm_adapter(timer, dtype)],
                 (*bench_patch_embed(timer, dtype), dtype)]
    print(f"{'kernel':<20} {'shape':<28} {'dtype':<9} {'ms':>8} {'GB/s':>8} {'% peak':>7} {'TFLOP/s':>8}")
    for kernel, shape, ms, nbytes, flops, dtype in rows:
        gbps = nbytes / ms / 1e6
        share = f"{100 * gbps / peak:.0f}%" if peak else "-"
        tflops = f"{flops / ms / 1e9:.1f}" if flops else "-"
        print(f"{kernel:<20} {shape:<28} {str(dtype)[6:]:<9} {ms:8.3f} {gbps:8.0f} {share:>7} {tflops:>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
