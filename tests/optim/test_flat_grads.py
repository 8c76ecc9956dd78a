"""How backward's grads reach FusedAdamW's flat grad buffer (minilvlm/optim/flat.py): after the
default zero_grad() the grads are None and a post-accumulate-grad hook copies each fresh grad into
its slot; after zero_grad(set_to_none=False) backward adds into zeroed slots. Both train exactly as
torch.optim.AdamW does, through gradient accumulation and params that get no grad."""
import gc
import warnings

import pytest
import torch

from minilvlm.optim import FusedAdamW


class TwoBranch(torch.nn.Module):
    """`side` gets a grad only when the batch asks for it, like an adapter a text-only batch skips."""

    def __init__(self):
        super().__init__()
        self.inner = torch.nn.Linear(7, 13)
        self.outer = torch.nn.Linear(13, 3)
        self.side = torch.nn.Linear(7, 3, bias=False)

    def forward(self, x, use_side):
        y = self.outer(torch.tanh(self.inner(x)))
        return y + self.side(x) if use_side else y


def model_pair(dtype=torch.float32):
    torch.manual_seed(0)
    ours = TwoBranch().to(dtype)
    theirs = TwoBranch().to(dtype)
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def train(model, opt, steps, set_to_none, clip=None):
    """Two micro-batches a step; `side` sits out steps 1 and 2 (no grad: skipped, as in torch)."""
    norms = []
    for step in range(steps):
        g = torch.Generator().manual_seed(step)
        for micro in range(2):
            x = torch.randn(5, 7, generator=g).to(next(model.parameters()).dtype)
            model(x, use_side=step not in (1, 2)).square().mean().backward()
        scale = None
        if clip is not None and isinstance(opt, FusedAdamW):
            norm, scale = opt.clip_scale(clip)
            norms.append(float(norm))
        elif clip is not None:
            norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), clip)))
        opt.step() if scale is None else opt.step(grad_scale=scale)
        opt.zero_grad(set_to_none=set_to_none)
    return norms


@pytest.mark.parametrize("set_to_none", [True, False])
def test_training_through_backward_matches_torch(set_to_none):
    ours, theirs = model_pair()
    opt = FusedAdamW(ours.parameters(), lr=1e-2)
    ref = torch.optim.AdamW(theirs.parameters(), lr=1e-2, foreach=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # neither way may fall back to the copy-at-step path's warning
        train(ours, opt, 5, set_to_none)
    train(theirs, ref, 5, set_to_none)
    for (name, p), q in zip(ours.named_parameters(), theirs.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7, msg=name)


def test_grads_land_in_the_slots_and_zero_grad_sets_none():
    ours, _ = model_pair()
    opt = FusedAdamW(ours.parameters())
    flat = opt._flats[0]
    opt.zero_grad()
    assert all(p.grad is None for p in flat.params)
    ours(torch.randn(4, 7), use_side=True).sum().backward()
    for i, p in enumerate(flat.params):
        assert p.grad is flat.grad_views[i] and p.grad.data_ptr() == flat.grad_ptrs[i]
    assert flat.first_moved() == -1  # the step's fast path
    opt.zero_grad(set_to_none=False)
    assert all(p.grad is flat.grad_views[i] for i, p in enumerate(flat.params))
    assert float(flat.grad.abs().sum()) == 0.0


def test_clipping_norm_counts_only_this_steps_grads():
    """`side`'s slot still holds step 0's grad when it sits out step 1: the norm must not count it."""
    ours, theirs = model_pair()
    opt = FusedAdamW(ours.parameters(), lr=1e-2)
    ref = torch.optim.AdamW(theirs.parameters(), lr=1e-2, foreach=False)
    ours_norms = train(ours, opt, 4, True, clip=0.05)
    theirs_norms = train(theirs, ref, 4, True, clip=0.05)
    assert ours_norms == pytest.approx(theirs_norms, rel=1e-5)
    for p, q in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_pure_bf16_with_masters_matches_torch_on_fp32_copies():
    ours, _ = model_pair(torch.bfloat16)
    masters = [torch.nn.Parameter(p.detach().float()) for p in ours.parameters()]
    opt = FusedAdamW(ours.parameters(), lr=1e-2, master_weights=True)
    ref = torch.optim.AdamW(masters, lr=1e-2, foreach=False)
    for step in range(3):
        ours(torch.randn(5, 7, generator=torch.Generator().manual_seed(step)).bfloat16(), use_side=True).sum().backward()
        for p, m in zip(ours.parameters(), masters):
            m.grad = p.grad.float()
        opt.step()
        ref.step()
        opt.zero_grad()
        ours.zero_grad()  # both ways of setting the grads to None
    for p, m in zip(ours.parameters(), masters):
        torch.testing.assert_close(p, m.detach().bfloat16(), rtol=0, atol=0)


def test_a_second_optimizer_on_the_same_params_owns_their_grads():
    """The first optimizer's hooks must neither steal the grads nor keep its buffers alive."""
    ours, _ = model_pair()
    first = FusedAdamW(ours.parameters())
    first_flat = first._flats[0]
    second = FusedAdamW(ours.parameters())
    flat = second._flats[0]
    second.zero_grad()
    ours(torch.randn(4, 7), use_side=True).sum().backward()
    assert all(p.grad is flat.grad_views[i] for i, p in enumerate(flat.params))
    assert float(first_flat.grad.abs().sum()) == 0.0
    released = [torch.nn.Parameter(torch.ones(3))]
    opt = FusedAdamW(released)
    probe = opt._flats[0].grad
    del opt
    gc.collect()
    released[0].grad = None
    (released[0] * 2).sum().backward()  # the dropped optimizer's hook runs and does nothing
    assert released[0].grad.data_ptr() != probe.data_ptr() and float(released[0].grad.sum()) == 6.0


def test_add_param_group_moves_the_hooks_to_the_new_buffers():
    ours, theirs = model_pair()
    opt = FusedAdamW([ours.inner.weight], lr=1e-2)
    opt.add_param_group({"params": [p for n, p in ours.named_parameters() if n != "inner.weight"]})
    ref = torch.optim.AdamW([theirs.inner.weight], lr=1e-2, foreach=False)
    ref.add_param_group({"params": [p for n, p in theirs.named_parameters() if n != "inner.weight"]})
    train(ours, opt, 3, True)
    train(theirs, ref, 3, True)
    for p, q in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
