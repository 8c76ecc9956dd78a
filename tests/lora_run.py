"""A tiny LoRA run over the tiny demo run (tests/tiny_run.py), as configs/demo_lora.toml does over the
demo: the whole base model from the tiny run's checkpoint (model.init_from), its tokenizer, LoRA of
rank 2 on the LM's projections, the projector trained fully, on the demo's new question types."""
import json

from minilvlm.recipes import load_config
from minilvlm.recipes.run_folder import latest
from minilvlm.train.loop import train
from tests.tiny_run import TINY_MODEL

LORA = ["model.lora.rank=2", "model.lora.alpha=4", "data.demo_tasks=mma",
        "data.demo_sizes={train = 64, val = 8, test = 8}", "train.global_batch=8", "train.micro_batch=8",
        "train.steps=6", "train.log_every=3", "train.eval_every=0", "train.ckpt_every=3", "optim.lr=1e-2",
        "optim.warmup_steps=1", "eval.max_new_tokens=4", "eval.batch=8", "eval.samples=0", "train.threads=2"]


def lora_overrides(base_run, run_dir, extra=()):
    return TINY_MODEL + LORA + [f"model.init_from={json.dumps(str(latest(base_run)))}",
                                f"data.tokenizer={json.dumps(str(base_run))}",
                                f"train.run_dir={json.dumps(str(run_dir))}", *extra]


def train_lora(base_run, run_dir, extra=()):
    return train(load_config(None, lora_overrides(base_run, run_dir, extra)))
