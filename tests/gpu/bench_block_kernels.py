"""GPU benchmark of the fused block ops' CUDA kernels (rms_norm, layer_norm, swiglu, gelu, rope,
linear_cross_entropy): achieved bandwidth against the device's peak, at LLaMA-7B's widths over 4,096
tokens. The instrument and the rules are tests/gpu/bench_kernels.py's: each case is first checked
against its plain-PyTorch reference on the very inputs it is timed on, then timed with CUDA events,
the L2 flushed before each call. Bytes count each input read once and each output written once (the
per-element figures of docs/benchmarks.md, "CUDA kernels on paper").

    python -m tests.gpu.bench_block_kernels [--iters 20] [--peak-gbps 3350]

Without a CUDA device it exits with status 2.
"""
import argparse
import sys

import torch

from minilvlm.ops import (gelu_reference, layer_norm_reference, linear_cross_entropy_reference, rms_norm_reference,
                          rope_reference, rope_tables, swiglu_reference)
from tests.gpu.bench_kernels import Timer, check, peak_gbps

TOKENS, DIM, MLP, HEADS, HEAD_DIM, VOCAB = 4096, 4096, 11008, 32, 128, 32000


def randn(*shape, dtype, scale=1.0):
    return (torch.randn(*shape, device="cuda") * scale).to(dtype)


def bench_rms_norm(timer, dtype):
    x, r, w = randn(TOKENS, DIM, dtype=dtype), randn(TOKENS, DIM, dtype=dtype), randn(DIM, dtype=dtype)
    y, s = torch.ops.minilvlm.rms_norm(x, r, w, 1e-6)
    check("rms_norm", y, rms_norm_reference(x, w, 1e-6, r)[0],
          rms_norm_reference(x.double(), w.double(), 1e-6, r.double())[0], dtype)
    gy, gs = randn(TOKENS, DIM, dtype=dtype), randn(TOKENS, DIM, dtype=dtype)
    n = x.numel() * x.element_size()
    return [("rms_norm +residual", timer(lambda: torch.ops.minilvlm.rms_norm(x, r, w, 1e-6)), 4 * n),
            ("rms_norm_backward", timer(lambda: torch.ops.minilvlm.rms_norm_backward(gy, gs, s, w, 1e-6, True)), 4 * n)]


def bench_layer_norm(timer, dtype):
    x, w, b = randn(TOKENS, DIM, dtype=dtype), randn(DIM, dtype=dtype), randn(DIM, dtype=dtype)
    y = torch.ops.minilvlm.layer_norm(x, w, b, 1e-5)
    check("layer_norm", y, layer_norm_reference(x, w, b, 1e-5),
          layer_norm_reference(x.double(), w.double(), b.double(), 1e-5), dtype)
    gy, n = randn(TOKENS, DIM, dtype=dtype), x.numel() * x.element_size()
    return [("layer_norm", timer(lambda: torch.ops.minilvlm.layer_norm(x, w, b, 1e-5)), 2 * n),
            ("layer_norm_backward",
             timer(lambda: torch.ops.minilvlm.layer_norm_backward(gy, x, w, 1e-5, True, True)), 3 * n)]


def bench_activations(timer, dtype):
    gate, up, grad = (randn(TOKENS, MLP, dtype=dtype) for _ in range(3))
    check("swiglu", torch.ops.minilvlm.swiglu(gate, up), swiglu_reference(gate, up),
          swiglu_reference(gate.double(), up.double()), dtype)
    check("gelu", torch.ops.minilvlm.gelu(gate, "tanh"), gelu_reference(gate, "tanh"),
          gelu_reference(gate.double(), "tanh"), dtype)
    n = gate.numel() * gate.element_size()
    return [("swiglu", timer(lambda: torch.ops.minilvlm.swiglu(gate, up)), 3 * n),
            ("swiglu_backward", timer(lambda: torch.ops.minilvlm.swiglu_backward(grad, gate, up)), 5 * n),
            ("gelu tanh", timer(lambda: torch.ops.minilvlm.gelu(gate, "tanh")), 2 * n),
            ("gelu_backward tanh", timer(lambda: torch.ops.minilvlm.gelu_backward(grad, gate, "tanh")), 3 * n)]


def bench_rope(timer, dtype):
    batch = TOKENS // 1024
    q, k = randn(batch, HEADS, 1024, HEAD_DIM, dtype=dtype), randn(batch, HEADS, 1024, HEAD_DIM, dtype=dtype)
    cos, sin = rope_tables(torch.arange(1024, device="cuda").expand(batch, 1024), HEAD_DIM, 10000.0)
    expected = rope_reference(q, cos, sin)
    exact = rope_reference(q.double(), cos.double(), sin.double())
    rotated = q.clone()
    torch.ops.minilvlm.rope_(rotated, None, cos, sin)
    check("rope_", rotated, expected, exact, dtype)
    n = q.numel() * q.element_size()
    return [("rope_ q and k", timer(lambda: torch.ops.minilvlm.rope_(q, k, cos, sin)), 4 * n),
            ("rope_backward", timer(lambda: torch.ops.minilvlm.rope_backward(q, cos, sin)), 2 * n)]


def bench_linear_cross_entropy(timer, dtype):
    hidden, weight = randn(TOKENS, DIM, dtype=dtype), randn(VOCAB, DIM, dtype=dtype, scale=DIM ** -0.5)
    targets = torch.randint(0, VOCAB, (TOKENS,), device="cuda")
    args = (hidden, weight, None, targets, dtype, 2048, [True, True, False])
    loss = torch.ops.minilvlm.linear_cross_entropy(*args)[0]
    check("linear_cross_entropy", loss, linear_cross_entropy_reference(hidden, weight, None, targets),
          linear_cross_entropy_reference(hidden.double(), weight.double(), None, targets), dtype)
    # The bytes of its elementwise passes (fp32 logits read twice, the gradient written); the GEMMs
    # are reported as TFLOP/s by the caller.
    return [("linear_cross_entropy", timer(lambda: torch.ops.minilvlm.linear_cross_entropy(*args)),
             TOKENS * VOCAB * (8 + hidden.element_size()))]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--peak-gbps", type=float, default=None, help="override the table's peak bandwidth")
    args = parser.parse_args()
    if not torch.cuda.is_available() or not torch.ops.minilvlm.built_with_cuda():
        print("bench_block_kernels: no CUDA device, or minilvlm._C built without its CUDA kernels", file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name()
    peak = args.peak_gbps or peak_gbps(name)
    print(f"{name}: fused block kernels, {TOKENS} tokens at LLaMA-7B widths, median of {args.iters}, L2 flushed")
    timer = Timer(args.iters)
    print(f"{'kernel':<22} {'dtype':<9} {'ms':>8} {'GB/s':>8} {'% peak':>7} {'TFLOP/s':>8}")
    for dtype in (torch.float32, torch.bfloat16):
        for bench in (bench_rms_norm, bench_layer_norm, bench_activations, bench_rope, bench_linear_cross_entropy):
            for kernel, ms, nbytes in bench(timer, dtype):
                gbps = nbytes / ms / 1e6
                share = f"{100 * gbps / peak:.0f}%" if peak else "-"
                flops = 6 * TOKENS * VOCAB * DIM if kernel == "linear_cross_entropy" else 0
                tflops = f"{flops / ms / 1e9:.1f}" if flops else "-"
                print(f"{kernel:<22} {str(dtype)[6:]:<9} {ms:8.3f} {gbps:8.0f} {share:>7} {tflops:>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
