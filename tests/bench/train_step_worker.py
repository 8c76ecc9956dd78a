"""One implementation's training step, timed in a fresh process (so that peak memory is its own and
MINILVLM_BACKEND applies from import). Prints one JSON line. Used by test_train_step.py.

    python -m tests.bench.train_step_worker minilvlm|transformers|mma|mma-free-adapters PRECISION STEPS [DROPOUT]
        [--profile]

PRECISION: fp32, bf16-autocast (both stacks), or bf16 (minilvlm's pure bf16, train.precision = "bf16": the
model in bf16, fp32 masters in FusedAdamW). minilvlm and mma run the trainer's own step (`model.batch_loss`,
FusedAdamW); transformers runs LlavaForConditionalGeneration with torch.optim.AdamW(fused=True). --profile
adds the step's GEMM / attention / other split (tests/bench/step_profile.py) to the JSON line.
"""
import contextlib
import json
import resource
import sys

import torch

from tests.bench.common import median_ms
from tests.bench.step_profile import profile_step

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
    # As the trainer's collator (minilvlm/data/batching.py) hands it over: right-padded and unpacked,
    # which it says with packed=False (so the decoder attends plain causal, with no mask tensor, as
    # transformers does when no attention_mask is passed), and the target count known on the host.
    batch = {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids, dtype=torch.bool),
             "position_ids": torch.arange(SEQ).expand(BATCH, SEQ), "segment_ids": torch.ones_like(ids),
             "images": images, "packed": False, "n_targets": int((labels[:, 1:] != -100).sum())}
    return batch, images


def trainer_step(model, batch, images, autocast, pure_bf16=False):
    """The trainer's micro-step: summed CE / count, backward, FusedAdamW step. pure_bf16: the model in
    bf16 and fp32 masters in the optimizer, as minilvlm/train/run.py sets up train.precision = "bf16"."""
    from minilvlm.optim import FusedAdamW
    if pure_bf16:
        model.to(torch.bfloat16)
    opt = FusedAdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, master_weights=pure_bf16)

    def step():
        with autocast():
            loss, count, _ = model.batch_loss(batch)
        (loss / count).backward()
        opt.step()
        opt.zero_grad()
    return step, sum(p.numel() for p in model.parameters() if p.requires_grad)


def minilvlm_step(autocast, dropout, pure_bf16=False):
    from minilvlm.models.decoder import DecoderConfig
    from minilvlm.models.llava import LLaVA, LLaVAConfig
    from minilvlm.models.vision import VisionConfig
    model = LLaVA(LLaVAConfig(vision=VisionConfig(**VISION), decoder=DecoderConfig(**LM, max_seq_len=SEQ),
                              projector="mlp2x_gelu", image_token_id=IMAGE_TOKEN))
    model.set_stage("finetune")
    model.train()
    return trainer_step(model, *token_batch(N_IMAGE, torch.ones(BATCH, dtype=torch.bool)), autocast, pure_bf16)


def mma_step(autocast, dropout, pure_bf16=False):
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
    return trainer_step(model, *token_batch(len(MMA_LAYERS), with_image), autocast, pure_bf16)


def mma_free_adapters_step(autocast, dropout, pure_bf16=False):
    """The mma step with adapters that cost nothing (out = x, their parameters still in the graph):
    the floor no adapter kernel can beat, which bounds the native backend's possible speed-up."""
    from minilvlm.models import adapters
    adapters._SharedDownAdapter._run = lambda self, x, *args: x + 0 * (self.down_w.sum() + self.up_b.sum())
    return mma_step(autocast, dropout, pure_bf16)


def transformers_step(autocast, dropout, pure_bf16=False):
    import transformers
    if pure_bf16:
        raise SystemExit("transformers: the standard bf16 training is autocast (bf16-autocast)")
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
    args = [a for a in sys.argv[1:] if a != "--profile"]
    which, precision, steps = args[0], args[1], int(args[2])
    dropout = float(args[3]) if len(args) > 3 else 0.0
    if precision not in ("fp32", "bf16", "bf16-autocast"):
        raise SystemExit(f"precision {precision!r}: expected fp32, bf16 or bf16-autocast")
    autocast = ((lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if precision == "bf16-autocast"
                else contextlib.nullcontext)
    torch.manual_seed(0)
    build = {"minilvlm": minilvlm_step, "transformers": transformers_step, "mma": mma_step,
             "mma-free-adapters": mma_free_adapters_step}[which]
    step, trained = build(autocast, dropout, pure_bf16=precision == "bf16")
    median = median_ms(step, reps=steps, warmup=2) / 1e3
    result = {"median_s": median, "samples_per_s": BATCH / median, "tokens_per_s": BATCH * SEQ / median,
              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "trained_params": trained}
    if "--profile" in sys.argv:
        gemm_dtype = torch.float32 if precision == "fp32" else torch.bfloat16
        result.update(profile_step(step, 2, gemm_dtype))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
