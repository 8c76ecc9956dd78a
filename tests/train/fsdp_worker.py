"""Run under torchrun (or alone) by tests/train/test_fsdp.py: set up a tiny demo run with the given
overrides, take one optimizer step, and print the bytes this rank holds of the model's weights,
grads and optimizer state, counted from the tensors themselves (local shards under FSDP)."""
import json
import sys

import torch

from minilvlm.recipes import load_config
from minilvlm.train.distributed import init_distributed, shutdown_distributed
from minilvlm.train.loop import run_steps
from minilvlm.train.run import setup_run


def local(tensor):
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def held_bytes(run):
    params = [p for p in run.model.parameters()]
    weights = sum(local(p).nbytes for p in params)
    grads = sum(local(p.grad).nbytes for p in params if p.grad is not None)
    state = 0
    for entry in run.optimizer.state_dict()["state"].values():
        state += sum(local(v).nbytes for k, v in entry.items() if isinstance(v, torch.Tensor) and k != "step")
    return {"weights": weights, "grads": grads, "optimizer_state": state}


def main(overrides):
    cfg = load_config(None, overrides)
    rank, world = init_distributed(torch.device("cpu"))
    try:
        cfg.train.stop_at = 1
        run = setup_run(cfg, torch.device("cpu"), rank, world)
        run.model.train()
        run_steps(run)
        for group in run.optimizer.param_groups:   # grads as they stand after backward, before zero_grad
            for p in group["params"]:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
        if rank == 0:
            print("BYTES " + json.dumps(held_bytes(run)), flush=True)
        run.loader.close()
        run.optimizer = None
    finally:
        shutdown_distributed()


if __name__ == "__main__":
    main(sys.argv[1:])
