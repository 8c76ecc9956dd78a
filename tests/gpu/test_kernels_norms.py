"""The CUDA kernels of rms_norm, layer_norm, swiglu and gelu on a real GPU, against the plain-PyTorch
references at LLaMA-7B's shapes (2048 tokens, dim 4096, MLP 11008), forward and backward, in float32
(1e-5) and bf16/fp16 (twice the reference's own low-precision error). Skipped here (no CUDA device);
run by tools/gpu_check.sh. The emulated kernels are checked on every machine (tests/ops/)."""
import pytest
import torch

from minilvlm.ops import (gelu, gelu_reference, layer_norm, layer_norm_reference, rms_norm, rms_norm_reference, swiglu,
                          swiglu_reference)
from tests.ops.rowwise_checks import assert_within_twice_torch, grads_of, rel_err

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]
TOKENS, DIM, MLP = 2048, 4096, 11008
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def cuda_randn(*shape, dtype, seed, scale=1.0, shift=0.0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return (torch.randn(*shape, generator=g, device="cuda") * scale + shift).to(dtype)


def check(ours_fn, reference_fn, inputs, grad_outputs, dtype):
    """Outputs and gradients of ours_fn against reference_fn in float32 (and in dtype for the 2x rule)."""
    def outputs_and_grads(fn, cast):
        xs = [None if t is None else t.to(cast) for t in inputs]
        gs = [None if g is None else g.to(cast) for g in grad_outputs]
        with torch.no_grad():
            outs = fn(*xs)
        outs = outs if isinstance(outs, tuple) else (outs,)
        return [o for o in outs], [g for g in grads_of(fn, xs, gs) if g is not None]

    ours = outputs_and_grads(ours_fn, dtype)
    ref32 = outputs_and_grads(reference_fn, torch.float32)
    ref_low = outputs_and_grads(reference_fn, dtype)
    for a, b, c in zip(ours[0] + ours[1], ref32[0] + ref32[1], ref_low[0] + ref_low[1]):
        if dtype == torch.float32:
            assert rel_err(a, b) <= 1e-5
        else:
            assert_within_twice_torch(a, b, c)
    torch.cuda.synchronize()


@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm_with_residual_on_cuda(dtype):
    x, r = cuda_randn(TOKENS, DIM, dtype=dtype, seed=0), cuda_randn(TOKENS, DIM, dtype=dtype, seed=1, scale=2.0)
    w = cuda_randn(DIM, dtype=dtype, seed=2, scale=0.2, shift=1.0)
    grads = (cuda_randn(TOKENS, DIM, dtype=dtype, seed=3), cuda_randn(TOKENS, DIM, dtype=dtype, seed=4))
    check(lambda a, b, c: rms_norm(a, c, 1e-6, residual=b), lambda a, b, c: rms_norm_reference(a, c, 1e-6, residual=b),
          (x, r, w), grads, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dim", [DIM, MLP])  # 11008 floats x 2 do not fit the shared-memory accumulator
def test_layer_norm_on_cuda(dtype, dim):
    x = cuda_randn(TOKENS, dim, dtype=dtype, seed=0, scale=2.0, shift=0.5)
    w, b = cuda_randn(dim, dtype=dtype, seed=1, scale=0.2, shift=1.0), cuda_randn(dim, dtype=dtype, seed=2, scale=0.1)
    check(layer_norm, layer_norm_reference, (x, w, b), (cuda_randn(TOKENS, dim, dtype=dtype, seed=3),), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_swiglu_on_cuda(dtype):
    gate, up = cuda_randn(TOKENS, MLP, dtype=dtype, seed=0, scale=3.0), cuda_randn(TOKENS, MLP, dtype=dtype, seed=1)
    check(swiglu, swiglu_reference, (gate, up), (cuda_randn(TOKENS, MLP, dtype=dtype, seed=3),), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("form", ["none", "tanh", "quick"])
def test_gelu_on_cuda(dtype, form):
    x = cuda_randn(TOKENS, MLP, dtype=dtype, seed=0, scale=3.0)
    check(lambda a: gelu(a, form), lambda a: gelu_reference(a, form), (x,),
          (cuda_randn(TOKENS, MLP, dtype=dtype, seed=3),), dtype)


def test_odd_shapes_and_unaligned_rows_on_cuda():
    """Rows that are not a whole number of 16-byte packs take the one-element path."""
    for dim in (1, 7, 97, 1025):
        x, w = cuda_randn(3, 5, dim, dtype=torch.bfloat16, seed=0), cuda_randn(dim, dtype=torch.bfloat16, seed=1)
        ref = rms_norm_reference(x.float(), w.float(), 1e-6, residual=x.float())[0]
        assert_within_twice_torch(rms_norm(x, w, 1e-6, residual=x)[0], ref,
                                  rms_norm_reference(x, w, 1e-6, residual=x)[0])
        unaligned = x.float().flatten()[1:]  # its data 4 bytes past a 16-byte boundary
        assert rel_err(gelu(unaligned, "none"), gelu_reference(unaligned)) <= 1e-5
        assert rel_err(swiglu(unaligned, unaligned), swiglu_reference(unaligned, unaligned)) <= 1e-5
