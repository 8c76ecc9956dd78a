"""rope_: the CPU kernel and the emulated CUDA kernel against the plain-PyTorch reference, in place."""
import os
import subprocess
import sys

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import minilvlm
from minilvlm.ops import rope_, rope_reference, rope_tables
from minilvlm.ops.rope import register_rope
from tests.ops import register_on_emulator

pytestmark = pytest.mark.skipif(not minilvlm.ops.native_available(), reason="minilvlm._C is not built")

LOW = (torch.bfloat16, torch.float16)
# (batch, q heads, k heads, tokens, head_dim, rotary_dim): LLaMA-like, Phi's 40%, odd head dims,
# odd half widths (3, 5), a decode step (T = 1), no rotary channels at all.
SHAPES = [(2, 3, 1, 5, 8, 8), (2, 4, 2, 7, 10, 4), (1, 2, 2, 1, 12, 6), (3, 2, 1, 5, 9, 6),
          (2, 2, 2, 3, 80, 32), (1, 2, 1, 4, 128, 128), (2, 1, 1, 3, 15, 10), (1, 1, 1, 2, 6, 0)]


def shape_id(s):
    return "B{}-H{}-Hk{}-T{}-hd{}-rd{}".format(*s)


def make_case(shape, dtype=torch.float32, layout="bhtd", seed=0, table_batch=None):
    """(q, k, cos, sin): q, k in `layout` ("bhtd" contiguous, or "bthd": the decoder's transposed view of
    its projection), positions up to 4000 (large angles), tables of table_batch rows (default B)."""
    b, h, hk, t, hd, rd = shape
    g = torch.Generator().manual_seed(seed)

    def heads(n):
        if layout == "bthd":
            return torch.randn(b, t, n, hd, generator=g).to(dtype).transpose(1, 2)
        return torch.randn(b, n, t, hd, generator=g).to(dtype)

    positions = torch.randint(0, 4000, (table_batch or b, t), generator=g)
    cos, sin = rope_tables(positions, rd, 10000.0)
    return heads(h), heads(hk), cos, sin


def rel_err(actual, expected):
    """max |actual - expected| relative to max |expected|."""
    actual, expected = actual.double(), expected.double()
    return ((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-30)).item()


def check_low_precision(ours, x, cos, sin, inverse=False):
    """The flash-attention rule: our error against the fp32 reference is at most twice that of the
    reference computed in x's low precision (tables rounded to it too)."""
    exact = rope_reference(x.float(), cos, sin, inverse)
    plain = rope_reference(x, cos.to(x.dtype), sin.to(x.dtype), inverse)
    assert ours.dtype == x.dtype
    assert rel_err(ours, exact) <= 2 * rel_err(plain, exact) + 1e-7, (rel_err(ours, exact), rel_err(plain, exact))


def rotate_with(op, q, k, cos, sin):
    """op(q, k, cos, sin) on copies (with the same strides); returns the rotated copies."""
    q2, k2 = q.clone(), k.clone()
    op(q2, k2, cos, sin)
    return q2, k2


# ---------------------------------------------------------------------------------------
# forward

@pytest.mark.parametrize("layout", ["bhtd", "bthd"])
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_cpu_forward_matches_reference_fp32(shape, layout):
    q, k, cos, sin = make_case(shape, layout=layout)
    q2, k2 = rotate_with(torch.ops.minilvlm.rope_, q, k, cos, sin)
    assert q2.stride() == q.stride()
    assert rel_err(q2, rope_reference(q, cos, sin)) <= 1e-5
    assert rel_err(k2, rope_reference(k, cos, sin)) <= 1e-5
    rd = shape[5]
    assert torch.equal(q2[..., rd:], q[..., rd:]) and torch.equal(k2[..., rd:], k[..., rd:])


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("shape", SHAPES[:6], ids=shape_id)
def test_cpu_forward_low_precision_within_twice_torch_error(shape, dtype):
    q, k, cos, sin = make_case(shape, dtype, layout="bthd")
    q2, k2 = rotate_with(torch.ops.minilvlm.rope_, q, k, cos, sin)
    if shape[5]:
        check_low_precision(q2, q, cos, sin)
        check_low_precision(k2, k, cos, sin)


def test_one_table_row_serves_the_whole_batch():
    q, k, cos, sin = make_case((3, 2, 2, 4, 16, 8), table_batch=1)
    q2, k2 = rotate_with(torch.ops.minilvlm.rope_, q, k, cos, sin)
    assert rel_err(q2, rope_reference(q, cos.expand(3, -1, -1), sin.expand(3, -1, -1))) <= 1e-5


def test_public_function_rotates_in_place_and_moves_the_version_counter():
    q, k, cos, sin = make_case(SHAPES[1], layout="bthd")
    expected_q, expected_k = rope_reference(q, cos, sin), rope_reference(k, cos, sin)
    versions = q._version, k._version
    out_q, out_k = rope_(q, k, cos, sin)
    assert out_q is q and out_k is k
    assert q._version > versions[0] and k._version > versions[1]
    assert rel_err(q, expected_q) <= 1e-5 and rel_err(k, expected_k) <= 1e-5
    q64, _, cos64, sin64 = (t.double() for t in make_case(SHAPES[1]))  # float64 runs the reference
    expected = rope_reference(q64, cos64, sin64)
    rope_(q64, None, cos64, sin64)
    assert rel_err(q64, expected) <= 1e-15


# ---------------------------------------------------------------------------------------
# backward

@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_backward_op_is_the_rotation_by_minus_angle(shape):
    q, _, cos, sin = make_case(shape)
    grad = torch.randn(q.shape)
    out = torch.ops.minilvlm.rope_backward(grad, cos, sin)
    assert rel_err(out, rope_reference(grad, cos, sin, inverse=True)) <= 1e-5
    # a sum's gradient is expanded (stride 0): the output is then contiguous
    ones = torch.ones(()).expand(q.shape)
    out = torch.ops.minilvlm.rope_backward(ones, cos, sin)
    assert out.is_contiguous() and rel_err(out, rope_reference(ones.contiguous(), cos, sin, True)) <= 1e-5
    for dtype in LOW:
        low = grad.to(dtype)
        check_low_precision(torch.ops.minilvlm.rope_backward(low, cos, sin), low, cos, sin, inverse=True)


@pytest.mark.parametrize("layout", ["bhtd", "bthd"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_autograd_matches_the_reference(layout, dtype):
    q0, k0, cos, sin = make_case(SHAPES[4], dtype, layout=layout)
    grads = []
    for rotate in ("ours", "reference"):
        leaves = [q0.detach().clone().requires_grad_(), k0.detach().clone().requires_grad_()]
        q, k = (t * 1 for t in leaves)  # non-leaf, as a projection's output
        if rotate == "ours":
            rope_(q, k, cos, sin)
        else:
            q, k = rope_reference(q, cos, sin), rope_reference(k, cos, sin)
        g = torch.Generator().manual_seed(3)
        (q.float() * torch.randn(q.shape, generator=g)).sum().add((k.float() * 2).sum()).backward()
        grads.append([t.grad for t in leaves])
    for ours, ref in zip(*grads):
        assert ours.dtype == dtype
        assert rel_err(ours, ref) <= (1e-5 if dtype == torch.float32 else 1e-2)


def test_gradcheck_fp64_through_the_reference():
    q, k, cos, sin = (t.double() for t in make_case((2, 2, 1, 3, 9, 6)))
    q.requires_grad_()
    k.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: rope_(a.clone(), b.clone(), cos, sin), (q, k))


def test_in_place_rotation_keeps_autograd_honest():
    _, _, cos, sin = make_case(SHAPES[0])
    leaf = torch.randn(2, 3, 5, 8, requires_grad=True)
    with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
        rope_(leaf, None, cos, sin)
    q = leaf * 1
    saved = q * q  # saves q before the rotation
    rope_(q, None, cos, sin)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        saved.sum().backward()
    q = leaf * 1
    with torch.no_grad():
        before = q._version
        rope_(q, None, cos, sin)
        assert q._version > before  # the no-grad (generation) path moves the counter too


def opcheck_both(ops):
    q, k, cos, sin = make_case(SHAPES[3], layout="bthd")
    torch.library.opcheck(ops.rope_.default, (q.clone(), k.clone(), cos, sin))
    leaf = q.clone().requires_grad_()
    torch.library.opcheck(ops.rope_.default, (leaf * 1, None, cos, sin),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))
    torch.library.opcheck(ops.rope_backward.default, (torch.randn(q.shape), cos, sin))


def test_opcheck():
    opcheck_both(torch.ops.minilvlm)


def test_emulated_cuda_kernel_opcheck(emu):
    register_on_emulator(register_rope)
    opcheck_both(emu)


# ---------------------------------------------------------------------------------------
# fakes and the meta device

def test_fakes_give_shapes_and_refuse_mixed_devices():
    with FakeTensorMode():
        q = torch.empty(2, 32, 7, 128, device="cuda", dtype=torch.bfloat16)
        k = torch.empty(2, 8, 7, 128, device="cuda", dtype=torch.bfloat16)
        cos = torch.empty(2, 7, 64, device="cuda")
        assert torch.ops.minilvlm.rope_(q, k, cos, cos) is None
        grad = torch.empty(2, 7, 32, 128, device="cuda").transpose(1, 2)
        out = torch.ops.minilvlm.rope_backward(grad, cos, cos)
        assert out.shape == grad.shape and out.stride() == grad.stride() and out.device.type == "cuda"
        with pytest.raises(RuntimeError, match=r"rope_: cos is on cpu but q is on cuda:0 \(one device for all\)"):
            torch.ops.minilvlm.rope_(q, k, torch.empty(2, 7, 64), torch.empty(2, 7, 64))
        with pytest.raises(RuntimeError, match=r"rope_: k is on cpu but q is on cuda"):
            torch.ops.minilvlm.rope_(q, torch.empty(2, 8, 7, 128, dtype=torch.bfloat16), cos, cos)


def test_meta_tensors_run_the_reference():
    q = torch.empty(2, 4, 3, 16, device="meta")
    cos = torch.empty(2, 3, 4, device="meta")
    out_q, _ = rope_(q, None, cos, cos)
    assert out_q is q and q.device.type == "meta"


# ---------------------------------------------------------------------------------------
# bad input: the public function raises before dispatch, the op itself with TORCH_CHECK

BAD_INPUTS = [
    ("q dims", lambda c: c.update(q=c["q"][0]), r"q must be 4-D \[B, H, T, head_dim\]"),
    ("k shape", lambda c: c.update(k=c["k"][:, :, :-1]), r"k must be \[2, H_kv, 7, 10\] like q"),
    ("k dtype", lambda c: c.update(k=c["k"].bfloat16()), r"k is (torch\.bfloat16|BFloat16) but q is (torch\.float32|Float)"),
    ("table tokens", lambda c: c.update(cos=c["cos"][:, :-1], sin=c["sin"][:, :-1]),
     r"cos must be \[2 or 1, 7, rotary_dim / 2\]"),
    ("table width", lambda c: c.update(cos=torch.zeros(2, 7, 6), sin=torch.zeros(2, 7, 6)),
     r"the tables rotate 12 channels but q has head_dim 10"),
    ("cos vs sin", lambda c: c.update(sin=c["sin"][..., :1]), r"cos and sin must have the same shape"),
]


@pytest.mark.parametrize("name,mutate,message", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_raises_clear_errors(name, mutate, message):
    q, k, cos, sin = make_case(SHAPES[1])
    case = dict(q=q, k=k, cos=cos, sin=sin)
    mutate(case)
    with pytest.raises((ValueError, TypeError), match=message):
        rope_(**case)
    with pytest.raises(RuntimeError, match=message):
        torch.ops.minilvlm.rope_(case["q"], case["k"], case["cos"], case["sin"])


def test_kernel_only_errors():
    q, k, cos, sin = make_case(SHAPES[1])
    with pytest.raises(RuntimeError, match="cos must be float32"):
        torch.ops.minilvlm.rope_(q, k, cos.double(), sin.double())
    with pytest.raises(RuntimeError, match="q must be float32, bfloat16 or float16"):
        torch.ops.minilvlm.rope_(q.double(), None, cos, sin)
    with pytest.raises(RuntimeError, match="contiguous channels"):
        torch.ops.minilvlm.rope_(q.transpose(2, 3), None, cos[:, :4], sin[:, :4])
    with pytest.raises(RuntimeError, match="refer to a single memory location"):
        torch.ops.minilvlm.rope_(q, q, cos, sin)
    with pytest.raises(ValueError, match="rotary_dim must be even"):
        rope_tables(torch.zeros(1, 3, dtype=torch.long), 5, 10000.0)


# ---------------------------------------------------------------------------------------
# the CUDA kernel, run by the SIMT emulator

@pytest.mark.parametrize("shape", SHAPES[:5] + SHAPES[7:], ids=shape_id)
@pytest.mark.parametrize("seed", [0, 7])
def test_emulated_cuda_kernel_matches_reference(emu, shape, seed):
    emu.set_seed(seed)
    try:
        q, k, cos, sin = make_case(shape, layout="bthd")
        q2, k2 = rotate_with(emu.rope_, q, k, cos, sin)
        assert rel_err(q2, rope_reference(q, cos, sin)) <= 1e-5 and rel_err(k2, rope_reference(k, cos, sin)) <= 1e-5
        grad = torch.randn(q.shape)
        assert rel_err(emu.rope_backward(grad, cos, sin), rope_reference(grad, cos, sin, inverse=True)) <= 1e-5
        for dtype in LOW:
            ql, kl, _, _ = make_case(shape, dtype)
            ql2, _ = rotate_with(emu.rope_, ql, kl, cos, sin)
            if shape[5]:
                check_low_precision(ql2, ql, cos, sin)
                check_low_precision(emu.rope_backward(ql, cos, sin), ql, cos, sin, inverse=True)
    finally:
        emu.set_seed(0)


def test_emulated_cuda_kernel_errors(emu):
    q, k, cos, sin = make_case(SHAPES[1])
    with pytest.raises(RuntimeError, match=r"the tables rotate 12 channels but q has head_dim 10"):
        emu.rope_(q, k, torch.zeros(2, 7, 6), torch.zeros(2, 7, 6))


# ---------------------------------------------------------------------------------------
# every SIMD path of the CPU kernel

def test_every_cpu_path_matches_reference():
    """The baseline loops (forced with MINILVLM_CPU_CAPABILITY=default) give the reference's numbers;
    the AVX-512 path runs in the tests above."""
    code = (
        "import torch, minilvlm\n"
        "from tests.ops.test_rope_op import SHAPES, make_case, rotate_with, rel_err, check_low_precision\n"
        "from minilvlm.ops import rope_reference\n"
        "assert minilvlm.ops.cpu_capability() == 'default'\n"
        "for shape in SHAPES:\n"
        "    q, k, cos, sin = make_case(shape, layout='bthd')\n"
        "    q2, k2 = rotate_with(torch.ops.minilvlm.rope_, q, k, cos, sin)\n"
        "    assert rel_err(q2, rope_reference(q, cos, sin)) <= 1e-5\n"
        "    g = torch.randn(q.shape)\n"
        "    assert rel_err(torch.ops.minilvlm.rope_backward(g, cos, sin), rope_reference(g, cos, sin, True)) <= 1e-5\n"
        "    ql, kl, _, _ = make_case(shape, torch.bfloat16)\n"
        "    if shape[5]:\n"
        "        check_low_precision(rotate_with(torch.ops.minilvlm.rope_, ql, kl, cos, sin)[0], ql, cos, sin)\n"
        "print('ok')\n")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root,
                            env=dict(os.environ, MINILVLM_CPU_CAPABILITY="default"))
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr


# ---- rope_heads_: a projection's output rotated where it lies --------------------------------------

def graph_nodes(t):
    """The names of every autograd node behind t."""
    seen, stack, names = set(), [t.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(type(node).__name__)
        stack.extend(n for n, _ in node.next_functions)
    return names


@pytest.mark.parametrize("backend", ["native", "reference"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rope_heads_matches_rope_on_the_view_without_copy_slices(monkeypatch, backend, dtype):
    """Same values and gradients as rope_ on the [B, H, T, hd] view, and autograd records the rotation
    on the projection itself: no CopySlices node (a copy of the whole projection in backward)."""
    if backend == "reference":
        monkeypatch.setattr("minilvlm.ops.rope.use_native", lambda device: False)
    from minilvlm.ops import rope_heads_
    B, T, H, hd = 2, 7, 3, 10
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(H * hd, 16, generator=g).to(dtype).requires_grad_()
    x = torch.randn(B, T, 16, generator=g).to(dtype)
    cos, sin = rope_tables(torch.randint(0, 500, (B, T), generator=g), 8, 10000.0)
    grad = torch.randn(B, H, T, hd, generator=g).to(dtype)

    ours = rope_heads_(x @ weight.t(), cos, sin, hd).view(B, T, H, hd).transpose(1, 2)
    assert "CopySlices" not in graph_nodes(ours)
    (d_ours,) = torch.autograd.grad(ours, weight, grad)
    view = (x @ weight.t()).view(B, T, H, hd).transpose(1, 2)
    rope_(view, None, cos, sin)
    assert "CopySlices" in graph_nodes(view)          # what rope_heads_ avoids
    (d_view,) = torch.autograd.grad(view, weight, grad)
    torch.testing.assert_close(ours, view, rtol=0, atol=0)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(d_ours, d_view, **tol)


def test_rope_heads_on_a_view_or_without_grad_and_bad_shapes():
    from minilvlm.ops import rope_heads_
    B, T, H, hd = 1, 4, 2, 8
    cos, sin = rope_tables(torch.arange(T)[None], hd, 10000.0)
    base = torch.randn(B, T, H * hd)
    expected = rope_reference(base.view(B, T, H, hd).transpose(1, 2), cos, sin)
    plain = base.clone()
    assert rope_heads_(plain, cos, sin, hd) is plain                       # no grad needed: rope_ on the view
    torch.testing.assert_close(plain.view(B, T, H, hd).transpose(1, 2), expected)
    leaf = base.clone().requires_grad_()
    viewed = leaf.view(B, T, H * hd)[:, :]                                 # a view: rope_ on its view
    rotated = rope_heads_(viewed * 1, cos, sin, hd)
    torch.testing.assert_close(rotated.view(B, T, H, hd).transpose(1, 2), expected)
    with pytest.raises(ValueError, match=r"rope_heads_: x must be \[B, T, H \* head_dim\] with head_dim = 5"):
        rope_heads_(base, cos, sin, 5)
