"""Scoring a reply against a held-out record: multiple choice by the letter in "The answer is X",
free-form and text answers by exact match after normalizing case, spaces and punctuation; and the
accuracy per question type and per task."""
import re
from collections import defaultdict

_LETTER = re.compile(r"answer is \(?([A-Z])\b")


def normalize(text):
    return re.sub(r"[^a-z0-9]+", "", text.lower())


def extract_letter(answer_text):
    """The option letter of "The answer is X" in a generated reply, or None when there is none."""
    found = _LETTER.search(answer_text)
    return found.group(1) if found else None


def is_correct(record, answer_text):
    expected = str(record.meta.get("answer", ""))
    if record.meta.get("question_type") == "multiple_choice":
        return extract_letter(answer_text) == expected
    return normalize(answer_text) == normalize(expected)


def summarize(answers):
    """Accuracy per question type and per task from [(record, text, correct)]."""
    hits, counts = defaultdict(int), defaultdict(int)
    for record, _, correct in answers:
        for key in (record.meta.get("question_type", "all"), f"task/{record.meta.get('task', '?')}"):
            counts[key] += 1
            hits[key] += int(correct)
    return {"accuracy": {k: hits[k] / counts[k] for k in counts}, "count": dict(counts), "answers": answers}
