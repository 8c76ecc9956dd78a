"""Self-tests of the SIMT emulator (csrc/emu): CUDA kernels compiled with g++ and run on the CPU.

Each test launches one of the kernels in csrc/emu/selftest_kernels.cuh through a
torch.ops.minilvlm_emu.selftest_* op and compares with a plain torch reference. The emu fixture
(tests/conftest.py) runs them with racecheck and memcheck on; synccheck is always on. The
checks' own tests, on deliberately broken kernels, are in tests/emu/.
"""
import re

import pytest
import torch

import minilvlm


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


# (5) divergent barriers are synccheck errors naming the threads that did not arrive ---------------
@pytest.mark.parametrize("mode,pattern", [
    (0, r"__syncthreads at selftest_kernels\.cuh:\d+ was reached by threads 0-15, but threads 16-255 did not arrive "
        r"\(exited\)"),
    (1, r"__syncthreads at selftest_kernels\.cuh:\d+ was reached by threads 0, 2, 4, .*\(128 threads\), but threads "
        r"1, 3, 5, .* did not arrive \(wait at __syncthreads at selftest_kernels\.cuh:\d+\)"),
    (2, r"warp 0: __shfl_xor_sync at selftest_kernels\.cuh:\d+ .*lanes 16-31.*exited"),
])
def test_divergent_sync_is_a_synccheck_error(emu, mode, pattern):
    with pytest.raises(minilvlm._emu.EmulatorError) as info:
        emu.selftest_divergent_sync(mode, 3, 256)
    msg = str(info.value)
    assert msg.startswith("synccheck: kernel 'divergent_sync_kernel' block (0,0,0)"), msg  # the lowest block
    assert re.search(pattern, msg), msg


def test_device_assert_raises(emu):
    with pytest.raises(minilvlm._emu.EmulatorError, match=r"kernel 'assert_kernel' block \(1,0,0\) thread \(7,0,0\): "
                                                          r"assertion .* failed"):
        emu.selftest_device_assert(3, 32)


def test_emulator_error_is_a_runtime_error(emu):
    assert issubclass(minilvlm._emu.EmulatorError, RuntimeError)


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


# (6) a shared-memory race: racecheck names it; without racecheck it shows as seed-dependent results
@pytest.mark.emu_checks
def test_racecheck_names_the_smem_race(emu):
    with pytest.raises(minilvlm._emu.EmulatorError) as info:
        emu.selftest_smem_race(4, 256)
    msg = str(info.value)
    assert msg.startswith("race: kernel 'smem_race_kernel' block (0,0,0): thread (1,0,0) writes 4 bytes of shared "
                          "memory at __shared__ minilvlm::emu_selftest::smem_race_kernel(int*)::slot, byte 0 "
                          "(selftest_kernels.cuh:"), msg
    assert re.search(r"that thread \(0,0,0\) wrote \(selftest_kernels\.cuh:\d+ in "
                     r"minilvlm::emu_selftest::smem_race_kernel\) .*\(write-after-write hazard\)$", msg), msg


def test_smem_race_depends_on_seed(emu, seed):
    emu.set_checks("none")  # let the racy kernel run, to see what the race does to its result
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
    seed(1)
    assert torch.equal(emu.selftest_smem_race(4, 256), a1)


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


# settings -------------------------------------------------------------------------------------
def test_checks_setting_round_trips_and_rejects_unknown_names(emu):
    if emu.checks_available():
        for given, shown in [("race", "race"), ("memory", "memory"), ("memory, race", "race,memory"),
                             ("all", "race,memory"), ("none", "none"), ("sync", "none")]:
            emu.set_checks(given)
            assert emu.get_checks() == shown
    else:  # the AddressSanitizer build has no access instrumentation
        with pytest.raises(RuntimeError, match="this build of minilvlm._emu has none"):
            emu.set_checks("race")
    with pytest.raises(ValueError, match="unknown check 'rcae'; expected a comma-separated list of race, memory"):
        emu.set_checks("rcae")


def test_gpu_profiles_table(emu):
    # SMs, threads/SM, blocks/SM, shared memory/SM, default shared memory/block, registers/SM
    assert emu.gpu_profile("A100") == [108, 2048, 32, 167936, 49152, 65536]
    assert emu.gpu_profile("H100") == [132, 2048, 32, 233472, 49152, 65536]
    assert emu.resident_blocks("A100", 256, 0) == 8      # limited by threads
    assert emu.resident_blocks("H100", 128, 0) == 16
    assert emu.resident_blocks("A100", 32, 0) == 32      # limited by the blocks per SM
    assert emu.resident_blocks("A100", 256, 48000) == 3  # limited by shared memory (+1 KiB per block)
    with pytest.raises(ValueError, match="unknown GPU profile 'V100'; known: A100, H100"):
        emu.set_gpu("V100")
    emu.set_gpu("H100")
    assert emu.get_gpu() == "H100"


def test_gpu_profile_refuses_dynamic_smem_beyond_the_default_block_limit(emu):
    emu.set_gpu("A100")
    with pytest.raises(RuntimeError, match="exceeds the 49152 bytes a block may use on A100 without "
                                           "cudaFuncSetAttribute"):
        emu.selftest_bad_launch(1, 32, 1, 60000)
    emu.clear_recent_launches()
    emu.selftest_bad_launch(1, 32, 1, 40000)
    assert emu.recent_launches() == ["'k' (minilvlm::emu_selftest::iota_kernel) grid=(1,1,1) block=(32,1,1) smem=40000"]
