"""Tokenizer and chat templates on a tiny byte-level BPE trained in the test."""
import json

import pytest
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from minilvlm.data.templates import VICUNA_SYSTEM, render, stop_tokens
from minilvlm.data.tokenizer import Tokenizer

SPECIALS = ["<s>", "</s>", "<|im_start|>", "<|im_end|>", "<|endoftext|>"]
CORPUS = ["A chat between a curious user and an artificial intelligence assistant.",
          "USER: what is in the image? ASSISTANT: a red bus on a street.",
          "The cat sat on the mat. A dog runs in the park.", "system user assistant helpful"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok")
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": {"content": "<s>", "special": True}, "eos_token": "</s>"}))
    return path


@pytest.fixture(scope="module")
def tok(folder):
    return Tokenizer(folder)


CONVERSATION = [{"from": "human", "value": "<image>\nWhat is in the image?"},
                {"from": "gpt", "value": "A red bus."},
                {"from": "human", "value": "Where is it?"},
                {"from": "gpt", "value": "On a street, near the park."}]


def test_special_and_image_tokens(tok):
    assert tok.bos_id == 0 and tok.eos_id == 1 and tok.pad_id == tok.eos_id
    assert tok.image_token_id == tok.vocab_size - 1  # added after the trained vocabulary
    ids = tok.encode("<image>\nthe cat<|im_end|>")
    assert ids[0] == tok.image_token_id and ids[-1] == tok.token_id("<|im_end|>")
    assert tok.decode(tok.encode("The cat sat on the mat.")) == "The cat sat on the mat."
    with pytest.raises(KeyError, match="'<nope>' is not in the tokenizer"):
        tok.token_id("<nope>")


def _pieces(tok, rendered):
    """The decoded text of each maximal run of assistant / non-assistant tokens."""
    runs, start = [], 0
    for i in range(1, len(rendered.ids) + 1):
        if i == len(rendered.ids) or rendered.assistant[i] != rendered.assistant[start]:
            runs.append((rendered.assistant[start], tok.decode(rendered.ids[start:i], skip_special_tokens=False)))
            start = i
    return runs


def test_vicuna_v1(tok):
    r = render(CONVERSATION, tok, "vicuna_v1")
    assert len(r.ids) == len(r.assistant) == len(r.labels())
    assert _pieces(tok, r) == [
        (False, f"<s>{VICUNA_SYSTEM} USER: <image>\nWhat is in the image? ASSISTANT:"),
        (True, " A red bus.</s>"),
        (False, "USER: Where is it? ASSISTANT:"),
        (True, " On a street, near the park.</s>")]
    assert r.labels()[0] == -100 and r.labels()[-1] == tok.eos_id
    assert stop_tokens("vicuna_v1", tok) == [tok.eos_id]


def test_chatml_with_system_message(tok):
    conv = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."}]
    r = render(conv, tok, "chatml")
    assert _pieces(tok, r) == [
        (False, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"),
        (True, "Hello.<|im_end|>"), (False, "\n")]
    assert stop_tokens("chatml", tok) == [tok.token_id("<|im_end|>")]


def test_phi(tok):
    r = render(CONVERSATION[:2], tok, "phi")
    assert _pieces(tok, r) == [(False, f"{VICUNA_SYSTEM} USER: <image>\nWhat is in the image? ASSISTANT:"),
                               (True, " A red bus.<|endoftext|>")]


def test_plain_keeps_only_the_image_and_the_caption(tok):
    r = render(CONVERSATION[:2], tok, "plain")
    assert r.ids[:2] == [tok.bos_id, tok.image_token_id] and r.assistant[:2] == [False, False]
    assert all(r.assistant[2:]) and tok.decode(r.ids[2:]) == "A red bus.\n"
    with pytest.raises(ValueError, match="one image and one caption"):
        render(CONVERSATION, tok, "plain")


def test_generation_prompt_ends_where_the_reply_starts(tok):
    r = render(CONVERSATION[:3], tok, "vicuna_v1", generation_prompt=True)
    assert tok.decode(r.ids, skip_special_tokens=False).endswith("</s>USER: Where is it? ASSISTANT:")
    assert sum(r.assistant) == len(tok.encode(" A red bus.")) + 1


def test_template_errors(tok, folder):
    with pytest.raises(ValueError, match="unknown chat template 'alpaca'"):
        render(CONVERSATION, tok, "alpaca")
    with pytest.raises(ValueError, match="roles must alternate"):
        render([CONVERSATION[0], CONVERSATION[0]], tok, "vicuna_v1")
    with pytest.raises(ValueError, match="must end with an assistant turn"):
        render(CONVERSATION[:3], tok, "vicuna_v1")
    with pytest.raises(ValueError, match="turn 0: expected"):
        render([{"speaker": "x"}], tok, "vicuna_v1")
    bare = Tokenizer(folder / "tokenizer.json", eos_token=None)
    bare.eos_token = None
    with pytest.raises(ValueError, match="tokenizer has none"):
        render(CONVERSATION[:2], bare, "vicuna_v1")
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        Tokenizer(folder / "missing")
