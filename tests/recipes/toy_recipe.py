"""A fourth recipe that exists only in the tests: one module and one `register` call, nothing else
in the package changes. Its model ("pooled") reads each image as a single LM token: the mean
colour of each quarter of the picture, through one linear layer. Its checkpoints hold the image
layer alone: the LM is frozen and comes from the config (here: a fixed seed)."""
import dataclasses

import torch
from torch import nn

from minilvlm.models.decoder import Decoder
from minilvlm.models.multimodal import embed_with_images
from minilvlm.recipes.base import Recipe


@dataclasses.dataclass
class PooledConfig:
    decoder: object
    image_token_id: int
    image_tokens: int = 1


class PooledModel(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.lm = Decoder(config.decoder)
        self.image_layer = nn.Linear(12, config.decoder.dim)   # 4 quarters x 3 channels

    def set_stage(self, stage):
        self.requires_grad_(False)
        self.image_layer.requires_grad_(True)
        return ["image_layer"]

    def param_groups(self, lr, projector_lr=None, vision_lr=None):
        return [{"params": list(self.image_layer.parameters()), "lr": lr, "name": "image_layer"}]

    def image_embeddings(self, images):
        quarters = torch.nn.functional.adaptive_avg_pool2d(images.float() / 255, 2)   # [N, 3, 2, 2]
        return self.image_layer(quarters.flatten(1))[:, None]

    def embed(self, input_ids, images):
        return embed_with_images(self.lm, input_ids, images, self.config.image_token_id, 1, self.image_embeddings)[0]

    def batch_loss(self, batch):
        hidden = self.lm(inputs_embeds=self.embed(batch["input_ids"], batch["images"]),
                         attention_mask=batch["attention_mask"], position_ids=batch["position_ids"],
                         segment_ids=batch["segment_ids"], head=False)
        loss, count = self.lm.loss(hidden, batch["labels"])
        return loss, count, None

    def generation_inputs(self, input_ids, images, attention_mask):
        return self.embed(input_ids, images), attention_mask


class PooledRecipe(Recipe):
    name = "pooled"
    stages = {"finetune": "the image layer; the LM stays frozen"}
    checkpoint_holds = "the image layer"

    def build_model(self, cfg, tokenizer, load_weights=True):
        decoder = dataclasses.replace(cfg.model.decoder, vocab_size=tokenizer.vocab_size)
        torch.manual_seed(1234)   # the frozen LM is rebuilt identically for every run and tool
        return PooledModel(PooledConfig(decoder, tokenizer.image_token_id))

    def checkpoint_state(self, model):
        return {k: v for k, v in model.state_dict().items() if k.startswith("image_layer.")}

    def load_checkpoint_state(self, model, tensors, source):
        model.load_state_dict(tensors, strict=False)


RECIPE = PooledRecipe()
