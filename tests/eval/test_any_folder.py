"""A run folder is self-contained: trained with a relative data.tokenizer and a relative run folder,
then with the tokenizer's folder deleted, every tool works on it from another working directory
(tools/eval.py, generate.py, soup.py, ppl_filter.py, export_hf.py, and train.py --resume)."""
import io
import json
import shutil

from minilvlm.data.demo import generate as generate_demo
from minilvlm.data.demo import load_demo
from minilvlm.data.word_tokenizer import build_word_tokenizer
from tests.tiny_run import TINY_MODEL
from tests.tools_main import tool_main

RUN = TINY_MODEL + ["data.demo_sizes={train = 48, val = 8, test = 8}", "train.global_batch=8", "train.micro_batch=8",
                    "train.steps=4", "train.log_every=2", "train.eval_every=0", "train.ckpt_every=2",
                    "eval.max_new_tokens=3", "eval.batch=8", "eval.samples=0", "train.threads=2",
                    "train.vision_pretrain_steps=2", "train.vision_pretrain_batch=8"]


def test_every_tool_works_from_another_folder_after_the_tokenizer_is_gone(tmp_path, monkeypatch, capsys):
    start, elsewhere = tmp_path / "start", tmp_path / "elsewhere"
    elsewhere.mkdir()
    generate_demo(tmp_path / "texts", sizes={"train": 48, "val": 8, "test": 8}, image_size=32)
    texts = [t.text for r in load_demo(tmp_path / "texts", "train") for t in r.turns]
    build_word_tokenizer(texts, start / "tokenizers" / "words")
    monkeypatch.chdir(start)
    assert tool_main("train")(RUN + ["data.tokenizer=tokenizers/words", "train.run_dir=runs/tiny"]) == 0
    run = start / "runs" / "tiny"
    assert json.loads((run / "config.json").read_text())["data"]["tokenizer"] == str(start / "tokenizers" / "words")
    shutil.rmtree(start / "tokenizers")
    monkeypatch.chdir(elsewhere)
    capsys.readouterr()

    assert tool_main("eval")([str(run), "--out", "results.json"]) == 0
    assert json.loads((elsewhere / "results.json").read_text())["count"] == 8
    stdout = io.StringIO()
    image = run / "data" / "images" / "test" / "test-00000.png"
    assert tool_main("generate")([str(run), "--image", str(image), "--prompt", "What colour is the shape?",
                                  "--temperature", "0"], stdout) == 0
    checkpoints = sorted(str(p) for p in (run / "checkpoints").iterdir())
    assert tool_main("soup")([*checkpoints, "--out", "soup"]) == 0
    assert tool_main("eval")(["soup", "--out", "soup.json"]) == 0
    assert tool_main("ppl_filter")([str(run / "data" / "test.json"), "--model", str(run), "--keep", "0.5",
                                    "--out", "kept.json"]) == 0   # image paths are relative to the JSON's folder
    assert len(json.loads((elsewhere / "kept.json").read_text())) == 4
    assert tool_main("export_hf")([str(run), "--out", "hf"]) == 0
    assert (elsewhere / "hf" / "tokenizer.json").is_file()
    assert tool_main("train")(["--resume", str(run), "train.steps=6"]) == 0
    assert (run / "checkpoints" / "step_000006" / "state.json").is_file()
    assert "error" not in capsys.readouterr().err
