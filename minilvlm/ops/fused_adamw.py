"""fused_adamw_: one AdamW step over flat buffers.

    fused_adamw_(param, grad, exp_avg, exp_avg_sq, master, seg_bounds, seg_lr, seg_wd, seg_step,
                 beta1, beta2, eps, grad_scale=None, found_inf=None) -> None   (updates its buffers in place)

  param, grad          flat 1-D buffers of one dtype (float32, bfloat16 or float16; the reference
                       also takes float64)
  exp_avg, exp_avg_sq  flat float32 moments (float64 beside float64 params)
  master               flat float32 master weights beside bf16/fp16 params, or None
  seg_bounds           [begin0, end0, begin1, end1, ...]: the segments to update
  seg_lr, seg_wd       per-segment lr and weight decay
  seg_step             per-segment step count after this step (1 on the first step)
  beta1, beta2, eps    AdamW constants
  grad_scale           None or a 1-element float32 tensor multiplying every grad
  found_inf            None or a 1-element float32 tensor on param's device; non-zero skips the step:
                       param, master and both moments are left exactly as they were. The kernels read
                       it on the device, so deciding to skip costs the caller no host sync.

Each segment follows torch.optim.AdamW's single-tensor update, op for op. With master weights the
update runs on the float32 master and param receives its rounded copy.

The multi-tensor entry takes lists in place of flat buffers (FSDP2's local shards, or any params
whose storage the optimizer does not own):

    fused_adamw_multi_(params, grads, exp_avgs, exp_avg_sqs, masters, lrs, weight_decays, steps,
                       beta1, beta2, eps, grad_scale=None, found_inf=None) -> None

  params, grads        equal-length lists of contiguous tensors, each grad shaped and typed as its param
  exp_avgs, exp_avg_sqs  float32 moments shaped as the params (float64 beside float64 params)
  masters              [] or float32 masters, one per param, beside bf16/fp16 params
  lrs, weight_decays, steps  one value per tensor
It follows the same numerics contract as the flat op, tensor by tensor. The native op takes one param
dtype per call; lists mixing dtypes run the native op once per dtype.

Native ops (schemas in csrc/common/schemas.h; kernels csrc/cpu/fused_adamw.cpp and
csrc/cuda/fused_adamw.cu):
  minilvlm::fused_adamw_(param!, grad, exp_avg!, exp_avg_sq!, master!?, seg_bounds, seg_lr, seg_wd,
                         seg_step, beta1, beta2, eps, grad_scale?, found_inf?=None) -> ()
  minilvlm::fused_adamw_multi_(params![], grads[], exp_avgs![], exp_avg_sqs![], masters![], lrs, weight_decays,
                               steps, beta1, beta2, eps, grad_scale?, found_inf?) -> ()
The CPU kernel makes one parallel pass over all the tensors; the CUDA kernel one launch per table of
up to 32 tensors and 256 chunks of 65536 elements (csrc/cuda/fused_adamw_kernels.cuh).
It has no autograd: an optimizer step runs outside the graph.
"""
import math

import torch

from minilvlm.ops._registry import check_same_device, use_native

_NATIVE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _schema_args(param, grad, exp_avg, exp_avg_sq, master, seg_bounds, seg_lr, seg_wd, seg_step, beta1, beta2, eps,
                 grad_scale, found_inf):
    """The arguments as the native op's schema takes them: lists for int[] and float[], floats for float."""
    return (param, grad, exp_avg, exp_avg_sq, master, list(seg_bounds), [float(x) for x in seg_lr],
            [float(x) for x in seg_wd], [int(x) for x in seg_step], float(beta1), float(beta2), float(eps),
            grad_scale, found_inf)


def _adamw_segment(w, g, m, v, lr, wd, step, beta1, beta2, eps):
    """torch.optim.AdamW's single-tensor update of one segment, in place on w, m and v."""
    w.mul_(1 - lr * wd)
    m.lerp_(g, 1 - beta1)
    v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    bias_correction1 = 1 - beta1 ** step
    bias_correction2_sqrt = math.sqrt(1 - beta2 ** step)
    denom = (v.sqrt() / bias_correction2_sqrt).add_(eps)
    w.addcdiv_(m, denom, value=-lr / bias_correction1)


def fused_adamw_reference(param, grad, exp_avg, exp_avg_sq, master, seg_bounds, seg_lr, seg_wd, seg_step,
                          beta1, beta2, eps, grad_scale=None, found_inf=None):
    """The specification: torch.optim.AdamW's single-tensor update, segment by segment. With found_inf
    every result is selected on the device (torch.where) between the update and the old value, so the
    reference never reads the flag on the host either."""
    compute = torch.float64 if param.dtype == torch.float64 else torch.float32
    keep = None if found_inf is None else found_inf.reshape(()) == 0
    for i, (lr, wd, step) in enumerate(zip(seg_lr, seg_wd, seg_step)):
        begin, end = seg_bounds[2 * i], seg_bounds[2 * i + 1]
        weights = (master if master is not None else param)[begin:end]
        g = grad[begin:end].to(compute)
        if grad_scale is not None:
            g = g * grad_scale.to(compute)
        m, v = exp_avg[begin:end], exp_avg_sq[begin:end]
        if keep is None:
            w = weights.to(compute)
            _adamw_segment(w, g, m, v, lr, wd, step, beta1, beta2, eps)
            if master is not None:
                master[begin:end].copy_(w)
            param[begin:end].copy_(w)
            continue
        w, m_new, v_new = weights.to(compute, copy=True), m.clone(), v.clone()
        _adamw_segment(w, g, m_new, v_new, lr, wd, step, beta1, beta2, eps)
        m.copy_(torch.where(keep, m_new, m))
        v.copy_(torch.where(keep, v_new, v))
        if master is not None:
            master[begin:end].copy_(torch.where(keep, w, master[begin:end]))
        param[begin:end].copy_(torch.where(keep, w.to(param.dtype), param[begin:end]))


def fused_adamw_(param, grad, exp_avg, exp_avg_sq, master, seg_bounds, seg_lr, seg_wd, seg_step,
                 beta1, beta2, eps, grad_scale=None, found_inf=None):
    """One AdamW step in place; the native kernel where one serves this device and dtype."""
    args = _schema_args(param, grad, exp_avg, exp_avg_sq, master, seg_bounds, seg_lr, seg_wd, seg_step, beta1, beta2,
                        eps, grad_scale, found_inf)
    if param.dtype in _NATIVE_DTYPES and use_native(param.device):
        torch.ops.minilvlm.fused_adamw_(*args)
    else:
        fused_adamw_reference(*args)


def _multi_schema_args(params, grads, exp_avgs, exp_avg_sqs, masters, lrs, weight_decays, steps, beta1, beta2, eps,
                       grad_scale, found_inf):
    return (list(params), list(grads), list(exp_avgs), list(exp_avg_sqs), list(masters or []),
            [float(x) for x in lrs], [float(x) for x in weight_decays], [int(x) for x in steps],
            float(beta1), float(beta2), float(eps), grad_scale, found_inf)


def check_multi_lists(params, grads, exp_avgs, exp_avg_sqs, masters, lrs, weight_decays, steps):
    """Every list as long as params (masters: empty or as long), each tensor shaped as its param."""
    n = len(params)
    lengths = dict(grads=grads, exp_avgs=exp_avgs, exp_avg_sqs=exp_avg_sqs, lrs=lrs, weight_decays=weight_decays,
                   steps=steps, **({"masters": masters} if masters else {}))
    for name, values in lengths.items():
        if len(values) != n:
            raise ValueError(f"fused_adamw_multi_: {name} has {len(values)} entries but params has {n}")
    for i, p in enumerate(params):
        for name, values in (("grads", grads), ("exp_avgs", exp_avgs), ("exp_avg_sqs", exp_avg_sqs),
                             ("masters", masters or None)):
            if values is not None and values[i].shape != p.shape:
                raise ValueError(f"fused_adamw_multi_: {name}[{i}] has shape {tuple(values[i].shape)} but "
                                 f"params[{i}] has {tuple(p.shape)}")
        if grads[i].dtype != p.dtype:
            raise ValueError(f"fused_adamw_multi_: grads[{i}] is {grads[i].dtype} but params[{i}] is {p.dtype}")


def fused_adamw_multi_reference(params, grads, exp_avgs, exp_avg_sqs, masters, lrs, weight_decays, steps,
                                beta1, beta2, eps, grad_scale=None, found_inf=None):
    """The specification: the flat reference on each tensor as a one-segment buffer."""
    for i, p in enumerate(params):
        master = masters[i].view(-1) if masters else None
        fused_adamw_reference(p.view(-1), grads[i].view(-1), exp_avgs[i].view(-1), exp_avg_sqs[i].view(-1), master,
                              [0, p.numel()], [lrs[i]], [weight_decays[i]], [steps[i]], beta1, beta2, eps,
                              grad_scale, found_inf)


def _multi_native_available():
    return hasattr(torch.ops.minilvlm, "fused_adamw_multi_")


def fused_adamw_multi_(params, grads, exp_avgs, exp_avg_sqs, masters, lrs, weight_decays, steps, beta1, beta2, eps,
                       grad_scale=None, found_inf=None):
    """One AdamW step in place over lists of tensors; the native kernel where one serves them."""
    check_multi_lists(params, grads, exp_avgs, exp_avg_sqs, masters, lrs, weight_decays, steps)
    if not params:
        return
    args = _multi_schema_args(params, grads, exp_avgs, exp_avg_sqs, masters, lrs, weight_decays, steps, beta1, beta2,
                              eps, grad_scale, found_inf)
    native = all(p.dtype in _NATIVE_DTYPES and p.is_contiguous() for p in params) and _multi_native_available()
    if native and use_native(params[0].device):
        for call_args in _split_by_dtype(args):
            torch.ops.minilvlm.fused_adamw_multi_(*call_args)
    else:
        fused_adamw_multi_reference(*args)


def _split_by_dtype(args):
    """The schema arguments as one call per param dtype, in order of first appearance (the native op
    takes one param dtype per call)."""
    params = args[0]
    dtypes = list(dict.fromkeys(p.dtype for p in params))
    if len(dtypes) == 1:
        return [args]
    calls = []
    for dtype in dtypes:
        picked = [i for i, p in enumerate(params) if p.dtype == dtype]
        calls.append(tuple([values[i] for i in picked] if values else values for values in args[:8]) + args[8:])
    return calls


def register_fused_adamw(namespace="minilvlm"):
    """The fake (meta) kernels of `namespace`::fused_adamw_ and ::fused_adamw_multi_, for torch.compile, opcheck
    and meta-device steps.

    minilvlm.ops registers it for minilvlm; tests register it for minilvlm_emu (the emulated CUDA kernel).
    """
    @torch.library.register_fake(f"{namespace}::fused_adamw_")
    def _fake(param, grad, exp_avg, exp_avg_sq, master, seg_bounds, seg_lr, seg_wd, seg_step, beta1, beta2, eps,
              grad_scale, found_inf=None):
        # grad_scale may come from another device (the kernels copy it over); found_inf may not.
        check_same_device("fused_adamw_", "param", param, grad=grad, exp_avg=exp_avg, exp_avg_sq=exp_avg_sq,
                          master=master, found_inf=found_inf)
        for name, t in (("grad", grad), ("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq), ("master", master)):
            if t is not None and t.shape != param.shape:
                raise RuntimeError(f"fused_adamw_: {name} has {t.numel()} elements but param has {param.numel()}")
        return None

    if not hasattr(getattr(torch.ops, namespace), "fused_adamw_multi_"):  # an extension built before it
        return

    @torch.library.register_fake(f"{namespace}::fused_adamw_multi_")
    def _fake_multi(params, grads, exp_avgs, exp_avg_sqs, masters, lrs, weight_decays, steps, beta1, beta2, eps,
                    grad_scale, found_inf):
        # The kernels' checks, in their words: every tensor where params[0] is (grad_scale excepted).
        if not params:
            return None
        op, anchor = "fused_adamw_multi_", params[0]
        check_same_device(op, "params[0]", anchor, found_inf=found_inf)
        for i, p in enumerate(params):
            tensors = dict(grads=grads[i], exp_avgs=exp_avgs[i], exp_avg_sqs=exp_avg_sqs[i],
                           masters=masters[i] if masters else None)
            check_same_device(op, "params[0]", anchor, **{f"params[{i}]": p})
            check_same_device(op, f"params[{i}]", p, **{f"{k}[{i}]": t for k, t in tensors.items()})
            for name, t in tensors.items():
                if t is not None and t.numel() != p.numel():
                    raise RuntimeError(f"{op}: {name}[{i}] has {t.numel()} elements but params[{i}] has {p.numel()}")
        return None
