"""Label exactness for every real chat template: through the data pipeline (SFTDataset, collate,
packing), the supervised tokens of each record decode to exactly its assistant replies."""
import random

import pytest

from minilvlm.data.batching import Collator
from minilvlm.data.dataset import ImageConfig, SFTDataset
from minilvlm.data.demo import generate, load_demo
from minilvlm.data.errors import DataError
from minilvlm.data.labels import encode_record
from minilvlm.data.records import Record, Turn
from minilvlm.data.templates import TEMPLATES, chat_template
from minilvlm.data.tokenizer import Tokenizer
from tests.data.test_labels import random_records, supervised_spans
from tests.data.test_tokenizer import folder  # noqa: F401  (fixture: a tiny byte-level BPE tokenizer.json)

# What each template supervises around a reply: (text before it, end token after it).
AROUND_REPLY = {"vicuna_v1": (" ", "</s>"), "phi": (" ", "<|endoftext|>"), "chatml": ("", "<|im_end|>"),
                "plain": ("", None)}


@pytest.fixture(scope="module")
def demo_records(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    generate(root, seed=5, sizes={"train": 120})
    return load_demo(root, "train")


def records_for(template, demo_records):
    if template == "plain":  # image-caption pairs only: one image, one user turn, one reply
        return [r for r in demo_records if len(r.images) == 1 and len(r.turns) == 2]
    return demo_records + random_records(100, random.Random(1))


def test_every_template_is_covered():
    assert set(AROUND_REPLY) == set(TEMPLATES)


@pytest.mark.parametrize("template", sorted(TEMPLATES))
@pytest.mark.parametrize("pack", [False, True])
def test_supervised_tokens_decode_to_the_replies(folder, demo_records, template, pack):  # noqa: F811
    tok = Tokenizer(folder)
    records = records_for(template, demo_records)
    assert len(records) >= 20
    dataset = SFTDataset(records, tok, chat_template(template), image_tokens=4, max_len=4096,
                         image=ImageConfig(size=8))
    assert len(dataset) == len(records) and dataset.truncated == 0
    before, end = AROUND_REPLY[template]
    collate = Collator(tok.pad_id, 8, pack=pack, max_len=4096)
    for start in range(0, len(dataset), 16):
        batch = collate([dataset[i] for i in range(start, min(start + 16, len(dataset)))])
        for k, index in enumerate(range(start, start + len(batch["ids"]))):
            replies = [t.text for t in dataset.records[index].turns if t.role == "assistant"]
            spans = supervised_spans(batch["labels"][batch["sample_index"] == k])
            if template == "plain":  # the caption and its newline, one span
                assert [tok.decode(s, skip_special_tokens=False) for s in spans] == [replies[0] + "\n"]
                continue
            assert len(spans) == len(replies)
            for span, reply in zip(spans, replies):
                assert span[-1] == tok.token_id(end)
                assert tok.decode(span[:-1], skip_special_tokens=False) == before + reply


def test_a_conversation_the_template_cannot_render_is_a_data_error(folder):  # noqa: F811
    record = Record("r1", [Turn("user", "a"), Turn("assistant", "b"), Turn("user", "c"), Turn("assistant", "d")])
    with pytest.raises(DataError, match=r"template 'plain' takes one image and one caption.*\[template\]"):
        encode_record(record, Tokenizer(folder), chat_template("plain"), image_tokens=4, max_len=64)
    with pytest.raises(ValueError, match="unknown chat template 'llama3'"):
        chat_template("llama3")
