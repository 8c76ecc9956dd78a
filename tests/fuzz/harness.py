"""The fuzz harness: seeded random cases, each run under a time limit, each outcome classified. A
case passes when it ends in a valid result, a counted skip or one of the project's errors; it fails
on any other exception (a crash), on running past the limit (a hang), or when its check finds
records gone without a count (a silent drop). Every failure keeps its seed, so it can be replayed:
`Campaign(...).replay(seed)`.

The default test run (CI) runs a few hundred cases per target; `pytest -m fuzz` runs the long
campaign (tests/fuzz/test_campaign.py), and both print `fuzz: N cases, F failures` per target."""
import random
import signal
import time
import traceback
from contextlib import contextmanager

RESULTS = {}   # target -> [cases, failures], read by tests/fuzz/conftest.py for the summary


class Hang(Exception):
    pass


@contextmanager
def time_limit(seconds):
    def expire(signum, frame):
        raise Hang(f"still running after {seconds} s")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class Campaign:
    """run(case, n): case(rng) builds one input and checks its outcome; it returns normally for a valid
    result or a counted skip, raises one of `expected` (the project's errors) for a refused input, and
    raises AssertionError for a silent drop or a wrong result."""

    def __init__(self, target, expected, seed=0, limit_s=10.0):
        self.target, self.expected, self.seed, self.limit_s = target, expected, seed, limit_s
        self.failures = []
        self.outcomes = {"valid": 0, "refused": 0}

    def one(self, case, seed):
        rng = random.Random(seed)
        try:
            with time_limit(self.limit_s):
                case(rng)
        except self.expected:
            self.outcomes["refused"] += 1
            return None
        except Hang as err:
            return f"seed {seed}: hang: {err}"
        except Exception as err:   # everything else is a failure of the project, recorded with its seed
            kind = "silent drop or wrong result" if isinstance(err, AssertionError) else "crash"
            return f"seed {seed}: {kind}: {type(err).__name__}: {err}\n{traceback.format_exc(limit=-4)}"
        self.outcomes["valid"] += 1
        return None

    def run(self, case, n):
        started = time.monotonic()
        for i in range(n):
            failure = self.one(case, self.seed * 1_000_003 + i)
            if failure:
                self.failures.append(failure)
        cases, failures = RESULTS.setdefault(self.target, [0, 0])
        RESULTS[self.target] = [cases + n, failures + len(self.failures)]
        return time.monotonic() - started

    def replay(self, case, seed):
        return self.one(case, seed)

    def check(self):
        assert not self.failures, f"{len(self.failures)} failing case(s) of {self.target}:\n" + \
            "\n".join(self.failures[:5])
