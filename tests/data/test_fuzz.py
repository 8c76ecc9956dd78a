"""Malformed records across the three formats: each raises its own DataError under "raise" (never
another exception from deep inside), and is counted under its reason under "skip", while the
good record beside it still reaches a batch."""
import json

import pytest

from minilvlm.data.dataset import ImageConfig, SFTDataset
from minilvlm.data.errors import DataError, SkipCounter
from minilvlm.data.loader import ResumableLoader
from minilvlm.data.records import read_records
from minilvlm.data.sampler import ResumableBatchSampler
from minilvlm.data.scienceqa import read_scienceqa
from tests.data.fixtures import make_images
from tests.data.toy_chat import ByteTokenizer, toy_template

BAD_UTF8 = b"\xff\xfe bad"


def conv(*pairs, image=None, **extra):
    record = {"id": "bad", "conversations": [{"from": f, "value": v} for f, v in pairs], **extra}
    if image is not None:
        record["image"] = image
    return record


QA = (("human", "<image>\nWhat is it?"), ("gpt", "A square."))
TEXT_QA = (("human", "Hi"), ("gpt", "Hello."))
LLAVA_CASES = [
    ([1, 2], "wrong_type"),
    ("a string", "wrong_type"),
    (None, "wrong_type"),
    ({"id": "bad"}, "missing_field"),
    ({"id": "bad", "conversations": None}, "missing_field"),
    ({"id": "bad", "conversations": "human: hi"}, "wrong_type"),
    (conv(), "empty_conversation"),
    ({"id": "bad", "conversations": ["hi", "there"]}, "wrong_type"),
    ({"id": "bad", "conversations": [{"value": "hi"}]}, "missing_field"),
    ({"id": "bad", "conversations": [{"from": 3, "value": "hi"}]}, "wrong_type"),
    (conv(("bot", "hi"), ("gpt", "x")), "unknown_role"),
    (conv(("human", "hi"), ("robot", "x")), "unknown_role"),
    ({"id": "bad", "conversations": [{"from": "human"}]}, "missing_field"),
    ({"id": "bad", "conversations": [{"from": "human", "value": None}]}, "missing_field"),
    (conv(("human", ["hi"]), ("gpt", "x")), "wrong_type"),
    (conv(("human", 5), ("gpt", "x")), "wrong_type"),
    (conv(("gpt", "x"), ("human", "hi")), "bad_turn_order"),
    (conv(("human", "a"), ("human", "b"), ("gpt", "c")), "bad_turn_order"),
    (conv(("human", "a"), ("gpt", "b"), ("human", "c")), "bad_turn_order"),
    (conv(("system", "s")), "bad_turn_order"),
    ({**conv(*TEXT_QA), "id": ["x"]}, "wrong_type"),
    ({**conv(*TEXT_QA), "id": True}, "wrong_type"),
    (conv(*QA, image=7), "wrong_type"),
    (conv(*QA, image=["good.png", 3]), "wrong_type"),
    (conv(("human", "<image><image>\nboth?"), ("gpt", "x"), image="good.png"), "image_tags"),
    (conv(*QA), "image_tags"),
    (conv(("human", "<image>\nhi"), ("gpt", "see <image>"), image="good.png"), "image_tags"),
    (conv(("human", "<image>\nhi"), ("gpt", "x"), image=["good.png", "good2.png"]), "image_tags"),
    (conv(*QA, image="nope.png"), "missing_image"),
    (conv(*QA, image=""), "missing_image"),
    (conv(*QA, image="a_folder.png"), "missing_image"),
    (conv(*QA, image="../outside.png"), "path_outside_root"),
    (conv(*QA, image="/etc/hostname"), "path_outside_root"),
    (conv(*QA, image="./sub/../../outside.png"), "path_outside_root"),
    (conv(*QA, image="sub/../../outside.png"), "path_outside_root"),
    (conv(*QA, image="trunc.png"), "bad_image"),
    (conv(*QA, image="trunc.jpg"), "bad_image"),
    (conv(*QA, image="empty.png"), "bad_image"),
    (conv(*QA, image="zero.png"), "bad_image"),
    (conv(*QA, image="text.png"), "bad_image"),
    (conv(*QA, image="garbage.png"), "bad_image"),
    (conv(*QA, image="huge.png"), "huge_image"),
    (conv(*QA, image="bomb.png"), "huge_image"),
    (conv(("human", "long question " * 20 + "<image>"), ("gpt", "x"), image="good.png"),
     "image_truncated"),
    (conv(("human", "<image>\n" + "long question " * 20), ("gpt", "x"), image="good.png"),
     "no_target_after_truncation"),
    (b'{"id": "bad", "conversations": [{"from": "human", "value": "' + BAD_UTF8 + b'"}]}', "invalid_utf8"),
    (b'{"id": "bad", "conversations": [', "json_syntax"),
    (b"{'id': 'bad'}", "json_syntax"),
]
ALPACA_CASES = [
    ({"instruction": "x"}, "missing_field"),
    ({"output": "x"}, "missing_field"),
    ({"instruction": 3, "output": "x"}, "wrong_type"),
    ({"instruction": "  ", "output": "x"}, "empty_conversation"),
    ({"instruction": "x", "output": ["y"]}, "wrong_type"),
    ({"instruction": "x", "input": 5, "output": "y"}, "wrong_type"),
    ({"instruction": "look at <image>", "output": "y"}, "image_tags"),
    ({"id": {"a": 1}, "instruction": "x", "output": "y"}, "wrong_type"),
    (["instruction", "output"], "wrong_type"),
    (b'{"instruction": "' + BAD_UTF8 + b'", "output": "y"}', "invalid_utf8"),
    (b'{"instruction": "x", "output": }', "json_syntax"),
]
GOOD_PROBLEM = {"question": "Which is a mammal?", "choices": ["cat", "trout"], "answer": 0,
                "hint": "", "image": None, "subject": "natural science", "grade": "grade2",
                "topic": "biology", "category": "Classify", "split": "train"}
SQA_CASES = [
    ({k: v for k, v in GOOD_PROBLEM.items() if k != "question"}, "missing_field"),
    ({**GOOD_PROBLEM, "choices": "cat, trout"}, "wrong_type"),
    ({**GOOD_PROBLEM, "choices": ["cat"]}, "wrong_type"),
    ({**GOOD_PROBLEM, "choices": ["cat", 7]}, "wrong_type"),
    ({**GOOD_PROBLEM, "answer": 2}, "bad_answer"),
    ({**GOOD_PROBLEM, "answer": -1}, "bad_answer"),
    ({**GOOD_PROBLEM, "answer": "A"}, "wrong_type"),
    ({**GOOD_PROBLEM, "answer": True}, "wrong_type"),
    ({**GOOD_PROBLEM, "hint": 4}, "wrong_type"),
    ({**GOOD_PROBLEM, "image": "image.png"}, "missing_image"),
    ({**GOOD_PROBLEM, "image": "../../../outside.png"}, "path_outside_root"),
    ({**GOOD_PROBLEM, "image": "trunc.png"}, "bad_image"),
    ([GOOD_PROBLEM], "wrong_type"),
    ("MISSING", "missing_problem"),
    ("BAD_UTF8", "invalid_utf8"),
]


def run_pipeline(records_fn, on_error, max_len=256):
    skips = SkipCounter()
    records = records_fn(on_error, skips)
    dataset = SFTDataset(records, ByteTokenizer(), toy_template, image_tokens=4, max_len=max_len,
                         image=ImageConfig(size=16, max_pixels=50_000_000), on_error=on_error,
                         skips=skips)
    loader = ResumableLoader(dataset, ResumableBatchSampler(dataset.lengths, batch_size=4, shuffle=False),
                             pad_id=0)
    ids = [i for batch in loader for i in batch["ids"]]
    return loader.skips, ids


def line_of(payload):
    return payload if isinstance(payload, bytes) else json.dumps(payload).encode()


def write_jsonl(tmp_path, good, payload):
    path = tmp_path / "data.jsonl"
    path.write_bytes(line_of(good) + b"\n" + line_of(payload) + b"\n")
    return path


def check(records_fn, reason, where):
    with pytest.raises(DataError) as info:
        run_pipeline(records_fn, "raise")
    assert info.value.reason == reason, str(info.value)
    for text in where:
        assert text in str(info.value), (text, str(info.value))
    skips, ids = run_pipeline(records_fn, "skip")
    assert dict(skips.counts) == {reason: 1}
    assert ids == ["good"]


@pytest.mark.parametrize("payload,reason", LLAVA_CASES)
def test_llava_bad_record(tmp_path, payload, reason):
    images = make_images(tmp_path)
    good = {"id": "good", "image": "good.png", "conversations": [{"from": "human", "value": "hi"},
                                                                 {"from": "gpt", "value": "ok"}]}
    path = write_jsonl(tmp_path, good, payload)
    where = ["data.jsonl", "line 2"]
    check(lambda on_error, skips: read_records(path, "llava", images, on_error, skips), reason, where)


@pytest.mark.parametrize("payload,reason", ALPACA_CASES)
def test_alpaca_bad_record(tmp_path, payload, reason):
    path = write_jsonl(tmp_path, {"id": "good", "instruction": "Add 1 and 2.", "output": "3"}, payload)
    check(lambda on_error, skips: read_records(path, "alpaca", None, on_error, skips), reason,
          ["data.jsonl", "line 2"])


@pytest.mark.parametrize("problem,reason", SQA_CASES)
def test_scienceqa_bad_problem(tmp_path, problem, reason):
    root = tmp_path / "sqa"
    image_dir = make_images(tmp_path)
    (image_dir / "train" / "bad").mkdir(parents=True)
    (image_dir / "train" / "bad" / "trunc.png").write_bytes((image_dir / "trunc.png").read_bytes())
    root.mkdir()
    problems = {"good": GOOD_PROBLEM}
    if problem == "BAD_UTF8":
        problems["bad"] = {**GOOD_PROBLEM, "question": "@@"}
    elif problem != "MISSING":
        problems["bad"] = problem
    text = json.dumps(problems, indent=1).encode().replace(b"@@", BAD_UTF8)
    (root / "problems.json").write_bytes(text)
    (root / "pid_splits.json").write_text(json.dumps({"train": ["good", "bad"], "test": []}))
    where = ["'bad'"]
    check(lambda on_error, skips: read_scienceqa(root, "train", image_dir, on_error=on_error,
                                                 skips=skips), reason, where)


def test_case_count():
    assert len(LLAVA_CASES) + len(ALPACA_CASES) + len(SQA_CASES) >= 50


def test_json_array_syntax_error_names_file_and_line(tmp_path):
    path = tmp_path / "data.json"
    path.write_text('[\n {"id": "a", "instruction": "x", "output": "y"},\n {"id": "b", "inst\n')
    for on_error in ("raise", "skip"):   # nothing after a syntax error can be read: always raised
        with pytest.raises(DataError, match=r"data.json, line 3: invalid JSON"):
            read_records(path, "alpaca", on_error=on_error)


def test_json_array_records_know_their_line(tmp_path):
    records = [{"id": f"r{i}", "conversations": [{"from": "human", "value": "q"},
                                                 {"from": "gpt", "value": "a"}]} for i in range(3)]
    records[2]["conversations"][0]["from"] = "alien"
    path = tmp_path / "data.json"
    path.write_text(json.dumps(records, indent=2))
    expected_line = json.dumps(records, indent=2).split("\n").index("  {", 20) + 1
    with pytest.raises(DataError, match=rf"data.json, line {expected_line}, record 'r2': turn 0 has unknown role"):
        read_records(path, "llava")
    skips = SkipCounter()
    assert [r.id for r in read_records(path, "llava", on_error="skip", skips=skips)] == ["r0", "r1"]
    assert "unknown_role: 1" in skips.report() and skips.as_metrics()["data/skipped"] == 1


def test_worker_errors_reach_the_main_process(tmp_path):
    images = make_images(tmp_path)
    path = write_jsonl(tmp_path, conv(*QA, image="good.png"), {**conv(*QA, image="trunc.png"), "id": "b2"})
    records = read_records(path, "llava", images)
    dataset = SFTDataset(records, ByteTokenizer(), toy_template, 4, 64, ImageConfig(size=16))
    sampler = ResumableBatchSampler(dataset.lengths, batch_size=1, shuffle=False)
    with ResumableLoader(dataset, sampler, pad_id=0, num_workers=2) as loader:
        with pytest.raises(DataError, match=r"data.jsonl, line 2, record 'b2': cannot decode image") as info:
            list(loader)
    assert info.value.reason == "bad_image" and "Traceback" not in str(info.value)
    dataset.on_error = "skip"
    sampler = ResumableBatchSampler(dataset.lengths, batch_size=1, shuffle=False)
    with ResumableLoader(dataset, sampler, pad_id=0, num_workers=2) as loader:
        assert [b["ids"] for b in loader] == [["bad"], []]
        assert dict(loader.skips.counts) == {"bad_image": 1}
