"""Building a run's parts from its config: data (the generated demo set or a LLaVA file), the
tokenizer, the model, the optimizer's param groups."""
import dataclasses
import json
from pathlib import Path

import torch

from minilvlm.data import demo
from minilvlm.data.dataset import ImageConfig, SFTDataset
from minilvlm.data.records import read_records
from minilvlm.data.templates import chat_template
from minilvlm.data.tokenizer import Tokenizer
from minilvlm.models.lvlm import LLaVA, LLaVAConfig
from minilvlm.train import mma_setup
from minilvlm.train.demo_tokenizer import build_word_tokenizer
from minilvlm.train.eve_setup import build_eve_model
from minilvlm.train.pretrained import (
    init_from_scratch,
    load_pretrained,
    load_previous_stage,
)


def demo_data_dir(cfg, run_dir):
    """The demo set, generated once per (seed, sizes) into run_dir/data (seconds)."""
    folder = Path(run_dir) / "data"
    stamp = {"seed": cfg.data.demo_seed, "sizes": cfg.data.demo_sizes, "image_size": cfg.image_size,
             "mc_fraction": cfg.data.demo_mc_fraction}
    if cfg.data.demo_tasks != "shapes":
        stamp["tasks"] = cfg.data.demo_tasks
    marker = folder / "generated.json"
    if not (marker.is_file() and json.loads(marker.read_text()) == stamp):
        demo.generate(folder, seed=cfg.data.demo_seed, sizes=cfg.data.demo_sizes, image_size=cfg.image_size,
                      mc_fraction=cfg.data.demo_mc_fraction, tasks=cfg.data.demo_tasks)
        marker.write_text(json.dumps(stamp))
    return folder


def load_records(cfg, run_dir):
    """{split: records}: train, and the held-out splits for evaluation."""
    return {k: recipe_records(cfg, v) for k, v in _read_splits(cfg, run_dir).items()}


def recipe_records(cfg, records):
    """Records as the configured recipe reads them: mma puts its prefix before text-only prompts."""
    if cfg.model.recipe == "mma":
        return mma_setup.prefix_text_only(records, cfg.model.mma.text_only_prefix)
    return records


def _read_splits(cfg, run_dir):
    if cfg.data.dataset == "demo":
        folder = demo_data_dir(cfg, run_dir)
        return {split: demo.load_demo(folder, split) for split in cfg.data.demo_sizes}
    root = cfg.data.image_root or None
    splits = {"train": read_records(cfg.data.dataset, "llava", image_root=root)}
    if cfg.data.eval_file:
        splits["val"] = splits["test"] = read_records(cfg.data.eval_file, "llava", image_root=root)
    return splits


def load_tokenizer(cfg, run_dir, train_records):
    """The configured tokenizer, or a word-level one built from the training texts and saved as
    run_dir/tokenizer.json (the same texts always give the same file)."""
    if cfg.data.tokenizer:
        return Tokenizer(cfg.data.tokenizer)
    if not (Path(run_dir) / "tokenizer.json").is_file():
        build_word_tokenizer((t.text for r in train_records for t in r.turns), run_dir)
    return Tokenizer(run_dir)


def build_model(cfg, tokenizer, load_weights=True):
    """The configured recipe's model, with the pretrained weights the config names when load_weights."""
    if cfg.model.recipe == "mma":  # adapters on a frozen base: its own weights (model.mma)
        return mma_setup.build_mma_model(cfg, tokenizer)
    model = build_eve_model(cfg, tokenizer, load_weights) if cfg.model.recipe == "eve" \
        else _build_llava(cfg, tokenizer, load_weights)
    if load_weights and cfg.model.init_from:
        load_previous_stage(model, cfg.model.init_from)
    return model


def _build_llava(cfg, tokenizer, load_weights):
    decoder = dataclasses.replace(cfg.model.decoder, vocab_size=tokenizer.vocab_size)
    config = LLaVAConfig(vision=cfg.model.vision, decoder=decoder, projector=cfg.model.projector,
                         feature_layer=cfg.model.feature_layer, image_token_id=tokenizer.image_token_id)
    model = LLaVA(config)
    _init_weights(model)
    if load_weights and cfg.model.vision_weights:
        load_pretrained(model.vision, cfg.model.vision_weights, "model.vision_weights", "vision")
    if load_weights and cfg.model.lm_weights:
        load_pretrained(model.lm, cfg.model.lm_weights, "model.lm_weights", "decoder")
    return model


def _init_weights(model):
    init_from_scratch(model.modules())
    torch.nn.init.normal_(model.vision.pos_embed, std=0.02)


def build_dataset(cfg, records, tokenizer, image_tokens):
    image = ImageConfig(size=cfg.image_size, mode=cfg.data.image_mode)
    return SFTDataset(records, tokenizer, chat_template(cfg.data.template), image_tokens,
                      cfg.data.max_len, image=image)
