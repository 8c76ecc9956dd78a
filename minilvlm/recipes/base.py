"""The interface every recipe implements: one object that turns a run config into a model and says
everything the trainer, evaluation, soup, export and the tools need to know about it.

A recipe says
- which stages exist and what each trains (`stages`, `set_stage`);
- how to check the config (`validate`, on top of minilvlm.config.check);
- how to build the model and load its pretrained weights (`build_model`);
- how to read images and records (`image_size`, `image_config`, `prepare_records`);
- what a checkpoint holds: the whole model or only the trained tensors (`checkpoint_state`,
  `load_checkpoint_state`, `trained_parts`);
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
from minilvlm.models.state import mismatch


class Recipe(abc.ABC):
    name = ""
    stages = {}                       # stage name -> what it trains (for messages and docs)
    checkpoint_holds = "the whole model"

    # ---- config -------------------------------------------------------------------------------

    def validate(self, cfg):
        """Raise ConfigError for a config this recipe cannot run (the stage first)."""
        if cfg.train.stage not in self.stages:
            listed = "; ".join(f"{name!r} ({what})" for name, what in self.stages.items())
            raise ConfigError(f"train.stage: the {self.name} recipe's stages are {listed}; got {cfg.train.stage!r}")

    # ---- data ---------------------------------------------------------------------------------

    def image_size(self, cfg):
        """The side of the square images the model reads."""
        return cfg.model.vision.image_size

    def image_config(self, cfg):
        """How this run's images are decoded (minilvlm.data.images: one loader for every use)."""
        return ImageConfig(size=self.image_size(cfg), mode=cfg.data.image_mode, blank=cfg.data.blank_images)

    def prepare_records(self, cfg, records):
        """Records as this recipe reads them (the mma recipe puts a prefix before text-only prompts)."""
        return records

    # ---- the model ----------------------------------------------------------------------------

    @abc.abstractmethod
    def build_model(self, cfg, tokenizer, load_weights=True):
        """The model, initialised for training, with the pretrained weights the config names when
        load_weights (off when a checkpoint's weights will replace them anyway)."""

    def set_stage(self, model, cfg):
        """Mark what trains in cfg.train.stage; returns the trained parts' names."""
        return model.set_stage(cfg.train.stage)

    def skip_tower_pretraining(self, cfg):
        """Why this run does not pretrain a from-scratch vision tower before the recipe trains, or
        None when it does (minilvlm/train/vision_pretrain.py)."""
        return f"the {self.name} recipe has no such step"

    # ---- checkpoints --------------------------------------------------------------------------

    def trained_parts(self, cfg):
        """What cfg's stage trains (soups only average checkpoints that trained the same parts)."""
        return [self.stages[cfg.train.stage]]

    def checkpoint_state(self, model):
        """The tensors a checkpoint of this recipe holds."""
        return model.state_dict()

    def load_checkpoint_state(self, model, tensors, source):
        """Load what `checkpoint_state` saved; ValueError naming every key that does not fit."""
        problems = mismatch(model.state_dict(), tensors)
        if problems:
            raise ValueError(f"{source} does not fit the {self.name} model of this config: {problems}")
        model.load_state_dict(tensors)

    # ---- export -------------------------------------------------------------------------------

    def export_refusal(self):
        """Why runs of this recipe cannot be exported as a Hugging Face LLaVA folder, or None."""
        return f"{self.name} runs have no Hugging Face LLaVA equivalent"
