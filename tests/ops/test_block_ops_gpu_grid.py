"""The fused block ops' CUDA kernels on a GPU-sized grid (docs/emulator.md, "GPU-sized grids").

The emulator's own small grid (3 blocks) makes every grid-stride loop wrap on test shapes; these
tests run each op's kernels under the A100 profile instead, with more rows (or elements, or
positions) than that GPU's grid covers in one pass, so the loops wrap on the grid the real GPU gets.
They check the grid each kernel was launched with (SMs x the op's blocks per SM, from
csrc/cuda/<op>_launch.h) and compare the results with the CPU kernels, which tests/ops/test_<op>_op.py
checks against the plain-PyTorch references. racecheck, memcheck and synccheck are on (the `emu`
fixture)."""
import pytest
import torch

import minilvlm  # noqa: F401  (loads minilvlm._C: the CPU kernels compared against)
from tests.ops.rowwise_checks import assert_matches_native_cpu, randn

GPU = "A100"
# Blocks per SM of each grid-stride kernel (csrc/cuda/<op>_launch.h).
ROW_FORWARD, ROW_BACKWARD, ELEMENTWISE, ROPE, LCE = 16, 2, 8, 8, 8


def grid_x(emu, kernel):
    """gridDim.x of the latest launch of `kernel` (a name inside the launch record)."""
    found = [launch for launch in emu.recent_launches() if kernel in launch]
    assert found, emu.recent_launches()
    return int(found[-1].split(" grid=(")[1].split(",")[0])


@pytest.fixture
def a100(emu):
    emu.set_gpu(GPU)
    emu.clear_recent_launches()
    return emu, emu.gpu_profile(GPU)[0]


def test_rms_norm_on_the_gpu_grid(a100):
    emu, sms = a100
    rows, dim = sms * ROW_FORWARD + 37, 40
    x, r = randn(rows, dim, seed=1), randn(rows, dim, seed=2)
    w = randn(dim, seed=3, shift=1.0)
    assert_matches_native_cpu(emu.rms_norm(x, r, w, 1e-6), torch.ops.minilvlm.rms_norm(x, r, w, 1e-6))
    assert grid_x(emu, "rms_norm_forward_kernel") == sms * ROW_FORWARD
    args = (randn(rows, dim, seed=4), randn(rows, dim, seed=5), x + r, w, 1e-6, True)
    assert_matches_native_cpu(emu.rms_norm_backward(*args), torch.ops.minilvlm.rms_norm_backward(*args))
    assert grid_x(emu, "rms_norm_backward_kernel") == sms * ROW_BACKWARD


def test_layer_norm_on_the_gpu_grid(a100):
    emu, sms = a100
    rows, dim = sms * ROW_FORWARD + 37, 40
    x, w, b = randn(rows, dim, seed=1), randn(dim, seed=2, shift=1.0), randn(dim, seed=3)
    assert_matches_native_cpu([emu.layer_norm(x, w, b, 1e-5)], [torch.ops.minilvlm.layer_norm(x, w, b, 1e-5)])
    assert grid_x(emu, "layer_norm_forward_kernel") == sms * ROW_FORWARD
    args = (randn(rows, dim, seed=4), x, w, 1e-5, True, True)
    assert_matches_native_cpu(emu.layer_norm_backward(*args), torch.ops.minilvlm.layer_norm_backward(*args))
    assert grid_x(emu, "layer_norm_backward_kernel") == sms * ROW_BACKWARD


def elementwise_size(sms):
    """fp32 elements past one pass of the grid: each thread takes packs of 4 floats."""
    return sms * ELEMENTWISE * 256 * 4 + 4099


def test_swiglu_on_the_gpu_grid(a100):
    emu, sms = a100
    n = elementwise_size(sms)
    gate, up, grad = randn(n, seed=1), randn(n, seed=2), randn(n, seed=3)
    assert_matches_native_cpu([emu.swiglu(gate, up)], [torch.ops.minilvlm.swiglu(gate, up)])
    assert grid_x(emu, "swiglu_forward_kernel") == sms * ELEMENTWISE
    assert_matches_native_cpu(emu.swiglu_backward(grad, gate, up), torch.ops.minilvlm.swiglu_backward(grad, gate, up))
    assert grid_x(emu, "swiglu_backward_kernel") == sms * ELEMENTWISE


def test_gelu_on_the_gpu_grid(a100):
    emu, sms = a100
    n = elementwise_size(sms)
    x, grad = randn(n, seed=1), randn(n, seed=2)
    assert_matches_native_cpu([emu.gelu(x, "tanh")], [torch.ops.minilvlm.gelu(x, "tanh")])
    assert grid_x(emu, "gelu_forward_kernel") == sms * ELEMENTWISE
    assert_matches_native_cpu([emu.gelu_backward(grad, x, "none")], [torch.ops.minilvlm.gelu_backward(grad, x, "none")])
    assert grid_x(emu, "gelu_backward_kernel") == sms * ELEMENTWISE


def test_rope_on_the_gpu_grid(a100):
    emu, sms = a100
    positions, half = sms * ROPE + 29, 4
    q, k = randn(1, 2, positions, 10, seed=1), randn(1, 1, positions, 10, seed=2)   # partial rotary: 8 of 10
    angles = torch.arange(positions, dtype=torch.float32)[None, :, None] * torch.rand(half, generator=torch.Generator().manual_seed(5))
    cos, sin = angles.cos().contiguous(), angles.sin().contiguous()
    q_cpu, k_cpu = q.clone(), k.clone()
    emu.rope_(q, k, cos, sin)
    torch.ops.minilvlm.rope_(q_cpu, k_cpu, cos, sin)
    assert_matches_native_cpu([q, k], [q_cpu, k_cpu])
    assert grid_x(emu, "rope") == sms * ROPE
    grad = randn(1, 2, positions, 10, seed=3)
    assert_matches_native_cpu([emu.rope_backward(grad, cos, sin)], [torch.ops.minilvlm.rope_backward(grad, cos, sin)])


def test_linear_cross_entropy_on_the_gpu_grid(a100):
    emu, sms = a100
    rows, dim, vocab = sms * LCE + 41, 16, 37
    hidden, weight, bias = randn(rows, dim, seed=1), randn(vocab, dim, seed=2, scale=0.3), randn(vocab, seed=3)
    targets = torch.randint(0, vocab, (rows,), generator=torch.Generator().manual_seed(4))
    args = (hidden, weight, bias, targets, torch.float32, rows, [True, True, True])   # one chunk of all rows
    assert_matches_native_cpu(emu.linear_cross_entropy(*args), torch.ops.minilvlm.linear_cross_entropy(*args))
    assert grid_x(emu, "lce_row_stats_kernel") == sms * LCE
