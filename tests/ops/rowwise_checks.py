"""Checks shared by the tests of the row and elementwise ops (rms_norm, layer_norm, swiglu, gelu):
the error measure, the low-precision rule of docs/design.md ("Numerics"), the baseline SIMD path in a
subprocess, and the fake kernels on meta and fake CUDA tensors."""
import contextlib
import os
import subprocess
import sys

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LOW_PRECISION = (torch.bfloat16, torch.float16)
# Last dimensions: one element, odd sizes (masked vector tails, one-element CUDA packs) and widths
# that fill whole 16-lane vectors and 16-byte packs.
ODD_DIMS = (1, 7, 97, 1025)


def rel_err(actual, expected):
    """max |actual - expected| relative to max |expected| (elementwise relative error would blow up
    at outputs that happen to be near zero)."""
    actual, expected = actual.double(), expected.double()
    return ((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-30)).item()


def assert_within_twice_torch(ours, ref32, ref_low, what=""):
    """The flash-attention rule: ours (low precision) is at most twice as far from the fp32 reference
    as the reference computed in the same low precision."""
    assert ours.dtype == ref_low.dtype, (what, ours.dtype, ref_low.dtype)
    mine, theirs = rel_err(ours, ref32), rel_err(ref_low, ref32)
    assert mine <= 2 * theirs + 1e-6, (what, mine, theirs)


def assert_fp32_matches(ours, ref32, ref64, what=""):
    """fp32 within 1e-5 (relative to the largest element) of the fp32 reference, or, where the
    reference itself is that far off (an ill-conditioned gradient: a norm over one element cancels
    to rounding noise), at most twice the fp32 reference's own error against the fp64 one."""
    if rel_err(ours, ref32) <= 1e-5:
        return
    mine, theirs = rel_err(ours, ref64), rel_err(ref32, ref64)
    assert mine <= 2 * theirs, (what, rel_err(ours, ref32), mine, theirs)


def assert_matches(ours, ref32, ref_low, what=""):
    """fp32: within 1e-5 of the fp32 reference; bf16/fp16: the rule of assert_within_twice_torch."""
    if ours.dtype == torch.float32:
        assert rel_err(ours, ref32) <= 1e-5, what
    else:
        assert_within_twice_torch(ours, ref32, ref_low, what)


def assert_matches_native_cpu(emulated, cpu):
    """The emulated CUDA kernels' outputs against the CPU kernel's (already checked against the
    reference): 1e-5 in fp32, two units of the last place in bf16/fp16 (their sums run in other orders)."""
    for a, c in zip(emulated, cpu):
        tolerance = 1e-5 if c.dtype == torch.float32 else 2.0 ** -7
        assert a.shape == c.shape and (c.numel() == 0 or rel_err(a, c) <= tolerance)


@contextlib.contextmanager
def scheduling_seed(emu, seed):
    """The emulator's fiber scheduling shuffled by `seed` (0: thread order) inside the block."""
    emu.set_seed(seed)
    try:
        yield
    finally:
        emu.set_seed(0)


def case_ids(cases):
    return [f"{size}-{str(dtype).replace('torch.', '')}" for size, dtype in cases]


def randn(*shape, dtype=torch.float32, seed=0, scale=1.0, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale + shift).to(dtype)


def leaves(*tensors):
    """Fresh leaf copies that require grad (None kept)."""
    return [None if t is None else t.detach().clone().requires_grad_() for t in tensors]


def grads_of(fn, inputs, grad_outputs):
    """The gradients of fn(*inputs) (a tensor or a tuple) for grad_outputs, as fresh leaves."""
    xs = leaves(*inputs)
    outs = fn(*xs)
    outs = outs if isinstance(outs, tuple) else (outs,)
    pairs = [(o, g) for o, g in zip(outs, grad_outputs) if g is not None]
    torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])
    return [None if x is None else x.grad for x in xs]


def run_on_default_path(module, function):
    """Calls module.function() in a subprocess whose CPU kernels take the baseline (non-AVX-512) path."""
    code = (f"import minilvlm\nassert minilvlm.ops.cpu_capability() == 'default'\nfrom {module} import {function}\n"
            f"{function}()\nprint('ok')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                            env=dict(os.environ, MINILVLM_CPU_CAPABILITY="default"))
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr


def check_fakes(op, make_args, expected_shapes):
    """op's fake on meta tensors and on fake CUDA tensors gives the real outputs' shapes and dtypes, and
    raises when one CUDA input is replaced by a CPU tensor (make_args(device) -> a list of args; the
    tensors among them are mixed one at a time, when there are two or more)."""
    outs = op(*make_args("meta"))
    outs = outs if isinstance(outs, tuple) else (outs,)
    assert [list(o.shape) for o in outs] == expected_shapes and all(o.device.type == "meta" for o in outs)
    with FakeTensorMode(allow_non_fake_inputs=False):
        args = make_args("cuda")
        outs = op(*args)
        outs = outs if isinstance(outs, tuple) else (outs,)
        assert [list(o.shape) for o in outs] == expected_shapes
        assert all(o.device.type == "cuda" for o in outs)
        tensor_positions = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor)]
        for i in tensor_positions if len(tensor_positions) > 1 else ():
            mixed = list(args)
            mixed[i] = torch.empty(args[i].shape, dtype=args[i].dtype, device="cpu")
            with pytest.raises(RuntimeError, match=r"is on cpu but .* is on cuda|is on cuda:0 but .* is on cpu"):
                op(*mixed)
