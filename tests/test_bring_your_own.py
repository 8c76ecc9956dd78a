"""README's "Bring your own model", end to end on tiny folders saved by transformers: a CLIP tower
and a Vicuna-style LLaMA (its tokenizer has no <image>) go in by path alone; `tools/train.py
--dry-run` shows the resolved sections; a short LoRA finetune; `tools/export_hf.py` merged, which
transformers chats with as tools/generate.py --temperature 0 does and whose logits are ours within
1e-5 relative; and `--lora adapter`, which peft loads to the same logits."""
import json

import pytest
import torch

from minilvlm.eval.chat import prompt_inputs
from minilvlm.eval.load import load_model
from tests.chat_agreement import agreement
from tests.models.hf_fixtures import transformers
from tests.models.hf_tokenizers import hf_lvlm_folders
from tests.tools_main import tool_main

try:
    import peft
except ImportError as exc:  # a hard failure: the adapter must be checked against peft, never skipped
    raise ImportError("this test needs peft (test-only): pip install -r requirements-test.txt") from exc

SHORT = ["data.demo_sizes={train = 48, val = 8, test = 8}", "train.global_batch=8", "train.micro_batch=8",
         "train.steps=6", "train.log_every=3", "train.eval_every=0", "train.ckpt_every=0", "eval.max_new_tokens=2",
         "eval.batch=8", "eval.samples=0", "train.threads=2", "optim.lr=1e-2", "optim.warmup_steps=1"]
TOL = 1e-5


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return hf_lvlm_folders(tmp_path_factory.mktemp("byo"))


def _paths(folders):
    return [f"model.vision_weights={json.dumps(str(folders['clip']))}",
            f"model.lm_weights={json.dumps(str(folders['llama']))}"]


def _relative_error(ours, theirs):
    return ((ours - theirs).abs().max() / ours.abs().max()).item()


def _chat_inputs(processor, run):
    image = next((run / "data" / "images" / "test").glob("*.png"))
    conversation = [{"role": "user", "content": [{"type": "image", "path": str(image)},
                                                 {"type": "text", "text": "What colour is the shape?"}]}]
    return image, processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True,
                                                return_dict=True, return_tensors="pt")


def test_the_dry_run_shows_what_was_read_from_the_folders(folders, capsys):
    assert tool_main("train")(_paths(folders) + SHORT + ["model.lora.rank=2", "--dry-run"]) == 0
    err = capsys.readouterr().err
    assert f"config: model.vision: from model.vision_weights = {folders['clip']}" in err
    assert f"config: model.decoder: from model.lm_weights = {folders['llama']}" in err
    assert "config: data.template: auto -> vicuna_v1" in err


def test_a_lora_finetune_from_folders_exports_to_a_model_that_chats(folders, tmp_path, capsys):
    run, merged, split = tmp_path / "run", tmp_path / "hf", tmp_path / "hf_peft"
    assert tool_main("train")(_paths(folders) + SHORT + ["model.lora.rank=2", "model.lora.alpha=4",
                                                         f"train.run_dir={json.dumps(str(run))}"]) == 0
    assert tool_main("export_hf")([str(run), "--out", str(merged)]) == 0
    assert tool_main("export_hf")([str(run), "--out", str(split), "--lora", "adapter"]) == 0
    capsys.readouterr()
    loaded = load_model(run)
    grown = loaded.model.lm.embed.weight.shape[0]
    assert grown == json.loads((folders["llama"] / "config.json").read_text())["vocab_size"] + 1   # <image>

    processor = transformers.AutoProcessor.from_pretrained(merged)
    image, inputs = _chat_inputs(processor, run)
    ids, _ = prompt_inputs(loaded, "What colour is the shape?", str(image))   # vicuna_v1, with <s> and the system line
    assert inputs["input_ids"].tolist() == ids.tolist()
    hf = transformers.LlavaForConditionalGeneration.from_pretrained(merged).eval()
    base = transformers.LlavaForConditionalGeneration.from_pretrained(split / "base").eval()
    with torch.no_grad():
        ours = loaded.model(inputs["input_ids"], inputs["pixel_values"])
        theirs = hf(**inputs).logits
        adapted = peft.PeftModel.from_pretrained(base, split / "adapter").eval()(**inputs).logits
    assert hf.get_input_embeddings().weight.shape[0] == grown
    assert _relative_error(ours, theirs) < TOL and _relative_error(ours, adapted) < TOL

    rows = agreement(run, merged, 6, tmp_path)   # three on non-square pictures (6 steps: replies may be empty)
    assert [theirs for *_, theirs in rows] == [ours for _, _, ours, _ in rows]
