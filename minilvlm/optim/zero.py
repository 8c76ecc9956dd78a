"""ZeroAdamW: ZeRO stage 1 over torch.distributed, built on the flat buffers of FusedAdamW.

Every rank holds the full params and grads in flat buffers (packed back to back, padded to a
multiple of world_size x 64 bytes). Rank r owns the contiguous slice [r*S, (r+1)*S) and keeps
only that slice of exp_avg, exp_avg_sq and the fp32 masters. step():
  1. reduce_scatter_tensor of the flat grads (a sum; the 1/world_size of the average is folded
     into the kernel's grad scale);
  2. optionally, clip_scale(max_norm) first: a local sum of squares and one all-reduce;
  3. fused_adamw_ on the local slice;
  4. all_gather_into_tensor back into the flat param buffer.
step(found_inf=flag) skips the step on every rank when the flag is non-zero on any: the flag is
all-reduced (max) first, so a flag computed from this rank's grads alone is made global. A flag
from grad_norm() is global already (the norm is), and the all-reduce of 4 bytes costs no more than
it would to check. As in FusedAdamW the kernels read it on the device and the host reads it once
per step, after the launches, to keep the step counts.

Data parallelism without DDP: build the same model on every rank (ZeroAdamW broadcasts rank 0's
params at construction), run forward/backward on the rank's micro-batches, and call step(). No
collective runs during backward, so gradient accumulation over micro-steps communicates only once,
at step(), and grads are never all-reduced and then reduce-scattered again. A param whose grad is
None on a rank contributes zeros to the average.

Collectives: with NCCL (and any backend but gloo) steps 1 and 4 are reduce_scatter_tensor and
all_gather_into_tensor. gloo's versions of those two are 2-3x slower than its all_reduce and
broadcast on CPU (50M fp32 at 2 ranks: 432 and 343 ms against 206 and 101 ms), so on gloo the same
result comes from an in-place all_reduce of the flat grads, of which each rank reads its slice, and
one broadcast per rank of its updated slice. MINILVLM_ZERO_COLLECTIVES=scatter forces the first form.
"""
import os

import torch
import torch.distributed as dist

from minilvlm.optim.adamw_common import call_closure, grad_scale_tensor, read_skip_flag
from minilvlm.optim.flat import ALIGN_BYTES, FlatParams
from minilvlm.optim.fused_adamw import FusedAdamW

# torch 2.14 renamed the flat-tensor collectives; older releases have only the first names.
_reduce_scatter = getattr(dist, "reduce_scatter_single", dist.reduce_scatter_tensor)
_all_gather = getattr(dist, "all_gather_single", dist.all_gather_into_tensor)


class ZeroAdamW(FusedAdamW):
    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, master_weights=False,
                 process_group=None):
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("ZeroAdamW needs torch.distributed to be initialised (run under torchrun and call "
                               "minilvlm.train.distributed.init_distributed()); in one process use FusedAdamW")
        self.process_group = process_group
        self.world_size = dist.get_world_size(process_group)
        self.rank = dist.get_rank(process_group)
        choice = os.environ.get("MINILVLM_ZERO_COLLECTIVES", "auto")
        if choice not in ("auto", "scatter", "allreduce"):
            raise ValueError(f"MINILVLM_ZERO_COLLECTIVES={choice!r}: expected auto, scatter or allreduce")
        if choice == "auto":
            choice = "allreduce" if dist.get_backend(process_group) == "gloo" else "scatter"
        self.collectives = choice
        self._ranks = [dist.get_global_rank(process_group, r) if process_group is not None else r
                       for r in range(self.world_size)]
        self._grads_reduced = False
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         master_weights=master_weights)

    # ---- layout -------------------------------------------------------------------------

    def add_param_group(self, param_group):
        if self._built:
            raise RuntimeError("ZeroAdamW shards its buffers at construction: pass every param group to the "
                               "constructor")
        super().add_param_group(param_group)

    def _build(self):
        src = self._ranks[0]
        self._flats = []
        for (device, dtype), members in self._trainable_by_buffer(
                (torch.float32, torch.bfloat16, torch.float16)).items():
            shard_align = ALIGN_BYTES // members[0][0].element_size()
            flat = FlatParams([p for p, _ in members], [gi for _, gi in members], align_each=False,
                              total_multiple=self.world_size * shard_align)
            dist.broadcast(flat.param, src=src, group=self.process_group)  # identical replicas
            size = flat.numel // self.world_size
            flat.shard = (self.rank * size, (self.rank + 1) * size)
            if self.collectives == "allreduce":
                flat.grad_shard = flat.grad[flat.shard[0]:flat.shard[1]]  # summed in place
            else:
                flat.grad_shard = torch.zeros(size, dtype=dtype, device=device)
            flat.exp_avg = torch.zeros(size, dtype=torch.float32, device=device)
            flat.exp_avg_sq = torch.zeros(size, dtype=torch.float32, device=device)
            flat.master = None
            if self.master_weights and dtype != torch.float32:
                flat.master = flat.param[flat.shard[0]:flat.shard[1]].float()
            self._flats.append(flat)
        self._built = True
        self._cached_runs = [None] * len(self._flats)

    def shard_of(self, flat):
        """This rank's slice of a flat buffer's params."""
        return flat.param[flat.shard[0]:flat.shard[1]]

    def state_bytes(self):
        """Bytes of optimizer state this rank holds (moments and masters)."""
        total = 0
        for flat in self._flats:
            for t in (flat.exp_avg, flat.exp_avg_sq, flat.master):
                if t is not None:
                    total += t.numel() * t.element_size()
        return total

    # ---- step ---------------------------------------------------------------------------

    @torch.no_grad()
    def reduce_grads(self):
        """Reduce-scatter the flat grads (once per step; step() calls it when you have not)."""
        if self._grads_reduced:
            return
        for flat in self._flats:
            flat.collect_grads()  # a param without a grad counts as zeros here: every rank reduces the same buffer
            if self.collectives == "allreduce":
                dist.all_reduce(flat.grad, group=self.process_group)
            else:
                _reduce_scatter(flat.grad_shard, flat.grad, group=self.process_group)
        self._grads_reduced = True

    @torch.no_grad()
    def grad_norm(self):
        """The L2 norm of the averaged grads over all ranks: local sums of squares, one all-reduce."""
        self.reduce_grads()
        # Squares summed in float64, as torch.linalg.vector_norm accumulates float32 on the CPU.
        local = torch.zeros((), dtype=torch.float64, device=self._flats[0].device if self._flats else "cpu")
        for flat in self._flats:
            local += flat.grad_shard.double().square().sum()
        dist.all_reduce(local, group=self.process_group)
        return local.sqrt().float() / self.world_size

    @torch.no_grad()
    def step(self, closure=None, grad_scale=None, found_inf=None):
        loss = call_closure(closure)
        self.reduce_grads()
        counts = None
        if found_inf is not None:
            counts = self._step_counts()
            device = self._flats[0].device if self._flats else "cpu"
            found_inf = grad_scale_tensor(found_inf, device, "found_inf").clone()  # the caller's flag stays local
            dist.all_reduce(found_inf, op=dist.ReduceOp.MAX, group=self.process_group)
        for k, flat in enumerate(self._flats):
            if self._cached_runs[k] is None:
                self._cached_runs[k] = flat.runs(None)
            runs = self._cached_runs[k]
            for run in runs:
                run[3] += 1
            flat.steps = [s + 1 for s in flat.steps]
            lo, hi = flat.shard
            local = [[max(b, lo) - lo, min(e, hi) - lo, g, s] for b, e, g, s in runs if b < hi and e > lo]
            scale = grad_scale_tensor(1.0 if grad_scale is None else grad_scale, flat.device) / self.world_size
            self._apply(flat, local, scale, found_inf, param=self.shard_of(flat), grad=flat.grad_shard)
            if self.collectives == "allreduce":
                size = flat.shard[1] - flat.shard[0]
                for r, global_rank in enumerate(self._ranks):
                    dist.broadcast(flat.param[r * size:(r + 1) * size], src=global_rank, group=self.process_group)
            else:
                _all_gather(flat.param, self.shard_of(flat), group=self.process_group)
        self._grads_reduced = False
        self._end_step(read_skip_flag(found_inf), counts)
        return loss

    # ---- checkpoints: see minilvlm.optim.zero_checkpoint --------------------------------

    def state_dict(self):
        raise RuntimeError("ZeroAdamW holds only this rank's slice of the state: use "
                           "minilvlm.optim.save_sharded(opt, dir) / load_sharded(opt, dir), or "
                           "consolidate(dir) for one full torch.optim.AdamW-style state")

    def load_state_dict(self, state_dict):
        raise RuntimeError("ZeroAdamW: use minilvlm.optim.load_sharded(opt, dir)")
