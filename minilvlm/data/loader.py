"""The training loop's view of the data: a DataLoader over the data set and the resumable
sampler, which tracks what was consumed and what was skipped or truncated.

Iterating gives the rest of the current epoch. The sampler's position advances as each batch is
handed to the caller (not when the DataLoader prefetches it), so `state_dict()` taken at any step
resumes at the next unseen sample. Skip and truncation counts from the data set and from the
workers' batches are gathered here for the run's metrics and final report.
"""
import torch

from minilvlm.data.batching import Collator
from minilvlm.data.errors import SkipCounter


class ResumableLoader:
    def __init__(self, dataset, sampler, pad_id, pack=False, max_len=None, num_workers=0,
                 prefetch_factor=2, pin_memory=False):
        self.dataset, self.sampler = dataset, sampler
        self.collate = Collator(pad_id, dataset.image.size, pack=pack, max_len=max_len)
        self.num_workers, self.prefetch_factor, self.pin_memory = num_workers, prefetch_factor, pin_memory
        self.skips = SkipCounter()
        self.skips.merge(dataset.skips.counts)   # records rejected while reading and tokenizing
        self.truncated_seen = 0
        self.samples_seen = 0

    def _loader(self):
        extra = {"prefetch_factor": self.prefetch_factor} if self.num_workers else {}
        return torch.utils.data.DataLoader(
            self.dataset, batch_sampler=self.sampler, collate_fn=self.collate,
            num_workers=self.num_workers, pin_memory=self.pin_memory, **extra)

    def __iter__(self):
        positions = [end for end, _ in self.sampler.chunks()]
        for batch, end in zip(self._loader(), positions):
            self.skips.merge(batch["skips"])
            self.truncated_seen += batch["n_truncated"]
            self.samples_seen += len(batch["ids"])
            self.sampler.advance(end)
            yield batch

    def __len__(self):
        return len(self.sampler)

    def state_dict(self):
        return {"sampler": self.sampler.state_dict(), "skips": dict(self.skips.counts),
                "truncated_seen": self.truncated_seen, "samples_seen": self.samples_seen}

    def load_state_dict(self, state):
        self.sampler.load_state_dict(state["sampler"])
        self.skips.counts.clear()
        self.skips.merge(state.get("skips", {}))
        self.truncated_seen = state.get("truncated_seen", 0)
        self.samples_seen = state.get("samples_seen", 0)

    def metrics(self):
        out = self.skips.as_metrics()
        out["data/truncated"] = self.dataset.truncated
        out["data/samples_seen"] = self.samples_seen
        return out

    def report(self):
        return (f"data: {len(self.dataset)} samples, {self.dataset.truncated} truncated to "
                f"max_len, {self.samples_seen} seen\n{self.skips.report()}")
