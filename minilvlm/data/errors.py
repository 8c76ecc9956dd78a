"""Bad input: one error type that says what, where and why, and the on_error policy.

`on_error="raise"` (the default) raises a DataError naming the file, the record id and line, and
what is wrong. `on_error="skip"` counts the record under its reason in a SkipCounter instead;
the counts are reported at the end of a run and in its metrics, so nothing is dropped silently.
"""
import re
from collections import Counter

ON_ERROR_CHOICES = ("raise", "skip")


class DataError(ValueError):
    """A bad record or image. `reason` is a short stable key (e.g. "missing_image") used for the
    skip counts, and ends the message in brackets; the rest of the message is for people.

    A DataLoader worker's exception reaches the main process as `DataError(text)`, where torch
    has put the worker's traceback in front of our message; the constructor keeps only our
    message and recovers the reason from it, so users see one clean line there too."""

    def __init__(self, message, *, reason=None, file=None, record_id=None, line=None):
        if reason is None:   # a bare message, e.g. re-raised from a DataLoader worker
            message, reason = _unwrap(str(message))
        where = []
        if file is not None:
            where.append(str(file))
        if line is not None:
            where.append(f"line {line}")
        if record_id is not None:
            where.append(f"record {record_id!r}")
        text = f"{', '.join(where)}: {message}" if where else str(message)
        super().__init__(f"{text} [{reason}]")
        self.reason = reason
        self.file, self.record_id, self.line = file, record_id, line
        self.detail = message

    def at(self, *, file=None, record_id=None, line=None):
        """The same error with location fields filled in where they were unknown."""
        return DataError(self.detail, reason=self.reason, file=self.file or file,
                         record_id=self.record_id if self.record_id is not None else record_id,
                         line=self.line if self.line is not None else line)


def _unwrap(text):
    """(our message, reason) from a DataError's text, possibly wrapped in a worker traceback."""
    last = text.rstrip().rsplit("\n", 1)[-1]
    if text.startswith("Caught DataError") and "DataError: " in last:
        text = last.split("DataError: ", 1)[1]
    match = re.search(r" \[(\w+)\]\Z", text)
    if match:
        return text[:match.start()], match.group(1)
    return text, "invalid"


def check_on_error(on_error):
    if on_error not in ON_ERROR_CHOICES:
        raise ValueError(f"on_error must be one of {ON_ERROR_CHOICES}, got {on_error!r}")
    return on_error


class SkipCounter:
    """Counts skipped records by reason, and keeps the first few messages per reason so that a
    report can show an example of each."""

    def __init__(self, examples_per_reason=3):
        self.counts = Counter()
        self.examples = {}
        self.examples_per_reason = examples_per_reason

    def add(self, error: DataError):
        self.counts[error.reason] += 1
        kept = self.examples.setdefault(error.reason, [])
        if len(kept) < self.examples_per_reason:
            kept.append(str(error))

    def merge(self, counts):
        """Add counts gathered elsewhere (a DataLoader worker reports them inside its batches)."""
        self.counts.update(counts)

    @property
    def total(self):
        return sum(self.counts.values())

    def as_metrics(self, prefix="data/skipped"):
        out = {f"{prefix}/{reason}": n for reason, n in sorted(self.counts.items())}
        out[prefix] = self.total
        return out

    def report(self):
        if not self.counts:
            return "data: no records skipped"
        lines = [f"data: skipped {self.total} record(s):"]
        for reason, n in self.counts.most_common():
            lines.append(f"  {reason}: {n}")
            lines.extend(f"    e.g. {msg}" for msg in self.examples.get(reason, [])[:1])
        return "\n".join(lines)


def check_most_not_skipped(counts, total, what, examples=None):
    """Raise a DataError when more than half of `total` records were skipped for one reason: then the
    data and the settings do not fit (an image root that is off, the wrong format), and carrying on
    with the rest would hide it. `counts`: {reason: n}."""
    if not counts or not total:
        return
    reason, n = max(counts.items(), key=lambda item: item[1])
    if 2 * n > total:
        example = f"; e.g. {examples[reason][0]}" if examples and examples.get(reason) else ""
        raise DataError(f"{n} of the {total} records of {what} were skipped as {reason}: more than half, so the data "
                        f"and the settings do not fit (the image root? the format?){example}", reason=reason)


def handle(error: DataError, on_error, skips: SkipCounter):
    """Apply the policy to one error: raise it, or count it."""
    if on_error == "raise":
        raise error
    skips.add(error)
