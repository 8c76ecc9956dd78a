"""The eve recipe's model: the patch embedder's token layout, stages and what trains, the alignment
loss, and inference without the teacher."""
import pytest
import torch
import torch.nn.functional as F

from minilvlm.eval.generate import generate
from minilvlm.models import DecoderConfig, VisionConfig
from minilvlm.models.eve import EVE, EVEConfig
from minilvlm.models.eve_embed import PatchEmbedder
from minilvlm.models.vision import CLIP_MEAN, CLIP_STD
from minilvlm.optim import FusedAdamW

IMAGE_ID = 50   # past the 40-entry embedding table


def tiny(patch_size=4, pool=2, image_size=16, teacher=True, align_layers=(2, 1, 0), seed=0):
    decoder = DecoderConfig(vocab_size=40, dim=32, n_layers=2, n_heads=2, mlp_dim=48)
    vit = VisionConfig(image_size=16, patch_size=8, dim=24, n_layers=2, n_heads=2, mlp_dim=32) if teacher else None
    torch.manual_seed(seed)
    return EVE(EVEConfig(decoder=decoder, teacher=vit, image_size=image_size, patch_size=patch_size, pool=pool,
                         dim=16, heads=2, align_layers=align_layers, align_weight=0.5, image_token_id=IMAGE_ID))


def images(n, size=16, seed=1):
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def make_batch(model, seed=1):
    """row 0: text, image A, text; row 1: image B, text, image C; labels on the text after images."""
    run = [IMAGE_ID] * model.config.image_tokens
    ids = torch.tensor([[5, 6] + run + [7, 8, 9, 10, 11] + [1] * len(run),
                        run + [12, 13] + run + [14, 15, 16, 17, 18]])
    labels = ids.clone()
    labels[ids == IMAGE_ID] = -100
    labels[0, -len(run):] = -100
    mask = (labels != -100) | (ids == IMAGE_ID)
    mask[0, :2] = True
    position_ids = torch.arange(ids.shape[1]).expand_as(ids)
    batch = {"input_ids": ids, "labels": labels, "attention_mask": mask.long(), "position_ids": position_ids,
             "segment_ids": None}
    return batch, images(3, model.config.image_size, seed)


@pytest.mark.parametrize("patch_size,pool,image_size", [(4, 2, 16), (2, 2, 16), (3, 3, 18), (4, 1, 12)])
def test_embedder_layout(patch_size, pool, image_size):
    """Class token first, then g rows of g pooled tokens each followed by the separator; each pooled
    token reads only its own window of pixels."""
    g = image_size // (patch_size * pool)
    torch.manual_seed(0)
    embedder = PatchEmbedder(patch_size, pool, 16, 2, CLIP_MEAN, CLIP_STD)
    x = images(2, image_size)
    out = embedder(x)
    assert out.shape == (2, 1 + g * (g + 1), 16)
    if image_size == 16 and patch_size == 4 and pool == 2:
        model = tiny()
        assert model.config.image_tokens == out.shape[1] == 7
    rows = out[:, 1:].reshape(2, g, g + 1, 16)
    torch.testing.assert_close(rows[:, :, g], embedder.separator.expand(2, g, 16))
    # change the pixels of one window (row r, column c): only its token and the class token move
    r, c, w = g - 1, 0, patch_size * pool
    changed = x.clone()
    changed[0, :, r * w:(r + 1) * w, c * w:(c + 1) * w] = 255 - changed[0, :, r * w:(r + 1) * w, c * w:(c + 1) * w]
    moved = (embedder(changed)[0] - out[0]).abs().amax(-1) > 1e-6
    expected = torch.zeros(1 + g * (g + 1), dtype=torch.bool)
    expected[0] = True
    expected[1 + r * (g + 1) + c] = True
    assert torch.equal(moved, expected)


def test_pooled_token_is_window_cross_attention():
    """The pooled token against a direct computation for one window: its mean queries its patches."""
    torch.manual_seed(0)
    e = PatchEmbedder(4, 2, 8, 2, CLIP_MEAN, CLIP_STD)
    x = images(1, 8)
    pixels = (x.double() / 255 - torch.tensor(CLIP_MEAN, dtype=torch.double).view(1, 3, 1, 1)) \
        / torch.tensor(CLIP_STD, dtype=torch.double).view(1, 3, 1, 1)
    patches = F.conv2d(pixels, e.patch_weight.double(), e.patch_bias.double(), stride=4).flatten(2).transpose(1, 2)[0]
    query = patches.mean(0, keepdim=True)
    p = e.local_pool
    q = F.linear(F.layer_norm(query, (8,), p.q_norm.weight.double(), p.q_norm.bias.double()), p.q.weight.double())
    kv = F.linear(F.layer_norm(patches, (8,), p.kv_norm.weight.double(), p.kv_norm.bias.double()), p.kv.weight.double())
    k, v = kv[:, :8], kv[:, 8:]
    heads = []
    for h in range(2):
        s = slice(4 * h, 4 * h + 4)
        heads.append(torch.softmax(q[:, s] @ k[:, s].T / 2.0, dim=-1) @ v[:, s])
    pooled = query + F.linear(torch.cat(heads, -1), p.proj.weight.double(), p.proj.bias.double())
    torch.testing.assert_close(e(x)[0, 1].double(), pooled[0], rtol=1e-5, atol=1e-5)


def test_patch_states_read_the_image_positions():
    """With the embeddings as the aligned layer, the aligner's inputs are exactly each image's pooled
    tokens (class token and separators dropped), in image order, pooled down to the teacher's grid."""
    model = tiny(patch_size=2, pool=2, align_layers=(0,))   # 4x4 grid, teacher 2x2
    batch, imgs = make_batch(model)
    embeds, is_image = model.embed(batch["input_ids"], imgs)
    states, = model.patch_states([embeds], is_image, 3)
    tokens = model.image_embeddings(imgs)[:, 1:].reshape(3, 4, 5, -1)[:, :, :4]
    pooled = F.avg_pool2d(tokens.permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1).reshape(12, -1)
    torch.testing.assert_close(states, pooled)


def grads(module):
    return [p.grad for p in module.parameters()]


@pytest.mark.parametrize("stage", ["prealign", "pretrain", "finetune"])
def test_stages_train_their_parts(stage):
    model = tiny()
    trained = model.set_stage(stage)
    batch, imgs = make_batch(model)
    loss, count, aux = model.batch_loss({**batch, "images": imgs})
    assert count == int((batch["labels"][:, 1:] != -100).sum())
    if stage == "finetune":
        assert aux is None
        loss.backward()
    else:
        assert aux.ndim == 0 and 0 < aux.item() < 1.0   # 0.5 * (1 - cos) lies in [0, 1]
        (loss / count + aux).backward()
    assert all(g is not None and g.abs().sum() > 0 for g in grads(model.embedder.local_pool) + grads(model.projector))
    assert model.embedder.patch_weight.grad.abs().sum() > 0
    lm_grads = grads(model.lm)
    if stage == "prealign":
        assert trained == ["embedder", "projector", "aligner"]
        assert all(g is None for g in lm_grads)
    else:
        assert all(g is not None for g in lm_grads) and sum(g.abs().sum() for g in lm_grads) > 0
    aligner_grads = grads(model.aligner)
    if stage == "finetune":
        assert trained == ["embedder", "projector", "lm"] and all(g is None for g in aligner_grads)
    else:
        assert all(g is not None for g in aligner_grads)
    assert all(g is None for g in grads(model.teacher))
    names = {g["name"] for g in model.param_groups(1e-3, projector_lr=2e-3)}
    assert names == {"prealign": {"projector", "aligner"}, "pretrain": {"projector", "aligner", "lm"},
                     "finetune": {"projector", "lm"}}[stage]


def test_alignment_loss_decreases():
    model = tiny()
    model.set_stage("prealign")
    batch, imgs = make_batch(model)
    optimizer = FusedAdamW(model.param_groups(3e-3), lr=3e-3)
    history = []
    for _ in range(25):
        _, _, aux = model.batch_loss({**batch, "images": imgs})
        aux.backward()
        optimizer.step()
        optimizer.zero_grad()
        history.append(aux.item())
    assert history[-1] < 0.5 * history[0], history


def test_inference_does_not_use_the_teacher():
    model = tiny().eval()
    batch, imgs = make_batch(model)
    prompt_ids, prompt_mask = batch["input_ids"][:, :-3], batch["attention_mask"][:, :-3]

    def answer():
        embeds, mask = model.generation_inputs(prompt_ids, imgs, prompt_mask)
        return generate(model.lm, inputs_embeds=embeds, attention_mask=mask, max_new_tokens=4)

    before = answer()
    model.teacher.forward_features = lambda *a, **k: pytest.fail("the teacher ran during inference")
    torch.testing.assert_close(answer(), before, rtol=0, atol=0)
    model.teacher = None
    torch.testing.assert_close(answer(), before, rtol=0, atol=0)


def test_teacher_is_frozen_and_kept_out_of_the_state_dict():
    model = tiny()
    assert not any(p.requires_grad for p in model.teacher.parameters())
    model.train()
    assert not model.teacher.training
    state = model.state_dict()
    assert state and not any(k.startswith("teacher.") for k in state)
    other = tiny(seed=5)
    other.load_state_dict(state)
    for key, value in other.state_dict().items():
        torch.testing.assert_close(value, state[key])
    with pytest.raises(RuntimeError, match="unexpected"):
        other.load_state_dict({**state, "bogus.weight": torch.zeros(1)})
    student_only = tiny(teacher=False)
    student_only.load_state_dict({k: v for k, v in state.items() if not k.startswith("aligner.")})


def test_bad_stages_and_shapes():
    with pytest.raises(ValueError, match="unknown stage 'finetuning' for the eve recipe.*'prealign'"):
        tiny().set_stage("finetuning")
    with pytest.raises(ValueError, match="no teacher"):
        tiny(teacher=False).set_stage("prealign")
    model = tiny()
    model.drop_teacher()
    assert model.stage == "finetune"
    with pytest.raises(ValueError, match="no teacher"):
        model.set_stage("pretrain")
    batch, imgs = make_batch(model)
    with pytest.raises(ValueError, match="21 image tokens but 2 image"):
        model.embed(batch["input_ids"], imgs[:2])
    with pytest.raises(ValueError, match="not a multiple of patch_size x pool"):
        tiny(patch_size=4, pool=3)
    with pytest.raises(ValueError, match="cannot be pooled to the teacher"):
        tiny(patch_size=4, pool=4)   # a 1x1 grid against the teacher's 2x2
    with pytest.raises(ValueError, match="out of range"):
        tiny(align_layers=(3,))
    assert tiny(align_layers=()).config.align_layers == (2,)   # EVE: every 4th from the last


def test_teacher_reads_uint8_images_resized_to_its_own_size():
    """A teacher of another image size sees the images resized as an image processor resizes
    them (antialiased bilinear, rounded back to uint8), normalised by its own stem."""
    model = tiny(image_size=32)   # the teacher reads 16 x 16
    pictures = images(2, 32)
    resized = F.interpolate(pictures.double(), size=(16, 16), mode="bilinear", align_corners=False, antialias=True)
    resized = resized.round().clamp(0, 255).to(torch.uint8)
    expected, = model.teacher.forward_features(resized, layers=[model.config.teacher_layer])
    torch.testing.assert_close(model.teacher_features(pictures), expected[:, 1:].reshape(-1, expected.shape[-1]))
