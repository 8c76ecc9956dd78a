"""LoRA layers (minilvlm/models/lora.py): a fresh wrap computes what the Linear did, the update is
(alpha / rank) B A x with gradients into A and B only, merging adds exactly that, the patterns pick
the modules they name, and every tensor is its own parameter (nothing aliased)."""
import pytest
import torch
from torch import nn

from minilvlm.models.decoder import Decoder, DecoderConfig
from minilvlm.models.lora import (
    LoRALinear,
    apply_lora,
    base_state_dict,
    freeze_for_lora,
    lora_modules,
    merged_state_dict,
    trainable_state_dict,
)

CONFIG = DecoderConfig(vocab_size=37, dim=24, n_layers=2, n_heads=4, n_kv_heads=2, mlp_dim=40, max_seq_len=64)


def _decoder():
    torch.manual_seed(0)
    return Decoder(CONFIG)


def test_a_fresh_wrap_computes_what_the_linear_did_and_keeps_its_parameters():
    torch.manual_seed(0)
    linear = nn.Linear(7, 5)
    lora = LoRALinear.wrap(linear, rank=3, alpha=6.0)
    assert lora.weight is linear.weight and lora.bias is linear.bias
    x = torch.randn(4, 7)
    torch.testing.assert_close(lora(x), linear(x), rtol=0, atol=0)
    assert torch.count_nonzero(lora.lora_a) > 0 and torch.count_nonzero(lora.lora_b) == 0


def test_the_update_is_scaled_low_rank_and_only_a_and_b_get_gradients():
    torch.manual_seed(1)
    lora = LoRALinear.wrap(nn.Linear(9, 6), rank=2, alpha=8.0)
    with torch.no_grad():
        lora.lora_b.normal_()
    lora.weight.requires_grad_(False)
    lora.bias.requires_grad_(False)
    x = torch.randn(3, 5, 9, dtype=torch.float64)
    lora.double()
    expected = x @ lora.weight.T + lora.bias + (x @ lora.lora_a.T @ lora.lora_b.T) * (8.0 / 2)
    out = lora(x)
    torch.testing.assert_close(out, expected)
    out.square().sum().backward()
    assert lora.weight.grad is None and lora.lora_a.grad is not None and lora.lora_b.grad is not None
    merged = nn.Linear(9, 6).double()
    merged.load_state_dict({"weight": lora.weight + lora.delta(), "bias": lora.bias})
    torch.testing.assert_close(merged(x), out.detach())


def test_default_targets_wrap_every_attention_and_mlp_projection_of_the_lm():
    decoder = _decoder()
    names = apply_lora(decoder, ["layers.*.attn.w*", "layers.*.mlp.w*"], rank=2, alpha=4.0)
    assert sorted(names) == sorted(f"layers.{i}.{p}" for i in range(2) for p in
                                   ("attn.wq", "attn.wk", "attn.wv", "attn.wo", "mlp.w_gate", "mlp.w_up", "mlp.w_down"))
    assert set(lora_modules(decoder)) == set(names)
    assert isinstance(decoder.lm_head, nn.Linear) and not isinstance(decoder.lm_head, LoRALinear)
    # no aliasing: every parameter is one tensor of one module (a sharding wrapper takes them as they are)
    storages = [p.untyped_storage().data_ptr() for p in decoder.parameters()]
    assert len(storages) == len(set(storages))


def test_a_pattern_that_matches_nothing_is_named():
    with pytest.raises(ValueError, match=r"LoRA targets \['layers.\*.attn.q_proj'\] match no Linear layer.*"
                                         r"named like \['layers.0.attn.wq'"):
        apply_lora(_decoder(), ["layers.*.attn.q_proj"], rank=2, alpha=4.0)
    with pytest.raises(ValueError, match="rank must be positive"):
        apply_lora(_decoder(), ["layers.*.attn.wq"], rank=0, alpha=4.0)


def test_freezing_trains_lora_in_place_of_the_part_and_merging_keeps_the_function():
    decoder = _decoder()
    ids = torch.randint(0, 37, (2, 11))
    before = decoder(ids)
    apply_lora(decoder, ["layers.*.attn.w*", "layers.*.mlp.w*"], rank=3, alpha=5.0)
    model = nn.ModuleDict({"lm": decoder, "projector": nn.Linear(4, 4)})
    freeze_for_lora(model)   # everything requires grad before: the LM part trains, so its LoRA does
    trained = trainable_state_dict(model)
    assert all(k.endswith(("lora_a", "lora_b")) for k in trained if k.startswith("lm."))
    assert {"projector.weight", "projector.bias"} <= set(trained) and len(trained) == 2 + 2 * 14
    torch.testing.assert_close(decoder(ids), before, rtol=0, atol=0)   # B = 0: nothing changed yet
    with torch.no_grad():
        for module in lora_modules(decoder).values():
            module.lora_b.normal_(std=0.1)
    adapted = decoder(ids)
    plain = Decoder(CONFIG)
    plain.load_state_dict({k.removeprefix("lm."): v for k, v in merged_state_dict(model).items() if k.startswith("lm.")})
    torch.testing.assert_close(plain(ids), adapted, rtol=1e-5, atol=1e-5)
    plain.load_state_dict({k.removeprefix("lm."): v for k, v in base_state_dict(model).items() if k.startswith("lm.")})
    torch.testing.assert_close(plain(ids), before, rtol=0, atol=0)
    model["lm"].requires_grad_(False)   # a stage that freezes the LM freezes its LoRA too
    freeze_for_lora(model)
    assert set(trainable_state_dict(model)) == {"projector.weight", "projector.bias"}
