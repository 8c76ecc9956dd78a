"""Self-tests of the SIMT emulator (csrc/emu): CUDA kernels compiled with g++ and run on the CPU.

Each test launches one of the kernels in csrc/emu/selftest_kernels.cuh through a
torch.ops.minilvlm_emu.selftest_* op and compares with a plain torch reference.
"""
import re
import time

import pytest
import torch

FILE_BUDGET_S = 10.0  # the whole file should take a few seconds
_T0 = {}


@pytest.fixture(scope="module")
def emu():
    try:
        import minilvlm._emu  # noqa: F401  (importing registers torch.ops.minilvlm_emu.*)
    except ImportError as e:
        pytest.skip(f"minilvlm._emu not built (it needs the CUDA headers at build time): {e}")
    _T0.setdefault("start", time.perf_counter())
    ops = torch.ops.minilvlm_emu
    ops.set_seed(0)
    ops.set_num_threads(0)
    yield ops
    ops.set_seed(0)
    ops.set_num_threads(0)


@pytest.fixture
def seed(emu):
    """Runs a test under a given scheduling seed, restoring seed 0 afterwards."""
    def set_(s):
        emu.set_seed(s)
    yield set_
    emu.set_seed(0)


def _gen(s=0):
    return torch.Generator().manual_seed(1234 + s)


# (1) block reduction: shared-memory tree + warp shuffle --------------------------------------
@pytest.mark.parametrize("n,block,grid", [
    (1, 32, 1), (1000, 64, 3), (4099, 256, 5), (20000, 1024, 2), (777, 128, 16),
])
@pytest.mark.parametrize("sched_seed", [0, 7])
def test_block_sum(emu, seed, n, block, grid, sched_seed):
    seed(sched_seed)
    x = torch.randn(n, generator=_gen(n))
    got = emu.selftest_block_sum(x, block, grid)
    owner = (torch.arange(n) // block) % grid  # grid-stride ownership of each element
    ref = torch.zeros(grid, dtype=torch.float64).index_add_(0, owner, x.double())
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-4)


# (2) warp primitives ---------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 32, 300])
@pytest.mark.parametrize("sched_seed", [0, 3])
def test_warp_ops(emu, seed, n, sched_seed):
    seed(sched_seed)
    x = (torch.randn(n, generator=_gen(n)) * 2).round(decimals=2)
    f, i = emu.selftest_warp_ops(x)
    padded = f.shape[0]
    assert padded % 128 == 0 and padded >= n
    xp = torch.zeros(padded)
    xp[:n] = x
    w = xp.view(-1, 32).double()
    lane = torch.arange(32)
    ref = torch.empty(padded // 32, 32, 7, dtype=torch.float64)
    ref[..., 0] = w.sum(1, keepdim=True)
    ref[..., 1] = w.sum(1, keepdim=True)
    ref[..., 2] = w.cumsum(1)
    ref[..., 3] = w.view(-1, 4, 8).sum(2, keepdim=True).expand(-1, 4, 8).reshape(-1, 32)
    ref[..., 4] = w[:, (lane + 5) % 32]
    src = torch.where(lane + 3 < 32, lane + 3, lane)
    ref[..., 5] = w[:, src]
    src = torch.where(lane % 16 >= 2, lane - 2, lane)
    ref[..., 6] = w[:, src]
    torch.testing.assert_close(f.view(-1, 32, 7).double(), ref, rtol=1e-5, atol=1e-4)

    bits = (w > 0).long() << lane
    iref = torch.stack([
        bits.sum(1, keepdim=True).expand(-1, 32),
        (w > 2).any(1, keepdim=True).long().expand(-1, 32),
        (w > -3).all(1, keepdim=True).long().expand(-1, 32),
    ], dim=-1)
    assert torch.equal(i.view(-1, 32, 3), iref)


# (3) shared-memory tiled transpose -------------------------------------------------------------
@pytest.mark.parametrize("shape", [(1, 1), (33, 65), (100, 7), (64, 32), (5, 130)])
def test_transpose(emu, shape):
    x = torch.randn(*shape, generator=_gen(shape[0]))
    assert torch.equal(emu.selftest_transpose(x), x.t().contiguous())


# (4) grid-stride loop with a tail and dynamic shared memory -------------------------------------
@pytest.mark.parametrize("n,grid,block", [(5, 2, 32), (1000, 3, 64), (4097, 4, 128), (64, 1, 64)])
def test_saxpy(emu, n, grid, block):
    x = torch.randn(n, generator=_gen(n))
    y = torch.randn(n, generator=_gen(n + 1))
    got = emu.selftest_saxpy(1.5, x, y, grid, block)
    torch.testing.assert_close(got, 1.5 * x + y, rtol=1e-6, atol=1e-6)


# (5) divergent barriers must raise, naming kernel and block --------------------------------------
@pytest.mark.parametrize("mode,pattern", [
    (0, r"threads 0-15 wait at __syncthreads \(selftest_kernels\.cuh:\d+\) but threads 16-255 exited"),
    (1, r"different __syncthreads"),
    (2, r"wait at __shfl_xor_sync \(selftest_kernels\.cuh:\d+\) with mask 0xffffffff .*exited"),
])
def test_divergent_sync_raises(emu, mode, pattern):
    with pytest.raises(RuntimeError) as info:
        emu.selftest_divergent_sync(mode, 3, 256)
    msg = str(info.value)
    assert "minilvlm emu: deadlock in kernel 'divergent_sync_kernel'" in msg
    assert "block (0,0,0)" in msg  # the lowest failing block is the one reported
    assert re.search(pattern, msg), msg


def test_device_assert_raises(emu):
    with pytest.raises(RuntimeError, match=r"kernel 'assert_kernel' block \(1,0,0\) thread \(7,0,0\): "
                                           r"assertion .* failed"):
        emu.selftest_device_assert(3, 32)


@pytest.mark.parametrize("gx,bx,by,smem,pattern", [
    (1, 2048, 1, 0, r"2048 threads \(max 1024\)"),
    (1, 64, 32, 0, r"2048 threads \(max 1024\)"),
    (0, 32, 1, 0, r"grid \(0,1,1\) has a zero dimension"),
    (1, 32, 1, 300000, r"exceeds the 227 KiB"),
])
def test_invalid_launch_raises(emu, gx, bx, by, smem, pattern):
    with pytest.raises(RuntimeError, match=r"invalid launch of kernel 'k': .*" + pattern):
        emu.selftest_bad_launch(gx, bx, by, smem)
    emu.selftest_bad_launch(2, 32, 2, 1024)  # a valid configuration of the same kernel


# (6) a shared-memory race shows up as seed-dependent results ------------------------------------
def test_smem_race_depends_on_seed(emu, seed):
    seed(0)
    natural = emu.selftest_smem_race(4, 256)
    assert torch.equal(natural, torch.full((1024,), 255, dtype=torch.int32))  # last writer wins
    seed(1)
    a1 = emu.selftest_smem_race(4, 256)
    b1 = emu.selftest_smem_race(4, 256)
    seed(2)
    a2 = emu.selftest_smem_race(4, 256)
    assert torch.equal(a1, b1), "the same seed must reproduce the same schedule"
    assert not torch.equal(a1, a2), "two seeds should expose the race"
    assert not torch.equal(a1, natural)
    # The schedule depends on the seed and block only, not on how blocks map to OS threads.
    emu.set_num_threads(1)
    try:
        seed(1)
        assert torch.equal(emu.selftest_smem_race(4, 256), a1)
    finally:
        emu.set_num_threads(0)


# (7) atomics across blocks ----------------------------------------------------------------------
@pytest.mark.parametrize("threads", [0, 1])
def test_histogram_atomics(emu, threads):
    emu.set_num_threads(threads)
    try:
        n, bins = 5003, 37
        x = torch.rand(n, generator=_gen(5))
        counts = torch.zeros(bins, dtype=torch.int32)
        sums = torch.zeros(bins)
        vmax = torch.full((1,), float("-inf"))
        extra = emu.selftest_histogram(x, bins, 7, 96, counts, sums, vmax)
    finally:
        emu.set_num_threads(0)
    b = (x * bins).long().clamp(max=bins - 1)
    assert torch.equal(counts, torch.bincount(b, minlength=bins).int())
    torch.testing.assert_close(sums, torch.zeros(bins).index_add_(0, b, x), rtol=1e-4, atol=1e-3)
    assert vmax.item() == x.max().item()
    assert extra.tolist() == [b.max().item(), n]


# bf16 / half ----------------------------------------------------------------------------------
def test_half_roundtrip(emu):
    n = 500
    x = torch.randn(n, generator=_gen(9)) * 100
    out = emu.selftest_half_roundtrip(x)
    xb = x.bfloat16()
    nb_idx = torch.arange(n) ^ 1
    neighbour = torch.where(nb_idx < n, xb.float()[nb_idx.clamp(max=n - 1)], torch.zeros(n))
    assert torch.equal(out[0], xb.float())
    assert torch.equal(out[1], x.half().float())
    assert torch.equal(out[2], neighbour)
    assert torch.equal(out[3], (xb + xb).float())


# speed ------------------------------------------------------------------------------------------
def test_speed_64_blocks_of_256(emu):
    x = torch.randn(64 * 256 * 4, generator=_gen(11))
    t = time.perf_counter()
    for _ in range(3):
        got = emu.selftest_block_sum(x, 256, 64)
    per_launch = (time.perf_counter() - t) / 3
    torch.testing.assert_close(got.sum().double(), x.double().sum(), rtol=1e-5, atol=1e-3)
    assert per_launch < 0.5, f"64 blocks x 256 threads took {per_launch:.3f} s per launch"


def test_zz_file_runtime(emu):
    elapsed = time.perf_counter() - _T0["start"]
    assert elapsed < FILE_BUDGET_S, f"tests/test_emu.py took {elapsed:.1f} s (budget {FILE_BUDGET_S} s)"
