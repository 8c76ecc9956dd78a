"""minilvlm/curation/trials.py's scheduler, with the trial processes replaced by stand-ins that end
at once: the longest chain of steps starts first, a stage starts only after the one it continues,
a failed stage takes the stages after it down unrun, and a reused earlier stage lets its next one
start. tests/curation/test_compare.py runs real trial processes."""
import json

import pytest

from minilvlm.curation import trials as trials_module
from minilvlm.curation.trials import Trial, run_trials


class _Ended:
    """A stand-in for a trial's process that has already exited with `code`."""

    def __init__(self, code):
        self.returncode = code

    def poll(self):
        return self.returncode


@pytest.fixture
def started(monkeypatch, tmp_path):
    """The labels of the trials started, in order; a trial whose label ends in '!' exits 1."""
    order = []

    def fake_start(trial, threads):
        order.append(trial.label)
        trial.folder.mkdir(parents=True, exist_ok=True)
        (trial.folder / "log.txt").write_text("a made-up failure\n" if trial.label.endswith("!") else "ok\n")
        if not trial.label.endswith("!"):
            trial.run_dir.mkdir(parents=True, exist_ok=True)
            summary = {"step": trial.config["train"]["steps"], "accuracy": {"all": 0.5}, "count": {"all": 10}}
            (trial.run_dir / "summary.json").write_text(json.dumps(summary))
        return _Ended(1 if trial.label.endswith("!") else 0), open(trial.folder / "log.txt"), 0.0

    monkeypatch.setattr(trials_module, "_start", fake_start)
    monkeypatch.setattr(trials_module.time, "sleep", lambda seconds: None)
    return order


def _trial(tmp_path, label, steps, after=None):
    return Trial(tmp_path / label.rstrip("!"), {"train": {"steps": steps}}, label=label, after=after)


def test_the_longest_chain_starts_first_and_each_stage_waits_for_the_one_before(started, tmp_path):
    alone = _trial(tmp_path, "alone", 3000)
    first = _trial(tmp_path, "first", 500)
    second = _trial(tmp_path, "second", 500, after=first)
    third = _trial(tmp_path, "third", 2500, after=second)
    short = _trial(tmp_path, "short", 100)
    # Listed with the chain's later stages first: the scheduler still runs each after its earlier one.
    result = run_trials([third, alone, second, short, first], jobs=2, report=lambda line: None)
    assert all(t.ok for t in result)
    # Chains: first 3,500 steps, alone 3,000, second 3,000 (waits), third 2,500 (waits), short 100. Once
    # first and alone end, second is ready but third is not (second runs), so short takes the other slot.
    assert started == ["first", "alone", "second", "short", "third"]


def test_a_failed_stage_fails_the_stages_after_it_unrun(started, tmp_path):
    first = _trial(tmp_path, "first!", 500)
    second = _trial(tmp_path, "second", 500, after=first)
    third = _trial(tmp_path, "third", 500, after=second)
    other = _trial(tmp_path, "other", 500)
    lines = []
    run_trials([first, second, third, other], jobs=1, report=lines.append)
    assert started == ["first!", "other"]
    assert first.error.startswith("exit 1: a made-up failure")
    assert second.error == "its earlier stage first! failed" and not second.ok
    assert third.error == "its earlier stage second failed" and not third.ok
    assert other.ok
    assert sum(line.startswith("  FAILED") for line in lines) == 3


def test_a_stage_after_a_finished_trial_starts_and_one_after_a_trial_not_run_fails(started, tmp_path):
    done = _trial(tmp_path, "done", 500)
    run_trials([done], report=lambda line: None)
    after_done = _trial(tmp_path, "after_done", 500, after=done)
    missing = _trial(tmp_path, "missing", 500)
    after_missing = _trial(tmp_path, "after_missing", 500, after=missing)
    run_trials([after_done, after_missing], jobs=2, report=lambda line: None)
    assert started == ["done", "after_done"]
    assert after_done.ok
    assert after_missing.error == "its earlier stage missing did not run"
