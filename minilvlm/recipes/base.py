"""The interface every recipe implements: one object that turns a run config into a model and says
everything the trainer, evaluation, soup, export and the tools need to know about it.

A recipe says
- which stages exist and what each trains (`stages`, `set_stage`);
- how to check the config (`validate`, on top of minilvlm.config.check);
- how to build the model and load its pretrained weights (`build_model`);
- how to read images and records (`image_size`, `image_config`, `prepare_records`);
- what a checkpoint holds: the whole model or only the trained tensors (`checkpoint_state`,
  `load_checkpoint_state`, `trained_parts`), and whether a model loaded from one needs the
  config's pretrained weights first (`checkpoint_needs_base`);
- LoRA (`model.lora`, for recipes with `supports_lora`): `add_lora` at the end of `build_model`;
  the LoRA matrices then train in place of the weights they adapt, and checkpoints hold the
  trained tensors alone;
- whether a from-scratch vision tower is pretrained first (`skip_tower_pretraining`);
- whether its runs export to a Hugging Face LLaVA folder (`export_refusal`).

The model a recipe builds has the trainer's interface: `set_stage(...)`, `param_groups(lr,
projector_lr, vision_lr)`, `batch_loss(batch)`, `generation_inputs(input_ids, images,
attention_mask)`, `.lm` (a minilvlm.models.decoder.Decoder) and `.config.image_tokens`.

A new recipe is one module with a Recipe subclass, registered in minilvlm/recipes/__init__.py
(or at run time with `minilvlm.recipes.register`)."""
import abc

from minilvlm.config import ConfigError
from minilvlm.data.images import ImageConfig
from minilvlm.models.lora import apply_lora, freeze_for_lora, has_lora, trainable_state_dict
from minilvlm.models.state import mismatch


class Recipe(abc.ABC):
    name = ""
    stages = {}                       # stage name -> what it trains (for messages and docs)
    checkpoint_holds = "the whole model"
    supports_lora = False

    # ---- config -------------------------------------------------------------------------------

    def validate(self, cfg):
        """Raise ConfigError for a config this recipe cannot run (the stage first)."""
        if cfg.train.stage not in self.stages:
            listed = "; ".join(f"{name!r} ({what})" for name, what in self.stages.items())
            raise ConfigError(f"train.stage: the {self.name} recipe's stages are {listed}; got {cfg.train.stage!r}")
        if cfg.model.lora.rank and not self.supports_lora:
            raise ConfigError(f"model.lora.rank: the {self.name} recipe has no LoRA (the llava and eve recipes "
                              f"have); set it to 0")

    # ---- data ---------------------------------------------------------------------------------

    def image_size(self, cfg):
        """The side of the square images the model reads."""
        return cfg.model.vision.image_size

    def image_config(self, cfg):
        """How this run's images are decoded (minilvlm.data.images: one loader for every use). `pad`
        fills with the tower's mean colour, as LLaVA does and as the exported LlavaImageProcessor
        does (int(mean x 255) per channel): the padding is zero once normalised."""
        pad = tuple(int(x * 255) for x in cfg.model.vision.pixel_mean)
        return ImageConfig(size=self.image_size(cfg), mode=cfg.data.image_mode, blank=cfg.data.blank_images,
                           pad_color=pad)

    def prepare_records(self, cfg, records):
        """Records as this recipe reads them (the mma recipe puts a prefix before text-only prompts)."""
        return records

    # ---- the model ----------------------------------------------------------------------------

    @abc.abstractmethod
    def build_model(self, cfg, tokenizer, load_weights=True):
        """The model, initialised for training, with the pretrained weights the config names when
        load_weights (off when a checkpoint's weights will replace them anyway)."""

    def set_stage(self, model, cfg):
        """Mark what trains in cfg.train.stage; returns the trained parts' names. With LoRA, the
        LoRA matrices train in place of the weights of the parts they sit in."""
        parts = self.stage_model(model, cfg)
        freeze_for_lora(model)
        return parts

    def stage_model(self, model, cfg):
        """requires_grad per part for cfg.train.stage (the model's own set_stage); the part names."""
        return model.set_stage(cfg.train.stage)

    def add_lora(self, model, cfg):
        """Put LoRA on the model when cfg.model.lora.rank > 0, and mark its stage: a LoRA model's
        checkpoints hold the tensors that train, so the built model knows them from the start."""
        lora = cfg.model.lora
        if not lora.rank:
            return model
        try:
            apply_lora(model, lora.targets, lora.rank, lora.alpha, lora.dropout)
        except ValueError as err:
            raise ConfigError(f"model.lora.targets: {err}") from None
        self.set_stage(model, cfg)
        return model

    def skip_tower_pretraining(self, cfg):
        """Why this run does not pretrain a from-scratch vision tower before the recipe trains, or
        None when it does (minilvlm/train/vision_pretrain.py)."""
        return f"the {self.name} recipe has no such step"

    # ---- checkpoints --------------------------------------------------------------------------

    def trained_parts(self, cfg):
        """What cfg's stage trains (soups only average checkpoints that trained the same parts)."""
        return [self.stages[cfg.train.stage]]

    def checkpoint_state(self, model):
        """The tensors a checkpoint of this recipe holds (with LoRA: those that train)."""
        return trainable_state_dict(model) if has_lora(model) else model.state_dict()

    def load_checkpoint_state(self, model, tensors, source):
        """Load what `checkpoint_state` saved; ValueError naming every key that does not fit."""
        problems = mismatch(self.checkpoint_state(model), tensors)
        if problems:
            raise ValueError(f"{source} does not fit the {self.name} model of this config: {problems}")
        model.load_state_dict(tensors, strict=not has_lora(model))

    def checkpoint_needs_base(self, cfg):
        """Whether a model loaded from a checkpoint needs the config's pretrained weights first
        (its checkpoints do not hold the frozen base: LoRA)."""
        return bool(cfg.model.lora.rank)

    # ---- export -------------------------------------------------------------------------------

    def export_refusal(self):
        """Why runs of this recipe cannot be exported as a Hugging Face LLaVA folder, or None."""
        return f"{self.name} runs have no Hugging Face LLaVA equivalent"
