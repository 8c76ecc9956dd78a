"""fused_adamw_: the CPU kernel and the emulated CUDA kernel against the plain-PyTorch reference."""
import os
import subprocess
import sys

import pytest
import torch

import minilvlm
from minilvlm.ops import fused_adamw_reference
from minilvlm.ops.fused_adamw import register_fused_adamw
from tests.conftest import adamw_mismatch, max_rel_diff
from tests.ops import register_on_emulator

pytestmark = pytest.mark.skipif(not minilvlm.ops.native_available(), reason="minilvlm._C is not built")

BETAS = (0.9, 0.999)


def make_buffers(n, dtype, master, seed=0, device="cpu"):
    """Flat buffers of n elements (made on the CPU, the same values everywhere, then moved to `device`)."""
    g = torch.Generator().manual_seed(seed)
    weights = torch.randn(n, generator=g)
    param = weights.to(dtype)
    bufs = dict(
        param=param,
        grad=torch.randn(n, generator=g).to(dtype),
        exp_avg=torch.randn(n, generator=g) * 0.1,
        exp_avg_sq=torch.rand(n, generator=g) * 0.01,
        master=param.float() if master else None,
    )
    return {k: (None if v is None else v.to(device)) for k, v in bufs.items()}


def clone(bufs):
    return {k: (None if v is None else v.clone()) for k, v in bufs.items()}


def segments_for(n):
    """Three segments with distinct hyperparameters, unaligned starts and a gap left untouched."""
    a, b, c = 3, max(3, n // 3), max(3, (2 * n) // 3 + 1)
    bounds = [a, b, b, c, min(c + 2, n), n]
    return bounds, [1e-3, 3e-2, 5e-3], [0.01, 0.0, 0.2], [1, 7, 150]


def call(op, bufs, bounds, lrs, wds, steps, grad_scale=None, betas=BETAS, eps=1e-8, found_inf=None):
    op(bufs["param"], bufs["grad"], bufs["exp_avg"], bufs["exp_avg_sq"], bufs["master"], bounds, lrs, wds, steps,
       betas[0], betas[1], eps, grad_scale, found_inf)


def kernels(emu_ops=None):
    out = [("cpu", torch.ops.minilvlm.fused_adamw_)]
    if emu_ops is not None:
        out.append(("emu", emu_ops.fused_adamw_))
    return out


def check_against_reference(op, n, dtype, master, grad_scale, betas=BETAS, device="cpu"):
    bufs = make_buffers(n, dtype, master, device=device)
    ref = clone(bufs)
    # The same update in fp64, from the weights the kernel updates (the master copy if there is one).
    exact = {k: (None if v is None else v.double()) for k, v in clone(bufs).items()}
    exact["param"], exact["master"] = (bufs["master"] if master else bufs["param"]).double(), None
    bounds, lrs, wds, steps = segments_for(n)
    scale = None if grad_scale is None else torch.tensor([grad_scale], device=device)
    for _ in range(3):
        call(op, bufs, bounds, lrs, wds, steps, scale, betas)
        call(fused_adamw_reference, ref, bounds, lrs, wds, steps, scale, betas)
        call(fused_adamw_reference, exact, bounds, lrs, wds, steps, scale, betas)
    exact["master"] = exact["param"]
    for key in ("exp_avg", "exp_avg_sq") + (("master",) if master else ()):
        assert adamw_mismatch(bufs[key], ref[key], exact[key]) <= 1e-6, key
    if master:
        assert torch.equal(bufs["param"], bufs["master"].to(dtype))
    elif dtype == torch.float32:
        assert adamw_mismatch(bufs["param"], ref["param"], exact["param"]) <= 1e-6
    else:
        assert max_rel_diff(bufs["param"].float(), ref["param"].float()) <= 1e-2
    untouched = make_buffers(n, dtype, master, device=device)
    gap = slice(0, 3)
    assert torch.equal(bufs["param"][gap], untouched["param"][gap]), "bytes outside the segments changed"


@pytest.mark.parametrize("n", [5, 17, 63, 1025, 4099])
@pytest.mark.parametrize("dtype,master", [(torch.float32, False), (torch.bfloat16, True), (torch.float16, True),
                                          (torch.bfloat16, False)])
@pytest.mark.parametrize("grad_scale", [None, 0.37])
def test_cpu_kernel_matches_reference(n, dtype, master, grad_scale):
    check_against_reference(torch.ops.minilvlm.fused_adamw_, n, dtype, master, grad_scale)


@pytest.mark.parametrize("n", [5, 1025, 3001])
@pytest.mark.parametrize("dtype,master", [(torch.float32, False), (torch.bfloat16, True), (torch.float16, True),
                                          (torch.bfloat16, False)])
def test_emulated_cuda_kernel_matches_reference(emu, n, dtype, master):
    check_against_reference(emu.fused_adamw_, n, dtype, master, 0.5)


@pytest.mark.parametrize("which", ["cpu", "emu"])
def test_large_beta1_uses_the_other_lerp_branch(which, request):
    op = torch.ops.minilvlm.fused_adamw_ if which == "cpu" else request.getfixturevalue("emu").fused_adamw_
    check_against_reference(op, 300, torch.float32, False, None, betas=(0.3, 0.99))


def test_emulated_kernel_unaligned_buffers(emu):
    """Buffers whose base is not 16-byte aligned take the kernel's scalar path."""
    n = 2000
    bufs = make_buffers(n + 1, torch.float32, False)
    shifted = {k: (v[1:] if v is not None else None) for k, v in bufs.items()}
    ref = clone(shifted)
    bounds, lrs, wds, steps = segments_for(n)
    call(emu.fused_adamw_, shifted, bounds, lrs, wds, steps)
    call(fused_adamw_reference, ref, bounds, lrs, wds, steps)
    assert max_rel_diff(shifted["param"], ref["param"]) <= 1e-6


def test_many_segments_cover_several_launches(emu):
    """More segments than one CUDA launch carries (32) still update every segment."""
    n = 40 * 37
    bufs = make_buffers(n, torch.float32, False)
    ref = clone(bufs)
    bounds = [x for i in range(40) for x in (i * 37 + 1, i * 37 + 30)]
    lrs, wds, steps = [1e-3 * (i + 1) for i in range(40)], [0.01] * 40, [i + 1 for i in range(40)]
    for op, b in ((emu.fused_adamw_, bufs), (fused_adamw_reference, ref)):
        call(op, b, bounds, lrs, wds, steps)
    assert max_rel_diff(bufs["param"], ref["param"]) <= 1e-6


def test_float64_runs_the_reference_through_the_public_function():
    bufs = make_buffers(100, torch.float64, False)
    bufs["exp_avg"], bufs["exp_avg_sq"] = bufs["exp_avg"].double(), bufs["exp_avg_sq"].double()
    ref = clone(bufs)
    call(minilvlm.ops.fused_adamw_, bufs, [0, 100], [1e-2], [0.1], [1])
    call(fused_adamw_reference, ref, [0, 100], [1e-2], [0.1], [1])
    assert torch.equal(bufs["param"], ref["param"])


def opcheck(op):
    bufs = make_buffers(257, torch.bfloat16, True)
    bounds, lrs, wds, steps = segments_for(257)
    opcheck_with_flags(op, (bufs["param"], bufs["grad"], bufs["exp_avg"], bufs["exp_avg_sq"], bufs["master"], bounds,
                            lrs, wds, steps, 0.9, 0.999, 1e-8, torch.tensor([0.5])))


def opcheck_with_flags(op, args):
    """opcheck of `op` on `args` (all but found_inf) without found_inf, with a zero and with a raised flag."""
    for flag in (None, torch.zeros(1), torch.ones(1)):
        torch.library.opcheck(op.default, args + (flag,),
                              test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


def test_opcheck():
    opcheck(torch.ops.minilvlm.fused_adamw_)


def test_emulated_cuda_kernel_opcheck(emu):
    register_on_emulator(register_fused_adamw)
    opcheck(emu.fused_adamw_)


# ---------------------------------------------------------------------------------------
# found_inf: the step skipped inside the kernel

def same_bits(a, b):
    """Bit-for-bit equality (NaN included): the buffers of a skipped step were not written to."""
    as_int = {4: torch.int32, 2: torch.int16}[a.element_size()]
    return torch.equal(a.view(as_int), b.view(as_int))


def op_named(which, request):
    return {"cpu": lambda: torch.ops.minilvlm.fused_adamw_, "emu": lambda: request.getfixturevalue("emu").fused_adamw_,
            "reference": lambda: fused_adamw_reference}[which]()


@pytest.mark.parametrize("which", ["cpu", "emu", "reference"])
@pytest.mark.parametrize("dtype,master", [(torch.float32, False), (torch.bfloat16, True), (torch.float16, True),
                                          (torch.float16, False)])
@pytest.mark.parametrize("flag", [1.0, float("nan"), float("inf")])
def test_found_inf_skips_the_step_and_leaves_every_buffer(which, dtype, master, flag, request):
    check_skip(op_named(which, request), dtype, master, flag)


def check_skip(op, dtype, master, flag, n=1025, device="cpu"):
    """A step with inf and NaN grads and a raised found_inf writes no bit of any buffer."""
    bufs = make_buffers(n, dtype, master, device=device)
    bufs["grad"][n // 10] = float("inf")
    bufs["grad"][n - 100] = float("nan")
    before = clone(bufs)
    bounds, lrs, wds, steps = segments_for(n)
    call(op, bufs, bounds, lrs, wds, steps, torch.tensor([0.25], device=device),
         found_inf=torch.tensor([flag], device=device))
    for key, value in bufs.items():
        if value is not None:
            assert same_bits(value, before[key]), key


@pytest.mark.parametrize("which", ["cpu", "emu", "reference"])
@pytest.mark.parametrize("dtype,master", [(torch.float32, False), (torch.float16, True)])
def test_zero_found_inf_is_a_normal_step(which, dtype, master, request):
    op = op_named(which, request)
    flagged, plain = make_buffers(1025, dtype, master), make_buffers(1025, dtype, master)
    bounds, lrs, wds, steps = segments_for(1025)
    call(op, flagged, bounds, lrs, wds, steps, torch.tensor([0.25]), found_inf=torch.zeros(1))
    call(op, plain, bounds, lrs, wds, steps, torch.tensor([0.25]))
    assert not torch.equal(flagged["param"], make_buffers(1025, dtype, master)["param"])
    for key, value in flagged.items():
        if value is not None:
            assert torch.equal(value, plain[key]), key


@pytest.mark.parametrize("flag,message", [
    (torch.zeros(1, dtype=torch.float64), "found_inf must be a 1-element float32 tensor, got Double"),
    (torch.zeros(2), r"found_inf must be a 1-element float32 tensor, got Float of shape \[2\]"),
])
def test_bad_found_inf_raises_a_clear_error(flag, message, emu):
    for op in (torch.ops.minilvlm.fused_adamw_, emu.fused_adamw_):
        bufs = make_buffers(100, torch.float32, False)
        with pytest.raises(RuntimeError, match=message):
            call(op, bufs, [0, 100], [1e-3], [0.0], [1], found_inf=flag)


@pytest.mark.parametrize("mutate,message", [
    (lambda b: b.update(grad=b["grad"].double()), "grad is Double"),
    (lambda b: b.update(exp_avg=b["exp_avg"][:-1]), "exp_avg has 99 elements"),
    (lambda b: b.update(exp_avg_sq=b["exp_avg_sq"].half()), "must be float32"),
    (lambda b: b.update(param=b["param"].view(10, 10), grad=b["grad"].view(10, 10)), "contiguous 1-D"),
    (lambda b: b.update(master=torch.zeros(100)), "master weights are for bfloat16/float16"),
])
def test_bad_buffers_raise_clear_errors(mutate, message):
    bufs = make_buffers(100, torch.float32, False)
    mutate(bufs)
    with pytest.raises(RuntimeError, match=message):
        call(torch.ops.minilvlm.fused_adamw_, bufs, [0, 100], [1e-3], [0.0], [1])


@pytest.mark.parametrize("bounds,steps,message", [
    ([0, 200], [1], r"segment 0 is \[0, 200\)"),
    ([50, 100, 0, 40], [1, 1], "sorted, disjoint"),
    ([0, 100], [0], "steps count from 1"),
    ([0, 100, 100], [1], "need 2 bounds"),
])
def test_bad_segments_raise_clear_errors(bounds, steps, message):
    bufs = make_buffers(100, torch.float32, False)
    lrs = [1e-3] * len(steps)
    with pytest.raises(RuntimeError, match=message):
        call(torch.ops.minilvlm.fused_adamw_, bufs, bounds, lrs, [0.0] * len(steps), steps)


def run_python(code, **env):
    full_env = dict(os.environ, **env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env,
                          cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


@pytest.mark.parametrize("capability", ["avx2", "default"])
def test_every_cpu_path_matches_reference(capability):
    """Each SIMD path the runtime dispatch can choose (forced here) gives the same numbers."""
    code = (
        "import torch, minilvlm\n"
        "from tests.ops.test_fused_adamw_op import check_against_reference\n"
        f"assert minilvlm.ops.cpu_capability() == '{capability}', minilvlm.ops.cpu_capability()\n"
        "for dtype, master in ((torch.float32, False), (torch.bfloat16, True), (torch.float16, True)):\n"
        "    check_against_reference(torch.ops.minilvlm.fused_adamw_, 1001, dtype, master, 0.5)\n"
        "print('ok')\n")
    result = run_python(code, MINILVLM_CPU_CAPABILITY=capability)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr


def test_backend_switch_and_missing_extension():
    result = run_python("import minilvlm; print(minilvlm.ops.backend())", MINILVLM_BACKEND="reference")
    assert result.stdout.strip() == "reference", result.stderr
    result = run_python("import minilvlm", MINILVLM_BACKEND="fast")
    assert result.returncode != 0 and "MINILVLM_BACKEND='fast'" in result.stderr
    missing = ("import sys, warnings; sys.modules['minilvlm._C'] = None\n"
               "with warnings.catch_warnings(record=True) as w:\n"
               "    warnings.simplefilter('always')\n"
               "    import minilvlm, minilvlm.ops, minilvlm.optim\n"
               "print(minilvlm.ops.backend(), sum('native kernels unavailable' in str(x.message) for x in w))\n")
    result = run_python(missing, MINILVLM_BACKEND="")
    assert result.stdout.split() == ["reference", "1"], result.stdout + result.stderr
    result = run_python("import sys; sys.modules['minilvlm._C'] = None\nimport minilvlm", MINILVLM_BACKEND="native")
    assert result.returncode != 0 and "MINILVLM_BACKEND=native but minilvlm._C failed to import" in result.stderr


# ---------------------------------------------------------------------------------------
# Sizes the emulator's small grid hides (docs/emulator.md, "GPU-sized grids"): a segment of more
# than 70,000 elements makes each of the emulator's 4 blocks loop 17 times, and the grid an A100 or
# H100 gets (SMs x kAdamwBlocksPerSm blocks) with a segment longer than that grid covers in one pass.

def check_long_segment(op, n, dtype, master, steps=1):
    """One segment of n - 5 elements (unaligned start) against the reference, all buffers compared."""
    bufs = make_buffers(n, dtype, master)
    ref = clone(bufs)
    exact = {k: (None if v is None else v.double()) for k, v in clone(bufs).items()}
    exact["param"], exact["master"] = (bufs["master"] if master else bufs["param"]).double(), None
    bounds, lrs, wds, step = [3, n - 2], [1e-2], [0.1], [5]
    for _ in range(steps):
        call(op, bufs, bounds, lrs, wds, step, torch.tensor([0.5]))
        call(fused_adamw_reference, ref, bounds, lrs, wds, step, torch.tensor([0.5]))
        call(fused_adamw_reference, exact, bounds, lrs, wds, step, torch.tensor([0.5]))
    exact["master"] = exact["param"]
    for key in ("exp_avg", "exp_avg_sq") + (("master",) if master else ("param",)):
        assert adamw_mismatch(bufs[key], ref[key], exact[key]) <= 1e-6, key
    untouched = make_buffers(n, dtype, master)
    for part in (slice(0, 3), slice(n - 2, n)):
        assert torch.equal(bufs["param"][part], untouched["param"][part]), "bytes outside the segment changed"


@pytest.mark.parametrize("dtype,master", [(torch.float32, False), (torch.bfloat16, True)])
def test_emulated_kernel_segment_over_70000_elements(emu, dtype, master):
    check_long_segment(emu.fused_adamw_, 70_011, dtype, master, steps=2)


@pytest.mark.parametrize("gpu", ["A100", "H100"])
def test_emulated_kernel_on_the_gpu_grid(emu, gpu):
    sms = emu.gpu_profile(gpu)[0]
    emu.set_gpu(gpu)
    emu.clear_recent_launches()
    n = sms * 4 * 256 * 4 + 4099  # past one pass of the GPU's grid: every block loops
    check_long_segment(emu.fused_adamw_, n, torch.float32, False)
    launch = emu.recent_launches()[-1]
    assert "fused_adamw_kernel<float, false, true>" in launch and f"grid=({sms * 4},1,1) block=(256,1,1)" in launch
