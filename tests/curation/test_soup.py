"""tools/soup.py: a uniform soup of two identical checkpoints is that checkpoint; a greedy soup
never scores below its best member on the held-out split; mismatched checkpoints give a clear
error naming what differs."""
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from minilvlm.curation.soup import Member, greedy_soup, uniform_soup
from tests.tools_main import tool_main


def _ckpt(run, step):
    return run / "checkpoints" / f"step_{step:06d}"


def _val_accuracy(folder, tmp_path, name):
    out = tmp_path / f"{name}.json"
    assert tool_main("eval")([str(folder), "--split", "val", "--out", str(out)]) == 0
    return json.loads(out.read_text())["average"]


def test_uniform_soup_of_identical_checkpoints_is_the_checkpoint(tiny_run, tmp_path):
    ckpt = _ckpt(tiny_run, 30)
    out = tmp_path / "soup"
    assert tool_main("soup")([str(ckpt), str(ckpt), "--out", str(out)]) == 0
    original, soup = load_file(ckpt / "model.safetensors"), load_file(out / "model.safetensors")
    assert original.keys() == soup.keys()
    assert all(torch.equal(original[k], soup[k]) for k in original)
    assert json.loads((out / "state.json").read_text())["soup"]["method"] == "uniform"
    assert _val_accuracy(out, tmp_path, "soup") == _val_accuracy(ckpt, tmp_path, "ckpt")   # tools/eval.py reads it


def test_uniform_soup_is_the_mean():
    a, b = {"w": torch.randn(5, 3), "n": torch.tensor([3])}, {"w": torch.randn(5, 3), "n": torch.tensor([3])}
    soup = uniform_soup([a, b])
    torch.testing.assert_close(soup["w"], (a["w"] + b["w"]) / 2)
    assert torch.equal(soup["n"], a["n"])


def test_greedy_soup_skips_members_that_hurt():
    """Accuracy rises as the soup nears a target; a far-off member is tried and dropped."""
    target = torch.zeros(4)
    weights = {"near": torch.full((4,), 0.5), "nearer": torch.full((4,), -0.25), "far": torch.full((4,), 9.0)}
    members = [Member(name, name, {}, {"w": w}) for name, w in weights.items()]
    accuracy = lambda t: float(1 / (1 + (t["w"] - target).abs().sum()))   # noqa: E731
    soup, info = greedy_soup(members, accuracy)
    assert [m["member"] for m in info["members"]] == ["nearer", "near", "far"]
    assert [t["kept"] for t in info["trials"]] == [True, True, False]
    assert info["ingredients"] == ["nearer", "near"]
    torch.testing.assert_close(soup["w"], torch.full((4,), 0.125))
    assert accuracy(soup) == info["accuracy"] >= max(accuracy(m.tensors) for m in members)


def test_greedy_soup_never_below_its_best_member(tiny_run, tmp_path, capsys):
    members = [_ckpt(tiny_run, s) for s in (10, 20, 30)]
    out = tmp_path / "greedy"
    assert tool_main("soup")([*map(str, members), "--out", str(out), "--greedy", "--split", "val"]) == 0
    info = json.loads((out / "state.json").read_text())["soup"]
    scores = [_val_accuracy(m, tmp_path, m.name) for m in members]
    soup_score = _val_accuracy(out, tmp_path, "greedy")
    assert soup_score >= max(scores)
    assert soup_score == info["accuracy"]
    assert sorted(m["accuracy"] for m in info["members"]) == sorted(scores)
    assert info["trials"][0]["kept"] and len(info["trials"]) == 3
    assert "soup accuracy" in capsys.readouterr().out


def _copy(ckpt, dest):
    shutil.copytree(ckpt, dest)
    return dest


def _edit_state(folder, edit):
    state = json.loads((folder / "state.json").read_text())
    edit(state["config"])
    (folder / "state.json").write_text(json.dumps(state))


@pytest.mark.parametrize("kind", ["architecture", "trained", "shape", "one"])
def test_mismatched_checkpoints_give_a_clear_error(tiny_run, tmp_path, capsys, kind):
    ckpt = _ckpt(tiny_run, 30)
    other = _copy(ckpt, tmp_path / "other")
    if kind == "architecture":
        _edit_state(other, lambda c: c["model"]["decoder"].update(mlp_dim=64))
        expected = "different architectures: model.decoder.mlp_dim: 48 vs 64"
    elif kind == "trained":
        _edit_state(other, lambda c: c["train"].update(train_vision=True))
        expected = "trained different parts (lm, projector, vision vs lm, projector)"
    elif kind == "shape":
        tensors = load_file(other / "model.safetensors")
        tensors["projector.0.bias"] = torch.zeros(7)
        save_file(tensors, other / "model.safetensors")
        expected = "disagree on 'projector.0.bias': (7,)"
    else:
        other = ckpt
        expected = "at least two checkpoints"
    args = [str(ckpt), str(other)] if kind != "one" else [str(ckpt)]
    assert tool_main("soup")([*args, "--out", str(tmp_path / "soup")]) == 2
    assert expected in capsys.readouterr().err
    assert not (tmp_path / "soup" / "model.safetensors").exists()


def test_greedy_scoring_run_of_another_architecture_is_a_clear_error(tiny_run, tmp_path, capsys):
    from tests.tiny_run import train_tiny
    wider = tmp_path / "wider"
    train_tiny(wider, ["model.decoder.mlp_dim=40", "train.steps=10", "train.ckpt_every=10"])
    members = [str(_ckpt(tiny_run, 20)), str(_ckpt(tiny_run, 30))]
    assert tool_main("soup")([*members, "--out", str(tmp_path / "soup"), "--greedy", "--run", str(wider)]) == 2
    err = capsys.readouterr().err
    assert "the scoring run" in err and "different architectures: model.decoder.mlp_dim: 40 vs 48" in err, err
    assert not (tmp_path / "soup" / "model.safetensors").exists()


def test_scoring_run_with_other_tensor_shapes_is_a_clear_error():
    from minilvlm.curation.soup import SoupError, check_scorer
    config = {"model": {"recipe": "llava"}}
    members = [Member("a", "a", {"config": config}, {"lm.embed.weight": torch.zeros(10, 4)})]
    check_scorer(config, {"lm.embed.weight": torch.zeros(10, 4)}, "run", members)   # fits
    with pytest.raises(SoupError, match=r"disagree on 'lm.embed.weight': shape \(12, 4\) vs \(10, 4\)"):
        check_scorer(config, {"lm.embed.weight": torch.zeros(12, 4)}, "run", members)
    with pytest.raises(SoupError, match="disagree on 'lm.embed.weight': no such tensor"):
        check_scorer(config, {}, "run", members)
