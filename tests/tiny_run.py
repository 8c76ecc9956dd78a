"""A tiny demo run trained once per test session (seconds), for the tools that load a run: eval,
generate, soup, ppl_filter. Checkpoints at steps 10, 20 and 30; summary.json holds the trainer's
own test-split accuracy."""
import json

from minilvlm.recipes import load_config
from minilvlm.train.loop import train

TINY_MODEL = ["model.vision.dim=16", "model.vision.n_layers=2", "model.vision.n_heads=2", "model.vision.mlp_dim=16",
              "model.vision.patch_size=16", "model.decoder.dim=32", "model.decoder.n_layers=1",
              "model.decoder.n_heads=2", "model.decoder.mlp_dim=48"]
TINY_RUN = TINY_MODEL + ["data.demo_sizes={train = 160, val = 12, test = 16}", "train.global_batch=16",
                         "train.micro_batch=16", "train.steps=30", "train.log_every=10", "train.eval_every=0",
                         "train.ckpt_every=10", "optim.lr=3e-3", "optim.warmup_steps=3", "eval.max_new_tokens=6",
                         "eval.batch=5", "eval.samples=0", "train.threads=2",
                         "train.vision_pretrain_steps=10", "train.vision_pretrain_batch=16"]


def train_tiny(run_dir, extra=()):
    return train(load_config(None, TINY_RUN + [f"train.run_dir={json.dumps(str(run_dir))}", *extra]))
