"""Readers on well-formed input: LLaVA (JSON and JSONL), Alpaca and ScienceQA."""
import json

from minilvlm.data.records import Turn, read_records
from minilvlm.data.scienceqa import read_scienceqa
from tests.data.fixtures import make_images, png_bytes

LLAVA = [
    {"id": "a", "image": "good.png", "conversations": [
        {"from": "human", "value": "What is this?\n<image>"}, {"from": "gpt", "value": "A red box."},
        {"from": "human", "value": "Sure?"}, {"from": "gpt", "value": "Yes."}]},
    {"id": 7, "image": "good.jpg", "conversations": [   # no tag: LLaVA puts the image first
        {"from": "human", "value": "Describe it."}, {"from": "gpt", "value": "Blue."}]},
    {"id": "c", "conversations": [{"from": "system", "value": "Be kind."},
                                  {"from": "user", "value": "Hi"}, {"from": "assistant", "value": "Hello"}]},
]


def test_llava_json_and_jsonl_agree(tmp_path):
    images = make_images(tmp_path)
    text = json.dumps(LLAVA, indent=2)
    (tmp_path / "d.json").write_text(text)
    starts = [n for n, line in enumerate(text.split("\n"), start=1) if line == "  {"]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in LLAVA) + "\n\n")
    from_json = read_records(tmp_path / "d.json", "llava", images)
    from_jsonl = read_records(tmp_path / "d.jsonl", "llava", images)
    assert [r.turns for r in from_json] == [r.turns for r in from_jsonl]
    a, b, c = from_jsonl
    assert [r.line for r in from_jsonl] == [1, 2, 3] and [r.line for r in from_json] == starts
    assert a.images == [(images / "good.png").absolute()] and a.has_image
    assert b.id == "7" and b.turns[0] == Turn("user", "<image>\nDescribe it.")
    assert c.turns[0] == Turn("system", "Be kind.") and not c.has_image and c.meta["has_image"] is False


def test_alpaca_prompt(tmp_path):
    rows = [{"instruction": "Add the numbers.", "input": "2 3", "output": "5"},
            {"instruction": "Say hi.", "input": "", "output": "hi"}]
    (tmp_path / "a.json").write_text(json.dumps(rows))
    with_input, without = read_records(tmp_path / "a.json", "alpaca")
    assert with_input.turns == [Turn("user", "Add the numbers.\n2 3"), Turn("assistant", "5")]
    assert without.turns[0] == Turn("user", "Say hi.") and without.id == "a.json:1"
    assert without.meta["question_type"] == "text_instruction"


def test_scienceqa_layout_and_metadata(tmp_path):
    root = tmp_path / "sqa"
    (root / "images" / "test" / "12").mkdir(parents=True)
    (root / "images" / "test" / "12" / "image.png").write_bytes(png_bytes())
    problems = {
        "12": {"question": "Which animal is shown?", "choices": ["cat", "dog", "owl"], "answer": 2,
               "hint": "Look closely.", "image": "image.png", "subject": "natural science",
               "grade": "grade3", "topic": "biology", "category": "Animals", "skill": "s",
               "lecture": "Owls are birds.", "split": "test"},
        "13": {"question": "Is ice cold?", "choices": ["yes", "no"], "answer": 0, "hint": "",
               "image": None, "subject": "natural science", "grade": "grade1", "topic": "physics",
               "category": "Heat", "split": "test"},
        "14": {"question": "Not in this split", "choices": ["a", "b"], "answer": 0, "split": "train"},
    }
    (root / "problems.json").write_text(json.dumps(problems))
    (root / "pid_splits.json").write_text(json.dumps({"train": ["14"], "test": ["12", "13"]}))
    first, second = read_scienceqa(root, "test")
    assert first.turns == [
        Turn("user", "<image>\nContext: Look closely.\nQuestion: Which animal is shown?\n"
                     "Options: (A) cat (B) dog (C) owl"),
        Turn("assistant", "The answer is C.")]
    assert first.images == [(root / "images/test/12/image.png").absolute()]
    assert first.meta == {"subject": "natural science", "grade": "grade3", "topic": "biology",
                          "category": "Animals", "skill": "s", "question_type": "multiple_choice",
                          "choices": ["cat", "dog", "owl"], "answer": "C", "has_image": True,
                          "context_modality": "IMG"}
    assert second.turns[0].text.startswith("Context: N/A\nQuestion: Is ice cold?")
    assert second.meta["context_modality"] == "NO" and not second.has_image
    lectured = read_scienceqa(root, "test", with_lecture=True)[0]
    assert "Context: Look closely.\nOwls are birds.\nQuestion" in lectured.turns[0].text


def test_byte_order_mark_and_crlf(tmp_path):
    rows = [{"instruction": "a", "output": "b"}, {"instruction": "c", "output": "d"}]
    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + b"\r\n".join(json.dumps(r).encode() for r in rows))
    (tmp_path / "bom.json").write_bytes(b"\xef\xbb\xbf" + json.dumps(rows).encode())
    for name in ("bom.jsonl", "bom.json"):
        assert [r.turns[1].text for r in read_records(tmp_path / name, "alpaca")] == ["b", "d"]
