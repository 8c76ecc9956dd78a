"""gelu (erf, tanh and quick forms): the CPU kernel and the emulated CUDA kernels against the reference."""
import pytest
import torch

import minilvlm
from minilvlm.ops import gelu, gelu_reference
from minilvlm.ops.gelu import register_gelu
from tests.ops import register_on_emulator
from tests.ops.rowwise_checks import (LOW_PRECISION, ODD_DIMS, assert_matches, assert_within_twice_torch, case_ids,
                                      check_fakes, grads_of, randn, rel_err, run_on_default_path, scheduling_seed)

pytestmark = pytest.mark.skipif(not minilvlm.ops.native_available(), reason="minilvlm._C is not built")
FORMS = ("none", "tanh", "quick")


def make(dim, rows=(3, 5), dtype=torch.float32, seed=0):
    """x over [-8, 8] and beyond: both tails, the bend near 0."""
    return randn(*rows, dim, dtype=dtype, seed=seed, scale=3.0)


def reference_grad(x, grad, approximate, dtype=None):
    return grads_of(lambda x_: gelu_reference(x_, approximate), (x.to(dtype or x.dtype),),
                    (grad.to(dtype or grad.dtype),))[0]


@pytest.mark.parametrize("approximate", FORMS)
@pytest.mark.parametrize("dim", ODD_DIMS + (1024, 11008))
def test_cpu_forward_and_backward_match_reference_fp32(approximate, dim):
    x = make(dim, rows=(2, 3) if dim > 2000 else (3, 5))
    y = torch.ops.minilvlm.gelu(x, approximate)
    assert y.shape == x.shape and rel_err(y, gelu_reference(x, approximate)) <= 1e-5
    grad = randn(*x.shape, seed=5)
    ours = grads_of(lambda x_: gelu(x_, approximate), (x,), (grad,))[0]
    assert rel_err(ours, reference_grad(x, grad, approximate)) <= 1e-5


@pytest.mark.parametrize("approximate", FORMS)
def test_cpu_fp32_elementwise_accuracy_over_a_grid(approximate):
    """Every element, not only the largest, against the float64 function: the forward within a few
    float32 ulps (an absolute floor of 1e-6 in the far tails), the slope within 1e-4 of max(|slope|,
    1e-3) (where the slope crosses zero its terms cancel in any float32 formula), and neither worse
    than PyTorch's own float32 kernels."""
    x = torch.linspace(-12, 12, 20001)
    exact, exact_slope = gelu_reference(x.double(), approximate), reference_grad(x.double(), x.double() ** 0, approximate)

    def errors(fn):
        value_err = ((fn(x, approximate).double() - exact).abs() / exact.abs().clamp_min(1e-6)).max().item()
        slope = grads_of(lambda x_: fn(x_, approximate), (x,), (torch.ones_like(x),))[0].double()
        return value_err, ((slope - exact_slope).abs() / exact_slope.abs().clamp_min(1e-3)).max().item()

    (value_err, slope_err), (torch_value_err, torch_slope_err) = errors(gelu), errors(gelu_reference)
    assert value_err <= 4e-6 and slope_err <= 1e-4, (value_err, slope_err)
    assert value_err <= max(torch_value_err, 1e-6) and slope_err <= max(torch_slope_err, 1e-6)


@pytest.mark.parametrize("dtype", LOW_PRECISION)
@pytest.mark.parametrize("approximate", FORMS)
def test_cpu_low_precision_within_twice_torch(dtype, approximate):
    x = make(1031, rows=(4,), dtype=dtype)
    assert_within_twice_torch(torch.ops.minilvlm.gelu(x, approximate), gelu_reference(x.float(), approximate),
                              gelu_reference(x, approximate))
    grad = randn(4, 1031, dtype=dtype, seed=5)
    ours = grads_of(lambda x_: gelu(x_, approximate), (x,), (grad,))[0]
    assert_within_twice_torch(ours, reference_grad(x, grad, approximate, torch.float32),
                              reference_grad(x, grad, approximate))


def test_public_function_float64_non_contiguous_and_autocast():
    x = make(20, dtype=torch.float64)
    for form in FORMS:
        assert rel_err(gelu(x, form), gelu_reference(x, form)) <= 1e-12
        xt = x.float().transpose(0, 1)
        assert rel_err(gelu(xt, form), gelu_reference(xt, form)) <= 1e-5
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert gelu(x.float()).dtype == torch.float32 and gelu(x.bfloat16(), "tanh").dtype == torch.bfloat16


@pytest.mark.parametrize("approximate", FORMS)
def test_gradcheck_fp64_through_the_reference(approximate):
    x = make(5, rows=(2, 3), dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda x_: gelu(x_, approximate), (x,))


def opcheck_both(ops):
    for form in FORMS:
        x = make(24).requires_grad_()
        torch.library.opcheck(ops.gelu.default, (x, form))
        torch.library.opcheck(ops.gelu_backward.default, (randn(3, 5, 24, seed=3), x.detach(), form))


def test_opcheck():
    opcheck_both(torch.ops.minilvlm)


def test_emulated_cuda_kernels_opcheck(emu):
    register_on_emulator(register_gelu)
    opcheck_both(emu)


def test_fakes_shapes_and_mixed_devices():
    check_fakes(torch.ops.minilvlm.gelu, lambda d: [torch.empty(2, 3, 8, device=d), "tanh"], [[2, 3, 8]])
    check_fakes(torch.ops.minilvlm.gelu_backward, lambda d: [torch.empty(4, 8, device=d), torch.empty(4, 8, device=d),
                                                             "quick"], [[4, 8]])


def test_bad_input_raises_clear_errors():
    x = make(16)
    with pytest.raises(ValueError, match="approximate must be 'none', 'tanh' or 'quick', got 'exact'"):
        gelu(x, "exact")
    with pytest.raises(RuntimeError, match="approximate must be 'none', 'tanh' or 'quick', got 'exact'"):
        torch.ops.minilvlm.gelu(x, "exact")
    with pytest.raises(TypeError, match="x must be a floating-point tensor"):
        gelu(x.int())
    with pytest.raises(RuntimeError, match="x must be float32, bfloat16 or float16"):
        torch.ops.minilvlm.gelu(x.double(), "none")
    with pytest.raises(RuntimeError, match="grad must have the shape of x"):
        torch.ops.minilvlm.gelu_backward(x[0], x, "none")


EMU_CASES = [((3, 5, 7), torch.float32), ((2, 64), torch.bfloat16), ((1, 1), torch.float32),
             ((2, 3, 40), torch.float16), ((1000,), torch.float32)]


@pytest.mark.parametrize("shape,dtype", EMU_CASES, ids=case_ids(EMU_CASES))
@pytest.mark.parametrize("seed", [0, 7])
def test_emulated_cuda_kernels_match_reference(emu, shape, dtype, seed):
    x, grad = randn(*shape, dtype=dtype, scale=3.0), randn(*shape, dtype=dtype, seed=5)
    with scheduling_seed(emu, seed):
        for form in FORMS:
            assert_matches(emu.gelu(x, form), gelu_reference(x.float(), form), gelu_reference(x, form), form)
            assert_matches(emu.gelu_backward(grad, x, form), reference_grad(x, grad, form, torch.float32),
                           reference_grad(x, grad, form), form)


def check_cpu_kernels():
    """Forward and gradients on whichever CPU path runs (the subprocess below forces the baseline)."""
    for dim, dtype in ((7, torch.float32), (1025, torch.float32), (97, torch.bfloat16)):
        x, grad = make(dim, dtype=dtype), randn(3, 5, dim, dtype=dtype, seed=5)
        for form in FORMS:
            assert_matches(torch.ops.minilvlm.gelu(x, form), gelu_reference(x.float(), form), gelu_reference(x, form))
            ours = grads_of(lambda x_: gelu(x_, form), (x,), (grad,))[0]
            assert_matches(ours, reference_grad(x, grad, form, torch.float32), reference_grad(x, grad, form))


def test_every_cpu_path_matches_reference():
    check_cpu_kernels()
    run_on_default_path("tests.ops.test_gelu_op", "check_cpu_kernels")
