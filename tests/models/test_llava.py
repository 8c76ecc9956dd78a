"""The llava recipe's composite model: where image features land, stages and frozen parts."""
import pytest
import torch

from minilvlm.models import DecoderConfig, VisionConfig
from minilvlm.models.llava import LLaVA, LLaVAConfig
from minilvlm.optim import FusedAdamW

IMAGE_ID = 50   # past the 40-entry embedding table, as an added <image> token can be


def tiny(projector="mlp2x_gelu", class_token=True):
    vision = VisionConfig(image_size=16, patch_size=8, dim=24, n_layers=3, n_heads=2, mlp_dim=32,
                          class_token=class_token)
    decoder = DecoderConfig(vocab_size=40, dim=32, n_layers=2, n_heads=2, mlp_dim=48)
    torch.manual_seed(0)
    return LLaVA(LLaVAConfig(vision=vision, decoder=decoder, projector=projector, image_token_id=IMAGE_ID))


def normalized(images, vision):
    """What the tower's fused stem does to uint8 images, in plain PyTorch (float pixel values)."""
    mean = torch.tensor(vision.pixel_mean).view(1, 3, 1, 1)
    std = torch.tensor(vision.pixel_std).view(1, 3, 1, 1)
    return (images.double() / 255 - mean) / std


def batch():
    # row 0: text, image A, text; row 1: image B, text, image C, padding
    a = [IMAGE_ID] * 4
    ids = torch.tensor([[5, 6] + a + [7, 8, 9, 10, 11],
                        a + [12] + a + [1, 1]])
    images = torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    return ids, images


@pytest.mark.parametrize("projector", ["linear", "mlp2x_gelu"])
@pytest.mark.parametrize("class_token", [True, False])
def test_image_features_land_on_image_tokens(projector, class_token):
    model = tiny(projector, class_token)
    ids, images = batch()
    embeds = model.embed(ids, images)
    # the reference: penultimate hidden state of each image alone, class token dropped, projected
    pixels = normalized(images, model.config.vision).float()
    hidden = model.vision(pixels, output_hidden_states=True)[-2]
    if class_token:
        hidden = hidden[:, 1:]
    feats = model.projector(hidden)
    assert feats.shape == (3, 4, 32)
    torch.testing.assert_close(embeds[0, 2:6], feats[0])
    torch.testing.assert_close(embeds[1, 0:4], feats[1])
    torch.testing.assert_close(embeds[1, 5:9], feats[2])
    text = ids != IMAGE_ID
    torch.testing.assert_close(embeds[text], model.lm.embed(ids[text]))


def test_image_token_count_must_match():
    model = tiny()
    ids, images = batch()
    with pytest.raises(ValueError, match="12 image tokens but 2 image"):
        model.embed(ids, images[:2])


def test_text_only_batch_has_no_images():
    model = tiny()
    ids = torch.tensor([[3, 4, 5]])
    torch.testing.assert_close(model.embed(ids, torch.empty(0, 3, 16, 16, dtype=torch.uint8)), model.lm.embed(ids))


def test_unknown_projector_and_stage():
    with pytest.raises(ValueError, match="unknown projector 'mlp3x'"):
        tiny("mlp3x")
    with pytest.raises(ValueError, match="unknown stage"):
        tiny().set_stage("sft")


def _train_steps(model, steps=3):
    ids, images = batch()
    labels = ids.masked_fill(ids == IMAGE_ID, -100)
    opt = FusedAdamW(model.param_groups(1e-2, projector_lr=3e-2), weight_decay=0.0)
    for _ in range(steps):
        loss, count = model.lm.loss(model(ids, images, head=False), labels)
        (loss / count).backward()
        opt.step()
        opt.zero_grad()
    return opt


@pytest.mark.parametrize("stage,pretrain_lm,trained", [("finetune", False, {"projector", "lm"}),
                                                        ("pretrain", False, {"projector"}),
                                                        ("pretrain", True, {"projector", "lm"})])
def test_frozen_parts_get_no_grads_and_stay_unchanged(stage, pretrain_lm, trained):
    model = tiny()
    assert set(model.set_stage(stage, pretrain_lm=pretrain_lm)) == trained
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = _train_steps(model)
    for name, p in model.named_parameters():
        part = name.split(".")[0]
        if part in trained:
            assert p.requires_grad
        else:
            assert p.grad is None and not p.requires_grad, name
            assert torch.equal(p, before[name]), name
    for part in trained:
        changed = [n for n, p in model.named_parameters() if n.startswith(part) and not torch.equal(p, before[n])]
        assert changed, f"{part} did not train"
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs["projector"] == 3e-2 and lrs.get("lm", 1e-2) == 1e-2 and "vision" not in lrs


def test_frozen_vision_runs_without_autograd_graph():
    model = tiny()
    model.set_stage("finetune")
    ids, images = batch()
    feats = model.vision.forward_features(images, layers=[-2])[0]
    assert feats.requires_grad is False
    assert model.embed(ids, images).requires_grad   # projector and embeddings train


def test_batch_loss_sums_the_cross_entropy_of_labelled_positions():
    model = tiny().double()
    ids, images = batch()
    labels = ids.masked_fill(ids == IMAGE_ID, -100)
    labels[0, -4:] = -100
    trainer_batch = {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids),
                     "position_ids": None, "segment_ids": None, "images": images}
    loss, count, aux = model.batch_loss(trainer_batch)
    logits = model(ids, images)
    assert count == int((labels[:, 1:] != -100).sum()) and aux is None
    expected = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                 labels[:, 1:].reshape(-1), ignore_index=-100, reduction="sum")
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=0)
