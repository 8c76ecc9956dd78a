"""`tools/train.py CONFIG --dry-run [--nproc N]`: the configured model built on the meta device
(shapes and dtypes, no memory, no weights read), one full training step run on it (forward,
backward, the optimizer's update) with a batch of the config's shapes, and the memory each rank
will need.

The meta device holds no data, so any tensor made on the CPU inside the step, or any read of a
value back to the host, fails the step: passing it also proves the device plumbing of a real run.

Memory per rank is counted from the tensors themselves: the model's weights, the grads of what
trains, the optimizer's state (ZeRO-1 splits it over the ranks), and the activations autograd
keeps for backward during the step's forward (measured with saved-tensor hooks, in the precision
the step ran in: fp32 on the meta device, where autocast does not apply). With activation
checkpointing the decoder keeps only each block's input, and one block's activations exist at a
time while it is recomputed."""
import dataclasses
from pathlib import Path

import torch

from minilvlm import recipes
from minilvlm.data.tokenizer import Tokenizer
from minilvlm.device import MODEL_DTYPES
from minilvlm.optim import FusedAdamW

STAND_IN_VOCAB = 512   # a run that builds its tokenizer from its data (the demo) has no size yet


@dataclasses.dataclass
class StandInTokenizer:
    """What the model builders read of a tokenizer, for configs whose tokenizer is not here."""
    vocab_size: int
    image_token_id: int
    pad_id: int = 0


def dry_run_tokenizer(cfg):
    """(tokenizer, where its vocabulary came from): the configured one when it is on disk, else a
    stand-in of the config's vocab_size plus an added <image> id, as the real tokenizer adds it."""
    if cfg.data.tokenizer and Path(cfg.data.tokenizer).exists():
        return Tokenizer(cfg.data.tokenizer), f"data.tokenizer {cfg.data.tokenizer}"
    size = cfg.model.decoder.vocab_size or STAND_IN_VOCAB
    where = "model.decoder.vocab_size" if cfg.model.decoder.vocab_size else "a stand-in (the run builds its own)"
    return StandInTokenizer(vocab_size=size + 1, image_token_id=size), f"{size} + <image>, from {where}"


def synthetic_batch(cfg, recipe, model, device):
    """A micro-batch of the config's shapes on `device`: micro_batch rows of max_len tokens, one
    image per row at the front, the second half of each row labelled, right-padded and unpacked."""
    rows, length = cfg.train.micro_batch, cfg.data.max_len
    image_tokens = model.config.image_tokens
    if image_tokens >= length:
        raise ValueError(f"data.max_len = {length} leaves no room for text after an image's {image_tokens} tokens")
    size = recipe.image_size(cfg)
    ids = torch.zeros(rows, length, dtype=torch.long, device=device)
    return {"input_ids": ids, "labels": torch.zeros_like(ids), "attention_mask": torch.ones_like(ids, dtype=torch.bool),
            "segment_ids": torch.ones_like(ids, dtype=torch.int32),
            "position_ids": torch.arange(length, device=device).expand(rows, length),
            "images": torch.zeros(rows, 3, size, size, dtype=torch.uint8, device=device),
            "packed": False, "n_targets": rows * (length - length // 2)}


class SavedActivations:
    """Bytes autograd saves for backward while it is active, by decoder block (None: outside the
    blocks), counting each storage once and leaving parameters out."""

    def __init__(self, model):
        self.parameters = {p.untyped_storage()._cdata for p in model.parameters()}
        self.seen, self.bytes, self.block = set(), {}, None
        self.hooks = []
        for index, block in enumerate(model.lm.layers):
            self.hooks.append(block.register_forward_pre_hook(lambda _m, _a, index=index: self._enter(index)))
            self.hooks.append(block.register_forward_hook(lambda _m, _a, _o: self._enter(None)))

    def _enter(self, block):
        self.block = block

    def pack(self, tensor):
        storage = tensor.untyped_storage()
        key = storage._cdata
        if key not in self.parameters and key not in self.seen:
            self.seen.add(key)
            self.bytes[self.block] = self.bytes.get(self.block, 0) + storage.nbytes()
        return tensor

    def close(self):
        for hook in self.hooks:
            hook.remove()

    def estimate(self, block_input_bytes):
        """(activation bytes without, with activation checkpointing of the decoder blocks)."""
        per_block = [v for k, v in self.bytes.items() if k is not None]
        total = sum(self.bytes.values())
        outside = self.bytes.get(None, 0)
        checkpointed = outside + len(per_block) * block_input_bytes + max(per_block, default=0)
        return total, checkpointed


def dry_run(cfg, nproc=1):
    """Build on meta, run one step, and return the report (a dict of counts and byte sizes)."""
    recipe = recipes.of(cfg)
    tokenizer, vocab_source = dry_run_tokenizer(cfg)
    with torch.device("meta"):
        model = recipe.build_model(cfg, tokenizer, load_weights=False)
    recipe.set_stage(model, cfg)
    model.train()
    dtype = MODEL_DTYPES.get(cfg.train.precision, torch.float32)   # pure bf16: the model in bf16, fp32 masters
    model.to(dtype)
    o = cfg.optim
    optimizer = FusedAdamW(model.param_groups(o.lr, o.projector_lr, o.vision_lr), lr=o.lr, betas=tuple(o.betas),
                           eps=o.eps, weight_decay=o.weight_decay, master_weights=dtype != torch.float32)
    batch = synthetic_batch(cfg, recipe, model, torch.device("meta"))
    saved = SavedActivations(model)
    try:
        with torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t):
            loss, count, aux = model.batch_loss(batch)
    finally:
        saved.close()
    objective = loss / max(count, 1) + (aux if aux is not None else 0.0)
    objective.backward()
    norm, scale = optimizer.clip_scale(o.clip) if o.clip > 0 else (optimizer.grad_norm(), None)
    optimizer.step(grad_scale=scale)
    block_input = batch["input_ids"].numel() * cfg.model.decoder.dim * dtype.itemsize
    activations, checkpointed = saved.estimate(block_input)
    return _report(cfg, model, optimizer, nproc, activations, checkpointed, vocab_source, batch)


def _report(cfg, model, optimizer, nproc, activations, checkpointed, vocab_source, batch):
    params = list(model.parameters())
    trained = [p for p in params if p.requires_grad]
    state = sum(v.nbytes for entry in optimizer.state_dict()["state"].values() for k, v in entry.items()
                if k != "step" and isinstance(v, torch.Tensor))
    sharding = cfg.train.sharding if nproc > 1 else "none"
    # ZeRO-1 splits the optimizer state over the ranks; FSDP the weights and grads as well.
    split = nproc if sharding == "fsdp" else 1
    return {"recipe": cfg.model.recipe, "stage": cfg.train.stage, "vocab": vocab_source, "precision": cfg.train.precision,
            "parameters": sum(p.numel() for p in params), "trainable": sum(p.numel() for p in trained),
            "batch": {"rows": batch["input_ids"].shape[0], "tokens": batch["input_ids"].shape[1],
                      "images": batch["images"].shape[0]},
            "nproc": nproc, "sharding": sharding,
            "bytes_per_rank": {"weights": (sum(p.nbytes for p in params) + sum(b.nbytes for b in model.buffers())) // split,
                               "grads": sum(p.nbytes for p in trained) // split,
                               "optimizer_state": state // nproc,
                               "activations": activations, "activations_checkpointed": checkpointed}}


def format_report(report, source):
    gib = 2 ** 30
    b = report["bytes_per_rank"]
    fixed = b["weights"] + b["grads"] + b["optimizer_state"]
    batch = report["batch"]
    lines = [
        f"dry run of {source}: recipe {report['recipe']}, stage {report['stage']}, on the meta device",
        f"  vocabulary: {report['vocab']}",
        f"  parameters: {report['parameters']:,} in all, {report['trainable']:,} trainable "
        f"({100 * report['trainable'] / max(report['parameters'], 1):.2f}%)",
        f"  one training step of {batch['rows']} x {batch['tokens']} tokens with {batch['images']} images: "
        f"forward, backward and the optimizer's update ran on meta",
        f"  memory per rank at {report['nproc']} process(es) ({report['sharding']}; activations of one micro-batch, "
        f"{'bf16' if report['precision'] == 'bf16' else 'fp32'}):",
        f"    {'':24}{'no act. ckpt':>14}{'act. ckpt':>14}",
    ]
    for name, value in (("weights", b["weights"]), ("grads", b["grads"]), ("optimizer state", b["optimizer_state"])):
        lines.append(f"    {name:24}{value / gib:>11.2f} GiB{value / gib:>11.2f} GiB")
    lines.append(f"    {'activations':24}{b['activations'] / gib:>11.2f} GiB{b['activations_checkpointed'] / gib:>11.2f} GiB")
    lines.append(f"    {'total':24}{(fixed + b['activations']) / gib:>11.2f} GiB"
                 f"{(fixed + b['activations_checkpointed']) / gib:>11.2f} GiB")
    return "\n".join(lines)
