"""fused_adamw_multi_ (the multi-tensor entry of fused_adamw): the CPU kernel and the emulated CUDA kernel
against torch.optim.AdamW and the plain-PyTorch reference. Beside tests/ops/test_fused_adamw_op.py (the flat
entry), whose buffers and helpers it reuses; the two would not fit one file of 400 lines.

The emulator runs the fibers of 256-thread blocks one after another, so its comparison with torch.optim.AdamW
takes EMU_TENSORS tensors (not 1,000) of the same random sizes 1..70,000: still several launches, with tables
that carry a tensor over to the next launch and tensors of two 65536-element chunks."""
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import minilvlm
from minilvlm.ops.fused_adamw import fused_adamw_multi_reference, register_fused_adamw
from tests.conftest import adamw_mismatch, max_rel_diff
from tests.ops import register_on_emulator
from tests.ops.dispatch_log import DispatchLog
from tests.ops.test_fused_adamw_op import BETAS, make_buffers, opcheck_with_flags, run_python, same_bits

pytestmark = pytest.mark.skipif(not minilvlm.ops.native_available(), reason="minilvlm._C is not built")

EMU_TENSORS = 300
ODD_SIZES = [0, 1, 2, 3, 5, 15, 16, 17, 63, 1025, 4099, 65535, 65536, 65537, 131075]
# fused_adamw_multi_: lists of tensors

def make_lists(sizes, dtype, master, seed=0, device="cpu"):
    """One tensor per size (odd shapes: sizes divisible by 3 become [3, n/3]), as make_buffers makes them."""
    lists = dict(params=[], grads=[], exp_avgs=[], exp_avg_sqs=[], masters=[])
    for i, n in enumerate(sizes):
        bufs = make_buffers(n, dtype, master, seed=seed + i, device=device)
        shape = (3, n // 3) if n % 3 == 0 else (n,)
        for key, name in (("param", "params"), ("grad", "grads"), ("exp_avg", "exp_avgs"),
                          ("exp_avg_sq", "exp_avg_sqs"), ("master", "masters")):
            if bufs[key] is not None:
                lists[name].append(bufs[key].view(shape))
    return lists


def clone_lists(lists, dtype=None):
    return {k: [t.clone() if dtype is None else t.to(dtype) for t in v] for k, v in lists.items()}


def hyper(count):
    """Per-tensor lr, weight decay and step, all different from their neighbours'."""
    return ([1e-3 * (1 + i % 5) for i in range(count)], [0.1 * (i % 3) for i in range(count)],
            [1 + (i * 7) % 150 for i in range(count)])


def call_multi(op, lists, lrs, wds, steps, grad_scale=None, found_inf=None, betas=BETAS):
    op(lists["params"], lists["grads"], lists["exp_avgs"], lists["exp_avg_sqs"], lists["masters"], lrs, wds, steps,
       betas[0], betas[1], 1e-8, grad_scale, found_inf)


def random_sizes(count, largest, seed):
    return torch.randint(1, largest + 1, (count,), generator=torch.Generator().manual_seed(seed)).tolist()


def check_multi(op, sizes, dtype, master, grad_scale, steps_taken=2, device="cpu"):
    """The kernel against fused_adamw_multi_reference (the flat reference per tensor) and an fp64 run."""
    lists = make_lists(sizes, dtype, master, device=device)
    ref = clone_lists(lists)
    exact = clone_lists(lists, torch.float64)
    exact["params"], exact["masters"] = exact["masters"] or exact["params"], []
    lrs, wds, steps = hyper(len(sizes))
    scale = None if grad_scale is None else torch.tensor([grad_scale], device=device)
    for _ in range(steps_taken):
        for run, impl in ((lists, op), (ref, fused_adamw_multi_reference), (exact, fused_adamw_multi_reference)):
            call_multi(impl, run, lrs, wds, steps, scale)
        steps = [s + 1 for s in steps]
    flat = {k: torch.cat([t.reshape(-1) for t in v]) if v else None for k, v in lists.items()}
    flat_ref = {k: torch.cat([t.reshape(-1) for t in v]) if v else None for k, v in ref.items()}
    flat_exact = {k: torch.cat([t.reshape(-1) for t in v]) for k, v in exact.items() if v}
    weights = "masters" if master else "params"
    for key in ["exp_avgs", "exp_avg_sqs"] + ([weights] if dtype == torch.float32 or master else []):
        expected = flat_exact["params"] if key == weights else flat_exact[key]
        assert adamw_mismatch(flat[key], flat_ref[key], expected) <= 1e-6, key
    if master:
        assert torch.equal(flat["params"], flat["masters"].to(dtype))
    elif dtype != torch.float32:
        assert max_rel_diff(flat["params"].float(), flat_ref["params"].float()) <= 1e-2


@pytest.mark.parametrize("which", ["cpu", "emu"])
@pytest.mark.parametrize("dtype,master", [(torch.float32, False), (torch.bfloat16, True), (torch.float16, True),
                                          (torch.bfloat16, False)])
@pytest.mark.parametrize("grad_scale", [None, 0.37])
def test_multi_kernel_matches_reference_on_odd_sizes(which, dtype, master, grad_scale, request):
    """Sizes 0..5, around a 16-lane vector and a 65536-element CUDA chunk, with distinct lr, wd and step."""
    op = torch.ops.minilvlm.fused_adamw_multi_ if which == "cpu" else request.getfixturevalue("emu").fused_adamw_multi_
    check_multi(op, ODD_SIZES, dtype, master, grad_scale)


@pytest.mark.parametrize("which", ["cpu", "emu"])
def test_multi_kernel_takes_empty_lists(which, request):
    op = torch.ops.minilvlm.fused_adamw_multi_ if which == "cpu" else request.getfixturevalue("emu").fused_adamw_multi_
    op([], [], [], [], [], [], [], [], 0.9, 0.999, 1e-8, torch.ones(1), torch.zeros(1))
    with pytest.raises(RuntimeError, match="0 params need as many grads"):
        op([], [torch.zeros(1)], [], [], [], [], [], [], 0.9, 0.999, 1e-8, None, None)


def torch_adamw_groups(lists):
    """torch.optim.AdamW over the same params, in three groups with their own lr and weight decay."""
    params = [torch.nn.Parameter(p) for p in lists["params"]]
    for p, g in zip(params, lists["grads"]):
        p.grad = g
    groups = [dict(params=params[k::3], lr=1e-3 * (k + 1), weight_decay=0.05 * k) for k in range(3)]
    opt = torch.optim.AdamW(groups, betas=BETAS, eps=1e-8, foreach=False)
    for group, k in zip(groups, range(3)):
        for p, m, v in zip(group["params"], lists["exp_avgs"][k::3], lists["exp_avg_sqs"][k::3]):
            opt.state[p] = dict(step=torch.tensor(0.0), exp_avg=m, exp_avg_sq=v)
    return opt


def check_against_torch_adamw(op, sizes, steps_taken, device="cpu"):
    """`op` against torch.optim.AdamW (fp32) under the flat op's rule (adamw_mismatch, fp64 run beside)."""
    lists = make_lists(sizes, torch.float32, False, device=device)
    theirs, exact = clone_lists(lists), clone_lists(lists, torch.float64)
    torch_opt, exact_opt = torch_adamw_groups(theirs), torch_adamw_groups(exact)
    lrs = [1e-3 * (i % 3 + 1) for i in range(len(sizes))]
    wds = [0.05 * (i % 3) for i in range(len(sizes))]
    for step in range(1, steps_taken + 1):
        call_multi(op, lists, lrs, wds, [step] * len(sizes))
        torch_opt.step()
        exact_opt.step()
    for key in ("params", "exp_avgs", "exp_avg_sqs"):
        ours, ref, fp64 = (torch.cat([t.detach().reshape(-1) for t in run[key]]) for run in (lists, theirs, exact))
        assert adamw_mismatch(ours, ref, fp64) <= 1e-6, key


def test_multi_cpu_kernel_matches_torch_adamw_on_1000_tensors():
    """1,000 tensors of random sizes 1..70,000 (35M elements), two steps, one parallel pass each."""
    check_against_torch_adamw(torch.ops.minilvlm.fused_adamw_multi_, random_sizes(1000, 70_000, 0), 2)


def test_multi_emulated_kernel_matches_torch_adamw(emu):
    """The emulated CUDA kernel on EMU_TENSORS tensors of random sizes 1..70,000: several launches,
    some carrying a tensor over from the previous table, and tensors of two chunks."""
    sizes = random_sizes(EMU_TENSORS, 70_000, 1)
    assert max(sizes) > 65536 and len(sizes) > 32
    check_against_torch_adamw(emu.fused_adamw_multi_, sizes, 2)


def test_multi_emulated_kernel_same_result_under_two_schedules_and_unaligned_tensors(emu):
    """Views starting one element in (FSDP2 shards may) take the scalar path; seeds change nothing."""
    sizes = [7, 70_000, 4096, 1, 33]
    results = []
    for seed in (0, 12345):
        lists = make_lists([n + 1 for n in sizes], torch.float16, True)
        shifted = {k: [t.reshape(-1)[1:] for t in v] for k, v in lists.items()}
        ref = clone_lists(shifted)
        emu.set_seed(seed)
        try:
            call_multi(emu.fused_adamw_multi_, shifted, *hyper(len(sizes)), torch.tensor([0.5]))
        finally:
            emu.set_seed(0)
        call_multi(fused_adamw_multi_reference, ref, *hyper(len(sizes)), torch.tensor([0.5]))
        for ours, theirs in zip(shifted["masters"], ref["masters"]):
            assert max_rel_diff(ours, theirs) <= 1e-5
        results.append(torch.cat(shifted["masters"]))
    assert torch.equal(results[0], results[1])


def test_multi_emulated_kernel_tensor_over_several_launches(emu):
    """A tensor of more chunks than a launch has blocks (256) continues in the next launches as their
    tensor 0, between small tensors: every chunk is updated exactly once."""
    sizes = [5, 300 * 65536 + 3, 7, 65537]
    lists = make_lists(sizes, torch.float32, False)
    ref = clone_lists(lists)
    call_multi(emu.fused_adamw_multi_, lists, *hyper(len(sizes)))
    call_multi(fused_adamw_multi_reference, ref, *hyper(len(sizes)))
    for key in ("params", "exp_avgs", "exp_avg_sqs"):  # a chunk missed or updated twice is off by about lr
        for ours, theirs in zip(lists[key], ref[key]):
            torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("which", ["cpu", "emu", "reference"])
@pytest.mark.parametrize("dtype,master", [(torch.float32, False), (torch.float16, True), (torch.bfloat16, True)])
@pytest.mark.parametrize("flag", [1.0, float("nan"), float("inf")])
def test_multi_found_inf_skips_the_step_and_leaves_every_tensor(which, dtype, master, flag, request):
    op = {"cpu": lambda: torch.ops.minilvlm.fused_adamw_multi_, "reference": lambda: fused_adamw_multi_reference,
          "emu": lambda: request.getfixturevalue("emu").fused_adamw_multi_}[which]()
    check_multi_skip(op, dtype, master, flag)


def check_multi_skip(op, dtype, master, flag, device="cpu"):
    """A raised flag leaves every bit of every tensor (inf and NaN grads inside); a zero flag steps."""
    lists = make_lists([5, 1025, 70_000], dtype, master, device=device)
    lists["grads"][1][7] = float("inf")
    lists["grads"][2].view(-1)[-3] = float("nan")
    before = clone_lists(lists)
    call_multi(op, lists, *hyper(3), torch.tensor([0.25]), torch.tensor([flag], device=device))
    for key, tensors in lists.items():
        for ours, old in zip(tensors, before[key]):
            assert same_bits(ours, old), key
    call_multi(op, lists, *hyper(3), torch.tensor([0.25]), torch.zeros(1, device=device))  # a zero flag steps
    weights = "masters" if master else "params"
    assert not torch.equal(lists[weights][0], before[weights][0])


def test_multi_public_function_splits_dtypes_and_runs_float64_on_the_reference():
    """Lists mixing fp32 and bf16 run the native op once per dtype; a float64 tensor sends all to the reference."""
    for low, native_calls in ((torch.bfloat16, 2), (torch.float64, 0)):
        first, second = make_lists([100, 7], torch.float32, False), make_lists([30], low, False)
        both = {k: first[k] + second[k] for k in first}
        if low == torch.float64:
            both["exp_avgs"][2], both["exp_avg_sqs"][2] = both["exp_avgs"][2].double(), both["exp_avg_sqs"][2].double()
        ref = clone_lists(both)
        with DispatchLog() as log:
            call_multi(minilvlm.ops.fused_adamw.fused_adamw_multi_, both, *hyper(3))
        call_multi(fused_adamw_multi_reference, ref, *hyper(3))
        assert sum("fused_adamw_multi_" in op for op in log.calls) == native_calls
        for key in ("params", "exp_avgs"):
            for ours, theirs in zip(both[key], ref[key]):
                assert max_rel_diff(ours.double(), theirs.double()) <= 1e-5, key


def multi_opcheck(op):
    lists = make_lists([5, 300, 17], torch.bfloat16, True)
    opcheck_with_flags(op, (lists["params"], lists["grads"], lists["exp_avgs"], lists["exp_avg_sqs"], lists["masters"],
                            *hyper(3), 0.9, 0.999, 1e-8, torch.tensor([0.5])))


def test_multi_opcheck():
    multi_opcheck(torch.ops.minilvlm.fused_adamw_multi_)


def test_multi_emulated_kernel_opcheck(emu):
    register_on_emulator(register_fused_adamw)
    multi_opcheck(emu.fused_adamw_multi_)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_multi_on_meta_runs_the_fake_kernel(dtype):
    lists = make_lists([10, 3], dtype, dtype != torch.float32, device="meta")
    with DispatchLog() as log:
        call_multi(minilvlm.ops.fused_adamw.fused_adamw_multi_, lists, *hyper(2), torch.ones(1, device="meta"),
                   torch.zeros(1, device="meta"))
    assert log.ran("minilvlm.fused_adamw_multi_") and log.ops_on("cpu") == []


@pytest.mark.parametrize("where", ["meta", "fake-cuda"])
@pytest.mark.parametrize("key", ["params", "grads", "exp_avg_sqs", "masters"])
def test_multi_cpu_tensor_mixed_in_is_refused(where, key):
    device = "meta" if where == "meta" else "cuda"
    mode = FakeTensorMode(allow_non_fake_inputs=True) if where == "fake-cuda" else None
    with mode or torch.no_grad():
        lists = make_lists([10, 6, 4], torch.bfloat16, True, device=device)
        lists[key][1] = torch.zeros(lists[key][1].shape, dtype=lists[key][1].dtype, device="cpu")
        with pytest.raises(RuntimeError, match=rf"fused_adamw_multi_: {key}\[1\] is on cpu but params\[(0|1)\] is on"):
            call_multi(torch.ops.minilvlm.fused_adamw_multi_, lists, *hyper(3), None, None)


@pytest.mark.parametrize("mutate,message", [
    (lambda b: b["exp_avgs"].pop(), r"3 params need as many grads, exp_avgs"),
    (lambda b: b.update(params=[b["params"][0], b["params"][1].double(), b["params"][2]]),
     r"params\[1\] is Double but params\[0\] is Float; one call takes one param dtype"),
    (lambda b: b["grads"].__setitem__(2, b["grads"][2].half()), r"grads\[2\] is Half but params\[2\] is Float"),
    (lambda b: b["exp_avg_sqs"].__setitem__(0, b["exp_avg_sqs"][0].reshape(-1)[:-1]),
     r"exp_avg_sqs\[0\] has 8 elements"),
    (lambda b: b["exp_avgs"].__setitem__(1, torch.zeros(12, 2).t()), r"exp_avgs\[1\] must be contiguous"),
    (lambda b: b.update(masters=[torch.zeros_like(p) for p in b["params"]]), "master weights are for bfloat16"),
])
def test_multi_bad_lists_raise_clear_errors(mutate, message, emu):
    for op in (torch.ops.minilvlm.fused_adamw_multi_, emu.fused_adamw_multi_):
        lists = make_lists([9, 24, 5], torch.float32, False)
        mutate(lists)
        with pytest.raises(RuntimeError, match=message):
            call_multi(op, lists, *hyper(3))


def test_multi_every_cpu_path_matches_reference():
    code = (
        "import torch\n"
        "from tests.ops.test_fused_adamw_multi_op import check_multi\n"
        "for dtype, master in ((torch.float32, False), (torch.bfloat16, True), (torch.float16, True)):\n"
        "    check_multi(torch.ops.minilvlm.fused_adamw_multi_, [1, 17, 1001, 40000, 3], dtype, master, 0.5)\n"
        "print('ok')\n")
    for capability in ("avx2", "default"):
        result = run_python(code, MINILVLM_CPU_CAPABILITY=capability)
        assert result.returncode == 0 and "ok" in result.stdout, result.stderr
