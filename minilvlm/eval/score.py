"""Scoring a reply against a held-out record, the one scorer of the trainer's evaluation, tools/eval.py,
greedy soups and every other user. What a reply is scored against (`reference`): the record's
`answer` metadata when it has one (the demo, ScienceQA), else its last assistant reply, so any LLaVA
or Alpaca file can be held out as it is. Multiple choice (a `multiple_choice` question type, or a
reference reply of the form "The answer is X") is scored by the letter of "The answer is X" in the
reply; anything else by exact match after normalizing case, spaces and punctuation. Accuracy is
summarized per question type and per task."""
import re
from collections import defaultdict

_LETTER = re.compile(r"answer is \(?([A-Z])\b")


def normalize(text):
    return re.sub(r"[^a-z0-9]+", "", text.lower())


def extract_letter(answer_text):
    """The option letter of "The answer is X" in a generated reply, or None when there is none."""
    found = _LETTER.search(answer_text)
    return found.group(1) if found else None


def _last_reply(record):
    return next((t.text for t in reversed(record.turns) if t.role == "assistant"), "")


def reference(record):
    """("letter", X) for a multiple-choice question, else ("text", the expected answer)."""
    answer = record.meta.get("answer")
    if answer is None:
        reply = _last_reply(record)
        letter = extract_letter(reply)
        return ("letter", letter) if letter else ("text", reply)
    if record.meta.get("question_type") == "multiple_choice":
        return "letter", str(answer)
    return "text", str(answer)


def expected_answer(record):
    return reference(record)[1]


def is_multiple_choice(record):
    return reference(record)[0] == "letter"


def question_type(record):
    """The record's question type; records without one are multiple_choice or free_form by their reference."""
    return record.meta.get("question_type") or ("multiple_choice" if is_multiple_choice(record) else "free_form")


def is_correct(record, answer_text):
    kind, expected = reference(record)
    if kind == "letter":
        return extract_letter(answer_text) == expected
    return normalize(answer_text) == normalize(expected)


def summarize(answers):
    """Accuracy per question type and per task from [(record, text, correct)]."""
    hits, counts = defaultdict(int), defaultdict(int)
    for record, _, correct in answers:
        for key in (question_type(record), f"task/{record.meta.get('task', '?')}"):
            counts[key] += 1
            hits[key] += int(correct)
    return {"accuracy": {k: hits[k] / counts[k] for k in counts}, "count": dict(counts), "answers": answers}
