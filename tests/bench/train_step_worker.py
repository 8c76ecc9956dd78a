"""One implementation's training step, timed in a fresh process (so that peak memory is its own and
MINILVLM_BACKEND applies from import). Prints one JSON line. Used by test_train_step.py.

    python -m tests.bench.train_step_worker minilvlm|transformers|mma|mma-free-adapters fp32|bf16 STEPS [DROPOUT]

minilvlm and mma run the trainer's own step (`model.batch_loss`, bf16 autocast as train.precision = "bf16-autocast" sets
it, FusedAdamW); transformers runs LlavaForConditionalGeneration with torch.optim.AdamW(fused=True).
"""
import contextlib
import json
import resource
import sys

import torch

from tests.bench.common import median_ms

# A small llava: CLIP-style ViT (112 px, 14-px patches: 64 image tokens) + LLaMA-style LM.
VISION = dict(image_size=112, patch_size=14, dim=256, n_layers=4, n_heads=4, mlp_dim=1024)
LM = dict(vocab_size=8192, dim=512, n_layers=4, n_heads=8, mlp_dim=1408)
BATCH, SEQ = 8, 256
IMAGE_TOKEN = LM["vocab_size"] - 1
N_IMAGE = (VISION["image_size"] // VISION["patch_size"]) ** 2
# The mma model reads the class token of every ViT block (LaVIN: every 4th of 24).
MMA_LAYERS = (1, 2, 3, 4)


def token_batch(n_image_tokens, with_image):
    """(trainer batch dict, uint8 images): rows with an image start with its run of image ids; the
    prompt (image included) is unlabelled, the rest is the answer."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, IMAGE_TOKEN, (BATCH, SEQ), generator=g)
    ids[with_image, 1:1 + n_image_tokens] = IMAGE_TOKEN
    labels = ids.clone()
    labels[:, :1 + n_image_tokens] = -100
    images = torch.randint(0, 256, (int(with_image.sum()), 3, VISION["image_size"], VISION["image_size"]),
                           generator=g, dtype=torch.uint8)
    batch = {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids, dtype=torch.bool),
             "position_ids": torch.arange(SEQ).expand(BATCH, SEQ), "segment_ids": torch.ones_like(ids),
             "images": images}
    return batch, images


def trainer_step(model, batch, images, autocast):
    """The trainer's micro-step: summed CE / count, backward, FusedAdamW step."""
    from minilvlm.optim import FusedAdamW
    opt = FusedAdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step():
        with autocast():
            loss, count, _ = model.batch_loss(batch)
        (loss / count).backward()
        opt.step()
        opt.zero_grad()
    return step, sum(p.numel() for p in model.parameters() if p.requires_grad)


def minilvlm_step(autocast, dropout):
    from minilvlm.models.decoder import DecoderConfig
    from minilvlm.models.llava import LLaVA, LLaVAConfig
    from minilvlm.models.vision import VisionConfig
    model = LLaVA(LLaVAConfig(vision=VisionConfig(**VISION), decoder=DecoderConfig(**LM, max_seq_len=SEQ),
                              projector="mlp2x_gelu", image_token_id=IMAGE_TOKEN))
    model.set_stage("finetune")
    model.train()
    return trainer_step(model, *token_batch(N_IMAGE, torch.ones(BATCH, dtype=torch.bool)), autocast)


def mma_step(autocast, dropout):
    """LaVIN's recipe on the same ViT and LM: both frozen, MM-Adapters in every block, half the batch
    text-only (no image tokens), as LaVIN mixes them."""
    from minilvlm.models.decoder import DecoderConfig
    from minilvlm.models.mma import MMA, MMAConfig
    from minilvlm.models.vision import VisionConfig
    model = MMA(MMAConfig(vision=VisionConfig(**VISION), decoder=DecoderConfig(**LM, max_seq_len=SEQ + 1),
                          vision_layers=MMA_LAYERS, dropout=dropout, image_token_id=IMAGE_TOKEN))
    model.set_stage("finetune")
    model.train()
    for adapter in model.adapters():  # not the identity LaVIN starts from
        torch.nn.init.normal_(adapter.up_w, std=0.02)
    with_image = torch.arange(BATCH) % 2 == 0
    return trainer_step(model, *token_batch(len(MMA_LAYERS), with_image), autocast)


def mma_free_adapters_step(autocast, dropout):
    """The mma step with adapters that cost nothing (out = x, their parameters still in the graph):
    the floor no adapter kernel can beat, which bounds the native backend's possible speed-up."""
    from minilvlm.models import adapters
    adapters._SharedDownAdapter._run = lambda self, x, *args: x + 0 * (self.down_w.sum() + self.up_b.sum())
    return mma_step(autocast, dropout)


def transformers_step(autocast, dropout):
    import transformers
    vision = transformers.CLIPVisionConfig(
        image_size=VISION["image_size"], patch_size=VISION["patch_size"], hidden_size=VISION["dim"],
        num_hidden_layers=VISION["n_layers"], num_attention_heads=VISION["n_heads"],
        intermediate_size=VISION["mlp_dim"], hidden_act="quick_gelu", projection_dim=VISION["dim"])
    text = transformers.LlamaConfig(
        vocab_size=LM["vocab_size"], hidden_size=LM["dim"], num_hidden_layers=LM["n_layers"],
        num_attention_heads=LM["n_heads"], intermediate_size=LM["mlp_dim"], max_position_embeddings=SEQ)
    config = transformers.LlavaConfig(vision_config=vision, text_config=text, image_token_index=IMAGE_TOKEN,
                                      vision_feature_layer=-2, vision_feature_select_strategy="default",
                                      projector_hidden_act="gelu")
    config._attn_implementation = "sdpa"
    model = transformers.LlavaForConditionalGeneration(config)
    model.train()
    for p in model.model.vision_tower.parameters():  # LLaVA's finetune stage: the tower is frozen
        p.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, fused=True)
    batch, images = token_batch(N_IMAGE, torch.ones(BATCH, dtype=torch.bool))
    mean = torch.tensor([0.4815, 0.4578, 0.4082]).view(1, 3, 1, 1)
    std = torch.tensor([0.2686, 0.2613, 0.2758]).view(1, 3, 1, 1)

    def step():
        pixels = (images.float() / 255 - mean) / std  # what its image processor hands the model
        with autocast():
            out = model(input_ids=batch["input_ids"], pixel_values=pixels, labels=batch["labels"])
        out.loss.backward()
        opt.step()
        opt.zero_grad()
    return step, sum(p.numel() for p in params)


def main():
    which, precision, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
    dropout = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
    if precision not in ("fp32", "bf16"):
        raise SystemExit(f"precision {precision!r}: expected fp32 or bf16")
    autocast = ((lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if precision == "bf16"
                else contextlib.nullcontext)
    torch.manual_seed(0)
    build = {"minilvlm": minilvlm_step, "transformers": transformers_step, "mma": mma_step,
             "mma-free-adapters": mma_free_adapters_step}[which]
    step, trained = build(autocast, dropout)
    median = median_ms(step, reps=steps, warmup=2) / 1e3
    print(json.dumps({"median_s": median, "samples_per_s": BATCH / median, "tokens_per_s": BATCH * SEQ / median,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "trained_params": trained}))


if __name__ == "__main__":
    main()
