"""Collation: mixed text/image batches keep every sample; padding and packing describe the same
samples, and packed samples cannot attend to each other."""
import torch
import torch.nn.functional as F

from minilvlm.data.batching import Collator, block_causal_mask, pack_rows
from minilvlm.data.dataset import Sample, Skipped
from minilvlm.data.labels import IGNORE_INDEX


def sample(index, length, n_images=0, size=4):
    ids = torch.arange(10, 10 + length)
    labels = torch.where(torch.arange(length) >= length // 2, ids, torch.full_like(ids, IGNORE_INDEX))
    images = torch.full((n_images, 3, size, size), index, dtype=torch.uint8)
    return Sample(index, f"s{index}", ids, labels, images, truncated=False)


def test_mixed_batch_keeps_text_only_samples():
    items = [sample(0, 5), sample(1, 7, n_images=1), sample(2, 3), sample(3, 6, n_images=2),
             Skipped(4, "bad_image", "...")]
    batch = Collator(pad_id=0, image_size=4)(items)
    assert batch["ids"] == ["s0", "s1", "s2", "s3"]
    assert batch["has_image"].tolist() == [False, True, False, True]
    assert batch["skips"] == {"bad_image": 1}
    assert batch["images"].shape == (3, 3, 4, 4) and batch["images"].dtype == torch.uint8
    assert batch["images"][:, 0, 0, 0].tolist() == [1, 3, 3] and batch["image_rows"].tolist() == [1, 3, 3]
    assert batch["input_ids"].shape == (4, 7)
    assert batch["attention_mask"].sum(1).tolist() == [5, 7, 3, 6]
    assert (batch["labels"][~batch["attention_mask"]] == IGNORE_INDEX).all()
    assert (batch["input_ids"][2, 3:] == 0).all()   # right padding with pad_id


def test_text_only_batch_has_an_empty_image_tensor():
    batch = Collator(pad_id=0, image_size=4)([sample(0, 3)])
    assert batch["images"].shape == (0, 3, 4, 4) and batch["image_rows"].numel() == 0


def test_pack_rows_first_fit():
    rows = pack_rows([5, 4, 3, 6, 2], capacity=8)
    assert rows == [[0, 2], [1, 4], [3]]
    for row in rows:
        assert sum([5, 4, 3, 6, 2][i] for i in row) <= 8


def test_packing_resets_positions_and_segments():
    items = [sample(0, 5), sample(1, 4, n_images=1), sample(2, 3), sample(3, 6, n_images=1)]
    padded = Collator(0, 4)(items)
    packed = Collator(0, 4, pack=True, max_len=9)(items)
    assert packed["input_ids"].shape[0] < len(items)
    for k in range(4):
        mine = packed["sample_index"] == k
        assert packed["position_ids"][mine].tolist() == list(range(len(items[k].input_ids)))
        assert packed["input_ids"][mine].tolist() == padded["input_ids"][k][padded["attention_mask"][k]].tolist()
        assert packed["labels"][mine].tolist() == items[k].labels.tolist()
        assert len(set(packed["segment_ids"][mine].tolist())) == 1
    # images come in the order their rows are read
    assert packed["image_rows"].tolist() == sorted(packed["image_rows"].tolist())


def test_no_token_attends_across_packed_samples():
    torch.manual_seed(0)
    lengths = [5, 3, 7, 2, 4]
    items = [sample(i, n) for i, n in enumerate(lengths)]
    packed = Collator(0, 4, pack=True, max_len=12)(items)
    dim = 8
    table = torch.randn(64, dim)
    wq, wk, wv = (torch.randn(dim, dim) for _ in range(3))

    def attend(ids, positions, mask):
        x = table[ids] + 0.1 * positions[..., None]   # positions matter, as in a real model
        q, k, v = x @ wq, x @ wk, x @ wv
        return F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None], attn_mask=mask)[:, 0]

    out = attend(packed["input_ids"], packed["position_ids"], block_causal_mask(packed["segment_ids"]))
    for k, item in enumerate(items):
        n = len(item.input_ids)
        alone = attend(item.input_ids[None], torch.arange(n)[None],
                       torch.ones(n, n, dtype=torch.bool).tril()[None, None])[0]
        torch.testing.assert_close(out[packed["sample_index"] == k], alone, rtol=1e-5, atol=1e-5)
    mask = block_causal_mask(packed["segment_ids"])[:, 0]
    seg = packed["segment_ids"]
    cross = (seg[:, :, None] != seg[:, None, :]) & (seg[:, :, None] > 0)
    assert not (mask & cross).any()
