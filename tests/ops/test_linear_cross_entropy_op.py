"""linear_cross_entropy: the CPU kernel and the emulated CUDA kernels against the plain-PyTorch reference."""
import os
import subprocess
import sys

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import minilvlm
from minilvlm.ops import linear_cross_entropy, linear_cross_entropy_reference
from minilvlm.ops.linear_cross_entropy import default_chunk_rows, register_linear_cross_entropy
from tests.ops import register_on_emulator

pytestmark = pytest.mark.skipif(not minilvlm.ops.native_available(), reason="minilvlm._C is not built")

LOW = (torch.bfloat16, torch.float16)
ALL = (True, True, True)


def make_case(n=37, d=24, v=53, bias=True, seed=0):
    """(hidden [n, d], weight [v, d], bias [v] or None, targets [n]); logits of a few units, as a trained
    head gives."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, d, generator=g)
    weight = torch.randn(v, d, generator=g) * (2.0 / d ** 0.5)
    b = torch.randn(v, generator=g) if bias else None
    return hidden, weight, b, torch.randint(0, v, (n,), generator=g)


def rel_err(actual, expected):
    """max |actual - expected| relative to max |expected|."""
    actual, expected = actual.double(), expected.double()
    return ((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-30)).item()


def reference_grads(hidden, weight, bias, targets, compute_dtype=None, dtype=torch.float32):
    """(loss, grad_hidden, grad_weight, grad_bias) of the reference with its inputs in `dtype`."""
    leaves = [None if t is None else t.detach().to(dtype).requires_grad_() for t in (hidden, weight, bias)]
    loss = linear_cross_entropy_reference(leaves[0], leaves[1], leaves[2], targets, compute_dtype=compute_dtype)
    loss.backward()
    return [loss.detach()] + [None if t is None else t.grad for t in leaves]


def check_native(op, case, compute, chunk_rows, mask=ALL):
    """op's loss and gradients against the reference: 1e-5 in fp32; bf16/fp16 within twice the error of
    the reference run in that dtype (both against the fp32 reference)."""
    hidden, weight, bias, targets = case
    ours = op(hidden, weight, bias, targets, compute, chunk_rows, list(mask))
    exact = reference_grads(*case)
    plain = reference_grads(*case, compute_dtype=compute) if compute != torch.float32 else None
    assert ours[0].dtype == torch.float32 and ours[0].shape == ()
    assert ours[1].dtype == compute and ours[3].dtype == torch.float32
    assert ours[2].dtype == weight.dtype   # the GEMM's output where it can be: no pass to cast it
    for i, (mine, want) in enumerate(zip(ours, exact)):
        if i > 0 and (not mask[i - 1] or want is None):
            assert mine.numel() == 0
            continue
        if plain is None:
            assert rel_err(mine, want) <= 1e-5, (i, rel_err(mine, want))
        else:
            assert rel_err(mine, want) <= 2 * rel_err(plain[i], want) + 1e-6, (i, rel_err(mine, want),
                                                                                rel_err(plain[i], want))


# ---------------------------------------------------------------------------------------
# the CPU kernel

@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("chunk_rows", [1, 7, 1000])
@pytest.mark.parametrize("v", [53, 8192])
def test_cpu_matches_reference_fp32(v, chunk_rows, bias):
    check_native(torch.ops.minilvlm.linear_cross_entropy, make_case(v=v, bias=bias), torch.float32, chunk_rows)


@pytest.mark.parametrize("compute", LOW)
@pytest.mark.parametrize("chunk_rows", [5, 1000])
@pytest.mark.parametrize("v", [53, 8192])
def test_cpu_low_precision_within_twice_torch_error(v, chunk_rows, compute):
    check_native(torch.ops.minilvlm.linear_cross_entropy, make_case(v=v), compute, chunk_rows)


@pytest.mark.parametrize("mask", [(False, False, False), (True, False, False), (False, True, False),
                                  (False, False, True), (True, True, False)])
def test_output_mask_gives_only_the_gradients_asked_for(mask):
    check_native(torch.ops.minilvlm.linear_cross_entropy, make_case(v=300), torch.float32, 9, mask)


def test_inputs_in_another_dtype_than_the_compute_dtype():
    """fp32 parameters under bf16 compute (autocast's case): the GEMMs take bf16 copies."""
    hidden, weight, bias, targets = make_case(v=300)
    check_native(torch.ops.minilvlm.linear_cross_entropy, (hidden.bfloat16(), weight, bias, targets),
                 torch.bfloat16, 8)


@pytest.mark.parametrize("weight_dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("chunk_rows", [6, 37, 1000])
@pytest.mark.parametrize("compute", [torch.bfloat16, torch.float32])
def test_grad_weight_in_the_weights_dtype_one_chunk_or_many(compute, chunk_rows, weight_dtype):
    """Pure bf16 (bf16 parameters) and the mixed cases: grad_weight comes back in weight's dtype, whether
    the GEMM writes it (one chunk, 37 rows) or the chunks' parts are summed in fp32 and rounded once."""
    hidden, weight, bias, targets = make_case(v=300)
    case = (hidden.to(compute), weight.to(weight_dtype), bias.to(weight_dtype), targets)
    if compute != torch.float32 or weight_dtype == torch.float32:
        check_native(torch.ops.minilvlm.linear_cross_entropy, case, compute, chunk_rows)
        return
    # fp32 GEMMs, low-precision weights: the fp32 sum is rounded once into weight's dtype
    ours = torch.ops.minilvlm.linear_cross_entropy(*case, compute, chunk_rows, list(ALL))
    exact = reference_grads(*case)
    assert ours[2].dtype == weight_dtype
    assert rel_err(ours[2], exact[2]) <= 2 ** -8
    for mine, want in zip(ours[:2] + ours[3:], exact[:2] + exact[3:]):
        assert rel_err(mine, want) <= 1e-5


def test_no_rows_gives_zero_loss_and_zero_gradients():
    hidden, weight, bias, _ = make_case(n=0)
    loss, dh, dw, db = torch.ops.minilvlm.linear_cross_entropy(hidden, weight, bias, torch.zeros(0, dtype=torch.long),
                                                               torch.float32, 4, [True, True, True])
    assert float(loss) == 0.0 and dh.shape == (0, 24)
    assert torch.equal(dw, torch.zeros(53, 24)) and torch.equal(db, torch.zeros(53))


# ---------------------------------------------------------------------------------------
# the public function and autograd

@pytest.mark.parametrize("chunk_rows", [11, 1000])
@pytest.mark.parametrize("leaf_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [False, True])
def test_autograd_scales_the_saved_gradients_and_keeps_the_input_dtypes(bias, leaf_dtype, chunk_rows):
    """fp32 leaves under bf16 compute (autocast) and bf16 leaves (pure bf16), over several chunks or one."""
    hidden, weight, b, targets = make_case(v=300, bias=bias)
    leaves = [None if t is None else t.to(leaf_dtype).requires_grad_() for t in (hidden, weight, b)]
    loss = linear_cross_entropy(*leaves, targets, compute_dtype=torch.bfloat16, chunk_rows=chunk_rows)
    (loss * 0.25).backward()
    plain = [None if t is None else t.to(leaf_dtype).requires_grad_() for t in (hidden, weight, b)]
    expected = linear_cross_entropy_reference(*plain, targets, compute_dtype=torch.bfloat16)
    (expected * 0.25).backward()
    exact = reference_grads(hidden, weight, b, targets)
    for ours, theirs, want in zip(leaves, plain, exact[1:]):
        if ours is None:
            continue
        assert ours.grad.dtype == leaf_dtype
        assert rel_err(ours.grad, 0.25 * want) <= 2 * rel_err(theirs.grad, 0.25 * want) + 1e-6


def test_create_graph_backward_gives_the_same_gradients():
    """A backward with create_graph=True takes the differentiable product-then-cast path, not the one-pass out=."""
    hidden, weight, bias, targets = make_case(v=300)
    grads = []
    for create_graph in (False, True):
        leaves = [t.bfloat16().requires_grad_() for t in (hidden, weight, bias)]
        loss = linear_cross_entropy(*leaves, targets, compute_dtype=torch.float32, chunk_rows=7)
        grads.append([g.detach() for g in torch.autograd.grad(loss * 0.5, leaves, create_graph=create_graph)])
    for plain, graphed in zip(*grads):
        assert plain.dtype == torch.bfloat16 and torch.equal(plain, graphed)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_retained_graph_backward_twice_gives_the_same_gradients(dtype):
    """The last backward of a graph scales the saved gradients in place; a retain_graph backward must
    not, or the next backward would scale them twice. Three backwards: retained, retained, last."""
    hidden, weight, bias, targets = make_case(v=300)
    leaves = [t.to(dtype).requires_grad_() for t in (hidden, weight, bias)]
    loss = linear_cross_entropy(*leaves, targets, compute_dtype=dtype, chunk_rows=7)
    runs = [torch.autograd.grad(loss * 0.5, leaves, retain_graph=keep) for keep in (True, True, False)]
    fresh = [t.to(dtype).requires_grad_() for t in (hidden, weight, bias)]
    once = torch.autograd.grad(linear_cross_entropy(*fresh, targets, compute_dtype=dtype, chunk_rows=7) * 0.5, fresh)
    for grads in runs:
        for got, want in zip(grads, once):
            assert got.dtype == want.dtype and torch.equal(got, want)


def test_last_backward_hands_over_the_saved_gradient_itself():
    """No copy the size of the LM head: the weight's gradient is the op's saved tensor, scaled."""
    hidden, weight, bias, targets = make_case(v=300)
    leaves = [t.bfloat16().requires_grad_() for t in (hidden, weight, bias)]
    _, saved_weight_grad = torch.ops.minilvlm.linear_cross_entropy(
        leaves[0], leaves[1], leaves[2], targets, torch.bfloat16, 7, [True, True, True])[1:3]
    loss, *saved = torch.ops.minilvlm.linear_cross_entropy(*leaves, targets, torch.bfloat16, 7, [True, True, True])
    pointer = saved[1].data_ptr()
    del saved
    grad_weight = torch.autograd.grad(loss * 0.5, leaves[1])[0]
    assert grad_weight.data_ptr() == pointer
    assert torch.equal(grad_weight, saved_weight_grad * torch.tensor(0.5))


def test_default_chunk_is_64mb_of_logits_and_at_least_the_width():
    assert default_chunk_rows(8192, 512) == 2048          # the small llava: 64 MB of fp32 logits
    assert default_chunk_rows(32000, 4096) == 4096        # LLaMA-7B: 524 rows would hold less than the head
    assert default_chunk_rows(151936, 896) == 896         # Qwen2's vocabulary
    assert default_chunk_rows(2 ** 30, 1) == 1


def test_no_grad_computes_the_loss_alone():
    hidden, weight, bias, targets = make_case()
    for t in (hidden, weight, bias):
        t.requires_grad_()
    with torch.no_grad():
        loss = linear_cross_entropy(hidden, weight, bias, targets)
    assert not loss.requires_grad
    assert rel_err(loss, reference_grads(hidden, weight, bias, targets)[0]) <= 1e-6


def test_gradcheck_fp64_through_the_reference():
    hidden, weight, bias, targets = (t.double() if t.is_floating_point() else t for t in make_case(n=6, d=5, v=11))
    inputs = [t.requires_grad_() for t in (hidden, weight, bias)]
    assert torch.autograd.gradcheck(lambda h, w, b: linear_cross_entropy(h, w, b, targets, chunk_rows=3), inputs)


def test_a_gradient_left_out_of_output_mask_is_a_clear_error():
    hidden, weight, bias, targets = make_case()
    weight.requires_grad_()
    loss = torch.ops.minilvlm.linear_cross_entropy(hidden, weight, bias, targets, torch.float32, 8,
                                                   [False, False, False])[0]
    with pytest.raises(RuntimeError, match=r"weight needs a gradient, but output_mask\[1\] was False"):
        loss.backward()


def opcheck_both(ops):
    """Each mask with exactly the inputs it names requiring grad (the public function's rule)."""
    for mask, compute, with_bias in (([True, True, True], torch.float32, True),
                                     ([False, True, False], torch.float32, True),
                                     ([True, True, False], torch.bfloat16, False)):
        hidden, weight, bias, targets = make_case(n=9, v=53, bias=with_bias)
        for t, wanted in zip((hidden, weight, bias), mask):
            if t is not None and wanted:
                t.requires_grad_()
        torch.library.opcheck(ops.linear_cross_entropy.default, (hidden, weight, bias, targets, compute, 4, mask))


def test_opcheck():
    opcheck_both(torch.ops.minilvlm)


def test_emulated_cuda_kernels_opcheck(emu):
    register_on_emulator(register_linear_cross_entropy)
    opcheck_both(emu)


# ---------------------------------------------------------------------------------------
# fakes and the meta device

def test_fake_gives_shapes_and_refuses_mixed_devices():
    with FakeTensorMode():
        hidden = torch.empty(1024, 4096, device="cuda")
        weight = torch.empty(32000, 4096, device="cuda")
        targets = torch.empty(1024, dtype=torch.long, device="cuda")
        loss, dh, dw, db = torch.ops.minilvlm.linear_cross_entropy(hidden, weight, None, targets, torch.bfloat16,
                                                                   512, [True, True, True])
        assert loss.shape == () and loss.dtype == torch.float32 and loss.device.type == "cuda"
        assert dh.shape == (1024, 4096) and dh.dtype == torch.bfloat16
        assert dw.shape == (32000, 4096) and dw.dtype == torch.float32 and db.shape == (0,)
        with pytest.raises(RuntimeError, match="linear_cross_entropy: targets is on cpu but hidden is on cuda"):
            torch.ops.minilvlm.linear_cross_entropy(hidden, weight, None, torch.empty(1024, dtype=torch.long),
                                                    torch.float32, 512, [False, False, False])


def test_meta_tensors_run_the_reference():
    hidden, weight = torch.empty(7, 16, device="meta"), torch.empty(53, 16, device="meta")
    loss = linear_cross_entropy(hidden, weight, None, torch.empty(7, dtype=torch.long, device="meta"))
    assert loss.shape == () and loss.device.type == "meta"


# ---------------------------------------------------------------------------------------
# bad input: the public function raises before dispatch, the op itself with TORCH_CHECK

BAD_INPUTS = [
    ("hidden dims", lambda c: c.update(hidden=c["hidden"][None]), r"hidden must be 2-D \[N, D\]"),
    ("weight width", lambda c: c.update(weight=c["weight"][:, :-1]), r"weight must be \[V, 24\] with V > 0"),
    ("bias", lambda c: c.update(bias=c["bias"][:-1]), r"bias must be \[53\]"),
    ("targets rows", lambda c: c.update(targets=c["targets"][:-1]), r"targets must be \[37\], one per row"),
    ("targets dtype", lambda c: c.update(targets=c["targets"].int()), r"targets must be int64"),
]


@pytest.mark.parametrize("name,mutate,message", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_raises_clear_errors(name, mutate, message):
    hidden, weight, bias, targets = make_case()
    case = dict(hidden=hidden, weight=weight, bias=bias, targets=targets)
    mutate(case)
    with pytest.raises((ValueError, TypeError), match=message):
        linear_cross_entropy(**case)
    with pytest.raises(RuntimeError, match=message):
        torch.ops.minilvlm.linear_cross_entropy(*case.values(), torch.float32, 8, [True, True, True])


def test_kernel_only_errors():
    hidden, weight, bias, targets = make_case()
    op = torch.ops.minilvlm.linear_cross_entropy
    with pytest.raises(RuntimeError, match="compute_dtype must be float32, bfloat16 or float16"):
        op(hidden, weight, bias, targets, torch.float64, 8, [True, True, True])
    with pytest.raises(RuntimeError, match="chunk_rows must be positive"):
        op(hidden, weight, bias, targets, torch.float32, 0, [True, True, True])
    targets[5] = 53
    with pytest.raises(RuntimeError, match="target 53 of row 5 lies outside the vocabulary of 53"):
        op(hidden, weight, bias, targets, torch.float32, 8, [True, True, True])


# ---------------------------------------------------------------------------------------
# the CUDA kernels, run by the SIMT emulator (GEMMs as ATen CPU matmuls)

@pytest.mark.parametrize("v,chunk_rows", [(53, 5), (300, 1000), (600, 7)])
@pytest.mark.parametrize("seed", [0, 7])
def test_emulated_cuda_kernels_match_reference(emu, v, chunk_rows, seed):
    emu.set_seed(seed)
    try:
        case = make_case(n=23, v=v)
        check_native(emu.linear_cross_entropy, case, torch.float32, chunk_rows)
        for compute in LOW:
            check_native(emu.linear_cross_entropy, case, compute, chunk_rows)
            # low-precision parameters: grad_weight in their dtype (one chunk or an fp32 sum)
            low_case = (case[0].to(compute), case[1].to(compute), case[2].to(compute), case[3])
            check_native(emu.linear_cross_entropy, low_case, compute, chunk_rows)
        check_native(emu.linear_cross_entropy, case, torch.float32, chunk_rows, (True, False, False))
    finally:
        emu.set_seed(0)


def test_emulated_cuda_kernels_trap_on_a_target_outside_the_vocabulary(emu):
    hidden, weight, bias, targets = make_case(n=5)
    targets[2] = -1
    with pytest.raises(RuntimeError, match="lce_row_stats_kernel"):
        emu.linear_cross_entropy(hidden, weight, bias, targets, torch.float32, 8, [True, True, True])


# ---------------------------------------------------------------------------------------
# every SIMD path of the CPU kernel

def test_every_cpu_path_matches_reference():
    """The baseline loops (forced with MINILVLM_CPU_CAPABILITY=default) give the reference's numbers;
    the AVX-512 path runs in the tests above."""
    code = (
        "import torch, minilvlm\n"
        "from tests.ops.test_linear_cross_entropy_op import make_case, check_native\n"
        "assert minilvlm.ops.cpu_capability() == 'default'\n"
        "op = torch.ops.minilvlm.linear_cross_entropy\n"
        "for v in (53, 8192):\n"
        "    check_native(op, make_case(v=v), torch.float32, 7)\n"
        "    check_native(op, make_case(v=v), torch.bfloat16, 7)\n"
        "print('ok')\n")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root,
                            env=dict(os.environ, MINILVLM_CPU_CAPABILITY="default"))
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr


def test_backward_fills_no_zero_gradients_for_the_saved_outputs():
    """The op's three saved-gradient outputs get no gradient; autograd must not materialise zeros of
    them (one the size of the LM head) on every backward."""
    from torch.profiler import profile
    from minilvlm.ops import linear_cross_entropy
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(64, 32, generator=g, requires_grad=True)
    weight = torch.randn(100, 32, generator=g, requires_grad=True)
    targets = torch.randint(0, 100, (64,), generator=g)
    loss = linear_cross_entropy(hidden, weight, None, targets)
    with profile() as prof:
        loss.backward()
    assert not [e.key for e in prof.key_averages() if e.key in ("aten::zeros", "aten::zeros_like")]
    assert hidden.grad is not None and weight.grad is not None
