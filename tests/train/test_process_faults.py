"""Process faults under torchrun (issue 17, S4): a rank that is stopped (SIGSTOP) or a launcher that
is killed never leaves processes behind. Every rank and the launcher are gone within the collective
timeout of a stop, plus a few seconds (not the timeout again at the closing barrier, nor torchrun's
30 s wait before its SIGKILL); the workers of a killed launcher exit at once (parent-death signal)
and never finish the run on their own."""
import json
import os
import signal
import time

import pytest

from tests.train.test_kill_resume import ENV, descendants, launch, logged_step

TIMEOUT_S = 10   # the collective timeout of these runs (MINILVLM_DIST_TIMEOUT); the default is 30


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _start(run_dir, steps=400):
    ENV["MINILVLM_DIST_TIMEOUT"] = str(TIMEOUT_S)
    try:
        proc = launch(run_dir, 2, [f"train.steps={steps}", "train.ckpt_every=0", "train.log_every=1"])
    finally:
        ENV["MINILVLM_DIST_TIMEOUT"] = "120"
    deadline = time.monotonic() + 240
    while logged_step(run_dir) < 3:
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.monotonic() < deadline, "the run did not reach step 3"
        time.sleep(0.1)
    workers = [pid for pid in descendants(proc.pid) if "train.py" in open(f"/proc/{pid}/cmdline").read()]
    assert len(workers) >= 2, workers
    return proc, workers


def _gone_within(pids, seconds):
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        if not any(_alive(p) for p in pids):
            return time.monotonic() - start
        time.sleep(0.2)
    return None


def _cleanup(pids):
    for pid in pids:
        for sig in (signal.SIGCONT, signal.SIGKILL):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass


def test_a_stopped_rank_takes_the_whole_job_down_within_the_timeout(tmp_path):
    proc, workers = _start(tmp_path / "run")
    everyone = [proc.pid, *workers]
    try:
        os.kill(workers[-1], signal.SIGSTOP)
        took = _gone_within(everyone, TIMEOUT_S + 25)
        assert took is not None, "processes left after the stop: " + str([p for p in everyone if _alive(p)])
        print(f"S4: every process gone {took:.1f} s after the stop (collective timeout {TIMEOUT_S} s)")
        assert took < TIMEOUT_S + 20, took
        proc.communicate(timeout=30)
        assert proc.returncode != 0
    finally:
        _cleanup(everyone)


def test_workers_exit_when_their_launcher_is_killed(tmp_path):
    run = tmp_path / "run"
    proc, workers = _start(run)
    try:
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
        took = _gone_within(workers, 15)
        assert took is not None, "orphaned workers: " + str([p for p in workers if _alive(p)])
        time.sleep(1)
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.endswith("}")]
        assert max(r["step"] for r in rows) < 400 and not (run / "summary.json").exists()
    finally:
        _cleanup(workers)


@pytest.mark.fuzz
def test_the_default_timeout_keeps_the_60_second_promise(tmp_path):
    """With the default 30 s collective timeout: the job ends within 60 s of a stop (about 32 s)."""
    global TIMEOUT_S
    saved, TIMEOUT_S = TIMEOUT_S, 30
    try:
        proc, workers = _start(tmp_path / "run", steps=2000)
        everyone = [proc.pid, *workers]
        try:
            os.kill(workers[-1], signal.SIGSTOP)
            took = _gone_within(everyone, 70)
            assert took is not None and took < 60, took
        finally:
            _cleanup(everyone)
    finally:
        TIMEOUT_S = saved
