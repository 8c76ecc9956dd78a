"""tools/select_data.py and tools/ppl_filter.py --compare: the greedy forward selection's decisions
(useful sets join in order of gain, a set gaining less than --min-gain stops it, near-ties go to the
cheaper set, a crashed trial is reported and its set dropped), and the whole pipeline on a tiny
budget: real trial processes, the tables, plot and mixture snippet it writes, leave-one-out, the
soup, and a rerun that reuses every finished trial."""
import json
from pathlib import Path

import pytest
import tomllib

from minilvlm.curation.overlap import ContentKeys, most_overlapping
from minilvlm.curation.relevance import HeldoutProfile, Relevance, answer_key, question_pairs, relevance
from minilvlm.curation.selection import Candidate, SelectJob, forward_selection, read_candidates, read_heldout
from minilvlm.curation.trials import Trial
from minilvlm.data import demo_efficiency
from minilvlm.data.records import Record, Turn
from minilvlm.recipes import load_config
from tests.tools_main import tool_main

# ---- the decisions, on made-up accuracies -------------------------------------------------------

class FakePipeline:
    """The Pipeline interface forward_selection uses, with accuracies from a function of the mixture."""

    def __init__(self, sizes, accuracy_of, crash=(), min_gain=0.01):
        self.job = SelectJob("base", [], "val.json", "out", steps=5, min_gain=min_gain)
        self.candidates = [Candidate(name, Path(f"{name}.json"), 10, tokens) for name, tokens in sizes.items()]
        self.by_name = {c.name: c for c in self.candidates}
        self.accuracy_of, self.crash, self.ran, self.lines = accuracy_of, set(crash), [], []

    def report(self, line):
        self.lines.append(line)

    def tokens(self, names):
        return sum(self.by_name[n].tokens for n in names)

    def trial(self, names, seed=0):
        names = [c.name for c in self.candidates if c.name in names]
        trial = Trial(Path("+".join(names)), {}, extra={"sets": names})
        if self.crash & set(names):
            trial.error = "exit 1: boom"
        else:
            trial.summary = {"accuracy": {"free_form": self.accuracy_of(set(names))}, "count": {"free_form": 100}}
        return trial

    def run(self, trials):
        self.ran.append([t.extra["sets"] for t in trials])


def _additive(values):
    return lambda names: min(1.0, max(0.0, sum(values[n] for n in names)))


def test_useful_sets_join_by_gain_and_the_rest_stay_out():
    values = {"colour": 0.30, "shape": 0.20, "text": 0.05, "noise": -0.10, "off": 0.0}
    p = FakePipeline({n: 100 for n in values}, _additive(values))
    chosen, rows, failed = forward_selection(p)
    assert chosen == ["colour", "shape", "text"]
    assert failed == []
    assert [len(r) for r in p.ran] == [5, 4, 3, 2]          # rounds until nothing gains
    last = [r for r in rows if r["round"] == 4]
    assert {r["candidate"] for r in last} == {"noise", "off"}
    assert max(last, key=lambda r: r["accuracy"])["status"] == "best, gain too small"
    chosen_rows = [r for r in rows if r["status"] == "chosen"]
    assert [round(r["gain"], 6) for r in chosen_rows] == [0.30, 0.20, 0.05]
    assert [r["tokens"] for r in chosen_rows] == [100, 200, 300]


def test_a_gain_below_min_gain_stops_the_selection():
    values = {"a": 0.5, "b": 0.005}
    chosen, rows, _ = forward_selection(FakePipeline({"a": 1, "b": 1}, _additive(values), min_gain=0.01))
    assert chosen == ["a"]
    assert rows[-1]["candidate"] == "b" and rows[-1]["status"] == "best, gain too small"


def test_a_gain_of_exactly_min_gain_counts_though_it_is_a_rounded_fraction():
    # 118/300 - 115/300 is 0.0099999... in floating point: three questions are the 1 point asked for.
    accuracy = lambda names: (115 + 3 * ("b" in names)) / 300 if "a" in names else 0.2 * ("b" in names)  # noqa: E731
    chosen, _, _ = forward_selection(FakePipeline({"a": 1, "b": 1}, accuracy, min_gain=0.01))
    assert chosen == ["a", "b"]


def test_near_ties_go_to_the_cheaper_set_and_its_duplicate_stays_out():
    # "again" duplicates "colour": either gives the colour points, both together no more.
    def accuracy(names):
        return 0.3 * bool(names & {"colour", "again"}) + 0.002 * ("again" in names) + 0.2 * ("shape" in names)
    p = FakePipeline({"colour": 100, "again": 120, "shape": 100}, accuracy)
    chosen, _, _ = forward_selection(p)
    assert chosen == ["colour", "shape"]   # "again" was 0.2 points better alone, within min_gain, and dearer


def test_a_cheaper_near_tie_that_gains_too_little_does_not_stop_the_selection():
    # Round 2: "useful" gains 1.0 point, "off" 0.7 and is cheaper; both lie within min_gain of the best.
    accuracy = lambda names: (0.393 * ("a" in names) + 0.010 * ("useful" in names)   # noqa: E731
                              + 0.007 * ("off" in names))
    p = FakePipeline({"a": 100, "useful": 100, "off": 90}, accuracy, min_gain=0.01)
    chosen, rows, _ = forward_selection(p)
    assert chosen == ["a", "useful"]
    assert [r["status"] for r in rows if r["round"] == 3] == ["best, gain too small"]


def test_a_set_the_chosen_ones_already_hold_leaves_untried():
    # "again" holds colour's records (keys 0-9) and two of its own; "part" shares only 3 of its 10.
    def accuracy(names):   # trials alone would choose "again" too: doubling colour's steps looks like a gain
        return (0.3 * ("colour" in names) + 0.05 * ("again" in names) + 0.2 * ("shape" in names)
                + 0.02 * ("part" in names))
    p = FakePipeline({"colour": 100, "again": 120, "shape": 100, "part": 100}, accuracy)
    keys = {"colour": range(10), "again": range(12), "shape": range(100, 110), "part": [0, 1, 2, *range(200, 207)]}
    for c in p.candidates:
        c.keys = frozenset(keys[c.name])
    chosen, rows, _ = forward_selection(p)
    assert chosen == ["colour", "shape", "part"]
    duplicate = [r for r in rows if r["candidate"] == "again" and r["round"] > 1]   # tried alone in round 1
    assert len(duplicate) == 1 and duplicate[0]["round"] == 2 and duplicate[0]["accuracy"] is None
    assert duplicate[0]["status"].startswith("near-duplicate of colour (83%")
    assert all("again" not in names for round_ in p.ran[1:] for names in round_)
    assert any("again leaves" in line for line in p.lines)
    p.job.max_overlap = 1.0          # --max-overlap 100: nothing is a near-duplicate
    assert forward_selection(p)[0] == ["colour", "shape", "again", "part"]


def test_an_off_target_set_leaves_untried_before_the_first_round():
    # Trials alone would take "off" in round 3: its +2 points on nearby words pass --min-gain.
    values = {"colour": 0.30, "shape": 0.20, "off": 0.02}
    p = FakePipeline({n: 100 for n in values}, _additive(values))
    p.by_name["off"].relevance = Relevance(questions=0.0, answers=0.0)
    p.by_name["colour"].relevance = Relevance(questions=0.9, answers=None)   # answers not compared
    chosen, rows, _ = forward_selection(p)
    assert chosen == ["colour", "shape"]
    off = [r for r in rows if r["candidate"] == "off"]
    assert len(off) == 1 and off[0]["round"] == 1 and off[0]["accuracy"] is None and off[0]["relevance"] == 0.0
    assert off[0]["status"].startswith("off-target (0% of its question word pairs and 0% of its answers")
    assert all("off" not in names for round_ in p.ran for names in round_)
    assert any("off leaves untried" in line for line in p.lines)
    p.job.min_relevance = 0.0        # --min-relevance 0: nothing is off-target
    assert forward_selection(p)[0] == ["colour", "shape", "off"]


def _qa(question, answer, image=True, **meta):
    return Record("r", [Turn("user", ("<image>\n" if image else "") + question), Turn("assistant", answer)],
                  [Path("x.png")] if image else [], meta=meta)


def test_relevance_reads_the_question_and_the_answer_not_the_scaffolding():
    mc = _qa("Context: N/A\nQuestion: What colour is the shape?\nOptions: (A) red (B) dark green", "The answer is B.")
    assert question_pairs(mc) == [("what", "colour"), ("colour", "is"), ("is", "the"), ("the", "shape")]
    assert answer_key(mc) == "dark green"                                 # the letter as its option's text
    assert answer_key(_qa("How many?", "12 shapes.")) == "# shapes"       # numbers as '#', punctuation dropped
    assert answer_key(_qa("Describe it.", "A red circle sits left of a blue square.")) is None   # long: not compared
    assert answer_key(_qa("Which? A. red B. blue", "The answer is A.")) is None   # a letter without "(A) ..." options
    assert question_pairs(_qa("", "a caption")) == [()]                   # a picture and no words
    heldout = HeldoutProfile.of([_qa("What colour is the shape?", "blue", choices=["dark green", "blue"]),
                                 _qa("How many shapes are there?", "3")])
    assert {"dark green", "blue", "#"} <= heldout.answers                     # what it expects and what it offers
    assert relevance([mc], heldout).share == 1.0
    reworded = relevance([_qa("Which colour has the shape?", "Blue.")], heldout)
    assert reworded.answers == 1.0 and 0 < reworded.questions < 1       # "the shape" is shared, the rest not
    off = relevance([_qa("Are the two shapes the same colour?", "yes")] * 3, heldout)
    assert off.questions == 0.0 and off.answers == 0.0 and off.share == 0.0
    chats = [_qa("What colour is the shape?", "The shape is a small red square near the left edge.")] * 3
    assert relevance(chats, heldout) == Relevance(questions=1.0, answers=None)   # long replies: questions only
    captions = HeldoutProfile.of([_qa("Describe the picture.", "Two shapes, a red circle and a blue square.")])
    assert captions.answers == frozenset() and relevance([mc], captions).answers is None


def test_the_demo_off_target_set_is_found_and_every_other_set_kept(tmp_path):
    data = tmp_path / "data"
    demo_efficiency.generate(data, sizes={"pretrain": 4, "pretrain_val": 2, "pretrain_test": 2, "set": 60,
                                          "val": 300, "test": 4})
    cfg = load_config(_tiny_config(tmp_path, data, data / "sets" / "colour.json"), check_paths=False)
    named = [(n, data / "sets" / f"{n}.json") for n in demo_efficiency.CANDIDATES]
    profile = HeldoutProfile.of(read_heldout(data / "val.json"))
    shares = {c.name: c.relevance.share for c in read_candidates(named, cfg, content_keys=False, heldout=profile)}
    assert shares["same_colour"] < 0.1, shares
    assert all(share >= 0.3 for name, share in shares.items() if name != "same_colour"), shares   # noise: 0.6


def test_content_keys_match_copied_pictures_and_reworded_questions_only(tmp_path):
    for name, data in (("a.png", b"pixels one"), ("copy.png", b"pixels one"), ("b.png", b"pixels two")):
        (tmp_path / name).write_bytes(data)

    def record(image, question, reply):
        images = [tmp_path / image] if image else []
        return Record("r", [Turn("user", question), Turn("assistant", reply)], images)
    keys = ContentKeys()
    original = keys.key(record("a.png", "What colour is it?", "Red"))
    assert keys.key(record("copy.png", "Which colour is the shape?", " red ")) == original   # same picture bytes
    assert keys.key(record("a.png", "What colour is it?", "blue")) != original              # another answer
    assert keys.key(record("b.png", "What colour is it?", "Red")) != original               # another picture
    text = keys.key(record(None, "Spell cat backwards", "tac"))
    assert keys.key(record(None, "spell  CAT backwards", "tac")) == text                   # case and spaces only
    assert keys.key(record(None, "Spell dog backwards", "tac")) != text
    assert keys.key(record("missing.png", "What colour is it?", "Red")) != original          # unreadable: by name


def test_the_demo_near_duplicate_is_found_by_content(tiny_data, tmp_path):
    config = _tiny_config(tmp_path, tiny_data, tiny_data / "sets" / "colour.json")
    cfg = load_config(config, check_paths=False)
    named = [(n, tiny_data / "sets" / f"{n}.json") for n in ("colour", "colour_again", "shape", "noise")]
    keys = {c.name: c.keys for c in read_candidates(named, cfg)}
    assert most_overlapping(keys["colour_again"], {"colour": keys["colour"]}) == (1.0, "colour")
    for other in ("shape", "noise"):
        share, _ = most_overlapping(keys[other], {"colour": keys["colour"], "colour_again": keys["colour_again"]})
        assert share < 0.2, other
    assert all(not c.keys for c in read_candidates(named, cfg, content_keys=False))   # --max-overlap 100


def test_a_crashed_trial_is_reported_and_its_set_dropped():
    values = {"a": 0.3, "bad": 0.5, "b": 0.2}
    p = FakePipeline({n: 1 for n in values}, _additive(values), crash={"bad"})
    chosen, rows, failed = forward_selection(p)
    assert chosen == ["a", "b"] and failed == ["bad"]
    bad = [r for r in rows if r["candidate"] == "bad"]
    assert len(bad) == 1 and bad[0]["status"] == "failed" and "boom" in bad[0]["error"]
    assert all("bad" not in names for round_ in p.ran[1:] for names in round_)


# ---- the whole pipeline, tiny ---------------------------------------------------------------------

TINY_SIZES = {"pretrain": 40, "pretrain_val": 6, "pretrain_test": 8, "set": 24, "val": 10, "test": 12}


def _tiny_config(tmp_path, data, dataset):
    """A TOML config of a tiny model (tests/tiny_run.py's sizes) trained from scratch on `dataset`, with
    the data's shared tokenizer."""
    text = f"""
[model.vision]
dim = 16
n_layers = 2
n_heads = 2
mlp_dim = 16
patch_size = 16
[model.decoder]
dim = 32
n_layers = 1
n_heads = 2
mlp_dim = 48
[data]
dataset = {json.dumps(str(dataset))}
eval_file = {json.dumps(str(data / "pretrain_test.json"))}
tokenizer = {json.dumps(str(data / "tokenizer.json"))}
[optim]
warmup_steps = 1
[train]
vision_pretrain_steps = 0
global_batch = 8
micro_batch = 8
steps = 2
eval_every = 0
ckpt_every = 0
log_every = 1
[eval]
max_new_tokens = 4
batch = 16
samples = 0
"""
    path = tmp_path / "tiny.toml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    data = tmp_path_factory.mktemp("data_efficiency")
    demo_efficiency.generate(data, sizes=TINY_SIZES)
    # A set whose pictures exist but do not decode: it reads fine here and crashes its trial.
    broken = json.loads((data / "sets" / "colour.json").read_text())
    (data / "sets" / "images" / "broken").mkdir()
    for record in broken:
        record["image"] = record["image"].replace("images/colour/", "images/broken/")
        (data / "sets" / record["image"]).write_bytes(b"not a png")
    (data / "sets" / "broken.json").write_text(json.dumps(broken))
    return data


def test_the_generator_writes_the_candidates_and_polluted_captions(tiny_data):
    for name in demo_efficiency.CANDIDATES:
        assert json.loads((tiny_data / "sets" / f"{name}.json").read_text())
    captions = json.loads((tiny_data / "pretrain.json").read_text())
    assert any("polluted" in r for r in captions) and any("polluted" not in r for r in captions)
    held_out = json.loads((tiny_data / "val.json").read_text())
    assert {r["task"] for r in held_out if r["has_image"]} <= set(demo_efficiency.HELD_OUT_TASKS)
    again = json.loads((tiny_data / "sets" / "colour_again.json").read_text())
    colour = json.loads((tiny_data / "sets" / "colour.json").read_text())
    assert [r["answer"] for r in again] == [r["answer"] for r in colour]
    assert all("What is the colour of the shape?" in r["conversations"][0]["value"] for r in again
               if r["question_type"] == "free_form")


def test_select_data_end_to_end_then_a_rerun_reuses_every_trial(tiny_data, tmp_path, capsys):
    config = _tiny_config(tmp_path, tiny_data, tiny_data / "sets" / "colour.json")
    out = tmp_path / "selection"
    sets = [str(tiny_data / "sets" / f"{n}.json") for n in ("colour", "shape", "noise", "broken")]
    args = ["--base", str(config), "--sets", *sets, "--heldout", str(tiny_data / "val.json"), "--test",
            str(tiny_data / "test.json"), "--steps", "2", "--out", str(out), "--jobs", "2", "--soup",
            "--min-gain", "0", "--max-rounds", "2"]
    assert tool_main("select_data")(args) == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "selection.json").read_text())
    assert result["failed"] == ["broken"]
    assert all(c["relevance"]["questions"] > 0.5 for c in result["candidates"]) and not result["off_target"]
    assert "FAILED" in printed and "broken" in printed
    assert [r["round"] for r in result["rounds"]] == [1, 1, 1, 1, 2, 2]
    assert len(result["chosen"]) == 2 and "broken" not in result["chosen"]
    assert set(result["leave_one_out"]["loss"]) == {"colour", "shape", "noise"}
    assert set(result["comparison"]) == {"chosen mixture", "all sets", "best single set",
                                         "greedy soup of the chosen sets' models"}
    assert all(0 <= row["mean"] <= 1 for row in result["comparison"].values())
    assert result["comparison"]["all sets"]["tokens"] == sum(c["tokens"] for c in result["candidates"]
                                                             if c["name"] != "broken")
    snippet = tomllib.loads((out / "mixture.toml").read_text())
    assert [Path(e["path"]).stem for e in snippet["data"]["mixture"]] == result["chosen"]
    assert (out / "selection.png").stat().st_size > 0
    assert (out / "soup@seed0" / "model.safetensors").is_file()
    trial = out / "trials" / f"{result['chosen'][0]}@seed0"
    assert json.loads((trial / "run" / "summary.json").read_text())["step"] == 2
    # A rerun trains nothing new: every trial is found finished (the crashed one runs again and fails).
    assert tool_main("select_data")(args) == 0
    again = capsys.readouterr().out
    assert "finished " not in again.replace("FAILED", "")
    assert again.count("reused") >= 5
    assert json.loads((out / "selection.json").read_text())["chosen"] == result["chosen"]


def test_select_data_refuses_bad_input(tiny_data, tmp_path, capsys):
    config = _tiny_config(tmp_path, tiny_data, tiny_data / "sets" / "colour.json")
    colour, shape = str(tiny_data / "sets" / "colour.json"), str(tiny_data / "sets" / "shape.json")
    common = ["--heldout", str(tiny_data / "val.json"), "--steps", "2", "--out", str(tmp_path / "o")]
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    text_only = tmp_path / "text_only.json"   # held-out questions neither picture set asks
    text_only.write_text(json.dumps([{"id": "t", "conversations": [
        {"from": "human", "value": "Spell the word 'ocean' backwards."}, {"from": "gpt", "value": "naeco"}]}]))
    cases = [
        (["--base", str(config), "--sets", colour, colour, *common], "two sets are named 'colour'"),
        (["--base", str(config), "--sets", colour, str(tmp_path / "nope.json"), *common], "no such file"),
        (["--base", str(config), "--sets", colour, f"a b={shape}", *common], "must be letters"),
        (["--base", str(config), "--sets", colour, *common], "at least two candidate sets"),
        (["--base", str(tmp_path / "missing"), "--sets", colour, shape, *common], "no such run folder"),
        (["--base", str(config), "--sets", colour, shape, *common, "--set", "optim.lrr=1"], "optim.lr"),
        (["--base", str(config), "--sets", colour, shape, *common[:-4], "--steps", "0", "--out", "o"],
         "at least 1"),
        (["--base", str(config), "--sets", colour, shape, "--heldout", str(tmp_path / "no_val.json"), *common[2:]],
         "no such held-out file"),
        (["--base", str(config), "--sets", colour, shape, *common, "--test", str(empty)], "holds no records"),
        (["--base", str(config), "--sets", colour, shape, *common, "--max-overlap", "120"], "from 0 to 100"),
        (["--base", str(config), "--sets", colour, shape, *common, "--min-relevance", "-1"], "from 0 to 100"),
        (["--base", str(config), "--sets", colour, shape, "--heldout", str(text_only), *common[2:]],
         "every candidate set is off-target"),
    ]
    for args, message in cases:
        assert tool_main("select_data")(args) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err, (args, err)


def test_ppl_filter_compare_trains_both_sets_for_the_same_steps(tiny_data, tiny_run, tmp_path, capsys):
    config = _tiny_config(tmp_path, tiny_data, tiny_data / "pretrain.json")
    out = tmp_path / "kept.json"
    folder = tmp_path / "cmp"
    assert tool_main("ppl_filter")([str(tiny_data / "pretrain.json"), "--model", str(tiny_run), "--keep", "0.5",
                                    "--out", str(out), "--compare", str(config), "--compare-steps", "3",
                                    "--seeds", "2", "--jobs", "2", "--compare-dir", str(folder)]) == 0
    printed = capsys.readouterr().out
    result = json.loads((folder / "compare.json").read_text())
    assert result["steps"] == 3 and set(result["arms"]) == {"full", "kept"}
    kept = len(json.loads(out.read_text()))
    for arm, records in (("full", TINY_SIZES["pretrain"]), ("kept", kept)):
        row = result["arms"][arm]
        assert len(row["values"]) == 2 and all(v is not None for v in row["values"])
        for run in row["runs"]:
            summary = json.loads((Path(run) / "summary.json").read_text())
            assert summary["step"] == 3
            assert f"{records} samples" in (Path(run).parent / "log.txt").read_text()
    assert "kept - full:" in printed
    assert tool_main("ppl_filter")([str(tiny_data / "pretrain.json"), "--model", str(tiny_run), "--keep", "0.5",
                                    "--out", str(out), "--seeds", "2"]) == 2
    assert "go with --compare" in capsys.readouterr().err


def test_ppl_filter_compare_takes_the_reference_run_as_the_full_sets_first_seed(tiny_data, tmp_path, capsys,
                                                                                 monkeypatch):
    config = _tiny_config(tmp_path, tiny_data, tiny_data / "pretrain.json")
    reference = tmp_path / "reference"
    assert tool_main("train")([str(config), f"train.run_dir={reference}"]) == 0
    out, folder = tiny_data / "kept_here.json", tmp_path / "cmp"
    monkeypatch.chdir(tiny_data)   # the input named relative to here, the reference's config saved it absolute
    assert tool_main("ppl_filter")(["pretrain.json", "--model", str(reference), "--keep", "0.5",
                                    "--out", str(out), "--compare", str(config), "--compare-dir", str(folder)]) == 0
    printed = capsys.readouterr().out
    assert f"the reference model {reference} is this run" in printed
    result = json.loads((folder / "compare.json").read_text())
    assert result["arms"]["full"]["runs"] == [str(reference)]
    assert result["arms"]["full"]["values"][0] is not None and result["arms"]["kept"]["values"][0] is not None
    assert not (folder / "full@seed0").exists() and (folder / "kept@seed0" / "run" / "summary.json").is_file()
