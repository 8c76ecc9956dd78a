"""A LoRA run through tools/export_hf.py: merged, its logits in transformers equal our model's; as a
peft adapter beside its base, `PeftModel.from_pretrained(base, adapter)` gives the same logits. Both
within 1e-5 relative (fp32), on inputs made by the export's own processor from a demo image."""
import json

import pytest
import torch
from safetensors import safe_open

from minilvlm.data.demo import load_demo
from minilvlm.eval.load import load_model
from tests.lora_run import train_lora
from tests.models.hf_fixtures import transformers
from tests.tools_main import tool_main

try:
    import peft
except ImportError as exc:  # a hard failure: the adapter must be checked against peft, never skipped
    raise ImportError("the LoRA export test needs peft (test-only): pip install -r requirements-test.txt") from exc

TOL = 1e-5


@pytest.fixture(scope="module")
def lora_run(tiny_run, tmp_path_factory):
    run = tmp_path_factory.mktemp("lora") / "run"
    train_lora(tiny_run, run)
    return run


def _inputs(out, run):
    processor = transformers.AutoProcessor.from_pretrained(out)
    record = next(r for r in load_demo(run / "data", "test") if r.images)
    conversation = [{"role": "user", "content": [{"type": "image", "path": str(record.images[0])},
                                                 {"type": "text", "text": "What shape is on the left?"}]}]
    return processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True, return_dict=True,
                                         return_tensors="pt")


def _ours(run, inputs):
    loaded = load_model(run)
    with torch.no_grad():   # float pixels are taken as normalised: the same pixels for both stacks
        return loaded.model(inputs["input_ids"], inputs["pixel_values"])


def _relative_error(ours, theirs):
    return ((ours - theirs).abs().max() / ours.abs().max()).item()


def test_the_merged_export_gives_our_logits(lora_run, tmp_path, capsys):
    out = tmp_path / "merged"
    assert tool_main("export_hf")([str(lora_run), "--out", str(out)]) == 0
    assert "LlavaForConditionalGeneration" in capsys.readouterr().out
    inputs = _inputs(out, lora_run)
    hf = transformers.LlavaForConditionalGeneration.from_pretrained(out).eval()
    with torch.no_grad():
        theirs = hf(**inputs).logits
    assert _relative_error(_ours(lora_run, inputs), theirs) < TOL
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert not any("lora" in k for k in f.keys())


def test_the_peft_adapter_over_its_base_gives_our_logits(lora_run, tmp_path):
    out = tmp_path / "peft"
    assert tool_main("export_hf")([str(lora_run), "--out", str(out), "--lora", "adapter"]) == 0
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 2 and config["lora_alpha"] == 4.0
    assert config["modules_to_save"] == ["multi_modal_projector"]
    with safe_open(str(out / "adapter" / "adapter_model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_A.weight" in keys
    assert "base_model.model.model.multi_modal_projector.linear_2.bias" in keys and len(keys) == 2 * 7 + 4
    base = transformers.LlavaForConditionalGeneration.from_pretrained(out / "base").eval()
    inputs = _inputs(out / "base", lora_run)
    with torch.no_grad():
        plain = base(**inputs).logits
        adapted = peft.PeftModel.from_pretrained(base, out / "adapter").eval()(**inputs).logits
    ours = _ours(lora_run, inputs)
    assert _relative_error(ours, adapted) < TOL
    assert _relative_error(ours, plain) > 100 * TOL   # the adapter is what makes the difference


def test_adapter_export_of_a_run_without_lora_is_refused(tiny_run, tmp_path, capsys):
    assert tool_main("export_hf")([str(tiny_run), "--out", str(tmp_path / "x"), "--lora", "adapter"]) == 2
    assert "error: --lora adapter: this run has no LoRA (model.lora.rank is 0)" in capsys.readouterr().err
