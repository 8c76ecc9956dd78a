"""The training loop's view of the data: a DataLoader over the data set and the resumable
sampler, which tracks what was consumed and what was skipped or truncated.

Iterating gives the rest of the current epoch. The sampler's position advances as each batch is
handed to the caller (not when the DataLoader prefetches it), so `state_dict()` taken at any step
resumes at the next unseen sample. Skip and truncation counts from the data set and from the
workers' batches are gathered here for the run's metrics and final report.
"""
import numpy as np
import torch

from minilvlm.data.batching import Collator
from minilvlm.data.errors import SkipCounter


class _NumpyBatches:
    """Collate in a worker, then hand numpy arrays to the DataLoader's queue: they are pickled
    through the pipe, where torch tensors would each get a shared-memory segment and a file
    descriptor, which costs more than copying a batch of this size (measured: about 2x the
    throughput with 2 workers on the demo set)."""

    def __init__(self, collate):
        self.collate = collate

    def __call__(self, items):
        batch = self.collate(items)
        return {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _as_tensors(batch, pin):
    """Tensors of a worker's numpy batch; in pinned memory when they go on to a GPU."""
    out = {}
    for key, value in batch.items():
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(value)
            value = value.pin_memory() if pin else value
        out[key] = value
    return out


def to_device(batch, device):
    """The batch's tensors on `device` (asynchronous from pinned memory); other entries as they are."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


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
        self._dataloader = None

    def _loader(self):
        # One DataLoader for the whole run, its workers kept between epochs (starting them costs
        # more than an epoch of a small data set); each epoch re-reads the sampler's position.
        if self._dataloader is None:
            extra = ({"prefetch_factor": self.prefetch_factor, "persistent_workers": True}
                     if self.num_workers else {})
            collate = _NumpyBatches(self.collate) if self.num_workers else self.collate
            # Its own generator: each new iterator draws a base seed, which from the global RNG would
            # shift a resumed run's dropout masks against the uninterrupted run's.
            self._dataloader = torch.utils.data.DataLoader(
                self.dataset, batch_sampler=self.sampler, collate_fn=collate,
                num_workers=self.num_workers, generator=torch.Generator(), **extra)
        return self._dataloader

    def __iter__(self):
        positions = [end for end, _ in self.sampler.chunks()]
        for batch, end in zip(self._loader(), positions):
            batch = _as_tensors(batch, self.pin_memory)
            self.skips.merge(batch["skips"])
            self.truncated_seen += batch["n_truncated"]
            self.samples_seen += len(batch["ids"])
            self.sampler.advance(end)
            yield batch

    def close(self):
        """Stop the worker processes now (they are kept between epochs). Without this they stop
        when the loader is garbage-collected, which can stall the program there for seconds."""
        if self._dataloader is not None:
            iterator = getattr(self._dataloader, "_iterator", None)   # where torch keeps them
            self._dataloader = None
            if iterator is not None and hasattr(iterator, "_shutdown_workers"):
                iterator._shutdown_workers()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

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
