"""The sharded, resumable batch sampler: a run resumed mid-epoch (at the same or another world
size) sees exactly the samples it had not yet seen, also through a prefetching DataLoader."""
import json
from collections import Counter

import pytest

from minilvlm.data.dataset import ImageConfig, SFTDataset
from minilvlm.data.loader import ResumableLoader
from minilvlm.data.records import Record, Turn
from minilvlm.data.sampler import ResumableBatchSampler
from tests.data.toy_chat import ByteTokenizer, toy_template

N = 53   # not a multiple of any global batch below
LENGTHS = [(i * 37) % 29 + 1 for i in range(N)]


def samplers(world, **kw):
    return [ResumableBatchSampler(LENGTHS, batch_size=4, rank=r, world_size=world, seed=7, **kw)
            for r in range(world)]


def run_until(ranks, consumed):
    """Each rank consumes `consumed` batches; returns what they saw and the position reached."""
    seen, position = [], 0
    for step, chunks in enumerate(zip(*(s.chunks() for s in ranks))):
        if step == consumed:
            break
        position = chunks[0][0]
        seen.extend(i for _, batch in chunks for i in batch)
    for s in ranks:
        s.advance(position)
    return seen


@pytest.mark.parametrize("group_by_length", [False, True])
@pytest.mark.parametrize("world", [1, 2])
def test_resume_mid_epoch_yields_exactly_the_rest(world, group_by_length):
    uninterrupted = [list(s) for s in samplers(world, group_by_length=group_by_length, group_size=16)]
    ranks = samplers(world, group_by_length=group_by_length, group_size=16)
    seen = run_until(ranks, 3)
    state = ranks[0].state_dict()
    resumed = samplers(world, group_by_length=group_by_length, group_size=16)
    for s in resumed:
        s.load_state_dict(state)
    rest = [list(s) for s in resumed]
    for r in range(world):
        assert rest[r] == uninterrupted[r][3:]
    everything = Counter(seen + [i for batches in rest for b in batches for i in b])
    assert set(everything) == set(range(N))
    # only the last, short global batch repeats indices, to give every rank the same step count
    assert sum(everything.values()) - N == -(N % (4 * world)) % world


def test_resume_at_another_world_size():
    two = samplers(2)
    seen = run_until(two, 2)
    one = samplers(1)[0]
    one.load_state_dict(two[0].state_dict())
    rest = [i for b in one for i in b]
    assert sorted(seen + rest) == list(range(N))
    assert rest == one.order(0)[16:]


def test_ranks_are_disjoint_and_deterministic():
    a, b = samplers(2), samplers(2)
    batches = [list(s) for s in a]
    assert batches == [list(s) for s in b]
    assert len(batches[0]) == len(batches[1]) == len(a[0])
    flat = [[i for batch in rank for i in batch] for rank in batches]
    assert not set(flat[0][:-2]) & set(flat[1][:-2])


def test_epochs_reshuffle_and_advance():
    s = samplers(1)[0]
    first = s.order(0)
    s.advance(N)
    assert s.state_dict()["epoch"] == 1 and s.position == 0
    assert s.order(1) != first and sorted(s.order(1)) == sorted(first)


def test_state_mismatch_is_refused():
    s = samplers(1)[0]
    other = ResumableBatchSampler(LENGTHS, batch_size=4, seed=8)
    with pytest.raises(ValueError, match="seed=7"):
        other.load_state_dict(s.state_dict())


def test_length_grouping_reduces_padding():
    def padding(group):
        s = ResumableBatchSampler(LENGTHS, batch_size=4, seed=1, group_by_length=group, group_size=32)
        return sum(len(b) * max(LENGTHS[i] for i in b) - sum(LENGTHS[i] for i in b) for b in s)
    assert padding(True) < 0.5 * padding(False)


def make_dataset(n=40):
    records = [Record(f"s{i}", [Turn("user", "q" * (i % 7 + 1)), Turn("assistant", "a" * (i % 5))])
               for i in range(n)]
    return SFTDataset(records, ByteTokenizer(), toy_template, 2, 64, ImageConfig(size=8))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_loader_checkpoint_resumes_despite_prefetch(num_workers):
    dataset = make_dataset()
    with ResumableLoader(dataset, ResumableBatchSampler(dataset.lengths, 3, seed=5), pad_id=0,
                         num_workers=num_workers) as loader:
        full = [b["ids"] for b in loader]
    loader = ResumableLoader(dataset, ResumableBatchSampler(dataset.lengths, 3, seed=5), pad_id=0,
                             num_workers=num_workers)
    head = []
    for batch in loader:           # the DataLoader has prefetched batches beyond this point
        head.append(batch["ids"])
        if len(head) == 4:
            state = loader.state_dict()
            break
    loader.close()
    resumed = ResumableLoader(dataset, ResumableBatchSampler(dataset.lengths, 3, seed=5), pad_id=0,
                              num_workers=num_workers)
    resumed.load_state_dict(json.loads(json.dumps(state)))   # it goes into the checkpoint's JSON
    assert head + [b["ids"] for b in resumed] == full
    resumed.close()
    assert resumed.sampler.epoch == 1 and resumed.samples_seen == 40


def test_one_loader_across_epochs_and_interruptions():
    dataset = make_dataset(20)
    reference = ResumableBatchSampler(dataset.lengths, 3, seed=2)
    expected = [[f"s{i}" for i in b] for e in range(2) for _, b in reference.chunks(epoch=e, position=0)]
    loader = ResumableLoader(dataset, ResumableBatchSampler(dataset.lengths, 3, seed=2), pad_id=0,
                             num_workers=2)
    seen = []
    for batch in loader:          # interrupted mid-epoch, then iterated again: it continues
        seen.append(batch["ids"])
        if len(seen) == 2:
            break
    seen += [b["ids"] for b in loader]   # rest of epoch 0
    seen += [b["ids"] for b in loader]   # epoch 1, same workers
    loader.close()
    assert seen == expected


def test_for_this_rank_without_torchrun():
    s = ResumableBatchSampler.for_this_rank(LENGTHS, 4, seed=7)
    assert (s.rank, s.world_size) == (0, 1) and list(s) == list(samplers(1)[0])
