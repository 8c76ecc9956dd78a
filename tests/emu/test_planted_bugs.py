"""The emulator's checks against deliberately broken kernels (tests/emu/planted_bugs.cuh), one per class of
bug: each is reported by its check, by name, with the kernel, the threads and the source lines; the same
kernel without the bug passes every check and gives the right result."""
import re
from pathlib import Path

import pytest
import torch

import minilvlm

SOURCE = Path(__file__).with_name("planted_bugs.cuh").read_text().splitlines()


def line_of(text):
    """The line number of the one line of planted_bugs.cuh that contains `text`."""
    lines = [i + 1 for i, line in enumerate(SOURCE) if text in line]
    assert len(lines) == 1, (text, lines)
    return lines[0]


def reported(fn):
    """The message of the EmulatorError that fn raises."""
    with pytest.raises(minilvlm._emu.EmulatorError) as info:
        fn()
    return str(info.value)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# racecheck ----------------------------------------------------------------------------------------
@pytest.mark.emu_checks
@pytest.mark.parametrize("sched_seed", [0, 12345])
def test_missing_barrier_is_a_shared_memory_race(emu, sched_seed):
    x, w = torch.randn(37, 70, generator=gen()), torch.randn(5, 70, generator=gen(1))
    torch.testing.assert_close(emu.planted_missing_barrier(x, w, False), x @ w.t(), rtol=1e-5, atol=1e-5)
    emu.set_seed(sched_seed)
    msg = reported(lambda: emu.planted_missing_barrier(x, w, True))
    assert msg.startswith("race: kernel 'kernel' (minilvlm::planted::missing_barrier_kernel<true>) block (0,0,0): "
                          "thread ("), msg
    store, load = line_of("dots[t * r + j] = acc"), line_of("out[t0 * r + e] = dots[e]")
    hazard = re.search(r"(reads|writes) 4 bytes of shared memory at dynamic shared memory offset \d+ "
                       r"\(planted_bugs\.cuh:(\d+) in .*\) that thread \(\d+,0,0\) (wrote|read) "
                       r"\(planted_bugs\.cuh:(\d+) in .*\) with no __syncthreads between them.*"
                       r"\((read-after-write|write-after-read) hazard\)$", msg)
    assert hazard, msg
    lines = {int(hazard.group(2)), int(hazard.group(4))}
    assert lines == {store, load}, (lines, store, load, msg)


@pytest.mark.emu_checks
@pytest.mark.parametrize("sched_seed", [0, 12345])
def test_wrong_stride_is_a_race_between_blocks(emu, sched_seed):
    n = 5000
    p, g = torch.randn(n, generator=gen()), torch.randn(n, generator=gen(1))
    fixed = p.clone()
    emu.planted_wrong_stride(fixed, g, 0.1, 4, False)
    torch.testing.assert_close(fixed, p - 0.1 * g)
    emu.set_seed(sched_seed)
    msg = reported(lambda: emu.planted_wrong_stride(p.clone(), g, 0.1, 4, True))
    assert re.match(r"race: kernel 'kernel' \(minilvlm::planted::wrong_stride_kernel<true>\) block \(\d,0,0\) "
                    r"thread \(\d+,0,0\) (reads|writes) 4 bytes of global memory at kernel argument 0 \(float\*\) "
                    r"\+ byte \d+ \(planted_bugs\.cuh:(\d+) in .*\) that (block \(\d,0,0\) (wrote|read)|other "
                    r"blocks read) .* hazard between blocks", msg), msg
    assert f"planted_bugs.cuh:{line_of('p[i] -= lr * g[i]')}" in msg
    # Without racecheck the bug is only a wrong value: some elements are updated more than once.
    emu.set_checks("memory")
    broken = p.clone()
    emu.planted_wrong_stride(broken, g, 0.1, 4, True)
    assert not torch.allclose(broken, p - 0.1 * g)


@pytest.mark.emu_checks
@pytest.mark.parametrize("sched_seed", [0, 12345])
def test_missing_syncwarp_is_a_race_within_a_warp(emu, sched_seed):
    """Lanes of one warp need __syncwarp (or a warp primitive) between a store and another lane's load; with it
    the rotation passes racecheck (the warp-synchronous exemption), without it racecheck names the two lanes."""
    x = torch.randn(300, generator=gen())
    padded = torch.cat([x, torch.zeros(20)])
    torch.testing.assert_close(emu.planted_missing_syncwarp(x, False), padded.view(-1, 32).roll(-1, 1).flatten()[:300])
    emu.set_seed(sched_seed)
    msg = reported(lambda: emu.planted_missing_syncwarp(x, True))
    hazard = re.match(r"race: kernel 'kernel' \(minilvlm::planted::missing_syncwarp_kernel<true>\) block \(0,0,0\): "
                      r"thread \((\d+),0,0\) (reads|writes) 4 bytes of shared memory at __shared__ "
                      r".*missing_syncwarp_kernel.*::slots, byte \d+ \(planted_bugs\.cuh:(\d+) in .*\) that thread "
                      r"\((\d+),0,0\) (wrote|read) \(planted_bugs\.cuh:(\d+) in .*\) with no __syncthreads between "
                      r"them and no __syncwarp or warp primitive ordering them.*"
                      r"\((read-after-write|write-after-read) hazard\)$", msg)
    assert hazard, msg
    assert int(hazard.group(1)) // 32 == int(hazard.group(4)) // 32, msg  # two lanes of one warp
    lines = {int(hazard.group(3)), int(hazard.group(6))}
    assert lines == {line_of("slots[threadIdx.x] = i < n"), line_of("const float v = slots[next]")}, msg


# memcheck ----------------------------------------------------------------------------------------
@pytest.mark.emu_checks
@pytest.mark.parametrize("sched_seed", [0, 12345])
def test_masked_tail_read_is_out_of_bounds(emu, sched_seed):
    rows, v = torch.randn(5, 40, generator=gen()), torch.randn(40, generator=gen(1))
    torch.testing.assert_close(emu.planted_masked_tail(rows, v, False), rows @ v, rtol=1e-5, atol=1e-5)
    emu.set_seed(sched_seed)
    msg = reported(lambda: emu.planted_masked_tail(rows, v, True))
    found = re.match(r"memcheck: kernel 'kernel' \(minilvlm::planted::masked_tail_kernel<true>\) block \(0,0,0\) "
                     r"thread \((\d+),0,0\): 4-byte read at 0x[0-9a-f]+ \(.*planted_bugs\.cuh:(\d+)\)?\) is outside "
                     r"every buffer of the launch; the nearest is kernel argument 0 \(float const\*\), a buffer of "
                     r"800 bytes at 0x[0-9a-f]+, and the access starts (\d+) bytes past its end$", msg)
    assert found, msg
    assert int(found.group(2)) == line_of("const float a = __ldg(rows")
    assert 0 <= int(found.group(3)) < 24 * 4  # the last row reads 24 floats past the 40 it has
    # Without memcheck the launch reports nothing: only the check finds the bug. The rows whose excess
    # reads land in the next row (in bounds, times 0) come out right; the last row's excess reads
    # whatever lies past the buffer, and 0 x NaN is NaN, so its value depends on that memory.
    emu.set_checks("race")
    torch.testing.assert_close(emu.planted_masked_tail(rows, v, True)[:-1], (rows @ v)[:-1], rtol=1e-5, atol=1e-5)


# synccheck (always on) --------------------------------------------------------------------------
def test_wrong_shuffle_offset_reads_a_lane_outside_the_mask(emu):
    x = torch.randn(3000, generator=gen())
    owner = (torch.arange(3000) // 256) % 3
    expected = torch.zeros(3, dtype=torch.float64).index_add_(0, owner, x.double())
    torch.testing.assert_close(emu.planted_wrong_shuffle_offset(x, 3, False).double(), expected, rtol=1e-5, atol=1e-4)
    emu.set_checks("none")
    msg = reported(lambda: emu.planted_wrong_shuffle_offset(x, 3, True))
    line = line_of("v += __shfl_xor_sync(kMask, v, offset)")
    assert msg == (f"synccheck: kernel 'kernel' (minilvlm::planted::wrong_shuffle_offset_kernel<true>) block (0,0,0) "
                   f"warp 0: __shfl_xor_sync at planted_bugs.cuh:{line} with mask 0x000000ff: lane 0 reads lane 16, "
                   f"which is not in the mask, so the value it gets is undefined (a wrong offset, or a missing width "
                   f"argument?)"), msg


def test_barrier_in_a_divergent_branch_names_the_threads_that_did_not_arrive(emu):
    x = torch.randn(300, generator=gen())
    expected = torch.cat([2 * x[:256].flip(0), 2 * x[256:].flip(0)])
    torch.testing.assert_close(emu.planted_divergent_barrier(2.0, x, False), expected)
    msg = reported(lambda: emu.planted_divergent_barrier(2.0, x, True))
    line = line_of("      __syncthreads();")
    assert msg.startswith(f"synccheck: kernel 'kernel' (minilvlm::planted::divergent_barrier_kernel<true>) block "
                          f"(1,0,0): __syncthreads at planted_bugs.cuh:{line} was reached by threads 0-43, but "
                          f"threads 44-255 did not arrive (exited)."), msg


@pytest.mark.parametrize("sched_seed", [0, 12345])
def test_shuffle_naming_exited_lanes_is_a_synccheck_error(emu, sched_seed):
    x = torch.randn(300, generator=gen())
    padded = torch.cat([x, torch.zeros(212)])
    torch.testing.assert_close(emu.planted_inactive_lane_shuffle(x, False), padded.view(-1, 32).sum(1),
                               rtol=1e-5, atol=1e-5)
    emu.set_seed(sched_seed)
    msg = reported(lambda: emu.planted_inactive_lane_shuffle(x, True))
    line = line_of("v += __shfl_xor_sync(0xffffffffu, v, offset)")
    assert msg.startswith(f"synccheck: kernel 'kernel' (minilvlm::planted::inactive_lane_shuffle_kernel<true>) "
                          f"block (1,0,0) warp 1: __shfl_xor_sync at planted_bugs.cuh:{line} "), msg
    # Lanes 12-31 of warp 1 are past n: those that exited before a lane reached the shuffle are named
    # at once; if none had, the block stops with the lanes that wait and those that never came.
    gone = re.search(r"names lanes ([\d, -]+), which have exited|lanes 12-31 did not arrive \(exited\)", msg)
    assert gone, msg
    for part in (gone.group(1) or "12-31").split(", "):
        first, _, last = part.partition("-")
        assert 12 <= int(first) <= int(last or first) <= 31, msg
