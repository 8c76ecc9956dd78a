"""Pretraining a from-scratch llava tower on the image records' answers (minilvlm/train/vision_pretrain.py)."""
import io
import json

import pytest
import torch

from minilvlm.data.demo import generate, load_demo
from minilvlm.data.records import Record
from minilvlm.models.llava import LLaVA, LLaVAConfig
from minilvlm.models.vision import VisionConfig
from minilvlm.models.decoder import DecoderConfig
from minilvlm.config import ConfigError
from minilvlm import recipes
from minilvlm.recipes import load_config
from minilvlm.train.loop import train
from minilvlm.train.vision_pretrain import AnswerLabels, answer_label, pretrain_vision
from tests.tiny_run import TINY_RUN


def _record(task, answer, choices, question_type="free_form", image=True):
    return Record(id="r", turns=[], images=["x.png"] if image else [],
                  meta={"task": task, "answer": answer, "choices": choices, "question_type": question_type})


def test_labels_read_the_answer_and_map_letters_to_options():
    assert answer_label(_record("shape", "circle", ["circle", "square"])) == ("shape", "circle")
    assert answer_label(_record("shape", "B", ["circle", "square"], "multiple_choice")) == ("shape", "square")
    assert answer_label(_record("shape", "C", ["circle", "square"], "multiple_choice")) is None   # no option C
    assert answer_label(_record("add", "7", [], image=False)) is None                               # text only
    assert answer_label(Record(id="r", turns=[], images=["x.png"], meta={})) is None                 # no metadata

    train = AnswerLabels([_record("shape", "circle", ["circle", "square"]), _record("count", "2", ["1", "2"]),
                          _record("shape", "A", ["square", "diamond"], "multiple_choice"),
                          _record("add", "7", [], image=False)])
    assert train.skipped == 1 and len(train) == 3
    assert train.classes == [("count", "2"), ("shape", "circle"), ("shape", "square")]
    assert train.targets.tolist() == [1, 0, 2]
    # a shape answer competes only with the other shape answers
    assert train.allowed.tolist() == [[False, True, True], [True, False, False], [False, True, True]]
    val = AnswerLabels([_record("shape", "triangle", ["triangle"]), _record("count", "2", ["2"])], train.classes)
    assert val.unknown == 1 and len(val) == 1


def _demo_cfg(tmp_path, extra=()):
    return load_config(None, ["model.vision.image_size=32", "model.vision.patch_size=8", "model.vision.dim=32",
                              "model.vision.n_layers=2", "model.vision.n_heads=2", "model.vision.mlp_dim=64",
                              "train.vision_pretrain_batch=32", "optim.lr=2e-3",
                              f"train.run_dir={json.dumps(str(tmp_path))}", *extra])


def _llava(cfg):
    torch.manual_seed(0)
    decoder = DecoderConfig(vocab_size=16, dim=16, n_layers=1, n_heads=2, mlp_dim=16)
    return LLaVA(LLaVAConfig(vision=cfg.model.vision, decoder=decoder, projector="linear", feature_layer=-2,
                             image_token_id=3))


def test_pretraining_teaches_the_tower_colour_and_leaves_the_global_rng_alone(tmp_path):
    generate(tmp_path, sizes={"train": 400, "val": 120}, image_size=32)
    splits = {s: load_demo(tmp_path, s) for s in ("train", "val")}
    cfg = _demo_cfg(tmp_path, ["train.vision_pretrain_steps=120"])
    model = _llava(cfg)
    before = {k: v.clone() for k, v in model.vision.state_dict().items()}
    rng = torch.random.get_rng_state()
    out = io.StringIO()
    summary = pretrain_vision(model, splits["train"], splits["val"], cfg, recipes.of(cfg).image_config(cfg), out)
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert not torch.equal(model.vision.patch_weight, before["patch_weight"])
    assert all(torch.equal(p, before[k]) for k, p in model.vision.state_dict().items() if k.startswith("post_norm"))
    # colour is one linear read of the pixels: far above its chance of 25% after 120 steps
    assert summary["val_accuracy"]["colour"] >= 0.8, summary
    assert summary["steps"] == 120 and summary["labelled"] > 250 and summary["skipped"] > 40
    assert "tower probe on val" in out.getvalue()


def test_text_only_data_skips_the_tower_pretraining_with_a_note(tmp_path):
    cfg = _demo_cfg(tmp_path, ["train.vision_pretrain_steps=3"])
    out = io.StringIO()
    assert pretrain_vision(_llava(cfg), [_record("add", "7", [], image=False)], [], cfg,
                           recipes.of(cfg).image_config(cfg), out) is None
    assert "none of the 1 training records has an image" in out.getvalue()


def skip_reason(cfg):
    return recipes.of(cfg).skip_tower_pretraining(cfg)


def test_skip_reasons_and_bad_values(tmp_path):
    assert skip_reason(load_config(None)) is None
    assert "no such step" in skip_reason(load_config(None, ["model.recipe=eve", "train.stage=finetune"]))
    assert "blank_images" in skip_reason(load_config(None, ["data.blank_images=true"]))
    assert "model.vision_weights" in skip_reason(load_config(None, ["model.vision_weights=/x"], check_paths=False))
    assert "model.init_from" in skip_reason(load_config(None, ["model.init_from=/x"], check_paths=False))
    with pytest.raises(ConfigError, match="train.vision_pretrain_steps = -1: expected an integer >= 0"):
        load_config(None, ["train.vision_pretrain_steps=-1"])
    with pytest.raises(ConfigError, match="train.vision_pretrain_batch = 0: expected an integer in 1..65536"):
        load_config(None, ["train.vision_pretrain_batch=0"])


def test_the_trainer_pretrains_once_and_reports_it(tmp_path):
    out = io.StringIO()
    run = tmp_path / "run"
    summary = train(load_config(None, TINY_RUN + [f"train.run_dir={json.dumps(str(run))}", "train.steps=10",
                                                  "train.ckpt_every=5", "train.stop_at=5"]), stream=out)
    assert "pretraining the vision tower: 10 steps of 16" in out.getvalue()
    resumed = io.StringIO()
    summary = train(load_config(None, TINY_RUN + [f"train.run_dir={json.dumps(str(run))}", "train.steps=10",
                                                  "train.ckpt_every=5"]), resume=True, stream=resumed)
    assert "pretraining the vision tower" not in resumed.getvalue()   # the checkpoint's tower is pretrained
    assert "vision_pretrain" not in summary
    baseline = io.StringIO()
    train(load_config(None, TINY_RUN + [f"train.run_dir={json.dumps(str(tmp_path / 'grey'))}", "train.steps=1",
                                        "data.blank_images=true"]), stream=baseline)
    assert "vision pretraining skipped: data.blank_images hides the pictures" in baseline.getvalue()
    first = train(load_config(None, TINY_RUN + [f"train.run_dir={json.dumps(str(tmp_path / 'one'))}",
                                                "train.steps=1"]), stream=io.StringIO())
    assert first["vision_pretrain"]["steps"] == 10 and first["vision_pretrain"]["labelled"] > 0
