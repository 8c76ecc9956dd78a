"""Flat parameter and gradient buffers.

All trainable params of one (device, dtype) live back to back in one flat buffer, each start
aligned to 64 bytes; `param.data` and `param.grad` become views into it, so one kernel launch
updates every param.

Grads reach the flat buffer in one of two ways. After zero_grad(set_to_none=False) every grad is a
zeroed view and backward adds into it: a pass to zero and a read-add-write pass. After the
default zero_grad() grads are None, autograd hands each param a fresh grad, and a
post-accumulate-grad hook copies it into the param's slot and points `param.grad` there again: one
copy, and the fresh grad is freed at once, so no step holds two copies of the grads (in the
train-step bench's pure bf16 step the zero-and-add passes took about 14 ms, the copies about 5).
Later micro-batches of an accumulated step add into the slot as before.
"""
import warnings
import weakref

import torch

from minilvlm.ops._registry import native_available

if native_available():
    from minilvlm._C import flat_views_intact
else:
    flat_views_intact = None

ALIGN_BYTES = 64


def align_up(n, multiple):
    return (n + multiple - 1) // multiple * multiple


class FlatParams:
    """The params of one (device, dtype) as views of `self.param`, their grads as views of `self.grad`.

    group_ids[i] is the param group of params[i]; params are laid out in the order given, so a
    param group forms contiguous runs. steps[i] counts the optimizer steps params[i] has taken.
    """

    def __init__(self, params, group_ids, align_each=True, total_multiple=1):
        """align_each: start every param at a 64-byte boundary (else pack them back to back);
        total_multiple: pad the buffer's length to a multiple of this many elements."""
        if not params:
            raise ValueError("FlatParams needs at least one param")
        self.params = list(params)
        self.group_ids = list(group_ids)
        self.dtype = self.params[0].dtype
        self.device = self.params[0].device
        align = ALIGN_BYTES // self.params[0].element_size() if align_each else 1
        self.offsets, self.numels = [], []
        total = 0
        for p in self.params:
            self.offsets.append(total)
            self.numels.append(p.numel())
            total = align_up(total + p.numel(), align)
        self.used = self.offsets[-1] + self.numels[-1]
        self.numel = align_up(max(total, 1), total_multiple)
        self.param = torch.zeros(self.numel, dtype=self.dtype, device=self.device)
        self.grad = torch.zeros(self.numel, dtype=self.dtype, device=self.device)
        self.param_views, self.grad_views = [], []
        with torch.no_grad():
            for p, off, n in zip(self.params, self.offsets, self.numels):
                view = self.param[off:off + n].view(p.shape)
                view.copy_(p)
                gview = self.grad[off:off + n].view(p.shape)
                if p.grad is not None:
                    gview.copy_(p.grad)
                p.data = view
                p.grad = gview
                self.param_views.append(view)
                self.grad_views.append(gview)
        self.param_ptrs = [v.data_ptr() for v in self.param_views]
        self.grad_ptrs = [v.data_ptr() for v in self.grad_views]
        self.steps = [0] * len(self.params)
        self._warned = False
        # A weak reference: a dropped optimizer's hooks do nothing, and do not keep its buffers alive.
        this = weakref.ref(self)
        self._hooks = [p.register_post_accumulate_grad_hook(_adopt_grad_hook(this, i))
                       for i, p in enumerate(self.params)]

    def release(self):
        """Remove the grad hooks (the optimizer is rebuilding its buffers and these no longer own the params)."""
        for handle in self._hooks:
            handle.remove()
        self._hooks = []

    @torch.no_grad()
    def adopt_grad(self, i):
        """Copy params[i]'s fresh grad into its slot and point the grad at the slot (the hook's work).
        Left alone: a grad that already is the slot, a grad that carries a graph (create_graph=True;
        collect_grads copies it at the step), and a param that no longer lives in this buffer."""
        p = self.params[i]
        g, slot = p.grad, self.grad_views[i]
        if (g is None or g is slot or g.requires_grad or g.is_sparse or p.data_ptr() != self.param_ptrs[i]
                or g.shape != slot.shape or g.dtype != slot.dtype or g.device != slot.device):
            return
        slot.copy_(g)
        p.grad = slot

    def view(self, flat, i):
        """The slice of a flat buffer laid out like this one (e.g. a moment) that belongs to params[i]."""
        off, n = self.offsets[i], self.numels[i]
        return flat[off:off + n].view(self.params[i].shape)

    def first_moved(self):
        """-1 when every param and its grad still live in the flat buffers (the per-step fast check),
        else the index of the first param whose storage or grad moved or whose grad is None."""
        if flat_views_intact is not None:
            return flat_views_intact(self.params, self.param_ptrs, self.grad_ptrs)
        for i, (p, ptr, gptr) in enumerate(zip(self.params, self.param_ptrs, self.grad_ptrs)):
            if p.data_ptr() != ptr or p.grad is None or p.grad.data_ptr() != gptr:
                return i
        return -1

    def check_params(self):
        """Raise if some param's storage was swapped out (e.g. `p.data = ...` or `module.to()`)."""
        if [p.data_ptr() for p in self.params] != self.param_ptrs:
            bad = [i for i, p in enumerate(self.params) if p.data_ptr() != self.param_ptrs[i]]
            raise RuntimeError(
                f"{len(bad)} param(s) (first: index {bad[0]}, shape {tuple(self.params[bad[0]].shape)}) no longer "
                "live in the optimizer's flat buffer: `param.data` was replaced (for example by `module.to()` "
                "after the optimizer was built). Move the model first, then build the optimizer.")

    def collect_grads(self):
        """Bring every grad into the flat buffer, and zero the slots of params without one (so that
        a norm over the buffer counts this step's grads only). Returns None when all params have
        grads (the fast path), else a list of booleans telling which params have one this step."""
        if self.first_moved() < 0:
            return None
        self.check_params()
        active = []
        for i, p in enumerate(self.params):
            g = p.grad
            if g is None:
                active.append(False)
                self.view(self.grad, i).zero_()
                continue
            active.append(True)
            if g is self.grad_views[i] and g.data_ptr() == self.grad_ptrs[i]:
                continue
            slot = self.view(self.grad, i)
            if g.is_sparse or g.shape != slot.shape or g.dtype != slot.dtype:
                raise RuntimeError(f"param {i} of shape {tuple(slot.shape)} and dtype {slot.dtype} has a grad "
                                   f"of shape {tuple(g.shape)}, dtype {g.dtype}, sparse={g.is_sparse}")
            if not self._warned:
                warnings.warn("grads were replaced outside the optimizer (for example by "
                              "`model.zero_grad(set_to_none=True)`); they are copied into the flat buffer "
                              "each step. Use the optimizer's zero_grad() to avoid the copies.",
                              RuntimeWarning, stacklevel=4)
                self._warned = True
            slot.copy_(g)
            self.grad_views[i] = slot
            p.grad = slot
        return active

    def zero_grad(self, set_to_none=True):
        """set_to_none: every grad to None (backward's fresh grads are then copied in by the hooks);
        else zero the flat grad buffer in one pass and re-attach every grad view."""
        if set_to_none:
            for p in self.params:
                p.grad = None
            return
        self.grad.zero_()
        for p, view in zip(self.params, self.grad_views):
            if p.grad is not view:
                p.grad = view

    def runs(self, active=None):
        """Segments to update: maximal runs of consecutive params with the same group and step,
        skipping inactive params. Returns a list of [begin, end, group_id, step] (steps as they are now).
        Runs include the alignment padding between params, which stays zero."""
        out = []
        for i in range(len(self.params)):
            if active is not None and not active[i]:
                continue
            begin, end = self.offsets[i], self.offsets[i] + self.numels[i]
            prev = out[-1] if out else None
            if (prev is not None and prev[2] == self.group_ids[i] and prev[3] == self.steps[i]
                    and prev[4] == i - 1):
                prev[1], prev[4] = end, i
            else:
                out.append([begin, end, self.group_ids[i], self.steps[i], i])
        return [r[:4] for r in out]


def _adopt_grad_hook(flat_ref, i):
    """The post-accumulate-grad hook of a FlatParams' i-th param (see the module docstring)."""
    def hook(param):
        flat = flat_ref()
        if flat is not None:
            flat.adopt_grad(i)
    return hook
