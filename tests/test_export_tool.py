"""tools/export_hf.py on the tiny trained run: the exported LLaVA answers a demo test question with
the logits of our model (inputs made by the export's own LlavaProcessor from the image file), the
decoder-only export is a LlamaForCausalLM, and bad input ends with exit code 2 and a clear error."""
import json
import shutil
import subprocess
import sys

import pytest
import torch

from minilvlm.data.demo import load_demo
from minilvlm.data.images import load_image
from minilvlm.eval.load import load_model
from tests.models.hf_fixtures import transformers
from tests.tools_main import TOOLS, tool_main

TOL = 1e-4   # max |ours - transformers| / max |ours|, fp32 (as in tests/test_export.py)


def _relative_error(ours, theirs):
    return ((ours - theirs).abs().max() / ours.abs().max()).item()


def test_cli_llava_export_answers_like_our_model(tiny_run, tmp_path):
    out = tmp_path / "hf"
    result = subprocess.run([sys.executable, str(TOOLS / "export_hf.py"), str(tiny_run), "--out", str(out)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "LlavaForConditionalGeneration" in result.stdout and "step_000030" in result.stdout
    loaded = load_model(tiny_run)
    hf, info = transformers.LlavaForConditionalGeneration.from_pretrained(out, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    processor = transformers.AutoProcessor.from_pretrained(out)
    record = next(r for r in load_demo(tiny_run / "data", "test") if r.images)
    image = load_image(record.images[0], loaded.images.size)   # demo images are already square at this size
    prompt = "<|im_start|>user\n<image>\nWhat colour is the shape?<|im_end|>\n<|im_start|>assistant\n"
    inputs = processor(images=image.permute(1, 2, 0).numpy(), text=prompt, return_tensors="pt")
    assert inputs["input_ids"][0].tolist() == loaded.tokenizer.encode(prompt.replace(
        "<image>", "<image>" * loaded.model.config.image_tokens))
    with torch.no_grad():
        ours = loaded.model(inputs["input_ids"], image[None])
        theirs = hf.eval()(**inputs).logits
    assert _relative_error(ours, theirs) < TOL


def test_decoder_only_export_is_a_llama_causal_lm(tiny_run, tmp_path, capsys):
    assert tool_main("export_hf")([str(tiny_run), "--out", str(tmp_path), "--decoder-only",
                                   "--max-shard-size", "20KB"]) == 0
    assert "LlamaForCausalLM" in capsys.readouterr().out
    assert (tmp_path / "model.safetensors.index.json").is_file() and not (tmp_path / "processor_config.json").exists()
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(hf).__name__ == "LlamaForCausalLM"
    loaded = load_model(tiny_run)
    ids = torch.tensor([loaded.tokenizer.encode("What is 3 + 4 ?")])
    with torch.no_grad():
        assert _relative_error(loaded.model.lm(ids), hf(input_ids=ids).logits) < TOL


@pytest.mark.parametrize("recipe, message", [("mma", "mma runs are LaVIN adapters"),
                                             ("eve", "eve runs read images through an encoder-free patch embedder")])
def test_other_recipes_are_refused(tiny_run, tmp_path, capsys, recipe, message):
    folder = tmp_path / recipe
    shutil.copytree(tiny_run / "checkpoints" / "step_000030", folder)
    state = json.loads((folder / "state.json").read_text())
    state["config"]["model"]["recipe"] = recipe
    (folder / "state.json").write_text(json.dumps(state))
    assert tool_main("export_hf")([str(folder), "--out", str(tmp_path / "out")]) == 2
    assert f"error: export supports the llava recipe; {message}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_missing_empty_and_corrupt_runs_are_refused(tiny_run, tmp_path, capsys):
    export = tool_main("export_hf")
    assert export([str(tmp_path / "nowhere"), "--out", str(tmp_path / "o1")]) == 2
    err = capsys.readouterr().err
    assert "error: cannot read the run" in err and "no such folder" in err
    (tmp_path / "empty").mkdir()
    assert export([str(tmp_path / "empty"), "--out", str(tmp_path / "o2")]) == 2
    assert "with a complete checkpoint" in capsys.readouterr().err
    broken = tmp_path / "broken"
    shutil.copytree(tiny_run / "checkpoints" / "step_000030", broken)
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
    assert export([str(broken), "--out", str(tmp_path / "o3")]) == 2
    assert f"error: cannot load {broken}" in capsys.readouterr().err


def test_non_empty_output_needs_force(tiny_run, tmp_path, capsys):
    export = tool_main("export_hf")
    (tmp_path / "README.md").write_text("someone's folder")
    assert export([str(tiny_run), "--out", str(tmp_path)]) == 2
    assert "exists and is not empty; choose a new folder, or pass --force" in capsys.readouterr().err
    assert export([str(tiny_run), "--out", str(tmp_path), "--force"]) == 0
    assert (tmp_path / "config.json").is_file() and (tmp_path / "README.md").read_text() == "someone's folder"
