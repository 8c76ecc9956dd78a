"""The Table 1 breakdown: ScienceQA and demo metadata to categories, empty categories as "-",
unparseable multiple-choice replies counted."""
from minilvlm.data.records import Record, Turn
from minilvlm.data.scienceqa import parse_problem
from minilvlm.eval.scienceqa_metrics import categories_of, format_table, score


def _problem(pid, subject, grade, hint="", answer=0):
    return parse_problem(pid, {"question": "Which?", "choices": ["a", "b", "c"], "answer": answer, "hint": hint,
                               "subject": subject, "grade": grade}, "test", "/nonexistent")


def test_scienceqa_categories_and_table():
    records = [_problem("1", "natural science", "grade3", hint="some text"),
               _problem("2", "social science", "grade8"),
               _problem("3", "language science", "grade12", answer=2),
               _problem("4", "natural science", "grade7", answer=1)]
    assert categories_of(records[0].meta) == ["NAT", "TXT", "G1-6"]
    assert categories_of(records[1].meta) == ["SOC", "NO", "G7-12"]
    replies = ["The answer is A.", "The answer is B.", "I think C", "The answer is (B)."]
    answers = [(r, t, r.meta["answer"] == (t.split("is ")[-1].strip("().") if "is " in t else None))
               for r, t in zip(records, replies)]
    result = score(answers)
    cats = result["categories"]
    assert cats["NAT"] == {"accuracy": 1.0, "count": 2}
    assert cats["SOC"] == {"accuracy": 0.0, "count": 1}
    assert cats["LAN"] == {"accuracy": 0.0, "count": 1}
    assert cats["IMG"] == {"accuracy": None, "count": 0}
    assert cats["G7-12"] == {"accuracy": 1 / 3, "count": 3}
    assert result["average"] == 0.5
    assert result["unparseable"] == {"count": 1, "multiple_choice": 4}
    assert [p["extracted"] for p in result["predictions"]] == ["A", "B", None, "B"]
    header, row, _ = format_table(result).splitlines()
    assert header.split() == ["NAT", "SOC", "LAN", "TXT", "IMG", "NO", "G1-6", "G7-12", "Avg"]
    assert row.split() == ["100.00", "0.00", "0.00", "100.00", "-", "33.33", "100.00", "33.33", "50.00"]


def test_demo_fields_map_to_categories():
    image_q = Record("a", [Turn("user", "q"), Turn("assistant", "red")], meta={"subject": "vision", "has_image": True})
    text_q = Record("b", [Turn("user", "q"), Turn("assistant", "olleh")], meta={"subject": "language", "has_image": False})
    maths = Record("c", [Turn("user", "q"), Turn("assistant", "3")], meta={"subject": "arithmetic", "has_image": False})
    assert categories_of(image_q.meta) == ["NAT", "IMG"]
    assert categories_of(text_q.meta) == ["LAN", "NO"]
    assert categories_of(maths.meta) == ["NAT", "NO"]
