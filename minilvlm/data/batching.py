"""Collating samples into batches: right padding, or packing several samples per row.

Both layouts give the model the same description of a batch:
- `segment_ids` [R, T]: 0 on padding, k >= 1 on the tokens of the k-th sample in the row. A token
  attends only to earlier tokens of its own segment (`block_causal_mask`), so packed samples never
  see each other; with padding there is one segment per row and this is the usual causal mask.
- `position_ids` [R, T]: restart at 0 for every sample.
- `images` [N, 3, S, S] uint8, in the order their placeholder blocks appear when reading
  `input_ids` row by row; `image_rows` [N] gives each image's row.
- `sample_index` [R, T]: the sample (0..n_samples-1) each token belongs to, -1 on padding;
  `has_image` [n_samples] says which samples carry images (LaVIN routes on it).
- `packed` (bool) and `n_targets` (int, positions with a next-token target): facts the host knows
  here for free, so the models never read them back from the device (an unpacked batch attends
  plain-causally with no mask; the loss selects its `n_targets` rows with a static size).
Text-only and image samples share batches; nothing is dropped except `Skipped` markers from the
data set, which are counted in `skips`.
"""
from collections import Counter

import numpy as np
import torch

from minilvlm.data.dataset import Skipped
from minilvlm.data.labels import IGNORE_INDEX


def pack_rows(lengths, capacity):
    """First-fit packing of sample lengths (each <= capacity), in the given order. Returns a list
    of rows, each a list of sample positions."""
    rows, room = [], []
    for i, length in enumerate(lengths):
        if length > capacity:
            raise ValueError(f"sample {i} has {length} tokens, more than the row capacity {capacity}")
        for r, free in enumerate(room):
            if length <= free:
                rows[r].append(i)
                room[r] -= length
                break
        else:
            rows.append([i])
            room.append(capacity - length)
    return rows


def block_causal_mask(segment_ids):
    """[R, 1, T, T] bool, True where query i may attend key j: same non-zero segment and j <= i.
    Padding queries get their own diagonal, so attention rows are never empty (no NaN)."""
    t = segment_ids.shape[1]
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    causal = torch.ones(t, t, dtype=torch.bool, device=segment_ids.device).tril()
    real = (segment_ids > 0)[:, None, :]
    diagonal = torch.eye(t, dtype=torch.bool, device=segment_ids.device)
    return ((same & causal & real) | diagonal)[:, None]


class Collator:
    """collate_fn for the DataLoader. `pack=True` packs samples into rows of `max_len` tokens;
    otherwise each sample is its own row, right-padded to the longest."""

    def __init__(self, pad_id, image_size, pack=False, max_len=None):
        if pack and not max_len:
            raise ValueError("packing needs max_len (the row length)")
        self.pad_id, self.image_size, self.pack, self.max_len = pad_id, image_size, pack, max_len

    def __call__(self, items):
        skips = Counter(item.reason for item in items if isinstance(item, Skipped))
        samples = [item for item in items if not isinstance(item, Skipped)]
        lengths = [len(s.input_ids) for s in samples]
        rows = pack_rows(lengths, self.max_len) if self.pack else [[i] for i in range(len(samples))]
        width = max((sum(lengths[i] for i in row) for row in rows), default=0)
        shape = (len(rows), width)
        input_ids = torch.full(shape, self.pad_id, dtype=torch.long)
        labels = torch.full(shape, IGNORE_INDEX, dtype=torch.long)
        segment_ids = torch.zeros(shape, dtype=torch.int32)
        position_ids = torch.zeros(shape, dtype=torch.long)
        sample_index = torch.full(shape, -1, dtype=torch.long)
        images, image_rows = [], []
        for r, row in enumerate(rows):
            start = 0
            for segment, i in enumerate(row, start=1):
                sample, end = samples[i], start + lengths[i]
                input_ids[r, start:end] = sample.input_ids
                labels[r, start:end] = sample.labels
                segment_ids[r, start:end] = segment
                position_ids[r, start:end] = torch.arange(lengths[i])
                sample_index[r, start:end] = i
                images.append(sample.images)
                image_rows.extend([r] * sample.images.shape[0])
                start = end
        size = self.image_size
        return {
            "input_ids": input_ids,
            "labels": labels,
            "attention_mask": segment_ids > 0,
            "segment_ids": segment_ids,
            "position_ids": position_ids,
            "sample_index": sample_index,
            # numpy, not torch.cat: see images.py on small copies and the intra-op thread pool
            "images": torch.from_numpy(np.concatenate([i.numpy() for i in images]))
            if images else torch.empty(0, 3, size, size, dtype=torch.uint8),
            "image_rows": torch.tensor(image_rows, dtype=torch.long),
            "has_image": torch.tensor([s.has_image for s in samples], dtype=torch.bool),
            "ids": [s.id for s in samples],
            # Known here for free, on the host: the models need not read them back from the device.
            "packed": self.pack,
            "n_targets": int((labels[:, 1:] != IGNORE_INDEX).sum()),
            "n_truncated": sum(s.truncated for s in samples),
            "skips": dict(skips),
        }
