"""Labels: only assistant replies are supervised, images expand to the model's token count, and
truncation is counted. The exactness test decodes every supervised span of many records, through
the collate function in both layouts, and requires it to be the assistant's text exactly."""
import random

import pytest
import torch

from minilvlm.data.batching import Collator
from minilvlm.data.dataset import ImageConfig, SFTDataset
from minilvlm.data.demo import generate, load_demo
from minilvlm.data.errors import DataError
from minilvlm.data.labels import IGNORE_INDEX, encode_record
from minilvlm.data.records import Record, Turn
from tests.data.toy_chat import EOS, IMAGE, BpeTokenizer, ByteTokenizer, toy_template

ALPHABET = "abc XYZ 0123 .,!?\n\t\"'<>/:é中😀"


def random_records(n, rng):
    """Multi-turn conversations with awkward text: unicode, markup-like text, empty replies,
    replies that look like template markup."""
    records = []
    for i in range(n):
        turns = [Turn("system", "Be brief.")] if rng.random() < 0.3 else []
        for _ in range(rng.randint(1, 3)):
            user = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 30)))
            reply = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 30)))
            if rng.random() < 0.2:
                reply = "ASSISTANT: USER: </s>"
            turns += [Turn("user", user), Turn("assistant", reply)]
        records.append(Record(f"r{i}", turns))
    return records


def supervised_spans(labels):
    spans, current = [], []
    for token in labels.tolist():
        if token != IGNORE_INDEX:
            current.append(token)
        elif current:
            spans.append(current)
            current = []
    return spans + ([current] if current else [])


@pytest.fixture(scope="module")
def demo_records(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    generate(root, seed=3, sizes={"train": 150})
    return load_demo(root, "train")


@pytest.mark.parametrize("tokenizer_kind", ["bytes", "bpe"])
@pytest.mark.parametrize("pack", [False, True])
def test_unmasked_tokens_decode_to_the_assistant_texts(demo_records, tokenizer_kind, pack):
    records = demo_records + random_records(150, random.Random(0))
    if tokenizer_kind == "bytes":
        tokenizer = ByteTokenizer()
    else:
        corpus = [t.text for r in records for t in r.turns] + ["USER: ASSISTANT: SYSTEM: "]
        tokenizer = BpeTokenizer(corpus)
    dataset = SFTDataset(records, tokenizer, toy_template, image_tokens=5, max_len=4096,
                         image=ImageConfig(size=8))
    assert len(dataset) == len(records) and dataset.truncated == 0
    collate = Collator(tokenizer.pad_id, 8, pack=pack, max_len=4096)
    for start in range(0, len(dataset), 16):
        batch = collate([dataset[i] for i in range(start, min(start + 16, len(dataset)))])
        for k, index in enumerate(range(start, start + len(batch["ids"]))):
            labels = batch["labels"][batch["sample_index"] == k]
            replies = [t.text for t in dataset.records[index].turns if t.role == "assistant"]
            spans = supervised_spans(labels)
            assert len(spans) == len(replies)
            for span, reply in zip(spans, replies):
                assert span[-1] == EOS
                assert tokenizer.decode(span[:-1]) == reply


def test_image_expansion_and_masks():
    tok = ByteTokenizer()
    record = Record("x", [Turn("user", "<image>\nhi <image>"), Turn("assistant", "ok")],
                    images=["a.png", "b.png"])
    enc = encode_record(record, tok, toy_template, image_tokens=3, max_len=100)
    ids = torch.tensor(enc.input_ids)
    assert (ids == IMAGE).sum() == 6 and enc.n_images == 2
    runs = torch.nonzero(ids == IMAGE).flatten().tolist()
    assert runs[:3] == list(range(runs[0], runs[0] + 3))   # each image is one contiguous block
    labels = torch.tensor(enc.labels)
    assert (labels[ids == IMAGE] == IGNORE_INDEX).all()
    assert tok.decode([t for t in enc.labels if t != IGNORE_INDEX]) == "ok"
    assert not enc.truncated


def test_truncation_is_counted_and_keeps_a_prefix():
    tok = ByteTokenizer()
    long = Record("long", [Turn("user", "q"), Turn("assistant", "a" * 50)])
    short = Record("short", [Turn("user", "q"), Turn("assistant", "b")])
    dataset = SFTDataset([long, short], tok, toy_template, image_tokens=2, max_len=30)
    assert dataset.truncated == 1 and dataset.lengths == [30, len(encode_record(short, tok, toy_template, 2, 30))]
    full = encode_record(long, tok, toy_template, 2, 1000)
    assert dataset[0].input_ids.tolist() == full.input_ids[:30]
    assert dataset[0].truncated and not dataset[1].truncated
    assert "1 truncated" in dataset.report()


def test_placeholder_count_must_match_the_images():
    class NoImageToken(ByteTokenizer):
        def encode(self, text):   # a tokenizer without <image> as a special token
            return [b + 4 for b in text.encode()]
    record = Record("x", [Turn("user", "<image>\nhi"), Turn("assistant", "ok")], images=["a.png"])
    with pytest.raises(DataError, match="0 image placeholder") as info:
        encode_record(record, NoImageToken(), toy_template, 2, 100)
    assert info.value.reason == "image_tags"
