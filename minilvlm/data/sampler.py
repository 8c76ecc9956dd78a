"""A batch sampler that shards deterministically across torchrun ranks and resumes mid-epoch.

Each epoch has one global order of sample indices, which depends only on (seed, epoch, lengths,
group_size), never on the world size. Consecutive chunks of `batch_size * world_size` indices form
the global batches; rank r takes every world_size-th index of a chunk (after length grouping a
chunk holds similar lengths, so striding also balances work between ranks). The position is the
number of indices of the global order consumed, which is what a checkpoint stores: a resumed run,
at this world size or another, sees exactly the samples it had not yet seen.

The sampler itself does not advance while iterating (a DataLoader runs ahead of the training loop
to prefetch); whoever consumes the batches calls `advance` (see loader.py).
The last chunk of an epoch, when shorter than the global batch, is topped up to a multiple of the
world size with indices from the start of the order, so every rank takes the same number of steps.
"""
import torch


class ResumableBatchSampler:
    def __init__(self, lengths, batch_size, rank=0, world_size=1, seed=0, shuffle=True,
                 group_by_length=False, group_size=1024):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        if batch_size < 1 or group_size < 1:
            raise ValueError("batch_size and group_size must be positive")
        self.lengths = list(lengths)
        if not self.lengths:
            raise ValueError("the data set is empty: nothing to sample")
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.seed, self.shuffle = seed, shuffle
        self.group_by_length, self.group_size = group_by_length, group_size
        self.epoch, self.position = 0, 0

    @classmethod
    def for_this_rank(cls, lengths, batch_size, **kwargs):
        """The sampler of this process's rank under torchrun (rank 0 of 1 without it)."""
        rank, world = 0, 1
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        return cls(lengths, batch_size, rank=rank, world_size=world, **kwargs)

    @property
    def global_batch(self):
        return self.batch_size * self.world_size

    def order(self, epoch):
        """The epoch's global order of indices."""
        n = len(self.lengths)
        if not self.shuffle:
            order = list(range(n))
        else:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(n, generator=generator).tolist()
        if self.group_by_length:
            # Sort within groups of group_size random samples: batches hold similar lengths (less
            # padding) while the order stays random across groups. Longest first inside a group.
            grouped = []
            for start in range(0, n, self.group_size):
                group = order[start:start + self.group_size]
                grouped.extend(sorted(group, key=lambda i: -self.lengths[i]))
            order = grouped
        return order

    def chunks(self, epoch=None, position=None):
        """Yield (position after the chunk, this rank's indices) for the rest of an epoch."""
        epoch = self.epoch if epoch is None else epoch
        position = self.position if position is None else position
        order = self.order(epoch)
        for start in range(position, len(order), self.global_batch):
            chunk = order[start:start + self.global_batch]
            end = start + len(chunk)
            shortfall = -len(chunk) % self.world_size
            chunk = chunk + [order[i % len(order)] for i in range(shortfall)]
            yield end, chunk[self.rank::self.world_size]

    def __iter__(self):
        for _, indices in self.chunks():
            yield indices

    def __len__(self):
        """Batches left in the current epoch for this rank."""
        left = len(self.lengths) - self.position
        return max(0, -(-left // self.global_batch))

    def advance(self, position):
        """Record that the indices up to `position` of the current epoch were consumed; at the
        end of the order, move on to the next epoch."""
        self.position = position
        if self.position >= len(self.lengths):
            self.epoch, self.position = self.epoch + 1, 0

    def state_dict(self):
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed,
                "num_samples": len(self.lengths), "shuffle": self.shuffle,
                "group_by_length": self.group_by_length, "group_size": self.group_size}

    def load_state_dict(self, state):
        for key in ("seed", "num_samples", "shuffle", "group_by_length", "group_size"):
            ours = len(self.lengths) if key == "num_samples" else getattr(self, key)
            if key in state and state[key] != ours:
                raise ValueError(f"cannot resume: the checkpoint's sampler has {key}={state[key]!r} "
                                 f"but this run has {ours!r}; the sample order would differ")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
