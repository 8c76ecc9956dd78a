"""mm_adapter with dropout on h: the counter-based Philox mask (csrc/common/philox.h and its plain-PyTorch
twin dropout_keep_mask) on the CPU kernel and the emulated CUDA kernels, against the reference given
the same mask; and the CUDA forward's token tiles on a GPU-sized grid."""
import pytest
import torch

import minilvlm
from minilvlm.ops import mm_adapter, mm_adapter_reference
from minilvlm.ops.mm_adapter import dropout_keep_mask, philox4x32_10, register_mm_adapter
from tests.ops import register_on_emulator
from tests.ops.test_mm_adapter_op import NAMES, launched_grid, make_inputs, native_args, rel_err, run_with_capability

pytestmark = pytest.mark.skipif(not minilvlm.ops.native_available(), reason="minilvlm._C is not built")

SEED, OFFSET = 0x5EED_1234_ABCD, 3
# (B, T, D, r, groups, P): odd D and T, groups of odd width, one token, tails of the 16-token tiles,
# r not a multiple of 4 (a Philox block of four words spans two tokens).
SHAPES = [(3, 5, 37, 8, 1, 2), (2, 19, 74, 6, 2, 2), (4, 1, 130, 4, 2, 2), (2, 9, 33, 6, 3, 3)]


def test_philox_known_answers():
    """Philox4x32-10's published known-answer vectors (Salmon et al., Random123's kat_vectors)."""
    cases = [((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
             ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
             ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
              (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1))]
    for counter, key, expected in cases:
        words = philox4x32_10(tuple(torch.tensor([c]) for c in counter), key)
        assert tuple(int(w) for w in words) == expected


def native_mask(ops, seed, offset, B, T, r, p, dtype=torch.float32):
    """The mask an op applies, read back through the op itself: D = r, one channel per group, U = 1, A = 0,
    b_A = 1 and x = 0 make out[b, t, k] = the masked h = keep / (1 - p)."""
    x = torch.zeros(B, T, r, dtype=dtype)
    empty = (x.new_zeros(B, 0), x.new_zeros(1, 0), x.new_zeros(1))
    out = ops.mm_adapter(x, *empty, torch.zeros(r, r), torch.ones(r), torch.ones(1, r, 1), torch.zeros(1, r),
                         1.0, 1.0, r, p, seed, offset)
    kept = out != 0
    assert torch.all(out[kept].float() == torch.tensor(1 / (1 - p)).to(dtype).float())
    return kept


def test_keep_rate_on_a_large_tensor():
    """2^21 entries: the keep rate lies within five standard deviations of 1 - p, for several p."""
    for p in (0.1, 0.5, 0.9):
        keep = dropout_keep_mask(SEED, 0, (1 << 21,), p)
        sigma = (p * (1 - p) / keep.numel()) ** 0.5
        assert abs(keep.double().mean().item() - (1 - p)) <= 5 * sigma, p
    assert dropout_keep_mask(SEED, 0, (4096,), 0.0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_cpu_kernel_mask_is_the_philox_mask(dtype):
    mask = native_mask(torch.ops.minilvlm, SEED, OFFSET, 3, 4099, 8, 0.1, dtype)
    assert torch.equal(mask, dropout_keep_mask(SEED, OFFSET, (3, 4099, 8), 0.1))
    assert abs(mask.double().mean().item() - 0.9) <= 5 * (0.09 / mask.numel()) ** 0.5


def test_same_seed_same_mask_other_seed_or_offset_another():
    ops = torch.ops.minilvlm
    first = native_mask(ops, SEED, OFFSET, 2, 33, 6, 0.5)
    assert torch.equal(first, native_mask(ops, SEED, OFFSET, 2, 33, 6, 0.5))
    for seed, offset in ((SEED, OFFSET + 1), (SEED + 1, OFFSET), (-SEED, OFFSET)):
        other = native_mask(ops, seed, offset, 2, 33, 6, 0.5)
        assert torch.equal(other, dropout_keep_mask(seed, offset, (2, 33, 6), 0.5))
        assert (other != first).double().mean().item() > 0.3  # independent masks differ in about half


def grads_with_mask(ops, a, tau, scale, groups, p, grad_out, dtype):
    """(kernel out, kernel grads, reference out, reference grads in `dtype`) with one Philox mask."""
    B, T, _ = a["x"].shape
    keep = dropout_keep_mask(SEED, OFFSET, (B, T, a["down_w"].shape[0]), p, a["x"].device)
    leaves = {k: (None if v is None else v.detach().to(dtype).requires_grad_()) for k, v in a.items()}
    ref_out = mm_adapter_reference(**leaves, temperature=tau, scale=scale, groups=groups, dropout=p, dropout_mask=keep)
    ref_out.backward(grad_out.to(dtype))
    ref = {k: v.grad for k, v in leaves.items() if v is not None}
    args = native_args(a)
    out = ops.mm_adapter(*args, tau, scale, groups, p, SEED, OFFSET)
    got = dict(zip(["x"] + NAMES, ops.mm_adapter_backward(grad_out, *args, tau, scale, groups, p, SEED, OFFSET)))
    return out, got, ref_out.detach(), ref


def check_dropout_parity(ops, shape, p=0.3, dtype=torch.float32, device="cpu"):
    """fp32: within 1e-5 of the fp64 reference (or twice the fp32 reference's error); bf16: the 2x rule."""
    B, T, D, r, groups, P = shape
    a = make_inputs(*shape, dtype=dtype, device=device)
    grad_out = torch.randn(B, T, D, generator=torch.Generator().manual_seed(1)).to(device=device, dtype=dtype)
    exact_dtype = torch.float64 if dtype == torch.float32 else torch.float32
    out, got, exact_out, exact = grads_with_mask(ops, a, 5.0, 0.7, groups, p, grad_out, exact_dtype)
    _, _, low_out, low = grads_with_mask(ops, a, 5.0, 0.7, groups, p, grad_out, dtype)
    floor = 1e-5 if dtype == torch.float32 else 1e-3
    assert out.dtype == dtype and rel_err(out, exact_out) <= max(floor, 2 * rel_err(low_out, exact_out))
    for name, g in exact.items():
        assert got[name].shape == g.shape, name
        assert rel_err(got[name], g) <= max(floor, 2 * rel_err(low[name], g)), name
    plain = ops.mm_adapter(*native_args(a), 5.0, 0.7, groups)
    assert rel_err(out, plain) > 1e-3  # the mask changed the output


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_kernel_with_dropout_matches_reference_with_the_same_mask(shape, dtype):
    check_dropout_parity(torch.ops.minilvlm, shape, dtype=dtype)


@pytest.mark.parametrize("capability", ["default", "avx512"])
def test_other_cpu_paths_with_dropout(capability):
    """The portable loops (default) and the fp32-arithmetic AVX-512F path that bf16 tokens take without
    AVX512_BF16 (avx512) apply the same mask."""
    if capability == "avx512" and minilvlm.ops.cpu_capability() not in ("avx512_bf16", "avx512"):
        pytest.skip(f"this CPU has no AVX-512F ({minilvlm.ops.cpu_capability()})")
    run_with_capability(capability, "from tests.ops.test_mm_adapter_dropout_op import check_dropout_parity, SHAPES;"
                        "[check_dropout_parity(torch.ops.minilvlm, s, dtype=d) for s in SHAPES[:2]"
                        " for d in (torch.float32, torch.bfloat16, torch.float16)]")


def test_gradcheck_float64_with_dropout():
    a = make_inputs(2, 3, 10, 4, 2, 2, dtype=torch.float64)
    leaves = tuple(v.requires_grad_() for v in native_args(a))
    fn = lambda *args: torch.ops.minilvlm.mm_adapter(*args, 3.0, 0.8, 2, 0.4, SEED, OFFSET)  # noqa: E731
    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-7)


def test_opcheck_with_dropout():
    a = make_inputs(2, 5, 74, 8, 2, 2)
    args = tuple(v.requires_grad_() for v in native_args(a)) + (5.0, 0.7, 2, 0.1, SEED, OFFSET)
    torch.library.opcheck(torch.ops.minilvlm.mm_adapter.default, args)
    torch.library.opcheck(torch.ops.minilvlm.mm_adapter_backward.default,
                          (torch.randn(2, 5, 74),) + tuple(v.detach() for v in args[:8]) + args[8:],
                          test_utils=("test_schema", "test_faketensor"))


def test_public_function_with_dropout_autograd_and_seeds():
    """Given seed and offset, the public function's forward and autograd backward match the reference with that
    mask; without a seed it draws one from torch's default generator (the same after manual_seed)."""
    a = make_inputs(3, 5, 74, 8, 2, 2)
    leaves = {k: v.clone().requires_grad_() for k, v in a.items()}
    out = mm_adapter(**leaves, temperature=5.0, scale=0.5, groups=2, dropout=0.2, seed=SEED, offset=OFFSET)
    out.backward(torch.ones_like(out))
    keep = dropout_keep_mask(SEED, OFFSET, (3, 5, 8), 0.2)
    ref_leaves = {k: v.detach().double().requires_grad_() for k, v in a.items()}
    ref = mm_adapter_reference(**ref_leaves, temperature=5.0, scale=0.5, groups=2, dropout=0.2, dropout_mask=keep)
    ref.backward(torch.ones_like(ref))
    assert rel_err(out.detach(), ref.detach()) <= 1e-5
    for name, v in leaves.items():
        assert rel_err(v.grad, ref_leaves[name].grad) <= 1e-4, name
    runs = []
    for _ in range(2):
        torch.manual_seed(11)
        runs.append(mm_adapter(**a, temperature=5.0, scale=0.5, groups=2, dropout=0.2))
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], out.detach())


def test_bad_dropout_raises_a_clear_error():
    a = make_inputs(2, 5, 74, 8, 2, 2)
    for p in (1.0, -0.1):
        with pytest.raises(RuntimeError, match=r"mm_adapter: dropout must lie in \[0, 1\), got"):
            torch.ops.minilvlm.mm_adapter(*native_args(a), 5.0, 1.0, 2, p, 0, 0)
        with pytest.raises(ValueError, match=r"mm_adapter: dropout must lie in \[0, 1\), got"):
            mm_adapter(**a, temperature=5.0, scale=1.0, groups=2, dropout=p)


# ---------------------------------------------------------------------------------------
# The CUDA kernels under the emulator.

@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_emulated_kernels_with_dropout_match_reference(emu, shape, dtype):
    check_dropout_parity(emu, shape, dtype=dtype)


def test_emulated_mask_is_the_cpu_mask(emu):
    """The same seed gives the same mask on every backend: the mask is a pure function of (seed, offset, i)."""
    assert torch.equal(native_mask(emu, SEED, OFFSET, 2, 37, 6, 0.1), dropout_keep_mask(SEED, OFFSET, (2, 37, 6), 0.1))


def test_emulated_opcheck_with_dropout(emu):
    register_on_emulator(register_mm_adapter)
    a = make_inputs(2, 5, 74, 8, 2, 2)
    args = tuple(v.requires_grad_() for v in native_args(a)) + (5.0, 0.7, 2, 0.1, SEED, OFFSET)
    torch.library.opcheck(emu.mm_adapter.default, args)


def test_emulated_forward_tiles_on_the_h100_grid_at_lavins_batch(emu):
    """B=4, T=512 (LaVIN's batch) on an H100 (132 SMs): the forward takes 4 tokens per block, 128 x 4 = 512
    blocks, about 4 per SM (tiles of 16 gave 128 blocks, under one per SM). D = 264 makes the channel loops
    take two passes of the 256-thread block, with a tail."""
    emu.set_gpu("H100")
    emu.clear_recent_launches()
    check_dropout_parity(emu, (4, 512, 264, 8, 2, 2), p=0.1)
    assert launched_grid(emu, "mm_adapter_forward_kernel") == "(128,4,1)"
