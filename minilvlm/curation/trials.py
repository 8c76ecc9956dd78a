"""Fine-tuning trials as separate processes: each trial is one training run from a shared base config,
in a folder of its own, run by `python -m minilvlm.cli.trial TRIAL_DIR` (minilvlm/cli/trial.py). A trial that crashes
only fails itself (its log says why); a finished trial is reused when its spec has not changed, so a
pipeline that stopped halfway picks up where it was (tools/select_data.py, tools/ppl_filter.py
--compare).

A trial folder holds trial.json (the full run config, as a dict), log.txt (everything the run printed)
and run/ (the run folder: summary.json, metrics.jsonl, the final checkpoint)."""
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from minilvlm import recipes
from minilvlm.config import ConfigError, to_dict
from minilvlm.io import atomic_write_json


@dataclass
class Trial:
    folder: Path
    config: dict                     # the run's full config (minilvlm.config.to_dict), run_dir inside folder
    label: str = ""                  # for progress lines
    summary: dict = None             # the run's summary.json once it finished
    error: str = ""                  # why it failed (the end of its log)
    reused: bool = False
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)
    after: "Trial" = None            # the trial this one continues: it starts once that one has finished

    @property
    def run_dir(self):
        return self.folder / "run"

    @property
    def ok(self):
        return self.summary is not None and not self.error

    @property
    def accuracy(self):
        return overall_accuracy(self.summary) if self.summary else None


def overall_accuracy(summary):
    """The share of all held-out questions answered right, from a run's summary.json (question types
    partition the questions; task keys count them again)."""
    acc, count = summary.get("accuracy") or {}, summary.get("count") or {}
    types = [k for k in count if not k.startswith("task/")]
    total = sum(count[k] for k in types)
    return sum(acc[k] * count[k] for k in types) / total if total else None


def _finished(trial):
    """The trial's summary.json when an earlier run of the same spec finished it, else None."""
    spec, summary = trial.folder / "trial.json", trial.run_dir / "summary.json"
    try:
        if not same_run(completed_config(json.loads(spec.read_text())), trial.config):
            return None
        done = json.loads(summary.read_text())
    except (OSError, ValueError):
        return None
    steps = trial.config["train"]["steps"]
    return done if done.get("step") == steps and "accuracy" in done else None


def trial_config(cfg):
    """A RunConfig as trial.json holds it (JSON types: lists, not tuples), so a rerun compares equal."""
    return json.loads(json.dumps(to_dict(cfg)))


def completed_config(config):
    """A saved trial config with every key the current code knows (a setting added since it was written
    takes its default, as it would in the run), so a new default does not make every finished trial stale."""
    try:
        return trial_config(recipes.config_from_dict(config, "a saved run config"))
    except (ConfigError, TypeError, ValueError):
        return config   # not a config this code reads: it differs, and the trial runs again


def say(line):
    print(line, flush=True)   # progress shows as it happens, also when stdout is a file


def same_run(a, b, ignore=("threads",)):
    """Whether two run configs (dicts) train the same run, apart from the `train` keys in `ignore` (the
    thread count may differ when --jobs changed; a run folder's own name, where asked)."""
    strip = lambda c: {**c, "train": {k: v for k, v in c.get("train", {}).items() if k not in ignore}}  # noqa: E731
    return strip(a) == strip(b)


def mean_and_spread(values):
    """{mean, spread (half the range), values} of the values that are not None (failed runs)."""
    done = [v for v in values if v is not None]
    if not done:
        return {"mean": None, "spread": None, "values": list(values)}
    return {"mean": statistics.fmean(done), "spread": (max(done) - min(done)) / 2, "values": list(values)}


def _start(trial, threads):
    trial.folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(trial.config, trial.folder / "trial.json")
    (trial.run_dir / "summary.json").unlink(missing_ok=True)   # an older spec's result never passes for this one
    log = open(trial.folder / "log.txt", "w")   # noqa: SIM115  (the child writes it; closed when it ends)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    process = subprocess.Popen([sys.executable, "-m", "minilvlm.cli.trial", str(trial.folder)],
                               stdout=log, stderr=subprocess.STDOUT, env=env)
    return process, log, time.perf_counter()


def _tail(path, lines=6):
    try:
        text = Path(path).read_text(errors="replace").strip().splitlines()
    except OSError:
        return "no log"
    return " | ".join(line.strip() for line in text[-lines:] if line.strip()) or "empty log"


def _chain_steps(trials):
    """Each trial's steps plus the longest chain of steps waiting on it: the work that cannot start
    before it ends. Starting the longest chain first keeps a chain's last stage from running alone
    at the end while the other slot idles."""
    waiting = {}
    for trial in trials:
        if trial.after is not None:
            waiting.setdefault(id(trial.after), []).append(trial)
    memo = {}

    def length(trial):
        if id(trial) not in memo:
            memo[id(trial)] = trial.config["train"]["steps"] + max(map(length, waiting.get(id(trial), [])), default=0)
        return memo[id(trial)]
    return {id(t): length(t) for t in trials}


def _collect(entry, report):
    """Record how a finished trial process went (summary, or error and the end of its log)."""
    trial, process, log, started = entry
    log.close()
    trial.seconds = time.perf_counter() - started
    try:
        trial.summary = json.loads((trial.run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        trial.summary = None
    if process.returncode != 0 or trial.summary is None or trial.accuracy is None:
        trial.error = f"exit {process.returncode}: {_tail(trial.folder / 'log.txt')}"
        trial.summary = None
        report(f"  FAILED   {trial.label} ({trial.seconds:.0f} s): {trial.error}")
    else:
        report(f"  finished {trial.label}: accuracy {100 * trial.accuracy:.1f}% ({trial.seconds:.0f} s)")


def _next_ready(pending, report):
    """The first pending trial whose earlier stage (trial.after) has finished, or None; a trial whose
    earlier stage failed fails without running (and so, in turn, do the stages after it)."""
    for trial in list(pending):   # earlier stages sort before later ones (their chains are longer)
        before = trial.after
        if before is not None and before.error:
            pending.remove(trial)
            trial.error = f"its earlier stage {before.label} failed"
            report(f"  FAILED   {trial.label}: {trial.error}")
        elif before is None or before.ok:
            pending.remove(trial)
            return trial
    return None


def run_trials(trials, jobs=1, threads=None, report=None):
    """Run the trials that have not finished, `jobs` at a time, each with `threads` intra-op threads
    (default: the cores over jobs). A trial with `after` set starts once that trial has finished; the
    longest chains of steps start first. A trial fails alone: its error is the end of its log (a trial
    after it fails unrun). Returns the trials, each with summary or error set."""
    report = report or say
    threads = threads or max(1, (os.cpu_count() or 1) // jobs)
    pending, seen = [], set()
    for trial in trials:
        if trial.folder in seen or trial.ok:   # listed twice, or finished earlier in this process
            continue
        seen.add(trial.folder)
        trial.config["train"]["threads"] = threads
        trial.config["train"]["run_dir"] = str(trial.run_dir)
        done = _finished(trial)
        if done is not None:
            trial.summary, trial.reused = done, True
            report(f"  reused   {trial.label}: accuracy {100 * trial.accuracy:.1f}%")
        else:
            pending.append(trial)
    chain = _chain_steps(pending)
    pending.sort(key=lambda t: -chain[id(t)])   # stable: equal chains keep their listed order
    running = []
    while pending or running:
        while len(running) < jobs and (trial := _next_ready(pending, report)) is not None:
            running.append((trial, *_start(trial, threads)))
        if not running:
            break   # nothing runs and nothing is ready: only trials whose earlier stage is not among these
        time.sleep(0.2)
        for entry in [e for e in running if e[1].poll() is not None]:
            running.remove(entry)
            _collect(entry, report)
    for trial in pending:
        trial.error = f"its earlier stage {trial.after.label} did not run"
        report(f"  FAILED   {trial.label}: {trial.error}")
    return trials
