"""patch_embed: the CPU kernel and the emulated CUDA kernels against the plain-PyTorch reference."""
import os
import subprocess
import sys

import pytest
import torch

import minilvlm
from minilvlm.ops import patch_embed, patch_embed_reference
from minilvlm.ops.patch_embed import register_patch_embed
from tests.ops import register_on_emulator

pytestmark = pytest.mark.skipif(not minilvlm.ops.native_available(), reason="minilvlm._C is not built")

MEAN, STD = (0.48, 0.46, 0.41), (0.27, 0.26, 0.28)


def make_case(p=8, grid=(2, 3), batch=2, channels=3, dim=100, pixels=torch.uint8, channels_last=False,
              cls=False, bias=True, pos=True, dtype=torch.float32, normalize=True, seed=0, device="cpu"):
    """Args for patch_embed on a grid[0] x grid[1] grid of p x p patches; params are exact in bf16. Made
    on the CPU (the same values everywhere), then moved to `device`."""
    g = torch.Generator().manual_seed(seed)
    h, w = grid[0] * p, grid[1] * p
    if pixels == torch.uint8:
        image = torch.randint(0, 256, (batch, channels, h, w), generator=g, dtype=torch.uint8)
    else:
        image = torch.rand(batch, channels, h, w, generator=g).to(pixels)
    if channels_last:
        image = image.permute(0, 2, 3, 1).contiguous()
    image = image.to(device)
    tokens = grid[0] * grid[1] + cls

    def param(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(torch.bfloat16).to(device=device, dtype=dtype)

    args = dict(pixels=image, weight=param(dim, channels, p, p, scale=(channels * p * p) ** -0.5),
                bias=param(dim) if bias else None, pos_embed=param(tokens, dim) if pos else None)
    kwargs = dict(patch_size=p, mean=MEAN[:channels] if normalize else None, std=STD[:channels] if normalize else None,
                  channels_last=channels_last, cls_token=param(dim) if cls else None)
    return args, kwargs


def native_args(args, kwargs):
    """Positional args of torch.ops.minilvlm.patch_embed (and minilvlm_emu's)."""
    return (args["pixels"], args["weight"], args["bias"], args["pos_embed"], kwargs["cls_token"],
            kwargs["patch_size"], None if kwargs["mean"] is None else list(kwargs["mean"]),
            None if kwargs["std"] is None else list(kwargs["std"]), kwargs["channels_last"])


def rel_err(actual, expected):
    """max |actual - expected| relative to max |expected| (elementwise relative error would blow up
    at outputs that happen to be near zero)."""
    actual, expected = actual.double(), expected.double()
    return ((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-30)).item()


def as_dtype(args, kwargs, dtype):
    cast = {k: (v.to(dtype) if v is not None and v.is_floating_point() and k != "pixels" else v)
            for k, v in args.items()}
    kw = dict(kwargs, cls_token=None if kwargs["cls_token"] is None else kwargs["cls_token"].to(dtype))
    return cast, kw


def run_native(op, args, kwargs):
    return op(*native_args(args, kwargs))


CASES = [dict(p=p, pixels=pix, channels_last=cl, cls=cls)
         for p in (8, 14, 16) for pix in (torch.uint8, torch.float32) for cl in (False, True) for cls in (False, True)]


def case_id(c):
    return f"p{c['p']}-{str(c['pixels']).split('.')[-1]}-{'nhwc' if c['channels_last'] else 'nchw'}" \
           f"{'-cls' if c['cls'] else ''}"


# ---------------------------------------------------------------------------------------
# forward

@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_cpu_forward_matches_reference_fp32(case):
    args, kwargs = make_case(**case)
    out = run_native(torch.ops.minilvlm.patch_embed, args, kwargs)
    ref = patch_embed_reference(**args, **kwargs)
    assert out.shape == ref.shape == (2, 6 + case["cls"], 100) and out.dtype == torch.float32
    assert rel_err(out, ref) <= 1e-5


@pytest.mark.parametrize("bias,pos,cls,normalize", [(False, False, False, False), (False, True, True, True),
                                                    (True, False, True, True), (False, False, True, False),
                                                    (True, False, False, False)])
def test_cpu_forward_optional_parts(bias, pos, cls, normalize):
    args, kwargs = make_case(p=8, dim=33, bias=bias, pos=pos, cls=cls, normalize=normalize, grid=(3, 1))
    out = patch_embed(**args, **kwargs)
    assert rel_err(out, patch_embed_reference(**args, **kwargs)) <= 1e-5


def check_2x_rule(out, args, kwargs):
    """The flash-attention rule: the kernel's error against the fp32 reference is at most twice
    the error of the reference computed in the weight's low precision (bf16 or fp16)."""
    ref32 = patch_embed_reference(**as_dtype(args, kwargs, torch.float32)[0], **as_dtype(args, kwargs, torch.float32)[1])
    ref16 = patch_embed_reference(**args, **kwargs)
    assert out.dtype == args["weight"].dtype
    ours, theirs = rel_err(out, ref32), rel_err(ref16, ref32)
    assert ours <= 2 * theirs + 1e-6, (ours, theirs)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", CASES[::3], ids=case_id)
def test_cpu_forward_low_precision_within_twice_torch_error(case, dtype):
    args, kwargs = make_case(**case, dtype=dtype)
    check_2x_rule(run_native(torch.ops.minilvlm.patch_embed, args, kwargs), args, kwargs)


def test_float64_pixels_and_other_float_images_go_through_the_public_function():
    args, kwargs = make_case(pixels=torch.float32, cls=True)
    ref = patch_embed_reference(**args, **kwargs)
    for dtype in (torch.float64, torch.bfloat16):
        a = dict(args, pixels=args["pixels"].to(dtype))
        expected = patch_embed_reference(**a, **kwargs)
        assert rel_err(patch_embed(**a, **kwargs), expected) <= 1e-5
    assert rel_err(patch_embed(**args, **kwargs), ref) <= 1e-5


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_runs_the_op_in_its_dtype(dtype):
    args, kwargs = make_case(cls=True)
    with torch.autocast("cpu", dtype=dtype):
        out = patch_embed(**args, **kwargs)
    a16, k16 = as_dtype(args, kwargs, dtype)
    assert out.dtype == dtype
    assert torch.equal(out, patch_embed(**a16, **k16))


# ---------------------------------------------------------------------------------------
# backward

def params_requiring_grad(args, kwargs):
    leaves = [args["weight"], args["bias"], args["pos_embed"], kwargs["cls_token"]]
    return [t.requires_grad_() for t in leaves if t is not None]


@pytest.mark.parametrize("cls", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
def test_gradcheck_fp64(cls, channels_last):
    args, kwargs = make_case(p=4, grid=(2, 2), dim=5, dtype=torch.float64, cls=cls, channels_last=channels_last)

    def fn(weight, bias, pos_embed, *maybe_cls):
        return patch_embed(args["pixels"], weight, bias, pos_embed,
                           **dict(kwargs, cls_token=maybe_cls[0] if maybe_cls else None))

    inputs = params_requiring_grad(args, kwargs)
    assert torch.autograd.gradcheck(fn, inputs)


@pytest.mark.parametrize("case", CASES[::2], ids=case_id)
def test_native_gradients_match_reference_autograd_fp32(case):
    args, kwargs = make_case(**case)
    grad_out = torch.randn(2, 6 + case["cls"], 100, generator=torch.Generator().manual_seed(1))
    grads = []
    for fn in (patch_embed, patch_embed_reference):
        a = {k: (v.detach().clone() if v is not None else None) for k, v in args.items()}
        kw = dict(kwargs, cls_token=None if kwargs["cls_token"] is None else kwargs["cls_token"].clone())
        leaves = params_requiring_grad(a, kw)
        fn(**a, **kw).backward(grad_out)
        grads.append([t.grad for t in leaves])
    for ours, ref in zip(*grads):
        assert rel_err(ours, ref) <= 1e-5


def low_precision_grads(op, case, dtype, device="cpu", exact_dtype=torch.float32):
    """(ours, torch's in dtype, exact_dtype reference) gradients of weight, bias, pos_embed and cls_token
    for the backward op `op` (the CPU kernel, the emulated CUDA kernels, or the CUDA kernels)."""
    args, kwargs = make_case(**case, dtype=dtype, device=device)
    tokens = case.get("grid", (2, 3))[0] * case.get("grid", (2, 3))[1] + case["cls"]
    grad_out = torch.randn(case.get("batch", 2), tokens, case.get("dim", 100),
                           generator=torch.Generator().manual_seed(3)).to(device=device, dtype=dtype)
    refs = []
    for cast in (dtype, exact_dtype):
        a, kw = as_dtype(*make_case(**case, dtype=dtype, device=device), cast)  # fresh leaves, the same values
        leaves = params_requiring_grad(a, kw)
        patch_embed_reference(**a, **kw).backward(grad_out.to(cast))
        refs.append([t.grad for t in leaves])
    grad_weight, grad_bias, grad_tokens = op(grad_out, args["pixels"], args["weight"], kwargs["patch_size"],
                                             list(MEAN), list(STD), kwargs["channels_last"], case["cls"])
    ours = [grad_weight, grad_bias, grad_tokens] + ([grad_tokens[0]] if case["cls"] else [])
    return ours, refs[0], refs[1]


GRAD_CASES = [dict(p=8, pixels=torch.uint8, channels_last=False, cls=True),
              dict(p=14, pixels=torch.float32, channels_last=True, cls=False)]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", GRAD_CASES, ids=case_id)
@pytest.mark.parametrize("which", ["cpu", "emu"])
def test_low_precision_gradients_within_twice_torch_error(which, case, dtype, request):
    op = (torch.ops.minilvlm if which == "cpu" else request.getfixturevalue("emu")).patch_embed_backward
    ours, torch_low, exact = low_precision_grads(op, case, dtype)
    for name, g, low, ref in zip(("weight", "bias", "pos_embed", "cls_token"), ours, torch_low, exact):
        assert g.dtype == dtype, name
        assert rel_err(g, ref) <= 2 * rel_err(low, ref) + 1e-6, (name, rel_err(g, ref), rel_err(low, ref))


def test_backward_op_without_pos_or_bias_gives_only_the_weight_gradient():
    args, kwargs = make_case(bias=False, pos=False, cls=True, dim=7)
    leaves = params_requiring_grad(args, kwargs)
    patch_embed(**args, **kwargs).sum().backward()
    weight, cls = leaves
    assert weight.grad is not None and torch.allclose(cls.grad, torch.full((7,), 2.0))


def opcheck_both(ops):
    for cls in (False, True):
        args, kwargs = make_case(p=4, grid=(2, 3), dim=9, cls=cls)
        params_requiring_grad(args, kwargs)
        torch.library.opcheck(ops.patch_embed.default, native_args(args, kwargs))
        grad_out = torch.randn(2, 6 + cls, 9)
        torch.library.opcheck(ops.patch_embed_backward.default,
                              (grad_out, args["pixels"], args["weight"].detach(), 4, list(MEAN), list(STD), False, cls))


def test_opcheck():
    opcheck_both(torch.ops.minilvlm)


def test_emulated_cuda_kernels_opcheck(emu):
    register_on_emulator(register_patch_embed)
    opcheck_both(emu)


# ---------------------------------------------------------------------------------------
# bad input: the public function raises before dispatch, the op itself with TORCH_CHECK

BAD_INPUTS = [
    ("size", lambda a, k: a.update(pixels=a["pixels"][..., :-3]), r"image size 16x21 .*not a multiple of patch_size 8"),
    ("channels", lambda a, k: a.update(pixels=a["pixels"][:, :2]), r"have 2 channels but weight of shape \[100, 3, 8, 8\]"),
    ("dtype", lambda a, k: a.update(pixels=a["pixels"].to(torch.int32)), r"pixels must be uint8"),
    ("weight dtype", lambda a, k: a.update(weight=a["weight"].to(torch.int32)),
     r"weight must be float32, bfloat16, float16 or float64"),
    ("pos rows", lambda a, k: a.update(pos_embed=a["pos_embed"][:-1]), r"pos_embed must be \[6, 100\] .*got \[5, 100\]"),
    ("pos rows cls", lambda a, k: k.update(cls_token=torch.zeros(100)), r"pos_embed must be \[7, 100\]"),
    ("bias", lambda a, k: a.update(bias=torch.zeros(99)), r"bias must have shape \[100\]"),
    ("mean", lambda a, k: k.update(mean=(0.5, 0.5)), r"mean has 2 values but the image has 3 channels"),
    ("bias dtype", lambda a, k: a.update(bias=a["bias"].double()), r"bias is (torch\.float64|Double) but weight is (torch\.float32|Float)"),
]


@pytest.mark.parametrize("name,mutate,message", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_raises_clear_errors(name, mutate, message):
    args, kwargs = make_case()
    mutate(args, kwargs)
    with pytest.raises((ValueError, TypeError), match=message):
        patch_embed(**args, **kwargs)
    with pytest.raises(RuntimeError, match=message):
        run_native(torch.ops.minilvlm.patch_embed, args, kwargs)


def test_backward_op_checks_grad_shape():
    args, kwargs = make_case()
    with pytest.raises(RuntimeError, match=r"grad_out must be \[2, 6, 100\], got \[2, 7, 100\]"):
        torch.ops.minilvlm.patch_embed_backward(torch.zeros(2, 7, 100), args["pixels"], args["weight"], 8, None, None,
                                                False, False)


# ---------------------------------------------------------------------------------------
# the CUDA kernels, run by the SIMT emulator (GEMMs as ATen CPU matmuls)

EMU_CASES = [dict(p=8, pixels=torch.uint8, channels_last=False, cls=True),
             dict(p=14, pixels=torch.float32, channels_last=True, cls=False),
             dict(p=16, pixels=torch.uint8, channels_last=True, cls=True),
             dict(p=8, pixels=torch.float32, channels_last=False, cls=False)]


@pytest.mark.parametrize("case", EMU_CASES, ids=case_id)
@pytest.mark.parametrize("seed", [0, 7])
def test_emulated_cuda_forward_matches_reference(emu, case, seed):
    emu.set_seed(seed)
    try:
        args, kwargs = make_case(**case)
        assert rel_err(run_native(emu.patch_embed, args, kwargs), patch_embed_reference(**args, **kwargs)) <= 1e-5
        for dtype in (torch.bfloat16, torch.float16):
            a16, k16 = make_case(**case, dtype=dtype)
            check_2x_rule(run_native(emu.patch_embed, a16, k16), a16, k16)
    finally:
        emu.set_seed(0)


@pytest.mark.parametrize("bias,pos,cls", [(False, False, True), (True, False, False), (False, True, True)])
def test_emulated_cuda_forward_optional_parts(emu, bias, pos, cls):
    args, kwargs = make_case(p=8, dim=33, bias=bias, pos=pos, cls=cls, grid=(3, 1))
    assert rel_err(run_native(emu.patch_embed, args, kwargs), patch_embed_reference(**args, **kwargs)) <= 1e-5


@pytest.mark.parametrize("case", EMU_CASES[:2], ids=case_id)
def test_emulated_cuda_backward_matches_native_cpu(emu, case):
    args, kwargs = make_case(**case)
    grad_out = torch.randn(2, 6 + case["cls"], 100, generator=torch.Generator().manual_seed(2))
    common = (grad_out, args["pixels"], args["weight"], kwargs["patch_size"], list(MEAN), list(STD),
              kwargs["channels_last"], case["cls"])
    for ours, cpu in zip(emu.patch_embed_backward(*common), torch.ops.minilvlm.patch_embed_backward(*common)):
        assert rel_err(ours, cpu) <= 1e-5


def test_emulated_cuda_float64_and_errors(emu):
    args, kwargs = make_case(p=4, grid=(2, 2), dim=5, dtype=torch.float64, cls=True)
    assert rel_err(run_native(emu.patch_embed, args, kwargs), patch_embed_reference(**args, **kwargs)) <= 1e-12
    args["pos_embed"] = args["pos_embed"][1:]
    with pytest.raises(RuntimeError, match=r"pos_embed must be \[5, 5\]"):
        run_native(emu.patch_embed, args, kwargs)
    many = torch.zeros(1, 17, 4, 4)
    with pytest.raises(RuntimeError, match="at most 16 channels"):
        emu.patch_embed(many, torch.zeros(3, 17, 4, 4), None, None, None, 4, None, None, False)


# ---------------------------------------------------------------------------------------
# every SIMD path of the CPU kernel

def test_every_cpu_path_matches_reference():
    """The baseline build of the vector loops (forced with MINILVLM_CPU_CAPABILITY=default) gives
    the same numbers as the reference; the AVX-512 build runs in the tests above."""
    code = (
        "import torch, minilvlm\n"
        "from tests.ops.test_patch_embed_op import make_case, run_native, rel_err, check_2x_rule\n"
        "from minilvlm.ops import patch_embed_reference\n"
        "assert minilvlm.ops.cpu_capability() == 'default'\n"
        "for cl in (False, True):\n"
        "    args, kwargs = make_case(p=14, channels_last=cl, cls=True)\n"
        "    out = run_native(torch.ops.minilvlm.patch_embed, args, kwargs)\n"
        "    assert rel_err(out, patch_embed_reference(**args, **kwargs)) <= 1e-5\n"
        "    for dtype in (torch.bfloat16, torch.float16):\n"
        "        a16, k16 = make_case(p=14, channels_last=cl, cls=True, dtype=dtype)\n"
        "        check_2x_rule(run_native(torch.ops.minilvlm.patch_embed, a16, k16), a16, k16)\n"
        "    g = torch.randn(2, 7, 100)\n"
        "    bwd = torch.ops.minilvlm.patch_embed_backward(g, args['pixels'], args['weight'], 14, None, None, cl, True)\n"
        "    assert rel_err(bwd[2], g.sum(0)) <= 1e-6 and rel_err(bwd[1], g[:, 1:].sum((0, 1))) <= 1e-6\n"
        "print('ok')\n")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root,
                            env=dict(os.environ, MINILVLM_CPU_CAPABILITY="default"))
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr


def test_gradients_accumulate_over_two_backward_passes():
    """Gradient accumulation: the cls_token and pos_embed grads must not share memory."""
    args, kwargs = make_case(cls=True, dim=8)
    leaves = params_requiring_grad(args, kwargs)
    for _ in range(2):
        patch_embed(**args, **kwargs).sum().backward()
    weight, bias, pos, cls = leaves
    assert torch.allclose(cls.grad, torch.full((8,), 4.0)) and torch.allclose(pos.grad, torch.full((7, 8), 4.0))
    assert torch.allclose(bias.grad, torch.full((8,), 24.0))


# ---------------------------------------------------------------------------------------
# Sizes the emulator's small grid hides (docs/emulator.md, "GPU-sized grids"): a width over 256,
# so that the epilogue's channel loop (128 threads) wraps twice, and the grid an A100 or H100 gets
# (SMs x kPatchBlocksPerSm blocks) with more rows than blocks, so that the row loop wraps too.

@pytest.mark.parametrize("case", EMU_CASES[:2], ids=case_id)
def test_emulated_cuda_width_over_256(emu, case):
    args, kwargs = make_case(**case, dim=300)
    assert rel_err(run_native(emu.patch_embed, args, kwargs), patch_embed_reference(**args, **kwargs)) <= 1e-5
    a16, k16 = make_case(**case, dim=300, dtype=torch.bfloat16)
    check_2x_rule(run_native(emu.patch_embed, a16, k16), a16, k16)
    grad_out = torch.randn(2, 6 + case["cls"], 300, generator=torch.Generator().manual_seed(2))
    common = (grad_out, args["pixels"], args["weight"], kwargs["patch_size"], list(MEAN), list(STD),
              kwargs["channels_last"], case["cls"])
    for ours, cpu in zip(emu.patch_embed_backward(*common), torch.ops.minilvlm.patch_embed_backward(*common)):
        assert rel_err(ours, cpu) <= 1e-5


@pytest.mark.parametrize("gpu", ["A100", "H100"])
def test_emulated_cuda_forward_on_the_gpu_grid(emu, gpu):
    blocks = emu.gpu_profile(gpu)[0] * 16
    batch = blocks // 65 + 1  # 65 rows per image (8 x 8 patches and the class token): more rows than blocks
    args, kwargs = make_case(p=8, grid=(8, 8), batch=batch, dim=300, cls=True)
    emu.set_gpu(gpu)
    emu.clear_recent_launches()
    assert rel_err(run_native(emu.patch_embed, args, kwargs), patch_embed_reference(**args, **kwargs)) <= 1e-5
    launches = emu.recent_launches()
    assert [name.split(" grid=")[1] for name in launches] == [f"({blocks},1,1) block=(128,1,1) smem=0"] * 2, launches
    assert "patch_rows_kernel" in launches[0] and "patch_epilogue_kernel" in launches[1]
