"""fused_adamw_: one AdamW step over flat buffers.

    fused_adamw_(param, grad, exp_avg, exp_avg_sq, master, seg_bounds, seg_lr, seg_wd, seg_step,
                 beta1, beta2, eps, grad_scale=None) -> None     (updates its buffers in place)

  param, grad          flat 1-D buffers of one dtype (float32, bfloat16 or float16; the reference
                       also takes float64)
  exp_avg, exp_avg_sq  flat float32 moments (float64 beside float64 params)
  master               flat float32 master weights beside bf16/fp16 params, or None
  seg_bounds           [begin0, end0, begin1, end1, ...]: the segments to update
  seg_lr, seg_wd       per-segment lr and weight decay
  seg_step             per-segment step count after this step (1 on the first step)
  beta1, beta2, eps    AdamW constants
  grad_scale           None or a 1-element float32 tensor multiplying every grad

Each segment follows torch.optim.AdamW's single-tensor update, op for op. With master weights the
update runs on the float32 master and param receives its rounded copy.

Native op (schema in csrc/common/schemas.h; kernels csrc/cpu/fused_adamw.cpp and
csrc/cuda/fused_adamw.cu):
  minilvlm::fused_adamw_(param!, grad, exp_avg!, exp_avg_sq!, master!?, seg_bounds, seg_lr, seg_wd,
                         seg_step, beta1, beta2, eps, grad_scale?) -> ()
It has no autograd: an optimizer step runs outside the graph.
"""
import math

import torch

from minilvlm.ops._registry import use_native

_NATIVE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _schema_args(param, grad, exp_avg, exp_avg_sq, master, seg_bounds, seg_lr, seg_wd, seg_step, beta1, beta2, eps,
                 grad_scale):
    """The arguments as the native op's schema takes them: lists for int[] and float[], floats for float."""
    return (param, grad, exp_avg, exp_avg_sq, master, list(seg_bounds), [float(x) for x in seg_lr],
            [float(x) for x in seg_wd], [int(x) for x in seg_step], float(beta1), float(beta2), float(eps),
            grad_scale)


def fused_adamw_reference(param, grad, exp_avg, exp_avg_sq, master, seg_bounds, seg_lr, seg_wd, seg_step,
                          beta1, beta2, eps, grad_scale=None):
    """The specification: torch.optim.AdamW's single-tensor update, segment by segment."""
    compute = torch.float64 if param.dtype == torch.float64 else torch.float32
    for i, (lr, wd, step) in enumerate(zip(seg_lr, seg_wd, seg_step)):
        begin, end = seg_bounds[2 * i], seg_bounds[2 * i + 1]
        weights = (master if master is not None else param)[begin:end]
        w = weights.to(compute)
        g = grad[begin:end].to(compute)
        if grad_scale is not None:
            g = g * grad_scale.to(compute)
        m, v = exp_avg[begin:end], exp_avg_sq[begin:end]
        w.mul_(1 - lr * wd)
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        bias_correction1 = 1 - beta1 ** step
        bias_correction2_sqrt = math.sqrt(1 - beta2 ** step)
        denom = (v.sqrt() / bias_correction2_sqrt).add_(eps)
        w.addcdiv_(m, denom, value=-lr / bias_correction1)
        if master is not None:
            master[begin:end].copy_(w)
        param[begin:end].copy_(w)


def fused_adamw_(param, grad, exp_avg, exp_avg_sq, master, seg_bounds, seg_lr, seg_wd, seg_step,
                 beta1, beta2, eps, grad_scale=None):
    """One AdamW step in place; the native kernel where one serves this device and dtype."""
    args = _schema_args(param, grad, exp_avg, exp_avg_sq, master, seg_bounds, seg_lr, seg_wd, seg_step, beta1, beta2,
                        eps, grad_scale)
    if param.dtype in _NATIVE_DTYPES and use_native(param.device):
        torch.ops.minilvlm.fused_adamw_(*args)
    else:
        fused_adamw_reference(*args)


def register_fused_adamw(namespace="minilvlm"):
    """The fake (meta) kernel of `namespace`::fused_adamw_, for torch.compile and opcheck.

    minilvlm.ops registers it for minilvlm; tests register it for minilvlm_emu (the emulated CUDA kernel).
    """
    @torch.library.register_fake(f"{namespace}::fused_adamw_")
    def _fake(param, grad, exp_avg, exp_avg_sq, master, seg_bounds, seg_lr, seg_wd, seg_step, beta1, beta2, eps,
              grad_scale):
        return None
