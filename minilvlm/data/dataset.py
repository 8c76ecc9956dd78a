"""The training data set: records tokenized up front, images decoded on access (in DataLoader
workers).

Tokenizing at construction makes every sample's length known to the length-grouping sampler and
turns every text problem (no reply, image tokens cut off by max_len) into a counted skip or an
error before training starts. Image problems show up only when an image is decoded: under
on_error="skip", `__getitem__` then returns a `Skipped` marker, which the collate function drops
and counts in the batch, so the count reaches the main process from any worker.
"""
from dataclasses import dataclass

import numpy as np
import torch

from minilvlm.data.errors import DataError, SkipCounter, check_on_error, handle
from minilvlm.data.images import ImageConfig
from minilvlm.data.labels import encode_record


@dataclass
class Sample:
    index: int
    id: str
    input_ids: torch.Tensor   # int64 [L]
    labels: torch.Tensor      # int64 [L], IGNORE_INDEX outside assistant replies
    images: torch.Tensor      # uint8 [n_images, 3, S, S]; n_images may be 0
    truncated: bool

    @property
    def has_image(self):
        return self.images.shape[0] > 0


@dataclass
class Skipped:
    index: int
    reason: str
    message: str


class SFTDataset(torch.utils.data.Dataset):
    def __init__(self, records, tokenizer, template, image_tokens, max_len, image=None,
                 on_error="raise", skips=None):
        self.on_error = check_on_error(on_error)
        self.image = image or ImageConfig()
        self.skips = skips if skips is not None else SkipCounter()
        self.records, self.ids, self.labels = [], [], []
        self.was_truncated = []
        for record in records:
            try:
                encoded = encode_record(record, tokenizer, template, image_tokens, max_len)
            except DataError as err:
                handle(err.at(file=record.source or None, line=record.line, record_id=record.id),
                       on_error, self.skips)
                continue
            self.records.append(record)
            # int32 arrays: a large data set held as Python lists of ints would cost ~8x more.
            self.ids.append(np.asarray(encoded.input_ids, dtype=np.int32))
            self.labels.append(np.asarray(encoded.labels, dtype=np.int32))
            self.was_truncated.append(encoded.truncated)
        self.lengths = [len(ids) for ids in self.ids]
        self.truncated = sum(self.was_truncated)

    def __len__(self):
        return len(self.records)

    def __getitem__(self, index):
        record = self.records[index]
        try:
            images = self.image.load_batch(record.images)
        except DataError as err:
            err = err.at(file=record.source or None, line=record.line, record_id=record.id)
            if self.on_error == "raise":
                raise err from None
            return Skipped(index, err.reason, str(err))
        input_ids = torch.from_numpy(self.ids[index]).long()
        return Sample(index, record.id, input_ids, torch.from_numpy(self.labels[index]).long(),
                      images, self.was_truncated[index])

    def readable_batches(self, batch):
        """Lists of up to `batch` consecutive samples, in order, for callers that walk the set
        themselves (the held-out loss, perplexity scores): a sample whose images cannot be read is
        counted in `skips` by reason and left out, and a list left empty is not yielded."""
        for start in range(0, len(self), batch):
            samples = []
            for item in (self[i] for i in range(start, min(start + batch, len(self)))):
                if isinstance(item, Skipped):
                    self.skips.add(DataError(item.message, reason=item.reason))
                else:
                    samples.append(item)
            if samples:
                yield samples

    def report(self):
        return f"data: {len(self)} samples, {self.truncated} truncated to max_len\n{self.skips.report()}"
