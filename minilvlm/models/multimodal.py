"""What every vision-language model here shares: the projector from image features to the LM's
width, and the one way image embeddings enter the LM's input.

The data pipeline repeats each `<image>` id `image_tokens` times (minilvlm.data.labels), so a model
only has to write one image's embeddings over each run of image ids, in order: images are listed in
the order their runs appear when reading `input_ids` row by row (minilvlm.data.batching)."""
import torch
from torch import nn

PROJECTORS = ("linear", "mlp2x_gelu")


def make_projector(kind, in_dim, lm_dim):
    if kind == "linear":
        return nn.Linear(in_dim, lm_dim)
    if kind == "mlp2x_gelu":
        return nn.Sequential(nn.Linear(in_dim, lm_dim), nn.GELU(), nn.Linear(lm_dim, lm_dim))
    raise ValueError(f"unknown projector {kind!r}; known: {', '.join(PROJECTORS)}")


def embed_with_images(lm, input_ids, images, image_token_id, image_tokens, image_embeddings):
    """(LM input embeddings [B, T, D], image-position mask [B, T]): the token embeddings with each
    run of `image_tokens` image ids replaced by one image's embeddings, images in the order their
    runs appear row by row. image_embeddings maps images [N, ...] to [N, image_tokens, D]."""
    is_image = input_ids == image_token_id
    expected = images.shape[0] * image_tokens
    if input_ids.device.type == "cpu":   # a clear error where checking costs nothing
        n_image_tokens = int(is_image.sum())
        if n_image_tokens != expected:
            raise ValueError(f"the batch has {n_image_tokens} image tokens but {images.shape[0]} image(s) "
                             f"x {image_tokens} tokens = {expected}; were the records encoded "
                             f"with image_tokens={image_tokens}?")
    else:   # on a GPU the check runs on the device, without the host waiting for it
        torch._assert_async(is_image.sum() == expected, "image tokens and images do not match")
    embeds = lm.embed(input_ids.masked_fill(is_image, 0))
    # The encoder runs even on no images: under FSDP every rank must gather the same blocks' weights
    # in the same order, whatever its micro-batch holds.
    tokens = image_embeddings(images).to(embeds.dtype)
    # The image rows of the flattened batch, in the order their runs appear (masked_scatter's
    # placement): copying by row index makes the backward a row gather, where masked_scatter's is a
    # masked_select over the whole [B, T, D] gradient (5 ms a step in the train-step bench).
    # The size is static, so neither the host nor the meta device needs the mask's count.
    rows = torch.nonzero_static(is_image.reshape(-1), size=expected).squeeze(1)
    dim = embeds.shape[-1]
    return embeds.reshape(-1, dim).index_copy(0, rows, tokens.reshape(-1, dim)).view(embeds.shape), is_image


def init_from_scratch(modules):
    """Small-normal init of the Linear and Embedding layers among `modules`, for parts trained from
    scratch (the modules' own defaults are for loading checkpoints, not for training)."""
    for module in modules:
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, torch.nn.Embedding):
            torch.nn.init.normal_(module.weight, std=0.02)


def attention_inputs(batch):
    """(attention_mask, segment_ids) for the decoder from a collated batch: none at all for a
    right-padded, unpacked batch (the collator says so: packed is False), so that attention is
    plain causal with no mask tensor; the batch's own otherwise."""
    if batch.get("packed") is False:
        return None, None
    return batch["attention_mask"], batch["segment_ids"]
