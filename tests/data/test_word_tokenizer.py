"""The word-level tokenizer built for from-scratch runs, and answer scoring."""
from minilvlm.data.records import Record, Turn
from minilvlm.data.templates import render
from minilvlm.data.tokenizer import Tokenizer
from minilvlm.data.word_tokenizer import build_word_tokenizer
from minilvlm.eval.score import is_correct

TEXTS = ["<image>\nWhat colour is the shape?", "red", "Options: (A) red (B) blue", "The answer is B.",
         "What is 3 + 4?", "7"]


def test_same_texts_same_file(tmp_path):
    build_word_tokenizer(TEXTS, tmp_path / "a")
    build_word_tokenizer(list(reversed(TEXTS)), tmp_path / "b")
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (tmp_path / "b" / "tokenizer.json").read_bytes()


def test_specials_and_chatml(tmp_path):
    tok = Tokenizer(build_word_tokenizer(TEXTS, tmp_path))
    ids = tok.encode("<image>\nWhat colour is the shape?")
    assert ids[0] == tok.image_token_id and ids.count(tok.image_token_id) == 1
    assert tok.decode(ids[1:]) == "What colour is the shape ?"
    assert tok.pad_id != tok.eos_id and tok.token_id("<|im_end|>") == tok.eos_id
    rendered = render([{"from": "human", "value": "What is 3 + 4?"}, {"from": "gpt", "value": "7"}], tok, "chatml")
    reply = [i for i, a in zip(rendered.ids, rendered.assistant) if a]
    assert reply == tok.encode("7") + [tok.eos_id]
    assert tok.encode("zebra") == [tok.token_id("<unk>")]


def _record(kind, answer):
    return Record("r", [Turn("user", "q"), Turn("assistant", "a")], meta={"question_type": kind, "answer": answer})


def test_scoring():
    assert is_correct(_record("multiple_choice", "B"), "The answer is B .")
    assert not is_correct(_record("multiple_choice", "B"), "The answer is C .")
    assert not is_correct(_record("multiple_choice", "B"), "B")
    assert is_correct(_record("free_form", "red"), " Red ")
    assert not is_correct(_record("free_form", "red"), "red green")
    assert is_correct(_record("text_instruction", "wodniw"), "wodniw")
