"""ScienceQA's accuracy breakdown, as in LaVIN's Table 1: by subject (NAT natural science, SOC
social science, LAN language science), by context modality (TXT text context, IMG image context,
NO no context) and by grade (G1-6, G7-12), plus the average over every question.

The categories come from each record's metadata. ScienceQA records (minilvlm.data.scienceqa)
carry subject, grade and context_modality as released. The demo data set has no grades and no
text contexts; its fields map as
    subject "vision" -> NAT, "arithmetic" -> NAT, "language" -> LAN   (no SOC questions)
    has_image -> IMG, else NO                                          (no TXT questions)
    no grade                                                           (G1-6, G7-12 empty)
A category without questions has no accuracy (None; printed as "-"), never 0.
Multiple-choice replies are scored by the letter of "The answer is X"; replies with no such
letter are wrong and counted as unparseable. Other question types are scored by exact match
after normalization (minilvlm.eval.score.is_correct); a record without an `answer` is scored against
its last assistant reply."""
import re

from minilvlm.eval.score import expected_answer, extract_letter, is_multiple_choice, question_type, summarize

CATEGORIES = ("NAT", "SOC", "LAN", "TXT", "IMG", "NO", "G1-6", "G7-12")
SUBJECTS = {"natural science": "NAT", "social science": "SOC", "language science": "LAN",
            # the demo data set's subjects
            "vision": "NAT", "arithmetic": "NAT", "language": "LAN"}
MODALITIES = ("TXT", "IMG", "NO")


def categories_of(meta):
    """The Table 1 categories a record counts in (subject, context modality, grade band)."""
    found = []
    subject = SUBJECTS.get(str(meta.get("subject", "")).lower())
    if subject:
        found.append(subject)
    modality = meta.get("context_modality")
    if modality in MODALITIES:
        found.append(modality)
    elif "has_image" in meta:
        found.append("IMG" if meta["has_image"] else "NO")
    grade = re.fullmatch(r"grade(\d+)", str(meta.get("grade", "")))
    if grade:
        found.append("G1-6" if int(grade.group(1)) <= 6 else "G7-12")
    return found


def score(answers):
    """Table 1 figures from [(record, reply, correct)] (as minilvlm.eval.evaluate.evaluate returns).
    Returns a JSON-able dict: average, categories {name: {accuracy, count}}, the trainer's
    per-question-type accuracies, unparseable multiple-choice replies, and per-sample predictions."""
    hits = {c: 0 for c in CATEGORIES}
    counts = {c: 0 for c in CATEGORIES}
    predictions, unparseable, n_mc = [], 0, 0
    for record, reply, correct in answers:
        cats = categories_of(record.meta)
        for c in cats:
            counts[c] += 1
            hits[c] += int(correct)
        is_mc = is_multiple_choice(record)
        letter = extract_letter(reply) if is_mc else None
        n_mc += int(is_mc)
        unparseable += int(is_mc and letter is None)
        predictions.append({"id": record.id, "question_type": question_type(record),
                            "task": record.meta.get("task"), "categories": cats, "reply": reply.strip(),
                            "extracted": letter, "answer": expected_answer(record),
                            "correct": bool(correct), "parseable": letter is not None or not is_mc})
    by_type = summarize(answers)
    n = len(answers)
    return {
        "count": n,
        "average": sum(int(c) for _, _, c in answers) / n if n else None,
        "categories": {c: {"accuracy": hits[c] / counts[c] if counts[c] else None, "count": counts[c]}
                       for c in CATEGORIES},
        "accuracy": by_type["accuracy"],
        "accuracy_count": by_type["count"],
        "unparseable": {"count": unparseable, "multiple_choice": n_mc},
        "predictions": predictions,
    }


def _cell(value):
    return "-" if value is None else f"{100 * value:.2f}"


def format_table(result):
    """Table 1 as two text lines (header, figures); empty categories show "-"."""
    names = CATEGORIES + ("Avg",)
    values = [result["categories"][c]["accuracy"] for c in CATEGORIES] + [result["average"]]
    header = " ".join(f"{n:>7}" for n in names)
    row = " ".join(f"{_cell(v):>7}" for v in values)
    counts = " ".join(f"{result['categories'][c]['count']:>7}" for c in CATEGORIES) + f" {result['count']:>7}"
    return f"{header}\n{row}\n{counts}  (questions)"
