"""Off-target candidate sets: how much of a set's task the held-out file asks at all, measured on the
text of the records before any trial is spent on it (minilvlm/curation/selection.py).

Two shares, and a set's relevance is the smaller of them:
- questions: of the set's question word pairs (every user turn, with image tags, "Context:" and
  "Options:" lines and the "Question:" label left out, lowercased, each number as "#"), the share that
  occur in some held-out question;
- answers: of the set's records with a short reference answer (at most `SHORT_ANSWER_WORDS` words; a
  multiple-choice letter counts as the text of its "(X) text" option, and is left out where it has
  none, since option formats differ between files), the share whose answer is one the held-out
  file expects or offers as an option. Long replies (a conversation, a caption) are never matched word
  for word, so this share is left out (None) when most of the set's records, or of the held-out
  records, have none; relevance is then the question share alone.

A trial cannot be trusted to find an off-target set: any extra steps on nearby words can lift a small
held-out score by a point or two, within one trial's noise, and the set then joins for nothing the
held-out file asks (docs/data-efficiency.md)."""
import re
from dataclasses import dataclass

from minilvlm.eval.score import reference

SHORT_ANSWER_WORDS = 4
_SCAFFOLD_LINE = re.compile(r"^\s*(context|options)\s*:.*$", re.IGNORECASE | re.MULTILINE)
_QUESTION_LABEL = re.compile(r"^\s*question\s*:", re.IGNORECASE | re.MULTILINE)
_IMAGE_TAG = re.compile(r"<image>", re.IGNORECASE)
_WORD = re.compile(r"[^\W\d_]+|\d+")
_OPTIONS_LINE = re.compile(r"^\s*options\s*:.*$", re.IGNORECASE | re.MULTILINE)
_OPTION = re.compile(r"\(([A-Z])\)\s*(.*?)\s*(?=\([A-Z]\)|$)", re.MULTILINE)


def _words(text):
    return ["#" if w.isdigit() else w for w in _WORD.findall(text.lower())]


def question_pairs(record):
    """The word pairs of the record's questions (a one-word question is its one word)."""
    pairs = []
    for turn in record.turns:
        if turn.role != "user":
            continue
        text = _QUESTION_LABEL.sub(" ", _SCAFFOLD_LINE.sub(" ", _IMAGE_TAG.sub(" ", turn.text)))
        words = _words(text)
        pairs += list(zip(words, words[1:])) or [tuple(words)]   # () for a question of no words (just a picture)
    return pairs


def _answer_key(text):
    return " ".join(_words(text))


def _options(record):
    """{letter: option text} from the Options line of the record's last question."""
    last = next((t.text for t in reversed(record.turns) if t.role == "user"), "")
    found = _OPTIONS_LINE.search(last)
    line = found.group(0) if found else ""
    return {letter: text for letter, text in _OPTION.findall(line.partition(":")[2])}


def answer_key(record):
    """The record's reference answer as lowercased words (numbers as "#"), a multiple-choice letter as
    its option's text; None when the answer is long or empty, or a letter whose option is not found."""
    kind, expected = reference(record)
    if kind == "letter":   # a letter without a "(X) text" option to read is not compared: formats differ
        expected = _options(record).get(expected)
        if expected is None:
            return None
    key = _answer_key(expected)
    return key if key and len(key.split()) <= SHORT_ANSWER_WORDS else None


def _offered(record):
    """Every answer the record offers: its options (the Options line, or the metadata's choices)."""
    choices = list(_options(record).values())
    meta = record.meta.get("choices")
    if isinstance(meta, list):
        choices += [str(c) for c in meta]
    return {key for key in map(_answer_key, choices) if key}


@dataclass
class HeldoutProfile:
    """The question word pairs and the short answers of a held-out file."""
    pairs: frozenset
    answers: frozenset     # empty when most held-out records have long answers: answers are not compared

    @classmethod
    def of(cls, records):
        pairs = frozenset(p for r in records for p in question_pairs(r))
        keys = [answer_key(r) for r in records]
        if sum(k is not None for k in keys) * 2 <= len(keys):
            return cls(pairs, frozenset())
        offered = {a for r in records for a in _offered(r)}
        return cls(pairs, frozenset(k for k in keys if k is not None) | offered)


@dataclass
class Relevance:
    questions: float          # share of the set's question word pairs found in held-out questions
    answers: float = None     # share of its short answers that the held-out file expects or offers (None: not compared)

    @property
    def share(self):
        return self.questions if self.answers is None else min(self.questions, self.answers)


def relevance(records, heldout):
    """Relevance of a candidate set's records to the HeldoutProfile `heldout`."""
    pairs = [p for r in records for p in question_pairs(r)]
    questions = sum(p in heldout.pairs for p in pairs) / len(pairs) if pairs else 0.0
    keys = [answer_key(r) for r in records]
    short = [k for k in keys if k is not None]
    if not heldout.answers or len(short) * 2 <= len(keys):
        return Relevance(questions)
    return Relevance(questions, sum(k in heldout.answers for k in short) / len(short))
