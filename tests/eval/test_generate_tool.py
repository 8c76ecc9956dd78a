"""tools/generate.py on a tiny trained run: it answers an image question and a text-only one, the
reply streams out piece by piece while generation runs, and the streamed text equals the plain
(non-streamed) greedy decoding."""
import io
import json
import subprocess
import sys

import pytest
import torch

from minilvlm.data.demo import load_demo
from minilvlm.data.templates import stop_tokens
from minilvlm.eval.chat import ask, prompt_inputs
from minilvlm.eval.generate import generate
from minilvlm.eval.load import LoadError, load_model
from tests.tools_main import TOOLS, tool_main


def _question(record):
    return record.turns[-2].text


def test_streamed_text_equals_plain_greedy_and_arrives_incrementally(tiny_run, monkeypatch):
    loaded = load_model(tiny_run)
    record = next(r for r in load_demo(tiny_run / "data", "test") if r.meta["question_type"] == "multiple_choice")
    ids, images = prompt_inputs(loaded, _question(record), record.images[0])
    embeds, mask = loaded.model.generation_inputs(ids, images, torch.ones_like(ids))
    plain = generate(loaded.model.lm, inputs_embeds=embeds, attention_mask=mask, max_new_tokens=12,
                     stop_ids=stop_tokens(loaded.cfg.data.template, loaded.tokenizer), pad_id=loaded.tokenizer.pad_id)
    plain_text = loaded.tokenizer.decode(plain[0].tolist())

    forwards, pieces = [0], []
    original = type(loaded.model.lm).forward

    def counted(self, *args, **kwargs):
        forwards[0] += 1
        return original(self, *args, **kwargs)
    monkeypatch.setattr(type(loaded.model.lm), "forward", counted)
    streamed = ask(loaded, _question(record), record.images[0], temperature=0, max_new_tokens=12,
                   on_text=lambda piece: pieces.append((piece, forwards[0])))
    assert streamed == plain_text and "".join(p for p, _ in pieces) == streamed
    assert len(pieces) >= 3, pieces   # "The answer is X ." comes in several pieces
    calls = [c for _, c in pieces]
    assert calls == sorted(set(calls)) and calls[0] < forwards[0]   # each piece printed before the next step ran


def test_cli_answers_an_image_question_and_a_text_one(tiny_run):
    """Run as a user would, in a fresh interpreter: the greedy reply to a test image question is the
    one the trainer's final evaluation gave (samples.jsonl), and right whenever that one was right.
    (The 30-step tiny run answers little correctly; docs/tools.md shows a full demo run.)"""
    rows = [json.loads(line) for line in (tiny_run / "samples.jsonl").read_text().splitlines()]
    records = {r.id: r for r in load_demo(tiny_run / "data", "test")}
    row = next(row for row in rows if records[row["id"]].images and row["reply"])
    record = records[row["id"]]
    question = _question(record).replace("<image>\n", "")
    out = subprocess.run([sys.executable, str(TOOLS / "generate.py"), str(tiny_run), "--image", str(record.images[0]),
                          "--prompt", question, "--temperature", "0", "--max-new-tokens",
                          str(load_model(tiny_run).cfg.eval.max_new_tokens)],
                         capture_output=True, text=True, timeout=300, check=True).stdout
    reply = out.strip()
    assert reply and reply == row["reply"]   # samples.jsonl holds the trainer's stripped reply
    assert row["correct"] == (reply == f"The answer is {record.meta['answer']}." if
                              record.meta["question_type"] == "multiple_choice" else reply == record.meta["answer"])

    stdout = io.StringIO()
    assert tool_main("generate")([str(tiny_run), "--prompt", "What is 3 + 4?", "--seed", "0"], stdout=stdout) == 0
    # text only, sampled at LaVIN's defaults: the seed makes it repeatable
    assert stdout.getvalue() == ask(load_model(tiny_run), "What is 3 + 4?", seed=0) + "\n"


def test_generate_errors(tiny_run, tmp_path, capsys):
    loaded = load_model(tiny_run)
    with pytest.raises(LoadError, match="1 <image> tag"):
        prompt_inputs(loaded, "<image>\nWhat colour?")
    assert tool_main("generate")([str(tiny_run), "--image", str(tmp_path / "none.png"), "--prompt", "hi"]) == 2
    assert "cannot read image" in capsys.readouterr().err
