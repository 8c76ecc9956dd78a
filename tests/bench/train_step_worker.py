"""One implementation's llava training step, timed in a fresh process (so that peak memory is its
own and MINILVLM_BACKEND applies from import). Prints one JSON line. Used by test_train_step.py.

    python -m tests.bench.train_step_worker minilvlm|transformers STEPS
"""
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


def batch():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, IMAGE_TOKEN, (BATCH, SEQ), generator=g)
    ids[:, 1:1 + N_IMAGE] = IMAGE_TOKEN
    labels = ids.clone()
    labels[:, :1 + N_IMAGE] = -100
    images = torch.randint(0, 256, (BATCH, 3, VISION["image_size"], VISION["image_size"]), generator=g,
                           dtype=torch.uint8)
    return ids, labels, images


def minilvlm_step():
    from minilvlm.models.decoder import DecoderConfig
    from minilvlm.models.lvlm import LLaVA, LLaVAConfig, lm_loss
    from minilvlm.models.vision import VisionConfig
    from minilvlm.optim import FusedAdamW
    model = LLaVA(LLaVAConfig(vision=VisionConfig(**VISION), decoder=DecoderConfig(**LM, max_seq_len=SEQ),
                              projector="mlp2x_gelu", image_token_id=IMAGE_TOKEN))
    model.set_stage("finetune")
    opt = FusedAdamW(model.param_groups(1e-4), lr=1e-4)
    ids, labels, images = batch()
    mask = torch.ones_like(ids)

    def step():
        loss, count = lm_loss(model(ids, images, mask), labels)
        (loss / count).backward()
        opt.step()
        opt.zero_grad()
    return step, sum(p.numel() for p in model.parameters() if p.requires_grad)


def transformers_step():
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
    ids, labels, images = batch()
    mean = torch.tensor([0.4815, 0.4578, 0.4082]).view(1, 3, 1, 1)
    std = torch.tensor([0.2686, 0.2613, 0.2758]).view(1, 3, 1, 1)

    def step():
        pixels = (images.float() / 255 - mean) / std  # what its image processor hands the model
        out = model(input_ids=ids, pixel_values=pixels, labels=labels)
        out.loss.backward()
        opt.step()
        opt.zero_grad()
    return step, sum(p.numel() for p in params)


def main():
    which, steps = sys.argv[1], int(sys.argv[2])
    torch.manual_seed(0)
    step, trained = {"minilvlm": minilvlm_step, "transformers": transformers_step}[which]()
    median = median_ms(step, reps=steps, warmup=2) / 1e3
    print(json.dumps({"median_s": median, "samples_per_s": BATCH / median, "tokens_per_s": BATCH * SEQ / median,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "trained_params": trained}))


if __name__ == "__main__":
    main()
