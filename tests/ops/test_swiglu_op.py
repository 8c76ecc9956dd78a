"""swiglu: the CPU kernel and the emulated CUDA kernels against the plain-PyTorch reference."""
import pytest
import torch

import minilvlm
from minilvlm.ops import swiglu, swiglu_reference
from minilvlm.ops.swiglu import register_swiglu
from tests.ops import register_on_emulator
from tests.ops.rowwise_checks import (LOW_PRECISION, ODD_DIMS, assert_matches, assert_matches_native_cpu,
                                      assert_within_twice_torch, case_ids, check_fakes, grads_of, randn, rel_err,
                                      run_on_default_path, scheduling_seed)

pytestmark = pytest.mark.skipif(not minilvlm.ops.native_available(), reason="minilvlm._C is not built")


def make(dim, rows=(3, 5), dtype=torch.float32, seed=0):
    """gate spread wide enough that sigmoid saturates at both ends; up around 0."""
    return randn(*rows, dim, dtype=dtype, seed=seed, scale=4.0), randn(*rows, dim, dtype=dtype, seed=seed + 1)


def reference_grads(gate, up, grad, dtype=None):
    cast = [t.to(dtype or t.dtype) for t in (gate, up, grad)]
    return grads_of(swiglu_reference, cast[:2], (cast[2],))


@pytest.mark.parametrize("dim", ODD_DIMS + (1408, 11008))
def test_cpu_forward_and_backward_match_reference_fp32(dim):
    gate, up = make(dim, rows=(2, 3) if dim > 2000 else (3, 5))
    y = torch.ops.minilvlm.swiglu(gate, up)
    assert y.shape == gate.shape and rel_err(y, swiglu_reference(gate, up)) <= 1e-5
    grad = randn(*gate.shape, seed=5)
    ours = grads_of(swiglu, (gate, up), (grad,))
    for name, a, b in zip(("gate", "up"), ours, reference_grads(gate, up, grad)):
        assert rel_err(a, b) <= 1e-5, name


@pytest.mark.parametrize("dtype", LOW_PRECISION)
@pytest.mark.parametrize("dim", (7, 1408, 11008))
def test_cpu_low_precision_within_twice_torch(dtype, dim):
    gate, up = make(dim, rows=(4,), dtype=dtype)
    assert_within_twice_torch(torch.ops.minilvlm.swiglu(gate, up), swiglu_reference(gate.float(), up.float()),
                              swiglu_reference(gate, up))
    grad = randn(4, dim, dtype=dtype, seed=5)
    ours = grads_of(swiglu, (gate, up), (grad,))
    for name, a, b, c in zip(("gate", "up"), ours, reference_grads(gate, up, grad, torch.float32),
                             reference_grads(gate, up, grad)):
        assert_within_twice_torch(a, b, c, name)


def test_public_function_float64_non_contiguous_promotion_and_autocast():
    gate, up = make(20, dtype=torch.float64)
    assert rel_err(swiglu(gate, up), swiglu_reference(gate, up)) <= 1e-12
    fused = randn(4, 2 * 33)  # the halves of one fused projection: strided views
    g, u = fused[:, :33], fused[:, 33:]
    assert rel_err(swiglu(g, u), swiglu_reference(g, u)) <= 1e-5
    assert swiglu(g.bfloat16(), u).dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert swiglu(g.bfloat16(), u.bfloat16()).dtype == torch.bfloat16


def test_gradcheck_fp64_through_the_reference():
    gate, up = (t.requires_grad_() for t in make(5, rows=(2, 3), dtype=torch.float64))
    assert torch.autograd.gradcheck(swiglu, (gate, up))


def test_frozen_up_gets_no_gradient():
    gate, up = make(9)
    gate.requires_grad_()
    swiglu(gate, up).sum().backward()
    assert gate.grad is not None and up.grad is None


def opcheck_both(ops):
    gate, up = (t.requires_grad_() for t in make(24))
    torch.library.opcheck(ops.swiglu.default, (gate, up))
    torch.library.opcheck(ops.swiglu_backward.default, (randn(3, 5, 24, seed=3), gate.detach(), up.detach()))


def test_opcheck():
    opcheck_both(torch.ops.minilvlm)


def test_emulated_cuda_kernels_opcheck(emu):
    register_on_emulator(register_swiglu)
    opcheck_both(emu)


def test_fakes_shapes_and_mixed_devices():
    check_fakes(torch.ops.minilvlm.swiglu, lambda d: [torch.empty(2, 3, 8, device=d), torch.empty(2, 3, 8, device=d)],
                [[2, 3, 8]])
    check_fakes(torch.ops.minilvlm.swiglu_backward, lambda d: [torch.empty(4, 8, device=d) for _ in range(3)],
                [[4, 8], [4, 8]])


def test_bad_input_raises_clear_errors():
    gate, up = make(16)
    with pytest.raises(ValueError, match=r"up must have the shape of gate \[3, 5, 16\]"):
        swiglu(gate, up[0])
    with pytest.raises(TypeError, match="gate must be a floating-point tensor"):
        swiglu(gate.long(), up)
    with pytest.raises(RuntimeError, match=r"up must have the shape of gate \[3, 5, 16\]"):
        torch.ops.minilvlm.swiglu(gate, up[0])
    with pytest.raises(RuntimeError, match=r"up is (torch\.bfloat16|BFloat16) but gate is"):
        torch.ops.minilvlm.swiglu(gate, up.bfloat16())
    with pytest.raises(RuntimeError, match="gate must be float32, bfloat16 or float16"):
        torch.ops.minilvlm.swiglu(gate.double(), up.double())
    with pytest.raises(RuntimeError, match="grad must have the shape of gate"):
        torch.ops.minilvlm.swiglu_backward(gate[0], gate, up)


# The emulated kernels: packed and one-element paths, tails of every length below a pack.
EMU_CASES = [((3, 5, 7), torch.float32), ((2, 64), torch.float32), ((4, 33), torch.bfloat16),
             ((1, 1), torch.float32), ((2, 3, 40), torch.float16), ((1000,), torch.float32)]


@pytest.mark.parametrize("shape,dtype", EMU_CASES, ids=case_ids(EMU_CASES))
@pytest.mark.parametrize("seed", [0, 7])
def test_emulated_cuda_kernels_match_reference(emu, shape, dtype, seed):
    gate, up, grad = (randn(*shape, dtype=dtype, seed=i, scale=4.0 if i == 0 else 1.0) for i in range(3))
    unaligned = randn(shape[-1] * 3 + 1, dtype=dtype)[1:]  # data off a 16-byte boundary: one element per access
    with scheduling_seed(emu, seed):
        assert_matches(emu.swiglu(gate, up), swiglu_reference(gate.float(), up.float()), swiglu_reference(gate, up))
        assert_matches_native_cpu(emu.swiglu_backward(grad, gate, up), torch.ops.minilvlm.swiglu_backward(grad, gate, up))
        assert_matches(emu.swiglu(unaligned, unaligned), swiglu_reference(unaligned.float(), unaligned.float()),
                       swiglu_reference(unaligned, unaligned))


def check_cpu_kernels():
    """Forward and gradients on whichever CPU path runs (the subprocess below forces the baseline)."""
    for dim, dtype in ((7, torch.float32), (1025, torch.float32), (97, torch.bfloat16)):
        gate, up = make(dim, dtype=dtype)
        grad = randn(*gate.shape, dtype=dtype, seed=5)
        assert_matches(torch.ops.minilvlm.swiglu(gate, up), swiglu_reference(gate.float(), up.float()),
                       swiglu_reference(gate, up))
        ours = grads_of(swiglu, (gate, up), (grad,))
        for a, b, c in zip(ours, reference_grads(gate, up, grad, torch.float32), reference_grads(gate, up, grad)):
            assert_matches(a, b, c)


def test_every_cpu_path_matches_reference():
    check_cpu_kernels()
    run_on_default_path("tests.ops.test_swiglu_op", "check_cpu_kernels")
