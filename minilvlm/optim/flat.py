"""Flat parameter and gradient buffers.

All trainable params of one (device, dtype) live back to back in one flat buffer, each start
aligned to 64 bytes; `param.data` and `param.grad` become views into it, so backward
accumulates straight into the flat grad buffer and one kernel launch updates every param.
"""
import warnings

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
        """Bring every grad into the flat buffer. Returns None when all params have grads (the fast
        path), else a list of booleans telling which params have one this step."""
        if self.first_moved() < 0:
            return None
        self.check_params()
        active = []
        for i, p in enumerate(self.params):
            g = p.grad
            if g is None:
                active.append(False)
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

    def zero_grad(self):
        """Zero the flat grad buffer in one pass and re-attach every grad view."""
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
