"""The mma recipe (LaVIN) on tiny shapes: the modality token is seen by the routers only, routing
splits text-only from image samples, only adapters train, adapter-only checkpoints, mixed batches
through the loss and through cached generation, and LaVIN's trainable-parameter counts."""
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from minilvlm.eval.generate import generate, left_pad
from minilvlm.models.decoder import DecoderConfig
from minilvlm.models.mma import MMA, MMAConfig, is_adapter_key
from minilvlm.models.vision import VisionConfig
from minilvlm.optim import FusedAdamW
from minilvlm import recipes
from minilvlm.config import ConfigError
from minilvlm.recipes import load_config
from minilvlm.recipes.mma import mma_config

IMAGE_ID, VOCAB = 39, 40


def tiny_model(seed=0, **overrides):
    torch.manual_seed(seed)
    vision = VisionConfig(image_size=32, patch_size=16, dim=16, n_layers=4, n_heads=2, mlp_dim=32, act="gelu")
    decoder = DecoderConfig(vocab_size=VOCAB, dim=16, n_layers=2, n_heads=2, mlp_dim=24, max_seq_len=64)
    settings = dict(hidden=4, groups=2, vision_layers=(2, 4), visual_hidden=8, image_token_id=IMAGE_ID, dropout=0.0)
    settings.update(overrides)
    model = MMA(MMAConfig(vision=vision, decoder=decoder, **settings))
    for module in (model.vision, model.lm):
        for p in module.parameters():
            if p.dim() > 1:
                torch.nn.init.normal_(p, std=0.3)
    return model


def vision_adapters(model):
    return [block.adapter for block in model.vision.layers if block.adapter is not None]


def lm_adapters(model):
    return [block.adapter for block in model.lm.layers if block.adapter is not None]


def randomize_adapters(model, std=0.3):
    """Fresh adapters are the identity (zero up-projections); give them random ones."""
    with torch.no_grad():
        for adapter in (*vision_adapters(model), *lm_adapters(model)):
            adapter.up_w.normal_(std=std)
            adapter.up_b.normal_(std=std)
            adapter.router_w.normal_(std=3.0)   # strong enough to route visibly at temperature 10


def mixed_batch():
    """Two image rows (2 image tokens each) and two text-only rows, right-padded."""
    rows = [[1, IMAGE_ID, IMAGE_ID, 5, 6, 7, 8], [2, 9, 10, 11], [1, IMAGE_ID, IMAGE_ID, 12, 13], [3, 14, 15, 16, 17]]
    width = max(map(len, rows))
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for r, row in enumerate(rows):
        ids[r, :len(row)] = torch.tensor(row)
        mask[r, :len(row)] = True
    labels = ids.masked_fill(~mask, -100)
    labels[:, :3] = -100
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "position_ids": positions,
            "segment_ids": mask.int(), "images": images}, images


def select(batch, images, rows):
    """A sub-batch of the given rows (and their images), trimmed to its own width."""
    image_rows = [r for r in range(batch["input_ids"].shape[0]) if (batch["input_ids"][r] == IMAGE_ID).any()]
    width = int(batch["attention_mask"][rows].sum(-1).max())
    sub = {k: v[rows][:, :width] for k, v in batch.items() if k != "images"}
    sub["images"] = images[[image_rows.index(r) for r in rows if r in image_rows]]
    return sub


def test_modality_token_is_seen_by_the_routers_only():
    model = tiny_model().eval()
    randomize_adapters(model)
    batch, images = mixed_batch()
    args = (batch["input_ids"], images, batch["attention_mask"])
    kwargs = dict(position_ids=batch["position_ids"])
    other = torch.randn_like(model.modality_token.embedding.weight)
    with torch.no_grad():
        base = model(*args, **kwargs)
        # Routers blind to t (router_w = 0): swapping the token must change nothing after position 0.
        for adapter in lm_adapters(model):
            adapter.router_w.zero_()
        blind = model(*args, **kwargs)
        original = model.modality_token.embedding.weight.clone()
        model.modality_token.embedding.weight.copy_(other)
        blind_swapped = model(*args, **kwargs)
        assert torch.equal(blind_swapped[:, 1:], blind[:, 1:])
        assert not torch.allclose(blind_swapped[:, 0], blind[:, 0])   # position 0 itself did change
        # Control: were column 0 not masked, the same swap would reach the other tokens.
        embeds = model.embed(batch["input_ids"], images)
        unmasked = torch.cat((torch.ones_like(batch["attention_mask"][:, :1]), batch["attention_mask"]), 1)
        model.modality_token.embedding.weight.copy_(original)
        seen = model.lm(inputs_embeds=model.embed(batch["input_ids"], images), attention_mask=unmasked)
        seen_swapped = model.lm(inputs_embeds=embeds, attention_mask=unmasked)
        assert not torch.allclose(seen[:, 1:], seen_swapped[:, 1:])
        # With the routers reading t again, the swap changes the routing and through it the outputs.
        randomize_adapters(model)
        routed = model(*args, **kwargs)
        w = model.routing_weights(batch["input_ids"])
        model.modality_token.embedding.weight.copy_(other)
        assert not torch.allclose(model(*args, **kwargs)[:, 1:], routed[:, 1:])
        assert not torch.allclose(model.routing_weights(batch["input_ids"]), w)
    assert base.shape == (4, 8, VOCAB)


def test_routing_separates_text_only_from_image_samples_after_training():
    model = tiny_model(seed=2)
    model.set_stage("finetune")
    with torch.no_grad():   # start with one token for both modalities: identical routing
        model.modality_token.embedding.weight[1] = model.modality_token.embedding.weight[0]
    has_image = torch.tensor([False, True])
    start = model.routing_weights(has_image=has_image)
    assert torch.equal(start[0], start[1])
    batch, images = mixed_batch()
    # Toy task: image rows and text rows continue differently, so the two modalities pull apart.
    batch["labels"][0, 3:7] = torch.tensor([20, 21, 22, 23])
    batch["labels"][2, 3:5] = torch.tensor([20, 21])
    optimizer = FusedAdamW(model.param_groups(3e-2), lr=3e-2)
    for _ in range(8):
        loss, count, _ = model.batch_loss(batch)
        (loss / count).backward()
        optimizer.step()
        optimizer.zero_grad()
    after = model.routing_weights(has_image=has_image)
    assert (after[0] - after[1]).abs().max() > 1e-3


def test_only_adapters_get_gradients():
    model = tiny_model()
    randomize_adapters(model)
    parts = model.set_stage("finetune")
    assert parts == ["vision_adapters", "lm_adapters", "modality_token", "visual_adapter"]
    batch, images = mixed_batch()
    loss, count, aux = model.batch_loss(batch)
    assert aux is None and count == int((batch["labels"][:, 1:] != -100).sum())
    loss.backward()
    for name, p in model.named_parameters():
        if is_adapter_key(name):
            assert p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert not p.requires_grad and p.grad is None, name
    # Both modality rows were used by the batch, so both got gradient.
    assert (model.modality_token.embedding.weight.grad.abs().sum(-1) > 0).all()
    groups = model.param_groups(1e-3)
    assert sum(p.numel() for g in groups for p in g["params"]) == sum(
        p.numel() for p in model.parameters() if p.requires_grad)
    with pytest.raises(ConfigError, match="keeps the ViT and the LM frozen"):
        load_config(None, ["model.recipe=mma", "model.mma.base_checkpoint=x", "train.train_vision=true"])


def test_adapter_checkpoint_holds_only_trainable_tensors_and_round_trips(tmp_path):
    recipe = recipes.get("mma")
    model = tiny_model().eval()
    randomize_adapters(model)
    model.set_stage("finetune")
    path = tmp_path / "adapters.safetensors"
    save_file(recipe.checkpoint_state(model), path)
    tensors = load_file(path)
    assert set(tensors) == {n for n, p in model.named_parameters() if p.requires_grad}
    assert {k.split(".adapter.")[0] for k in tensors if ".adapter." in k} == {
        *(f"vision.layers.{i}" for i in range(4)), "lm.layers.0", "lm.layers.1"}   # in the blocks' slots
    fresh = tiny_model().eval()   # same seed: the same base, fresh (identity) adapters
    batch, images = mixed_batch()
    args = (batch["input_ids"], images, batch["attention_mask"])
    with torch.no_grad():
        assert not torch.allclose(fresh(*args), model(*args))
        recipe.load_checkpoint_state(fresh, tensors, path)
        assert torch.equal(fresh(*args), model(*args))
    other = tiny_model(hidden=6)
    with pytest.raises(ValueError, match="does not fit this model"):
        recipe.load_checkpoint_state(other, tensors, path)


def test_adapter_checkpoints_of_the_hook_era_still_load():
    """Checkpoints written when the adapters hung off the blocks by hooks named them
    vision_adapters.N.* and lm_adapters.N.*; they load into the blocks' slots."""
    model = tiny_model().eval()
    randomize_adapters(model)
    legacy = {}
    for key, value in model.trainable_state_dict().items():
        for part in ("vision", "lm"):
            prefix = f"{part}.layers."
            if key.startswith(prefix) and ".adapter." in key:
                index, rest = key[len(prefix):].split(".adapter.")
                key = f"{part}_adapters.{index}.{rest}"
        legacy[key] = value.clone()
    assert any(k.startswith("vision_adapters.") for k in legacy)
    fresh = tiny_model().eval()
    fresh.load_trainable_state_dict(legacy)
    batch, images = mixed_batch()
    with torch.no_grad():
        assert torch.equal(fresh(batch["input_ids"], images), model(batch["input_ids"], images))


def test_mixed_batch_loss_equals_the_rows_alone():
    model = tiny_model().eval()
    randomize_adapters(model)
    batch, images = mixed_batch()
    with torch.no_grad():
        total, count, _ = model.batch_loss(batch)
        parts = [model.batch_loss(select(batch, images, [r])) for r in range(4)]
    assert count == sum(c for _, c, _ in parts)
    torch.testing.assert_close(total, sum(loss for loss, _, _ in parts), rtol=1e-5, atol=1e-5)


def test_packed_batches_are_refused():
    model = tiny_model()
    batch, images = mixed_batch()
    batch["segment_ids"][0, 4:] = 2
    with pytest.raises(ValueError, match="turn packing off"):
        model.batch_loss(batch)


def test_cached_generation_matches_greedy_recompute():
    model = tiny_model(seed=3).eval()
    randomize_adapters(model)
    prompts = [[1, IMAGE_ID, IMAGE_ID, 5, 6], [2, 9], [1, IMAGE_ID, IMAGE_ID, 12, 13, 14, 15], [3, 14, 15]]
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(4))
    ids, mask = left_pad(prompts, pad_id=0)
    embeds, gen_mask = model.generation_inputs(ids, images, mask)
    assert gen_mask[:, 0].eq(0).all() and embeds.shape[1] == ids.shape[1] + 1
    cached = generate(model.lm, inputs_embeds=embeds, attention_mask=gen_mask, max_new_tokens=6)
    recomputed = generate(model.lm, inputs_embeds=embeds, attention_mask=gen_mask, max_new_tokens=6, use_cache=False)
    assert torch.equal(cached, recomputed)
    # Each row decodes as it would alone (padding and the other rows' modalities do not leak in).
    for row, image_index in ((1, []), (2, [1])):
        one_ids, one_mask = left_pad([prompts[row]], pad_id=0)
        one_embeds, one_gen_mask = model.generation_inputs(one_ids, images[image_index], one_mask)
        one = generate(model.lm, inputs_embeds=one_embeds, attention_mask=one_gen_mask, max_new_tokens=6)
        assert torch.equal(one[0], cached[row])
    assert len(set(map(tuple, cached.tolist()))) > 1   # not a degenerate constant output


LAVIN_7B = Path(__file__).resolve().parents[2] / "configs" / "lavin_llama7b_sqa.toml"
TO_13B = ["model.decoder.dim=5120", "model.decoder.n_layers=40", "model.decoder.n_heads=40",
          "model.decoder.mlp_dim=13824", "model.mma.temperature=5"]


def lavin_trainable(overrides, preset):
    """Trainable parameters of the LaVIN config, built on the meta device (no weights)."""
    cfg = load_config(LAVIN_7B, overrides, check_paths=False)   # no weights needed on the meta device
    reference = DecoderConfig.preset(preset)
    assert (cfg.model.decoder.dim, cfg.model.decoder.n_layers, cfg.model.decoder.mlp_dim) == (
        reference.dim, reference.n_layers, reference.mlp_dim)
    assert cfg.model.vision == VisionConfig.preset("clip-vit-l-14")
    with torch.device("meta"):
        model = MMA(mma_config(cfg, cfg.model.vision, cfg.model.decoder, 32000))
    model.set_stage(cfg.train.stage)
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trained, sum(p.numel() for p in model.parameters()), model


def test_lavin_trainable_parameter_counts_on_meta():
    """LaVIN Table 1: 3.8M trainable for 7B, 5.4M for 13B (the count is explained in the config)."""
    n7, total7, model = lavin_trainable([], "llama-7b")
    assert model.config.image_tokens == 6 and model.config.temperature == 10.0
    assert n7 == 3_781_296 and abs(n7 / 3.8e6 - 1) <= 0.03
    assert n7 / total7 < 0.001
    n13, _, model = lavin_trainable(TO_13B, "llama-13b")
    assert model.config.temperature == 5.0
    assert n13 == 5_390_080 and abs(n13 / 5.4e6 - 1) <= 0.03


def test_bf16_autocast_training_and_generation():
    """LaVIN trains under bf16 autocast: the fused adapter op must run inside it (forward and
    backward) and the loss stay close to fp32's."""
    model = tiny_model(seed=5)
    randomize_adapters(model, std=0.1)
    model.set_stage("finetune")
    batch, images = mixed_batch()
    loss32, count, _ = model.batch_loss(batch)
    loss32.backward()
    grads32 = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss16, _, _ = model.batch_loss(batch)
        loss16.backward()
    torch.testing.assert_close(loss16 / count, loss32 / count, rtol=3e-2, atol=3e-2)
    for name, grad in grads32.items():
        got = dict(model.named_parameters())[name].grad
        assert got.dtype == torch.float32 and torch.isfinite(got).all(), name
    g16 = torch.cat([dict(model.named_parameters())[n].grad.flatten() for n in grads32])
    g32 = torch.cat([g.flatten() for g in grads32.values()])
    assert torch.nn.functional.cosine_similarity(g16, g32, dim=0) > 0.95
    model.eval()
    ids, mask = left_pad([[1, IMAGE_ID, IMAGE_ID, 5], [2, 9]], pad_id=0)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        embeds, gen_mask = model.generation_inputs(ids, images[:1], mask)
        cached = generate(model.lm, inputs_embeds=embeds, attention_mask=gen_mask, max_new_tokens=4)
    assert cached.shape == (2, 4)


class _Tokenizer:
    vocab_size, image_token_id = 211, 210   # the tiny LLaMA's table; <image> is the last id


def test_base_from_hugging_face_folders(tmp_path):
    from tests.models import hf_fixtures
    from minilvlm.weights import from_pretrained
    build_mma_model = recipes.get("mma").build_model
    hf_fixtures.llama(tmp_path / "llama")
    hf_fixtures.clip_vision(tmp_path / "clip")
    sizes = ["model.vision.image_size=30", "model.vision.patch_size=6", "model.vision.dim=48",
             "model.vision.n_layers=3", "model.decoder.dim=64", "model.decoder.n_layers=2",
             "model.decoder.n_heads=4", "model.decoder.mlp_dim=96"]
    common = ["model.recipe=mma", "train.train_vision=false", "model.mma.vision_layers=[1, 3]",
              f"model.mma.vision_weights={str(tmp_path / 'clip')!r}", f"model.mma.lm_weights={str(tmp_path / 'llama')!r}"]
    model = build_mma_model(load_config(None, common + sizes), _Tokenizer())
    reference = from_pretrained(tmp_path / "llama")
    ours = model.lm.state_dict()
    assert all(torch.equal(ours[k], v) for k, v in reference.state_dict().items())
    assert model.config.image_tokens == 2 and len(vision_adapters(model)) == 3 and len(lm_adapters(model)) == 2
    model.set_stage("finetune")
    ids = torch.tensor([[1, 210, 210, 5, 6], [2, 7, 8, 9, 10]])
    images = torch.randint(0, 256, (1, 3, 30, 30), dtype=torch.uint8)
    labels = ids.masked_fill(ids == 210, -100)
    loss, count, _ = model.batch_loss({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels,
                                       "position_ids": torch.arange(5).expand(2, 5), "segment_ids": None,
                                       "images": images})
    assert torch.isfinite(loss) and count == 2 * 5 - 2   # every token but the two image ids
    with pytest.raises(ValueError, match=r"model.decoder.dim: the config sets 32 but model.mma.lm_weights = .*llama "
                                         r"has 64\n"):
        build_mma_model(load_config(None, common + sizes + ["model.decoder.dim=32"]), _Tokenizer())
    with pytest.raises(ConfigError, match="model.mma.lm_weights = .*nowhere.*no such file"):
        build_mma_model(load_config(None, common + sizes + [f"model.mma.lm_weights={str(tmp_path / 'nowhere')!r}"],
                                    check_paths=False), _Tokenizer())


def test_routing_ablations_fixed_has_no_router_and_no_token_routes_every_sample_alike(tmp_path):
    recipe = recipes.get("mma")
    batch, images = mixed_batch()
    args = (batch["input_ids"], images, batch["attention_mask"])
    has_image = torch.tensor([False, True])
    # "no_token": the routers stay, but one token serves both modalities, so the routing cannot differ.
    blind = tiny_model(routing="no_token")
    randomize_adapters(blind)
    assert blind.modality_token.embedding.num_embeddings == 1
    weights = blind.routing_weights(has_image=has_image)
    assert torch.equal(weights[0], weights[1])
    routed = tiny_model()
    randomize_adapters(routed)
    weights = routed.routing_weights(has_image=has_image)
    assert not torch.allclose(weights[0], weights[1])   # the control: LaVIN's token tells them apart
    # "fixed": one RepAdapter path in every slot, no router tensors, and the unread token does not train.
    fixed = tiny_model(routing="fixed")
    assert all(type(a).__name__ == "RepAdapter" for a in fixed.adapters())
    assert not any("router" in name for name, _ in fixed.named_parameters())
    with pytest.raises(ValueError, match="no router"):
        fixed.routing_weights(has_image=has_image)
    fixed.set_stage("finetune")
    assert not fixed.modality_token.embedding.weight.requires_grad
    with torch.no_grad():
        for adapter in fixed.adapters():
            adapter.up_w.normal_(std=0.3)
    loss, count, _ = fixed.batch_loss(batch)
    loss.backward()
    assert all(p.grad is not None for p in fixed.parameters() if p.requires_grad)
    # Its adapter checkpoint round-trips, and a router model's checkpoint does not fit it (nor back).
    path = tmp_path / "fixed.safetensors"
    save_file(recipe.checkpoint_state(fixed), path)
    again = tiny_model(routing="fixed")
    recipe.load_checkpoint_state(again, load_file(path), path)
    with torch.no_grad():
        assert torch.equal(again.eval()(*args), fixed.eval()(*args))
    with pytest.raises(ValueError, match="does not fit this model"):
        recipe.load_checkpoint_state(tiny_model(), load_file(path), path)
    with pytest.raises(ValueError, match="routing 'sometimes'"):
        tiny_model(routing="sometimes")
    with pytest.raises(ConfigError, match="model.mma.routing"):
        load_config(None, ["model.recipe=mma", "model.mma.base_checkpoint=x", "model.mma.routing=off"],
                    check_paths=False)


def test_patch_tokens_diagnostic_reads_the_deepest_layers_patches():
    """visual_tokens="patches" (past the paper: docs/recipes.md): the LM gets one token per patch of the
    deepest chosen layer, through the same visual adapter; LaVIN's default gets one class token per layer."""
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    lavin, patches = tiny_model(), tiny_model(visual_tokens="patches")
    assert lavin.config.image_tokens == 2 and patches.config.image_tokens == 4   # layers (2, 4); 2x2 patches
    with torch.no_grad():
        features = patches.image_features(images)
        state, = patches.vision.forward_features(images, layers=[4])
        expected = patches.visual_adapter(patches.vision.post_norm(state[:, 1:]))
    assert features.shape == (3, 4, 16) and torch.equal(features, expected)
    assert lavin.image_features(images).shape == (3, 2, 16)
    with pytest.raises(ValueError, match="visual_tokens 'grid'"):
        tiny_model(visual_tokens="grid")
