"""Near-duplicate candidate sets: how much of a set the chosen mixture already holds, measured on the
records' content before any trial is spent on it (minilvlm/curation/selection.py).

A record's content key is its pictures (their file bytes, so a copied picture under another name still
matches) with its replies, lowercased and with runs of whitespace collapsed; a text-only record's key
is its whole conversation, likewise normalised. The question of a picture record is left out on
purpose: a set that rewords the questions of another set over the same pictures, with the same
answers, teaches nothing the other does not. A trial cannot be trusted to find that on a small step
budget, since doubling a family's share of the steps can look like a gain while that family is still
under-trained."""
import hashlib


def _normalised(text):
    return " ".join(text.lower().split())


class ContentKeys:
    """Content keys of records, with one digest per picture file however many records show it."""

    def __init__(self):
        self._digests = {}

    def _digest(self, path):
        if path not in self._digests:
            try:
                self._digests[path] = hashlib.sha1(path.read_bytes()).hexdigest()
            except OSError:      # the trial that reads it reports the missing picture; key it by name here
                self._digests[path] = f"unreadable:{path}"
        return self._digests[path]

    def key(self, record):
        if record.images:
            parts = [self._digest(path) for path in record.images]
            parts += [_normalised(t.text) for t in record.turns if t.role == "assistant"]
        else:
            parts = [f"{t.role}:{_normalised(t.text)}" for t in record.turns]
        return hashlib.sha1("\x1f".join(parts).encode()).hexdigest()

    def of(self, records):
        return frozenset(self.key(r) for r in records)


def most_overlapping(keys, chosen_keys):
    """(share of `keys` found in the union of the chosen sets, the chosen set holding most of them or
    None); chosen_keys: {name: keys}."""
    if not keys or not chosen_keys:
        return 0.0, None
    union = frozenset().union(*chosen_keys.values())
    shared = len(keys & union) / len(keys)
    most = max(chosen_keys, key=lambda name: len(keys & chosen_keys[name]))
    return shared, (most if shared else None)
