"""linear_cross_entropy: the LM head and its cross-entropy as one op, chunk by chunk.

    linear_cross_entropy(hidden, weight, bias, targets, *, compute_dtype=None, chunk_rows=None) -> loss

  hidden         [N, D]: the final hidden states of the N positions that have a target
  weight, bias   the LM head, [V, D] and [V] or None
  targets        [N] int64 in [0, V)
  compute_dtype  the dtype of the head's GEMMs (the autocast dtype when autocast is on); default
                 hidden's. The softmax, the log-sum-exp and the loss run in fp32.
  chunk_rows     rows of logits per chunk; default max(16M / V, D): a chunk holds about 64 MB of
                 fp32-sized logits, or as many logits as the head has weights where that is more
                 (fewer rows than D per chunk, and each chunk's pass over grad_weight's V x D sum
                 starts to weigh against its GEMMs)

Returns the summed cross-entropy: float32, float64 when computing in float64. The kernels take
float32, bfloat16 and float16 (inputs and compute dtype); float64 runs the reference.

The gradients come out of the forward pass: each chunk's logits (one GEMM into one reused buffer in
compute_dtype) are reduced row by row to the log-sum-exp and the loss, then overwritten in place by
softmax - one_hot, which two GEMMs turn into the chunk's rows of grad_hidden and its part of
grad_weight while it is in memory. grad_weight comes out in weight's dtype: the GEMM writes it
directly where it can (fp32, or a single chunk), else the chunks' parts are summed in fp32 and
rounded once. grad_bias is summed in fp32. No logits outlive their chunk, and no fp32 logits exist
beyond the row being reduced. The backward scales the saved gradients by the incoming one, in one
pass into the inputs' dtypes (grad_weight is already in its own, so at LLaMA width that pass reads
and writes 2 bytes per head weight in bf16, not the 4 + 4 + 4 + 2 of an fp32 product and a cast).
Nothing is read back to the host in either direction.

Native op (schema in csrc/common/schemas.h; kernels csrc/cpu/linear_cross_entropy.cpp and
csrc/cuda/linear_cross_entropy.cu):
  minilvlm::linear_cross_entropy(hidden, weight, bias?, targets, compute_dtype, chunk_rows,
                                 output_mask) -> (loss, grad_hidden, grad_weight, grad_bias)
output_mask says which of (hidden, weight, bias) need a gradient; the others come back empty.
grad_hidden is in compute_dtype, grad_weight in weight's dtype, grad_bias in float32.
"""
import contextlib

import torch
import torch.nn.functional as F

from minilvlm.ops._registry import use_native

_NATIVE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# Rows per chunk so that one chunk of fp32 logits would stay near 64 MB; at least D rows, though. Every
# chunk after the first adds its part of grad_weight to a V x D sum: 12 bytes per head weight in bf16
# (write the part, read it and the fp32 sum, write the sum) against the chunk's 6 * rows FLOP per
# weight: 2 / rows bytes per FLOP. On an H100 (989 TFLOP/s, 3.35 TB/s) that is ~14% of the chunk's
# GEMM time with rows = D = 4,096 (LLaMA-7B), and 8x as much with the 524 rows that 64 MB gives a
# 32,000 vocabulary. A chunk of D rows holds V x D logits: the head's own size.
_CHUNK_ELEMENTS = 16 * 1024 * 1024


def _same_device(hidden, tensors):
    """The kernels' device check, raised before dispatch and by the fake with the same wording."""
    for name, t in tensors:
        if t is not None and t.device != hidden.device:
            raise RuntimeError(f"linear_cross_entropy: {name} is on {t.device} but hidden is on {hidden.device} "
                               "(one device for all)")


def _check(hidden, weight, bias, targets, chunk_rows):
    """The native op's checks, raised before dispatch with the same wording (ValueError/TypeError)."""
    op = "linear_cross_entropy"
    if hidden.dim() != 2:
        raise ValueError(f"{op}: hidden must be 2-D [N, D], got shape {list(hidden.shape)}")
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[1] or weight.shape[0] == 0:
        raise ValueError(f"{op}: weight must be [V, {hidden.shape[1]}] with V > 0 for hidden of shape "
                         f"{list(hidden.shape)}, got {list(weight.shape)}")
    if bias is not None and list(bias.shape) != [weight.shape[0]]:
        raise ValueError(f"{op}: bias must be [{weight.shape[0]}], got {list(bias.shape)}")
    if list(targets.shape) != [hidden.shape[0]]:
        raise ValueError(f"{op}: targets must be [{hidden.shape[0]}], one per row of hidden, got {list(targets.shape)}")
    if targets.dtype != torch.int64:
        raise TypeError(f"{op}: targets must be int64, got {targets.dtype}")
    for name, t in (("hidden", hidden), ("weight", weight), ("bias", bias)):
        if t is not None and not t.dtype.is_floating_point:
            raise TypeError(f"{op}: {name} must be a float tensor, got {t.dtype}")
    if chunk_rows is not None and (not isinstance(chunk_rows, int) or chunk_rows <= 0):
        raise ValueError(f"{op}: chunk_rows must be a positive int, got {chunk_rows!r}")
    _same_device(hidden, (("weight", weight), ("targets", targets), ("bias", bias)))


def default_chunk_rows(vocab, dim):
    """Rows per chunk when the caller names none: 64 MB of fp32-sized logits, at least `dim` rows."""
    return max(1, _CHUNK_ELEMENTS // vocab, dim)


def _no_autocast(device):
    """A context with autocast off on `device` (the op and the reference cast to compute_dtype themselves)."""
    if device.type in ("cpu", "cuda"):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()  # the meta device (the dry run) has no autocast


def linear_cross_entropy_reference(hidden, weight, bias, targets, *, compute_dtype=None):
    """The specification, in plain PyTorch: all N rows of logits at once, cross-entropy summed in fp32
    (fp64 when computing in fp64). Differentiable by autograd."""
    compute = compute_dtype or hidden.dtype
    logits = F.linear(hidden.to(compute), weight.to(compute), None if bias is None else bias.to(compute))
    logits = logits.to(torch.promote_types(compute, torch.float32))
    return F.cross_entropy(logits, targets, reduction="sum")


def linear_cross_entropy(hidden, weight, bias, targets, *, compute_dtype=None, chunk_rows=None):
    """The summed cross-entropy of hidden @ weight^T + bias against targets; the native kernel where one
    serves this device and these dtypes, the reference otherwise."""
    _check(hidden, weight, bias, targets, chunk_rows)
    compute = compute_dtype or hidden.dtype
    dtypes = [compute] + [t.dtype for t in (hidden, weight, bias) if t is not None]
    with _no_autocast(hidden.device):
        if use_native(hidden.device) and all(d in _NATIVE_DTYPES for d in dtypes):
            rows = chunk_rows or default_chunk_rows(*weight.shape)
            grad_on = torch.is_grad_enabled()
            mask = [grad_on and t is not None and t.requires_grad for t in (hidden, weight, bias)]
            return torch.ops.minilvlm.linear_cross_entropy(hidden, weight, bias, targets, compute, rows, mask)[0]
        return linear_cross_entropy_reference(hidden, weight, bias, targets, compute_dtype=compute)


def _saved_tensors_used_once():
    """Whether the running backward frees the graph after it (no retain_graph), so that no later backward
    reads the saved tensors again: torch's own compiled autograd asks the engine the same question.
    False where this torch does not say."""
    keep_graph = getattr(torch._C._autograd, "_get_current_graph_task_keep_graph", None)
    return keep_graph is not None and not keep_graph() and not torch.compiler.is_compiling()


def register_linear_cross_entropy(namespace="minilvlm"):
    """The fake of `namespace`::linear_cross_entropy and its autograd (the saved gradients, scaled).

    minilvlm.ops registers them for minilvlm; tests may register them for minilvlm_emu (the emulated CUDA kernels).
    """

    @torch.library.register_fake(f"{namespace}::linear_cross_entropy")
    def _fake(hidden, weight, bias, targets, compute_dtype, chunk_rows, output_mask):
        _same_device(hidden, (("weight", weight), ("targets", targets), ("bias", bias)))
        n, d, v = hidden.shape[0], hidden.shape[1], weight.shape[0]
        return (hidden.new_empty((), dtype=torch.float32),
                hidden.new_empty((n, d) if output_mask[0] else (0, 0), dtype=compute_dtype),
                hidden.new_empty((v, d) if output_mask[1] else (0,), dtype=weight.dtype),
                hidden.new_empty((v,) if output_mask[2] and bias is not None else (0,), dtype=torch.float32))

    def _setup_context(ctx, inputs, output):
        hidden, weight, bias = inputs[:3]
        _, grad_hidden, grad_weight, grad_bias = output
        ctx.mark_non_differentiable(grad_hidden, grad_weight, grad_bias)
        # The three saved-gradient outputs never get a gradient: without this, autograd would fill a
        # zero tensor of each (one the size of the LM head) on every backward, only to ignore it.
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
        ctx.inputs = [None if t is None else (t.shape, t.dtype) for t in (hidden, weight, bias)]

    def _backward(ctx, grad_loss, *unused):
        if grad_loss is None:   # the loss itself was not used (set_materialize_grads(False) above)
            return (None,) * 7
        grads = []
        in_place = _saved_tensors_used_once()
        for i, (name, saved, meta) in enumerate(zip(("hidden", "weight", "bias"), ctx.saved_tensors, ctx.inputs)):
            if meta is None or not ctx.needs_input_grad[i]:
                grads.append(None)
                continue
            if saved.shape != meta[0]:
                raise RuntimeError(f"linear_cross_entropy: {name} needs a gradient, but output_mask[{i}] was False "
                                   "in forward, so none was computed")
            # One pass into the input's dtype. A 0-dim fp32 factor keeps its fp32 value against a bf16
            # tensor on the CPU; CUDA rounds it to the tensor's dtype first, a uniform relative error
            # under 2^-8 that Adam's update does not see. out= has no autograd, so a double backward
            # takes the product and the cast as two steps. When this backward is the graph's last
            # (no retain_graph), the saved gradient is scaled where it lies: a new tensor the size of
            # the LM head cost as much again in first-touch page faults as the product itself
            # (LLaMA-7B width in bf16: 121 against 62 ms), and held the head's gradient twice.
            if torch.is_grad_enabled():
                grads.append((saved * grad_loss).to(meta[1]))
            elif saved.dtype == meta[1] and in_place and type(saved) is torch.Tensor:  # not while traced
                grads.append(saved.mul_(grad_loss))
            else:
                grads.append(torch.mul(saved, grad_loss, out=saved.new_empty(saved.shape, dtype=meta[1])))
        return (*grads, None, None, None, None)

    torch.library.register_autograd(f"{namespace}::linear_cross_entropy", _backward, setup_context=_setup_context)
