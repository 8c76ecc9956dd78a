"""Recipe `mma` (LaVIN's Mixture-of-Modality Adaptation, minilvlm/models/mma.py): adapters on a
frozen ViT and LM. The frozen base comes from a llava-recipe minilvlm checkpoint
(model.mma.base_checkpoint) or from Hugging Face folders (model.mma.vision_weights and
model.mma.lm_weights); checkpoints hold the adapters alone, and text-only records get LaVIN's
"Image: N/A" prefix."""
import dataclasses
from pathlib import Path

import torch
from safetensors import safe_open

from minilvlm.config import ConfigError
from minilvlm.io import dtype_problems, read_safetensors_header
from minilvlm.models.mma import MMA, MMAConfig
from minilvlm.recipes.base import Recipe
from minilvlm.recipes.pretrained import decoder_config
from minilvlm.weights import WeightsError, from_pretrained


def vision_layers(cfg, n_layers):
    """The configured ViT layers, or every 4th block ([4, 8, ..., n])."""
    return tuple(cfg.model.mma.vision_layers) or tuple(range(4, n_layers + 1, 4))


def mma_config(cfg, vision, decoder, image_token_id):
    m = cfg.model.mma
    return MMAConfig(vision=vision, decoder=decoder, hidden=m.hidden, groups=m.groups, scale=m.scale,
                     temperature=m.temperature, dropout=m.dropout, vision_layers=vision_layers(cfg, vision.n_layers),
                     visual_hidden=m.visual_hidden, image_token_id=image_token_id, routing=m.routing,
                     visual_tokens=m.visual_tokens)


class MMARecipe(Recipe):
    name = "mma"
    stages = {"finetune": "the adapters (MM-Adapters, modality token, visual adapter); the ViT and LM stay frozen"}
    checkpoint_holds = "the adapters"

    def validate(self, cfg):
        super().validate(cfg)
        m = cfg.model.mma
        has_hf = bool(m.vision_weights or m.lm_weights)
        _require(bool(m.base_checkpoint) != has_hf,
                 "model.mma: the mma recipe trains adapters on a frozen base; set model.mma.base_checkpoint (a "
                 "llava-recipe checkpoint folder) or both model.mma.vision_weights and model.mma.lm_weights, not both kinds")
        _require(not has_hf or bool(m.vision_weights and m.lm_weights),
                 "model.mma: give both vision_weights and lm_weights (Hugging Face folders)")
        _require(not cfg.train.train_vision and not cfg.train.pretrain_lm,
                 "train.train_vision / train.pretrain_lm: the mma recipe keeps the ViT and the LM frozen; set both to false")
        n = cfg.model.vision.n_layers
        _require(bool(m.vision_layers) or n >= 4,
                 f"model.mma.vision_layers: the tower has {n} blocks, fewer than 4; list the layers to read, e.g. [1, 2, 3]")
        _require(all(isinstance(i, int) and 1 <= i <= n for i in m.vision_layers),
                 f"model.mma.vision_layers: expected block indices in 1..{n}, got {m.vision_layers!r}")
        _require(m.hidden > 0 and m.groups > 0 and m.hidden % m.groups == 0,
                 f"model.mma: hidden ({m.hidden}) must be a positive multiple of groups ({m.groups})")
        _require(m.temperature > 0, f"model.mma.temperature must be positive, got {m.temperature}")
        _require(0 <= m.dropout < 1, f"model.mma.dropout must be in [0, 1), got {m.dropout}")

    def prepare_records(self, cfg, records):
        """Records without images get model.mma.text_only_prefix before their first user turn."""
        prefix = cfg.model.mma.text_only_prefix
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

    def build_model(self, cfg, tokenizer, load_weights=True):
        """The MMA model with its base loaded and frozen, the adapters freshly initialised. An
        adapter checkpoint does not hold the base, so only a model that is never run on data (the
        dry run's, on the meta device) is built without it: from the config's sizes."""
        m = cfg.model.mma
        if not load_weights:
            model = MMA(mma_config(cfg, cfg.model.vision, decoder_config(cfg, tokenizer), tokenizer.image_token_id))
        elif m.base_checkpoint:
            _check_exists(m.base_checkpoint, "base_checkpoint")
            model = MMA(mma_config(cfg, cfg.model.vision, decoder_config(cfg, tokenizer), tokenizer.image_token_id))
            load_base(model, m.base_checkpoint)
        else:
            model = _from_hf_folders(cfg, tokenizer)
        with torch.no_grad():   # LaVIN's visual adapter starts like its xavier-initialised AdapterMLP
            for layer in model.visual_adapter:
                if isinstance(layer, torch.nn.Linear):
                    torch.nn.init.xavier_uniform_(layer.weight)
                    torch.nn.init.zeros_(layer.bias)
        return model

    def stage_model(self, model, cfg):
        return model.set_stage()

    def trained_parts(self, cfg):
        return ["adapters"]

    def checkpoint_state(self, model):
        return model.trainable_state_dict()

    def load_checkpoint_state(self, model, tensors, source):
        model.load_trainable_state_dict(tensors, str(source))

    def checkpoint_needs_base(self, cfg):
        return True

    def export_refusal(self):
        return ("mma runs are LaVIN adapters (MM-Adapters in the tower and the decoder, a routed modality token) "
                "that transformers' LLaVA has no place for")


def _require(ok, message):
    if not ok:
        raise ConfigError(message)


def _check_exists(path, key):
    if not Path(path).exists():
        raise ConfigError(f"model.mma.{key} = {str(path)!r}: no such file or folder; the mma recipe needs the "
                          f"frozen base's weights there")


def _from_hf_folders(cfg, tokenizer):
    m = cfg.model.mma
    _check_exists(m.vision_weights, "vision_weights")
    _check_exists(m.lm_weights, "lm_weights")
    try:   # the vocabulary rule of every recipe: minilvlm.recipes.pretrained.decoder_config
        vision = from_pretrained(m.vision_weights)
        lm = from_pretrained(m.lm_weights, vocab_size=decoder_config(cfg, tokenizer).vocab_size)
    except WeightsError as err:
        raise ConfigError(f"model.mma: {err}") from None
    _check_sizes(cfg.model.vision, vision.config, "model.vision", m.vision_weights,
                 ("image_size", "patch_size", "dim", "n_layers"))
    _check_sizes(cfg.model.decoder, lm.config, "model.decoder", m.lm_weights, ("dim", "n_layers", "n_heads", "mlp_dim"))
    return MMA(mma_config(cfg, vision.config, lm.config, tokenizer.image_token_id), vision=vision, lm=lm)


def _check_sizes(configured, loaded, section, folder, fields):
    """The run config's sizes (they drive the data pipeline) must be the loaded model's."""
    wrong = [f"{section}.{k} = {getattr(configured, k)} but {folder} has {getattr(loaded, k)}"
             for k in fields if getattr(configured, k) != getattr(loaded, k)]
    if wrong:
        raise ConfigError("the config does not describe the base weights: " + "; ".join(wrong)
                          + f". Set [{section}] to the folder's sizes")


def load_base(model, path):
    """The frozen ViT and LM from a minilvlm training checkpoint of the llava recipe (a
    step_NNNNNN folder or its model.safetensors): its `vision.*` and `lm.*` tensors."""
    path = Path(path)
    file = path / "model.safetensors" if path.is_dir() else path
    if not file.is_file():
        raise ConfigError(f"model.mma.base_checkpoint = {str(path)!r}: {file} not found; point it at a checkpoint "
                          f"folder such as runs/demo/checkpoints/step_001000")
    own = model.base_state_dict()
    wrong = dtype_problems(read_safetensors_header(file, "model.mma.base_checkpoint"), own, f"model.mma.base_checkpoint = '{file}'")
    if wrong:
        raise ConfigError(wrong)
    with safe_open(str(file), "pt") as f:
        keys = set(f.keys())
        missing = sorted(set(own) - keys)
        shapes = sorted(f"{k}: {tuple(f.get_slice(k).get_shape())} vs {tuple(own[k].shape)}"
                        for k in own if k in keys and tuple(f.get_slice(k).get_shape()) != tuple(own[k].shape))
        if missing or shapes:
            raise ConfigError(f"model.mma.base_checkpoint: {file} does not hold this model's base (model.vision / "
                              f"model.decoder sizes differ?): missing {missing[:8]}, wrong shapes {shapes[:8]}")
        tensors = {k: f.get_tensor(k) for k in own}
    model.load_state_dict(tensors, strict=False)
    return file


RECIPE = MMARecipe()
