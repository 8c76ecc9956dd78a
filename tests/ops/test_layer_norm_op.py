"""layer_norm: the CPU kernel and the emulated CUDA kernels against the plain-PyTorch reference."""
import pytest
import torch

import minilvlm
from minilvlm.ops import layer_norm, layer_norm_reference
from minilvlm.ops.layer_norm import register_layer_norm
from tests.ops import register_on_emulator
from tests.ops.rowwise_checks import (LOW_PRECISION, ODD_DIMS, assert_fp32_matches, assert_matches,
                                      assert_matches_native_cpu, assert_within_twice_torch, case_ids, check_fakes,
                                      grads_of, randn, rel_err, run_on_default_path, scheduling_seed)

pytestmark = pytest.mark.skipif(not minilvlm.ops.native_available(), reason="minilvlm._C is not built")
EPS = 1e-5


def make(dim, rows=(3, 5), dtype=torch.float32, bias=True, seed=0):
    """x (off-centre, so that the mean matters), weight near 1, bias (or None)."""
    x = randn(*rows, dim, dtype=dtype, seed=seed, scale=2.0, shift=0.5)
    w = randn(dim, dtype=dtype, seed=seed + 1, scale=0.2, shift=1.0)
    b = randn(dim, dtype=dtype, seed=seed + 2, scale=0.1) if bias else None
    return x, w, b


def reference_grads(x, w, b, gy, dtype=None):
    cast = [None if t is None else t.to(dtype or t.dtype) for t in (x, w, b, gy)]
    return grads_of(lambda x_, w_, b_: layer_norm_reference(x_, w_, b_, EPS), cast[:3], (cast[3],))


# ---------------------------------------------------------------------------------------
# forward

@pytest.mark.parametrize("dim", ODD_DIMS + (256, 4096))
@pytest.mark.parametrize("bias", [True, False])
def test_cpu_forward_matches_reference_fp32(dim, bias):
    x, w, b = make(dim, bias=bias)
    y = torch.ops.minilvlm.layer_norm(x, w, b, EPS)
    assert y.shape == x.shape and rel_err(y, layer_norm_reference(x, w, b, EPS)) <= 1e-5


@pytest.mark.parametrize("dtype", LOW_PRECISION)
@pytest.mark.parametrize("dim", (7, 1025, 11008))
def test_cpu_forward_low_precision_within_twice_torch(dtype, dim):
    x, w, b = make(dim, rows=(4,), dtype=dtype)
    y = torch.ops.minilvlm.layer_norm(x, w, b, EPS)
    ref32 = layer_norm_reference(x.float(), w.float(), b.float(), EPS)
    assert_within_twice_torch(y, ref32, layer_norm_reference(x, w, b, EPS))


def test_public_function_float64_non_contiguous_and_autocast():
    x, w, b = make(20, dtype=torch.float64)
    assert rel_err(layer_norm(x, w, b), layer_norm_reference(x, w, b)) <= 1e-12
    xt = x.float().transpose(0, 1)
    assert rel_err(layer_norm(xt, w.float(), b.float()), layer_norm_reference(xt, w.float(), b.float())) <= 1e-5
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer_norm(x.float(), w.float(), b.float()).dtype == torch.float32
        assert layer_norm(x.bfloat16(), w.float(), None).dtype == torch.float32  # promoted, as eager would
        assert layer_norm(x.bfloat16(), w.bfloat16(), b.bfloat16()).dtype == torch.bfloat16


def test_a_row_far_from_zero_keeps_its_variance():
    """Two-pass statistics: a row at 1000 with unit spread is normalised as well as one at 0."""
    x, w, b = make(512, rows=(4,))
    shifted = x + 1000.0
    assert rel_err(layer_norm(shifted, w, b), layer_norm_reference(shifted.double(), w.double(), b.double())) <= 1e-4


# ---------------------------------------------------------------------------------------
# backward

@pytest.mark.parametrize("dim", ODD_DIMS + (4096,))
@pytest.mark.parametrize("bias", [True, False])
def test_native_gradients_match_reference_fp32(dim, bias):
    x, w, b = make(dim, bias=bias)
    gy = randn(*x.shape, seed=5)
    ours = grads_of(lambda x_, w_, b_: layer_norm(x_, w_, b_, EPS), (x, w, b), (gy,))
    ref, exact = reference_grads(x, w, b, gy), reference_grads(x, w, b, gy, torch.float64)
    for name, a, c, e in zip(("x", "weight", "bias"), ours, ref, exact):
        if c is not None:
            assert_fp32_matches(a, c, e, name)


@pytest.mark.parametrize("dtype", LOW_PRECISION)
@pytest.mark.parametrize("dim", (97, 4096))
def test_native_gradients_low_precision_within_twice_torch(dtype, dim):
    x, w, b = make(dim, rows=(6,), dtype=dtype)
    gy = randn(6, dim, dtype=dtype, seed=5)
    ours = grads_of(lambda x_, w_, b_: layer_norm(x_, w_, b_, EPS), (x, w, b), (gy,))
    ref32, ref_low = reference_grads(x, w, b, gy, torch.float32), reference_grads(x, w, b, gy)
    for name, a, c, d in zip(("x", "weight", "bias"), ours, ref32, ref_low):
        assert_within_twice_torch(a, c, d, name)


def test_frozen_parameters_get_no_gradient_work():
    x, w, b = make(16)
    x.requires_grad_()
    layer_norm(x, w, b).sum().backward()
    assert x.grad is not None and w.grad is None and b.grad is None
    dx, dw, db = torch.ops.minilvlm.layer_norm_backward(torch.ones_like(x), x.detach(), w, EPS, False, True)
    assert dw.shape == (0,) and rel_err(db, torch.full((16,), 15.0)) <= 1e-6


def test_gradcheck_fp64_through_the_reference():
    x, w, b = (t.requires_grad_() for t in make(6, rows=(2, 3), dtype=torch.float64))
    assert torch.autograd.gradcheck(lambda *a: layer_norm(*a), (x, w, b))


def opcheck_both(ops):
    for bias in (True, False):
        x, w, b = (None if t is None else t.requires_grad_() for t in make(24, bias=bias))
        torch.library.opcheck(ops.layer_norm.default, (x, w, b, EPS))
    for flags in ((True, True), (False, True), (True, False)):
        torch.library.opcheck(ops.layer_norm_backward.default, (randn(3, 5, 24, seed=3), x.detach(), w.detach(), EPS,
                                                                *flags))


def test_opcheck():
    opcheck_both(torch.ops.minilvlm)


def test_emulated_cuda_kernels_opcheck(emu):
    register_on_emulator(register_layer_norm)
    opcheck_both(emu)


def test_fakes_shapes_and_mixed_devices():
    check_fakes(torch.ops.minilvlm.layer_norm,
                lambda d: [torch.empty(2, 3, 8, device=d), torch.empty(8, device=d), torch.empty(8, device=d), EPS],
                [[2, 3, 8]])
    check_fakes(torch.ops.minilvlm.layer_norm_backward,
                lambda d: [torch.empty(4, 8, device=d), torch.empty(4, 8, device=d), torch.empty(8, device=d), EPS,
                           True, False], [[4, 8], [8], [0]])


# ---------------------------------------------------------------------------------------
# bad input

BAD = [
    ("weight shape", lambda x, w, b: (x, w[:-1], b), r"weight must have shape \[16\]"),
    ("bias shape", lambda x, w, b: (x, w, b[:2]), r"bias must have shape \[16\]"),
    ("dtype", lambda x, w, b: (x.half(), w, b), r"weight is (torch\.float32|Float) but x is (torch\.float16|Half)"),
    ("float64", lambda x, w, b: (x.double(), w.double(), b.double()), r"x must be float32, bfloat16 or float16"),
]


@pytest.mark.parametrize("name,mutate,message", BAD, ids=[b[0] for b in BAD])
def test_native_op_rejects_bad_input(name, mutate, message):
    with pytest.raises(RuntimeError, match=message):
        torch.ops.minilvlm.layer_norm(*mutate(*make(16)), EPS)


def test_public_function_rejects_bad_input_before_dispatch():
    x, w, b = make(16)
    with pytest.raises(ValueError, match=r"bias must have shape \[16\]"):
        layer_norm(x, w, b[1:])
    with pytest.raises(ValueError, match=r"last dimension of at least 1"):
        layer_norm(x[..., :0], w[:0])
    with pytest.raises(RuntimeError, match="grad_y must have the shape of x"):
        torch.ops.minilvlm.layer_norm_backward(x[0], x, w, EPS, True, True)


# ---------------------------------------------------------------------------------------
# the CUDA kernels under the emulator; the baseline CPU path

EMU_CASES = [(1, torch.float32), (7, torch.float32), (256, torch.float32), (1025, torch.bfloat16),
             (64, torch.bfloat16), (40, torch.float16), (6000, torch.float32)]  # 6000: accumulators in global memory


@pytest.mark.parametrize("dim,dtype", EMU_CASES, ids=case_ids(EMU_CASES))
@pytest.mark.parametrize("seed", [0, 7])
def test_emulated_cuda_kernels_match_reference(emu, dim, dtype, seed):
    rows = (2, 3) if dim < 2000 else (5,)
    with scheduling_seed(emu, seed):
        for bias in (True, False):
            x, w, b = make(dim, rows=rows, dtype=dtype, bias=bias)
            ref32 = layer_norm_reference(*(None if t is None else t.float() for t in (x, w, b)), EPS)
            assert_matches(emu.layer_norm(x, w, b, EPS), ref32, layer_norm_reference(x, w, b, EPS))
            gy = randn(*x.shape, dtype=dtype, seed=5)
            for flags in ((True, True), (True, False), (False, True)):
                assert_matches_native_cpu(emu.layer_norm_backward(gy, x, w, EPS, *flags),
                                          torch.ops.minilvlm.layer_norm_backward(gy, x, w, EPS, *flags))


def test_emulated_cuda_errors(emu):
    x, w, b = make(16)
    with pytest.raises(RuntimeError, match=r"bias must have shape \[16\]"):
        emu.layer_norm(x, w, b[:3], EPS)


def check_cpu_kernels():
    """Forward and gradients on whichever CPU path runs (the subprocess below forces the baseline)."""
    for dim, dtype in ((7, torch.float32), (1025, torch.float32), (97, torch.bfloat16)):
        x, w, b = make(dim, dtype=dtype)
        gy = randn(*x.shape, dtype=dtype, seed=5)
        ref32 = layer_norm_reference(x.float(), w.float(), b.float(), EPS)
        assert_matches(torch.ops.minilvlm.layer_norm(x, w, b, EPS), ref32, layer_norm_reference(x, w, b, EPS))
        ours = grads_of(lambda a, c, d: layer_norm(a, c, d, EPS), (x, w, b), (gy,))
        for a, c, d in zip(ours, reference_grads(x, w, b, gy, torch.float32), reference_grads(x, w, b, gy)):
            assert_matches(a, c, d)


def test_every_cpu_path_matches_reference():
    check_cpu_kernels()
    run_on_default_path("tests.ops.test_layer_norm_op", "check_cpu_kernels")
