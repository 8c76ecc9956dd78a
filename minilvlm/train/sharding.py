"""How a run spreads over its ranks (train.sharding), and the optimizer that goes with it.

  zero1  ZeroAdamW: every rank holds the whole model and its grads; the optimizer state is split
         over the ranks (minilvlm/optim/zero.py). The default for several processes.
  fsdp   PyTorch's FSDP2 (`fully_shard`): each ViT block, each decoder block and the whole model
         keep 1/N of their weights, grads and optimizer state on each rank, gathered block by block
         for forward and backward (ZeRO-3; ZeRO-2 with train.reshard_after_forward = false). Frozen
         parts are sharded too and get neither grads nor state. The weights stay fp32 (they are
         the optimizer's masters) and FSDP's mixed-precision policy computes in the precision's
         half type with grads reduced in fp32, so autocast is off under it. FusedAdamW updates the
         local shards (flat=False).

One process always uses FusedAdamW over flat buffers."""
import torch
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

from minilvlm.device import AUTOCAST_DTYPES, MODEL_DTYPES
from minilvlm.optim import FusedAdamW, ZeroAdamW


def uses_fsdp(cfg, world):
    return world > 1 and cfg.train.sharding == "fsdp"


def shard_model(model, cfg):
    """fully_shard on every block of every tower and decoder, then on the whole model."""
    dtype = AUTOCAST_DTYPES.get(cfg.train.precision)
    policy = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32) if dtype else MixedPrecisionPolicy()
    options = dict(mp_policy=policy, reshard_after_forward=cfg.train.reshard_after_forward)
    for module in model.modules():
        blocks = getattr(module, "layers", None)
        if isinstance(blocks, torch.nn.ModuleList):
            for block in blocks:
                fully_shard(block, **options)
    fully_shard(model, **options)
    # The trainer calls batch_loss, not forward: it must gather the root's weights (embeddings, head,
    # projector) the way forward does.
    register_fsdp_forward_method(model, "batch_loss")
    return model


def make_optimizer(cfg, model, world):
    o = cfg.optim
    groups = model.param_groups(o.lr, o.projector_lr, o.vision_lr)
    # Pure bf16 (train.precision = "bf16"): the update runs on fp32 master weights, so small steps
    # are not rounded away in the bf16 params.
    options = dict(lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay,
                   master_weights=cfg.train.precision in MODEL_DTYPES)
    if uses_fsdp(cfg, world):
        return FusedAdamW(groups, flat=False, **options)
    return (ZeroAdamW if world > 1 else FusedAdamW)(groups, **options)
