"""mm_adapter: the CPU kernels and the emulated CUDA kernels against the plain-PyTorch reference."""
import os
import subprocess
import sys

import pytest
import torch

import minilvlm
from minilvlm.ops import mm_adapter, mm_adapter_reference
from minilvlm.ops.mm_adapter import register_mm_adapter
from tests.ops import register_on_emulator

pytestmark = pytest.mark.skipif(not minilvlm.ops.native_available(), reason="minilvlm._C is not built")

# (B, T, D, r, groups, P): odd D and T, a D whose groups are odd (74 = 2 x 37), tails of the
# 16-lane loops, one token, three paths, and r not a multiple of 8.
SHAPES = [(3, 5, 37, 8, 1, 2), (2, 7, 74, 8, 2, 2), (4, 1, 130, 4, 2, 2), (2, 9, 33, 6, 3, 3), (2, 3, 48, 12, 2, 2)]
NAMES = ["t", "router_w", "router_b", "down_w", "down_b", "up_w", "up_b"]


def make_inputs(B, T, D, r, groups, P, dtype=torch.float32, seed=0, router=True, device="cpu"):
    """A mixed batch: samples alternate between the "has image" and "text only" modality tokens. Made on
    the CPU (the same values everywhere), then moved to `device`."""
    g = torch.Generator().manual_seed(seed)
    rand = lambda *shape, s=1.0: (torch.randn(*shape, generator=g) * s).to(device=device, dtype=dtype)  # noqa: E731
    modality = torch.randn(2, D, generator=g)
    has_image = torch.arange(B) % 2
    args = dict(x=rand(B, T, D), t=modality[has_image].to(device=device, dtype=dtype), router_w=rand(P, D, s=0.3),
                router_b=rand(P),
                down_w=rand(r, D, s=D ** -0.5), down_b=rand(r, s=0.1), up_w=rand(P, D, r // groups, s=0.5),
                up_b=rand(P, D, s=0.1))
    if not router:
        args.update(t=None, router_w=None, router_b=None)
    return args


def rel_err(actual, expected):
    """max |actual - expected| / max |expected|: a norm-wise error that near-zero entries cannot blow up."""
    actual, expected = actual.double(), expected.double()
    return ((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-12)).item()


def native_args(a):
    """The positional arguments of torch.ops.minilvlm.mm_adapter (an empty router when there is none)."""
    x = a["x"]
    t, rw, rb = a["t"], a["router_w"], a["router_b"]
    if rw is None:
        t, rw, rb = x.new_zeros(x.shape[0], 0), x.new_zeros(1, 0), x.new_zeros(1)
    return (x, t, rw, rb, a["down_w"], a["down_b"], a["up_w"], a["up_b"])


def reference_grads(a, tau, scale, groups, grad_out, dtype=torch.float64):
    """Output and gradients of the reference, computed in `dtype`."""
    leaves = {k: (None if v is None else v.detach().to(dtype).requires_grad_()) for k, v in a.items()}
    out = mm_adapter_reference(**leaves, temperature=tau, scale=scale, groups=groups)
    out.backward(grad_out.to(dtype))
    return out.detach(), {k: v.grad for k, v in leaves.items() if v is not None}


def kernel_grads(ops, a, tau, scale, groups, grad_out):
    args = native_args(a)
    out = ops.mm_adapter(*args, tau, scale, groups)
    grads = ops.mm_adapter_backward(grad_out, *args, tau, scale, groups)
    return out, dict(zip(["x"] + NAMES, grads))


def check_parity(ops, shape, tau, scale=0.7, router=True, tol=1e-5, device="cpu"):
    """fp32 kernels against the fp64 reference: within `tol`, or within twice the fp32 reference's own
    error where that is larger (the router's gradients pass a softmax Jacobian, w (dw - <w, dw>),
    whose cancellation costs fp32 a few ulps of the largest entry)."""
    B, T, D, r, groups, P = shape
    a = make_inputs(*shape, router=router, device=device)
    grad_out = torch.randn(B, T, D, generator=torch.Generator().manual_seed(1)).to(device)
    ref_out, ref = reference_grads(a, tau, scale, groups, grad_out)
    _, ref32 = reference_grads(a, tau, scale, groups, grad_out, torch.float32)
    out, got = kernel_grads(ops, a, tau, scale, groups, grad_out)
    assert out.dtype == torch.float32 and out.shape == (B, T, D)
    assert rel_err(out, ref_out) <= tol
    for name, g in ref.items():
        assert got[name].shape == g.shape, name
        assert rel_err(got[name], g) <= max(tol, 2 * rel_err(ref32[name], g)), name
    if not router:
        assert got["t"].numel() == 0 and got["router_w"].numel() == 0


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("tau", [1.0, 5.0, 10.0])
def test_cpu_kernel_forward_and_backward_match_reference(shape, tau):
    check_parity(torch.ops.minilvlm, shape, tau)


@pytest.mark.parametrize("shape", [(2, 5, 37, 8, 1, 1), (3, 4, 74, 8, 2, 1)])
def test_single_path_without_router_is_rep_adapter(shape):
    check_parity(torch.ops.minilvlm, shape, 1.0, router=False)


def test_public_function_and_autograd_match_reference():
    a = make_inputs(3, 5, 74, 8, 2, 2)
    leaves = {k: v.clone().requires_grad_() for k, v in a.items()}
    out = mm_adapter(**leaves, temperature=5.0, scale=0.5, groups=2)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
    out.backward(grad_out)
    ref_out, ref = reference_grads(a, 5.0, 0.5, 2, grad_out)
    _, ref32 = reference_grads(a, 5.0, 0.5, 2, grad_out, torch.float32)
    assert rel_err(out.detach(), ref_out) <= 1e-5
    for name, v in leaves.items():
        assert rel_err(v.grad, ref[name]) <= max(1e-5, 2 * rel_err(ref32[name], ref[name])), name


def test_each_sample_uses_its_own_routing_weights():
    """In a mixed batch, every sample's output equals the output of that sample run alone."""
    a = make_inputs(4, 6, 74, 8, 2, 2)
    out = mm_adapter(**a, temperature=1.0, scale=1.0, groups=2)
    for b in range(4):
        alone = {k: (v[b:b + 1] if k in ("x", "t") else v) for k, v in a.items()}
        assert rel_err(out[b:b + 1], mm_adapter(**alone, temperature=1.0, scale=1.0, groups=2)) <= 1e-6
    assert rel_err(out[0], out[1]) > 1e-2  # the image and the text-only sample are adapted differently


def test_gradcheck_float64():
    a = make_inputs(2, 3, 10, 4, 2, 2, dtype=torch.float64)
    leaves = tuple(v.requires_grad_() for v in native_args(a))
    fn = lambda *args: torch.ops.minilvlm.mm_adapter(*args, 3.0, 0.8, 2)  # noqa: E731
    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-7)


def check_low_precision_grads(ops, shape, dtype, device="cpu", exact_dtype=torch.float32):
    """The 2x rule, forward and every gradient: kernel error against the exact_dtype reference <= 2 x
    the reference's own error in `dtype` (bf16 or fp16)."""
    B, T, D, r, groups, P = shape
    a = make_inputs(*shape, dtype=dtype, device=device)
    grad_out = torch.randn(B, T, D, generator=torch.Generator().manual_seed(1)).to(device=device, dtype=dtype)
    exact_out, exact = reference_grads(a, 5.0, 1.0, groups, grad_out, exact_dtype)
    low_out, low = reference_grads(a, 5.0, 1.0, groups, grad_out, dtype)
    out, got = kernel_grads(ops, a, 5.0, 1.0, groups, grad_out)
    assert out.dtype == dtype
    assert rel_err(out, exact_out) <= 2 * rel_err(low_out, exact_out)
    for name in exact:
        assert got[name].dtype == dtype
        assert rel_err(got[name], exact[name]) <= 2 * rel_err(low[name], exact[name]) + 1e-3, name


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(2, 7, 74, 8, 2, 2), (3, 33, 130, 8, 2, 2)])
def test_low_precision_within_twice_the_error_of_torch(shape, dtype):
    check_low_precision_grads(torch.ops.minilvlm, shape, dtype)


# bf16 forward shapes: odd D and odd groups (37, 2 x 35), T tails of the 16-token tiles and of the
# 4-token up blocks (33, 19), odd r/groups (rg = 3: a half-empty bf16 pair), rg = 2, 6 and 20, r=4.
BF16_SHAPES = [(3, 5, 37, 8, 1, 2), (2, 19, 70, 6, 2, 2), (2, 33, 74, 8, 2, 2), (2, 9, 33, 6, 3, 3),
               (4, 1, 130, 4, 2, 2), (2, 3, 48, 12, 2, 2), (1, 17, 300, 40, 2, 2)]


def check_bf16_forward(ops, shape, tau, scale=0.7, dtype=torch.bfloat16, device="cpu"):
    """bf16 (or fp16) forward of a mixed text/image batch under the 2x rule, with parameters in x's dtype
    and in float32. Also with x scaled down 64-fold, so that the adapter term dominates out and an error
    inside the projections is not hidden under the rounding of x + adapter."""
    groups = shape[4]
    for param_dtype, x_scale in ((dtype, 1.0), (torch.float32, 1.0), (dtype, 2 ** -6)):
        a = make_inputs(*shape, dtype=dtype, device=device)
        a.update({k: v.to(param_dtype) for k, v in a.items() if k != "x"})
        a["x"] = a["x"] * x_scale
        exact = mm_adapter_reference(**{k: v.float() for k, v in a.items()}, temperature=tau, scale=scale,
                                     groups=groups)
        torch_low = mm_adapter_reference(**{k: v.to(dtype) for k, v in a.items()}, temperature=tau,
                                         scale=scale, groups=groups)
        out = ops.mm_adapter(*native_args(a), tau, scale, groups)
        assert out.dtype == dtype and out.shape == a["x"].shape
        assert rel_err(out, exact) <= 2 * rel_err(torch_low, exact), (shape, tau, param_dtype, x_scale)


def cpu_has_avx512_bf16():
    with open("/proc/cpuinfo") as f:
        flags = next((line.split() for line in f if line.startswith("flags")), [])
    return "avx512_bf16" in flags and "avx512bw" in flags


@pytest.mark.parametrize("shape", BF16_SHAPES)
@pytest.mark.parametrize("tau", [1.0, 5.0, 10.0])
def test_bfloat16_forward_odd_shapes(shape, tau):
    """The path this CPU takes (bf16 dot products where it has AVX512_BF16)."""
    check_bf16_forward(torch.ops.minilvlm, shape, tau)


@pytest.mark.parametrize("shape", BF16_SHAPES)
def test_float16_forward_odd_shapes(shape):
    """fp16 tokens take the AVX-512F fp32-arithmetic loops (no fp16 dot products on x86)."""
    check_bf16_forward(torch.ops.minilvlm, shape, 5.0, dtype=torch.float16)


@pytest.mark.skipif(not os.path.exists("/proc/cpuinfo"), reason="needs /proc/cpuinfo to know the CPU")
def test_bf16_dot_path_is_chosen_where_the_cpu_has_it():
    assert (minilvlm.ops.cpu_capability() == "avx512_bf16") == cpu_has_avx512_bf16(), minilvlm.ops.cpu_capability()


def test_bfloat16_forward_avx512f_fallback_matches_reference():
    """MINILVLM_CPU_CAPABILITY=avx512 forces the fp32-arithmetic AVX-512F path on a bf16-capable CPU."""
    if minilvlm.ops.cpu_capability() not in ("avx512_bf16", "avx512"):
        pytest.skip(f"this CPU has no AVX-512F ({minilvlm.ops.cpu_capability()})")
    run_with_capability("avx512", "from tests.ops.test_mm_adapter_op import check_bf16_forward, BF16_SHAPES;"
                        "[check_bf16_forward(torch.ops.minilvlm, s, tau) for s in BF16_SHAPES for tau in (1.0, 5.0, 10.0)]")


def run_with_capability(capability, checks):
    """Run `checks` (Python statements) in a fresh process whose kernels take the CPU path
    MINILVLM_CPU_CAPABILITY=capability; fails with the child's stderr."""
    script = (f"import torch, minilvlm; assert minilvlm.ops.cpu_capability() == {capability!r}, "
              f"minilvlm.ops.cpu_capability(); {checks}")
    env = dict(os.environ, MINILVLM_CPU_CAPABILITY=capability)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run([sys.executable, "-c", script], env=env, cwd=root, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_bad_cpu_capability_is_a_clear_error():
    proc = subprocess.run([sys.executable, "-c", "import minilvlm; minilvlm.ops.cpu_capability()"],
                          env=dict(os.environ, MINILVLM_CPU_CAPABILITY="avx1024"), capture_output=True, text=True)
    assert proc.returncode != 0 and "MINILVLM_CPU_CAPABILITY must be avx512_bf16, avx512, avx2 or default" in proc.stderr


def test_bfloat16_tokens_with_float32_parameters():
    a = make_inputs(2, 5, 74, 8, 2, 2)
    a["x"] = a["x"].to(torch.bfloat16)
    out = mm_adapter(**a, temperature=5.0, scale=1.0, groups=2)
    ref = mm_adapter_reference(**{k: v.double() for k, v in a.items()}, temperature=5.0, scale=1.0, groups=2)
    assert out.dtype == torch.bfloat16 and rel_err(out, ref) <= 2 ** -8


def test_non_contiguous_tokens():
    a = make_inputs(2, 6, 74, 8, 2, 2)
    a["x"] = a["x"].transpose(0, 1).contiguous().transpose(0, 1)
    assert not a["x"].is_contiguous()
    ref = mm_adapter_reference(**a, temperature=5.0, scale=1.0, groups=2)
    assert rel_err(mm_adapter(**a, temperature=5.0, scale=1.0, groups=2), ref) <= 1e-5


def test_opcheck():
    a = make_inputs(2, 5, 74, 8, 2, 2)
    args = tuple(v.requires_grad_() for v in native_args(a)) + (5.0, 0.7, 2)
    torch.library.opcheck(torch.ops.minilvlm.mm_adapter.default, args)
    grad_out = torch.randn(2, 5, 74)
    torch.library.opcheck(torch.ops.minilvlm.mm_adapter_backward.default,
                          (grad_out,) + tuple(v.detach() for v in args[:8]) + (5.0, 0.7, 2),
                          test_utils=("test_schema", "test_faketensor"))


def test_portable_loops_match_reference():
    """MINILVLM_CPU_CAPABILITY=default: the scalar loops that CPUs without AVX-512 run."""
    run_with_capability("default", "from tests.ops.test_mm_adapter_op import check_parity, check_low_precision_grads;"
                        "[check_parity(torch.ops.minilvlm, s, 5.0) for s in [(2, 7, 74, 8, 2, 2), (2, 9, 33, 6, 3, 3)]];"
                        "[check_low_precision_grads(torch.ops.minilvlm, (2, 7, 74, 8, 2, 2), d)"
                        " for d in (torch.bfloat16, torch.float16)]")


@pytest.mark.parametrize("change,message", [
    (lambda a: a.update(x=a["x"][0]), r"x must be \[batch, tokens, dim\]"),
    (lambda a: a.update(down_w=a["down_w"][:, :-1]), r"down_w must have shape \[8, 74\]"),
    (lambda a: a.update(up_w=a["up_w"][:, :, :3]), r"up_w must have shape \[2, 74, 4\]"),
    (lambda a: a.update(t=a["t"][:1]), r"t \(modality token\) must have shape \[2, 74\]"),
    (lambda a: a.update(up_b=a["up_b"].double()), "parameters must be float32 or x's dtype"),
    (lambda a: a.update(x=a["x"].to(torch.int32)), "x must be float32, bfloat16, float16 or float64"),
])
def test_bad_inputs_raise_clear_errors(change, message):
    a = make_inputs(2, 5, 74, 8, 2, 2)
    change(a)
    with pytest.raises(RuntimeError, match=message):
        torch.ops.minilvlm.mm_adapter(*native_args(a), 5.0, 1.0, 2)


@pytest.mark.parametrize("grad_out,message", [
    (torch.randn(2, 5, 73), r"grad_out must match x \(Float \[2, 5, 74\]\), got Float \[2, 5, 73\]"),
    (torch.randn(2, 5, 74, dtype=torch.float64), r"grad_out must match x \(Float \[2, 5, 74\]\), got Double"),
])
def test_backward_bad_grad_out_raises_clear_error(grad_out, message):
    a = make_inputs(2, 5, 74, 8, 2, 2)
    with pytest.raises(RuntimeError, match=message):
        torch.ops.minilvlm.mm_adapter_backward(grad_out, *native_args(a), 5.0, 1.0, 2)


def test_emulated_backward_bad_grad_out_raises_the_same_error(emu):
    a = make_inputs(2, 5, 74, 8, 2, 2)
    with pytest.raises(RuntimeError, match=r"grad_out must match x \(Float \[2, 5, 74\]\), got Float \[2, 5, 73\]"):
        emu.mm_adapter_backward(torch.randn(2, 5, 73), *native_args(a), 5.0, 1.0, 2)


def test_bad_groups_and_router_raise_clear_errors():
    a = make_inputs(2, 5, 74, 8, 2, 2)
    with pytest.raises(RuntimeError, match="groups=3 must divide"):
        torch.ops.minilvlm.mm_adapter(*native_args(a), 5.0, 1.0, 3)
    with pytest.raises(RuntimeError, match="temperature must be a positive number"):
        torch.ops.minilvlm.mm_adapter(*native_args(a), 0.0, 1.0, 2)
    with pytest.raises(ValueError, match="without a router there must be one path"):
        mm_adapter(**dict(a, t=None, router_w=None, router_b=None), temperature=1.0, scale=1.0, groups=2)
    with pytest.raises(ValueError, match="missing"):
        mm_adapter(**dict(a, t=None), temperature=1.0, scale=1.0, groups=2)


# ---------------------------------------------------------------------------------------
# The CUDA kernels, run by the SIMT emulator (small grids: every CUDA thread is a fiber).

EMU_SHAPES = [(3, 5, 37, 8, 1, 2), (2, 19, 74, 8, 2, 2), (2, 9, 33, 6, 3, 3), (1, 3, 300, 40, 2, 2)]


@pytest.mark.parametrize("shape", EMU_SHAPES)
@pytest.mark.parametrize("tau", [1.0, 5.0, 10.0])
def test_emulated_cuda_kernels_match_reference(emu, shape, tau):
    check_parity(emu, shape, tau)


def test_emulated_cuda_kernels_without_router(emu):
    check_parity(emu, (2, 5, 74, 8, 2, 1), 1.0, router=False)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(2, 18, 74, 8, 2, 2), (2, 9, 33, 6, 3, 3)])
def test_emulated_cuda_kernels_low_precision_within_twice_torch(emu, shape, dtype):
    check_low_precision_grads(emu, shape, dtype)
    check_bf16_forward(emu, shape, 5.0, dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_emulated_backward_is_bitwise_deterministic_under_two_schedules(emu, dtype):
    """The backward's two-pass reduction (no float atomics): the same grads, bit for bit, whatever order the
    threads of a block run in (two scheduling seeds) and the blocks run in (one OS thread or two), also under
    torch.use_deterministic_algorithms. T = 50: four tiles per sample over two blocks each (the emulator's
    backward grid is 4 blocks), so the per-block sums loop over tiles."""
    a = make_inputs(2, 50, 74, 8, 2, 2, dtype=dtype)
    grad_out = torch.randn(2, 50, 74, generator=torch.Generator().manual_seed(1)).to(dtype)
    results = []
    for seed, threads, deterministic in ((0, 0, False), (12345, 1, True), (777, 2, False)):
        emu.set_seed(seed)
        emu.set_num_threads(threads)
        before = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(deterministic)
        try:
            results.append(kernel_grads(emu, a, 5.0, 1.0, 2, grad_out))
        finally:
            torch.use_deterministic_algorithms(before)
    for out, grads in results[1:]:
        assert torch.equal(out, results[0][0])
        for name, g in grads.items():
            assert torch.equal(g, results[0][1][name]), name


def test_emulated_cuda_kernels_opcheck(emu):
    register_on_emulator(register_mm_adapter)
    a = make_inputs(2, 5, 74, 8, 2, 2)
    args = tuple(v.requires_grad_() for v in native_args(a)) + (5.0, 0.7, 2)
    torch.library.opcheck(emu.mm_adapter.default, args)


def test_emulated_kernel_rejects_float64(emu):
    a = make_inputs(2, 5, 74, 8, 2, 2, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="x must be float32, bfloat16 or float16"):
        emu.mm_adapter(*native_args(a), 5.0, 1.0, 2)


# ---------------------------------------------------------------------------------------
# Sizes the emulator's small grid hides (docs/emulator.md, "GPU-sized grids").

def launched_grid(emu, kernel):
    """The grid of the last launch of `kernel` (a substring of its name) as "(x,y,z)"."""
    found = [launch for launch in emu.recent_launches() if kernel in launch]
    assert found, emu.recent_launches()
    return found[-1].split(" grid=")[1].split(" ")[0]


def test_emulated_backward_more_tiles_than_blocks(emu):
    """T = 100 is 7 tiles of 16 tokens per sample (the last a partial one); the forward takes one block per
    tile (the emulator's small grid bound asks for full tiles), the backward's grid (4 blocks under the emulator) gives each sample 2 blocks, which take 4 and 3 tiles."""
    emu.clear_recent_launches()
    check_parity(emu, (2, 100, 74, 8, 2, 2), 5.0)
    assert launched_grid(emu, "mm_adapter_forward_kernel") == "(7,2,1)"
    assert launched_grid(emu, "mm_adapter_backward_kernel") == "(2,2,1)"


def test_emulated_kernels_on_the_a100_grid(emu):
    """The backward's grid on an A100 (108 SMs x kMmBlocksPerSm = 216 blocks) divided among 80 samples of 3
    tiles: 2 blocks per sample, so the blocks loop over tiles on the GPU's grid too. The forward spreads the
    3840 tokens over about 2 x 216 blocks: tiles of 9 tokens, 6 per sample (the last one of 3 tokens)."""
    emu.set_gpu("A100")
    emu.clear_recent_launches()
    check_parity(emu, (80, 48, 24, 8, 2, 2), 5.0)
    assert launched_grid(emu, "mm_adapter_forward_kernel") == "(6,80,1)"
    assert launched_grid(emu, "mm_adapter_backward_kernel") == "(2,80,1)"
