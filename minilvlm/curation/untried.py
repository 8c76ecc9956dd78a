"""The candidate sets that leave the selection (minilvlm/curation/selection.py) without a trial: an
off-target set, before the first round, and a near-duplicate of the chosen sets, before each round.
`p` is the selection's Pipeline: its job, candidates by name, token counts and report."""
from minilvlm.curation.overlap import most_overlapping


def _untried_row(p, round_no, name, mixture, status, **measure):
    """A round's table row for a set that left without a trial (measure: its overlap or relevance)."""
    return {"round": round_no, "candidate": name, "mixture": mixture, "tokens": p.tokens(mixture), "steps": 0,
            "accuracy": None, "gain": None, "status": status, "error": None, "trial": None, **measure}


def drop_near_duplicates(p, chosen, remaining, round_no):
    """Rows for the remaining sets that the chosen ones already hold (more than max_overlap of their
    records); those sets leave `remaining` without a trial."""
    rows, chosen_keys = [], {n: p.by_name[n].keys for n in chosen}
    for name in list(remaining):
        share, of = most_overlapping(p.by_name[name].keys, chosen_keys)
        if share > p.job.max_overlap:
            remaining.remove(name)
            rows.append(_untried_row(p, round_no, name, chosen + [name],
                                     f"near-duplicate of {of} ({100 * share:.0f}% of its records), not tried",
                                     overlap=share))
            p.report(f"round {round_no}: {name} leaves: {100 * share:.0f}% of its records are in {of} already")
    return rows


def drop_off_target(p, remaining):
    """Round-1 rows for the sets less relevant to the held-out file than min_relevance; those sets leave
    `remaining` without a trial."""
    rows = []
    for name in list(remaining):
        rel = p.by_name[name].relevance
        if rel is None or rel.share >= p.job.min_relevance:
            continue
        remaining.remove(name)
        answers = "" if rel.answers is None else f" and {100 * rel.answers:.0f}% of its answers"
        rows.append(_untried_row(p, 1, name, [name], f"off-target ({100 * rel.questions:.0f}% of its question word "
                                 f"pairs{answers} occur in the held-out file), not tried", relevance=rel.share))
        p.report(f"{name} leaves untried: off-target, relevance {100 * rel.share:.0f}% "
                 f"(< {100 * p.job.min_relevance:.0f}%)")
    return rows
