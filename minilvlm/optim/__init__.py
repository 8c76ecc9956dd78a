"""Optimizers over flat buffers: FusedAdamW (one process) and ZeroAdamW (ZeRO stage 1), the dynamic
loss scaler for fp16 (loss_scale.py), and the learning-rate schedules (schedule.py)."""
from minilvlm.optim.fused_adamw import FusedAdamW
from minilvlm.optim.loss_scale import LossScaler
from minilvlm.optim.zero import ZeroAdamW
from minilvlm.optim.zero_checkpoint import consolidate, load_sharded, save_consolidated, save_sharded

__all__ = ["FusedAdamW", "LossScaler", "ZeroAdamW", "consolidate", "load_sharded", "save_consolidated",
           "save_sharded"]
