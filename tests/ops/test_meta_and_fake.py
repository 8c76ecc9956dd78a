"""Every op on meta tensors (forward and backward through the native ops' fake kernels) and under
FakeTensorMode with CUDA tensors (forward; their backward needs a GPU): right shapes and dtypes, the
native op is the one that ran, no tensor is made on the CPU, and tensors on two devices are refused
in the kernels' words."""
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import minilvlm
from minilvlm.ops import fused_adamw_, mm_adapter, patch_embed
from tests.ops.dispatch_log import DispatchLog

pytestmark = pytest.mark.skipif(not minilvlm.ops.native_available(), reason="minilvlm._C is not built")

LOW = [torch.float32, torch.bfloat16, torch.float16]


def patch_embed_inputs(device, dtype, requires_grad=False):
    """ViT-style: 2 images of 28x42 uint8 pixels, patch 14 (6 patches), D=40, class token."""
    def param(*shape):
        return torch.empty(*shape, device=device, dtype=dtype).requires_grad_(requires_grad)
    pixels = torch.empty(2, 3, 28, 42, device=device, dtype=torch.uint8)
    return (pixels, param(40, 3, 14, 14), param(40), param(7, 40)), dict(patch_size=14, cls_token=param(40),
                                                                          mean=(0.5,) * 3, std=(0.25,) * 3)


def mm_adapter_inputs(device, dtype, requires_grad=False, router=True):
    """B=2, T=9, D=74 tokens in `dtype`, float32 parameters, r=8, groups=2, P=2 (P=1 without a router)."""
    def t(*shape, dt=torch.float32):
        return torch.empty(*shape, device=device, dtype=dt).requires_grad_(requires_grad)
    P = 2 if router else 1
    routing = dict(t=t(2, 74), router_w=t(P, 74), router_b=t(P)) if router else dict(t=None, router_w=None,
                                                                                     router_b=None)
    return dict(x=t(2, 9, 74, dt=dtype), **routing, down_w=t(8, 74), down_b=t(8), up_w=t(P, 74, 4), up_b=t(P, 74))


def adamw_inputs(device, dtype):
    n = 100
    master = torch.empty(n, device=device) if dtype != torch.float32 else None
    return (torch.empty(n, device=device, dtype=dtype), torch.empty(n, device=device, dtype=dtype),
            torch.zeros(n, device=device), torch.zeros(n, device=device), master, [0, 60, 64, 100],
            [1e-3, 1e-3], [0.1, 0.0], [1, 1], 0.9, 0.999, 1e-8)


@pytest.mark.parametrize("dtype", LOW + [torch.float64])
def test_patch_embed_forward_and_backward_on_meta(dtype):
    args, kwargs = patch_embed_inputs("meta", dtype, requires_grad=True)
    with DispatchLog() as log:
        out = patch_embed(*args, **kwargs)
        out.sum().backward()
    assert out.shape == (2, 7, 40) and out.dtype == dtype and out.device.type == "meta"
    for leaf in (*args[1:], kwargs["cls_token"]):
        assert leaf.grad.shape == leaf.shape and leaf.grad.dtype == dtype and leaf.grad.device.type == "meta"
    assert log.ran("minilvlm.patch_embed.default") and log.ran("minilvlm.patch_embed_backward")
    assert log.ops_on("cpu") == []


@pytest.mark.parametrize("router", [True, False])
@pytest.mark.parametrize("dtype", LOW + [torch.float64])
def test_mm_adapter_forward_and_backward_on_meta(dtype, router):
    inputs = mm_adapter_inputs("meta", dtype, requires_grad=True, router=router)
    with DispatchLog() as log:
        out = mm_adapter(**inputs, temperature=5.0, scale=0.5, groups=2)
        out.sum().backward()
    assert out.shape == (2, 9, 74) and out.dtype == dtype and out.device.type == "meta"
    for name, leaf in inputs.items():
        if leaf is not None:
            assert leaf.grad.shape == leaf.shape and leaf.grad.dtype == leaf.dtype, name
    assert log.ran("minilvlm.mm_adapter.default") and log.ran("minilvlm.mm_adapter_backward")
    assert log.ops_on("cpu") == []


@pytest.mark.parametrize("dtype", LOW)
def test_fused_adamw_on_meta(dtype):
    with DispatchLog() as log:
        fused_adamw_(*adamw_inputs("meta", dtype), grad_scale=torch.ones(1, device="meta"),
                     found_inf=torch.zeros(1, device="meta"))
    assert log.ran("minilvlm.fused_adamw_") and log.ops_on("cpu") == []


@pytest.mark.parametrize("dtype", LOW)
def test_every_op_forward_on_fake_cuda_tensors(dtype):
    with FakeTensorMode(), DispatchLog() as log:
        args, kwargs = patch_embed_inputs("cuda", dtype)
        tokens = patch_embed(*args, **kwargs)
        adapted = mm_adapter(**mm_adapter_inputs("cuda", dtype), temperature=5.0, scale=0.5, groups=2)
        fused_adamw_(*adamw_inputs("cuda", dtype), grad_scale=torch.ones(1, device="cuda"),
                     found_inf=torch.zeros(1, device="cuda"))
    assert tokens.device.type == adapted.device.type == "cuda"
    assert tokens.shape == (2, 7, 40) and tokens.dtype == dtype
    assert adapted.shape == (2, 9, 74) and adapted.dtype == dtype
    for op in ("minilvlm.patch_embed.default", "minilvlm.mm_adapter.default", "minilvlm.fused_adamw_"):
        assert log.ran(op), op
    assert log.ops_on("cpu") == []


@pytest.mark.parametrize("where", ["meta", "fake-cuda"])
def test_tensors_on_two_devices_are_refused(where):
    """A parameter left on the CPU beside meta or CUDA activations fails as it would on the GPU."""
    device = "meta" if where == "meta" else "cuda"
    mode = FakeTensorMode(allow_non_fake_inputs=True) if where == "fake-cuda" else None
    with mode or torch.no_grad():
        inputs = mm_adapter_inputs(device, torch.float32)
        inputs["down_w"] = torch.empty(8, 74, device="cpu") if where == "meta" else inputs["down_w"].cpu()
        with pytest.raises(RuntimeError, match=r"mm_adapter: down_w is on cpu but x is on (meta|cuda)"):
            mm_adapter(**inputs, temperature=5.0, scale=0.5, groups=2)
        bufs = list(adamw_inputs(device, torch.bfloat16))
        with pytest.raises(RuntimeError, match=r"fused_adamw_: found_inf is on cpu but param is on (meta|cuda)"):
            torch.ops.minilvlm.fused_adamw_(*bufs, None, torch.zeros(1))
