"""Building the `mma` recipe's model and inputs from a run config: the frozen base (a llava-recipe
minilvlm checkpoint, or Hugging Face folders through minilvlm.weights), the adapters, and the
"Image: N/A" prefix on text-only records."""
import dataclasses
from pathlib import Path

import torch

from minilvlm.models.mma import MMA, MMAConfig


def vision_layers(cfg, n_layers):
    """The configured ViT layers, or every 4th block ([4, 8, ..., n])."""
    return tuple(cfg.model.mma.vision_layers) or tuple(range(4, n_layers + 1, 4))


def mma_config(cfg, vision, decoder, image_token_id):
    m = cfg.model.mma
    return MMAConfig(vision=vision, decoder=decoder, hidden=m.hidden, groups=m.groups, scale=m.scale,
                     temperature=m.temperature, dropout=m.dropout, vision_layers=vision_layers(cfg, vision.n_layers),
                     visual_hidden=m.visual_hidden, image_token_id=image_token_id)


def _check_exists(path, key):
    if not Path(path).exists():
        raise FileNotFoundError(f"model.mma.{key} = {str(path)!r}: no such file or folder; the mma recipe needs the "
                                f"frozen base's weights there")


def build_mma_model(cfg, tokenizer):
    """The MMA model with its base loaded and frozen, the adapters freshly initialised."""
    m = cfg.model.mma
    if m.base_checkpoint:
        _check_exists(m.base_checkpoint, "base_checkpoint")
        decoder = dataclasses.replace(cfg.model.decoder, vocab_size=tokenizer.vocab_size)
        model = MMA(mma_config(cfg, cfg.model.vision, decoder, tokenizer.image_token_id))
        model.load_base(m.base_checkpoint)
    else:
        from minilvlm.weights import from_pretrained
        _check_exists(m.vision_weights, "vision_weights")
        _check_exists(m.lm_weights, "lm_weights")
        vision, lm = from_pretrained(m.vision_weights), from_pretrained(m.lm_weights)
        _check_sizes(cfg.model.vision, vision.config, "model.vision", m.vision_weights,
                     ("image_size", "patch_size", "dim", "n_layers"))
        _check_sizes(cfg.model.decoder, lm.config, "model.decoder", m.lm_weights, ("dim", "n_layers", "n_heads", "mlp_dim"))
        if lm.config.vocab_size < tokenizer.vocab_size - 1:
            raise ValueError(f"model.mma.lm_weights: the LM has {lm.config.vocab_size} embeddings but the tokenizer "
                             f"{tokenizer.vocab_size} ids; use the LM's own tokenizer (data.tokenizer)")
        model = MMA(mma_config(cfg, vision.config, lm.config, tokenizer.image_token_id), vision=vision, lm=lm)
    with torch.no_grad():   # LaVIN's visual adapter starts like its xavier-initialised AdapterMLP
        for layer in model.visual_adapter:
            if isinstance(layer, torch.nn.Linear):
                torch.nn.init.xavier_uniform_(layer.weight)
                torch.nn.init.zeros_(layer.bias)
    return model


def _check_sizes(configured, loaded, section, folder, fields):
    """The run config's sizes (they drive the data pipeline) must be the loaded model's."""
    wrong = [f"{section}.{k} = {getattr(configured, k)} but {folder} has {getattr(loaded, k)}"
             for k in fields if getattr(configured, k) != getattr(loaded, k)]
    if wrong:
        raise ValueError("the config does not describe the base weights: " + "; ".join(wrong)
                         + f". Set [{section}] to the folder's sizes")


def prefix_text_only(records, prefix):
    """Records without images get `prefix` before their first user turn (LaVIN's "Image: N/A")."""
    if not prefix:
        return records
    out = []
    for record in records:
        if not record.images:
            turns = list(record.turns)
            first = next(i for i, t in enumerate(turns) if t.role == "user")
            turns[first] = turns[first]._replace(text=prefix + turns[first].text)
            record = dataclasses.replace(record, turns=turns)
        out.append(record)
    return out
