"""rms_norm: the CPU kernel and the emulated CUDA kernels against the plain-PyTorch reference."""
import pytest
import torch

import minilvlm
from minilvlm.ops import rms_norm, rms_norm_reference
from minilvlm.ops.rms_norm import register_rms_norm
from tests.ops import register_on_emulator
from tests.ops.rowwise_checks import (LOW_PRECISION, ODD_DIMS, assert_fp32_matches, assert_matches,
                                      assert_matches_native_cpu, assert_within_twice_torch, case_ids, check_fakes,
                                      grads_of, randn, rel_err, run_on_default_path, scheduling_seed)

pytestmark = pytest.mark.skipif(not minilvlm.ops.native_available(), reason="minilvlm._C is not built")
EPS = 1e-6


def make(dim, rows=(3, 5), dtype=torch.float32, residual=True, seed=0):
    """x, residual (or None), weight; the weight near 1 as trained norms are."""
    x = randn(*rows, dim, dtype=dtype, seed=seed)
    r = randn(*rows, dim, dtype=dtype, seed=seed + 1, scale=2.0) if residual else None
    w = randn(dim, dtype=dtype, seed=seed + 2, scale=0.2, shift=1.0)
    return x, r, w


def native(ops, x, r, w, eps=EPS):
    return ops.rms_norm(x, r, w, eps)


def reference_grads(x, r, w, gy, gs, dtype=None):
    """Reference autograd gradients (x, residual, weight), computed in `dtype` (default: the inputs')."""
    cast = [None if t is None else t.to(dtype or t.dtype) for t in (x, r, w, gy, gs)]
    fn = lambda x_, r_, w_: rms_norm_reference(x_, w_, EPS, residual=r_)  # noqa: E731
    return grads_of(fn, cast[:3], (cast[3], cast[4] if r is not None else None))


# ---------------------------------------------------------------------------------------
# forward

@pytest.mark.parametrize("dim", ODD_DIMS + (4096,))
@pytest.mark.parametrize("residual", [True, False])
def test_cpu_forward_matches_reference_fp32(dim, residual):
    x, r, w = make(dim, residual=residual)
    y, s = native(torch.ops.minilvlm, x, r, w)
    y_ref, s_ref = rms_norm_reference(x, w, EPS, residual=r)
    assert y.shape == x.shape and y.dtype == torch.float32 and rel_err(y, y_ref) <= 1e-5
    assert s.shape == ((0,) if r is None else x.shape)
    if r is not None:
        assert torch.equal(s, s_ref)


@pytest.mark.parametrize("dtype", LOW_PRECISION)
@pytest.mark.parametrize("dim", (7, 1025, 11008))
def test_cpu_forward_low_precision_within_twice_torch(dtype, dim):
    x, r, w = make(dim, rows=(4,), dtype=dtype)
    y, s = native(torch.ops.minilvlm, x, r, w)
    ref32 = rms_norm_reference(*(t.float() for t in (x, w)), EPS, residual=r.float())
    ref_low = rms_norm_reference(x, w, EPS, residual=r)
    assert torch.equal(s, ref_low[1])  # x + r rounded once, as eager PyTorch adds
    assert_within_twice_torch(y, ref32[0], ref_low[0])


def test_public_function_returns_x_as_s_without_residual_and_promotes_dtypes():
    x, r, w = make(33, residual=True)
    y, s = rms_norm(x, w, EPS)
    assert s is x and rel_err(y, rms_norm_reference(x, w, EPS)[0]) <= 1e-5
    y, s = rms_norm(x.bfloat16(), w, EPS, residual=r)  # bf16 output of a layer + the fp32 stream: fp32
    y_ref, s_ref = rms_norm_reference(x.bfloat16().float(), w, EPS, residual=r)
    assert y.dtype == s.dtype == torch.float32 and rel_err(y, y_ref) <= 1e-5 and torch.equal(s, s_ref)


def test_float64_runs_the_reference_and_non_contiguous_inputs_work():
    x, r, w = make(20, dtype=torch.float64)
    y, s = rms_norm(x, w, EPS, residual=r)
    assert y.dtype == torch.float64 and rel_err(y, rms_norm_reference(x, w, EPS, residual=r)[0]) <= 1e-12
    xt, rt = (t.float().transpose(0, 1) for t in (x, r))   # [5, 3, 20], strided
    y, s = rms_norm(xt, w.float(), EPS, residual=rt)
    assert rel_err(y, rms_norm_reference(xt, w.float(), EPS, residual=rt)[0]) <= 1e-5


def test_autocast_passes_the_inputs_dtype_through():
    x, r, w = make(64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, s = rms_norm(x, w, EPS, residual=r)
        y16, _ = rms_norm(x.bfloat16(), w.bfloat16(), EPS, residual=r.bfloat16())
    assert y.dtype == torch.float32 and y16.dtype == torch.bfloat16


# ---------------------------------------------------------------------------------------
# backward

@pytest.mark.parametrize("dim", ODD_DIMS + (4096,))
@pytest.mark.parametrize("residual,grad_s", [(True, True), (True, False), (False, False)])
def test_native_gradients_match_reference_fp32(dim, residual, grad_s):
    x, r, w = make(dim, residual=residual)
    gy = randn(*x.shape, seed=5)
    gs = randn(*x.shape, seed=6) if grad_s else None
    ours = grads_of(lambda x_, r_, w_: rms_norm(x_, w_, EPS, residual=r_), (x, r, w), (gy, gs))
    ref, exact = reference_grads(x, r, w, gy, gs), reference_grads(x, r, w, gy, gs, torch.float64)
    for name, a, b, c in zip(("x", "residual", "weight"), ours, ref, exact):
        if b is not None:
            assert_fp32_matches(a, b, c, name)


@pytest.mark.parametrize("dtype", LOW_PRECISION)
@pytest.mark.parametrize("dim", (97, 4096))
def test_native_gradients_low_precision_within_twice_torch(dtype, dim):
    x, r, w = make(dim, rows=(6,), dtype=dtype)
    gy, gs = randn(6, dim, dtype=dtype, seed=5), randn(6, dim, dtype=dtype, seed=6)
    ours = grads_of(lambda x_, r_, w_: rms_norm(x_, w_, EPS, residual=r_), (x, r, w), (gy, gs))
    ref32 = reference_grads(x, r, w, gy, gs, torch.float32)
    ref_low = reference_grads(x, r, w, gy, gs)
    for name, a, b, c in zip(("x", "residual", "weight"), ours, ref32, ref_low):
        assert_within_twice_torch(a, b, c, name)


def test_only_s_used_and_frozen_weight():
    x, r, w = make(16)
    x, r = x.requires_grad_(), r.requires_grad_()
    _, s = rms_norm(x, w, EPS, residual=r)
    s.sum().backward()                        # y unused: grad of s passes through
    assert torch.equal(x.grad, torch.ones_like(x)) and torch.equal(r.grad, torch.ones_like(r))
    y, _ = rms_norm(x.detach(), w.requires_grad_(), EPS)
    y.sum().backward()
    assert w.grad is not None and w.grad.shape == w.shape


def test_gradcheck_fp64_through_the_reference():
    x, r, w = (t.requires_grad_() for t in make(6, rows=(2, 3), dtype=torch.float64))
    assert torch.autograd.gradcheck(lambda *a: rms_norm(a[0], a[2], EPS, residual=a[1]), (x, r, w))


def test_opcheck():
    opcheck_both(torch.ops.minilvlm)


def test_emulated_cuda_kernels_opcheck(emu):
    register_on_emulator(register_rms_norm)
    opcheck_both(emu)


def opcheck_both(ops):
    for residual in (True, False):
        x, r, w = make(24, residual=residual)
        for t in (x, r, w):
            if t is not None:
                t.requires_grad_()
        torch.library.opcheck(ops.rms_norm.default, (x, r, w, EPS))
        s = (x + r if residual else x).detach()
        for gs in (randn(*x.shape), None):
            torch.library.opcheck(ops.rms_norm_backward.default, (randn(*x.shape, seed=3), gs, s, w.detach(), EPS, True))


def test_fakes_shapes_and_mixed_devices():
    def args(device):
        return [torch.empty(2, 3, 8, device=device), torch.empty(2, 3, 8, device=device), torch.empty(8, device=device),
                EPS]
    check_fakes(torch.ops.minilvlm.rms_norm, args, [[2, 3, 8], [2, 3, 8]])

    def bwd_args(device):
        return [torch.empty(4, 8, device=device), torch.empty(4, 8, device=device), torch.empty(4, 8, device=device),
                torch.empty(8, device=device), EPS, True]
    check_fakes(torch.ops.minilvlm.rms_norm_backward, bwd_args, [[4, 8], [8]])


# ---------------------------------------------------------------------------------------
# bad input

BAD = [
    ("weight shape", lambda x, r, w: (x, r, w[:-1]), r"weight must have shape \[16\]"),
    ("residual shape", lambda x, r, w: (x, r[:1], w), r"residual must have the shape of x \[3, 5, 16\]"),
    ("dtype", lambda x, r, w: (x.double(), r.double(), w.double()), r"x must be float32, bfloat16 or float16"),
    ("mixed dtype", lambda x, r, w: (x, r.bfloat16(), w), r"residual is (torch\.bfloat16|BFloat16) but x is"),
    ("empty rows", lambda x, r, w: (x[..., :0], r[..., :0], w[:0]), r"last dimension of at least 1"),
]


@pytest.mark.parametrize("name,mutate,message", BAD, ids=[b[0] for b in BAD])
def test_native_op_rejects_bad_input(name, mutate, message):
    with pytest.raises(RuntimeError, match=message):
        torch.ops.minilvlm.rms_norm(*mutate(*make(16)), EPS)


def test_public_function_rejects_bad_input_before_dispatch():
    x, r, w = make(16)
    with pytest.raises(ValueError, match=r"weight must have shape \[16\]"):
        rms_norm(x, w[:3], EPS, residual=r)
    with pytest.raises(ValueError, match=r"residual must have the shape of x"):
        rms_norm(x, w, EPS, residual=r[0])
    with pytest.raises(ValueError, match="eps must be >= 0"):
        rms_norm(x, w, -1.0)
    with pytest.raises(TypeError, match="x must be a floating-point tensor"):
        rms_norm(x.int(), w)
    with pytest.raises(RuntimeError, match="grad_y must have the shape of s"):
        torch.ops.minilvlm.rms_norm_backward(x[0], None, x, w, EPS, True)


# ---------------------------------------------------------------------------------------
# the CUDA kernels under the emulator; the baseline CPU path

EMU_CASES = [(1, torch.float32), (7, torch.float32), (96, torch.float32), (1025, torch.bfloat16),
             (64, torch.bfloat16), (40, torch.float16), (12000, torch.float32)]  # 12000: accumulator in global memory


@pytest.mark.parametrize("dim,dtype", EMU_CASES, ids=case_ids(EMU_CASES))
@pytest.mark.parametrize("seed", [0, 7])
def test_emulated_cuda_kernels_match_reference(emu, dim, dtype, seed):
    rows = (2, 3) if dim < 2000 else (5,)
    with scheduling_seed(emu, seed):
        for residual in (True, False):
            x, r, w = make(dim, rows=rows, dtype=dtype, residual=residual)
            ref32 = rms_norm_reference(x.float(), w.float(), EPS, residual=None if r is None else r.float())
            ref_low = rms_norm_reference(x, w, EPS, residual=r)
            assert_matches(native(emu, x, r, w)[0], ref32[0], ref_low[0])
            args = (randn(*x.shape, dtype=dtype, seed=5), randn(*x.shape, dtype=dtype, seed=6) if residual else None,
                    ref_low[1], w, EPS, True)
            assert_matches_native_cpu(emu.rms_norm_backward(*args), torch.ops.minilvlm.rms_norm_backward(*args))


def test_emulated_cuda_errors(emu):
    x, r, w = make(16)
    with pytest.raises(RuntimeError, match=r"weight must have shape \[16\]"):
        emu.rms_norm(x, r, w[:2], EPS)
    with pytest.raises(RuntimeError, match="x must be float32, bfloat16 or float16"):
        emu.rms_norm(x.double(), r.double(), w.double(), EPS)


def check_cpu_kernels():
    """Forward and gradients on whichever CPU path runs (the subprocess below forces the baseline)."""
    for dim, dtype in ((7, torch.float32), (1025, torch.float32), (97, torch.bfloat16)):
        x, r, w = make(dim, dtype=dtype)
        gy, gs = randn(*x.shape, dtype=dtype, seed=5), randn(*x.shape, dtype=dtype, seed=6)
        ref32 = rms_norm_reference(x.float(), w.float(), EPS, residual=r.float())[0]
        assert_matches(torch.ops.minilvlm.rms_norm(x, r, w, EPS)[0], ref32, rms_norm_reference(x, w, EPS, residual=r)[0])
        ours = grads_of(lambda a, b, c: rms_norm(a, c, EPS, residual=b), (x, r, w), (gy, gs))
        for a, b, c in zip(ours, reference_grads(x, r, w, gy, gs, torch.float32), reference_grads(x, r, w, gy, gs)):
            assert_matches(a, b, c)


def test_every_cpu_path_matches_reference():
    check_cpu_kernels()
    run_on_default_path("tests.ops.test_rms_norm_op", "check_cpu_kernels")
