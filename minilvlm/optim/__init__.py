"""Optimizers over flat buffers: FusedAdamW (one process) and, later, ZeRO-1 sharded AdamW."""
from minilvlm.optim.fused_adamw import FusedAdamW

__all__ = ["FusedAdamW"]
