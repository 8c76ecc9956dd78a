"""data.format and data.mixture (issue 16): each format named explicitly reads what `auto` detects,
a format that does not fit the file is a DataError that says why, a mixture takes each set in
proportion to its weight with a seed of its own, and a bad mixture is a ConfigError naming its entry
before any data is read."""
import json

import pytest

from minilvlm.config import ConfigError
from minilvlm.data.errors import DataError, SkipCounter
from minilvlm.data.formats import read_data
from minilvlm.data.records import Record, Turn
from minilvlm.recipes import load_config
from minilvlm.recipes.run_data import mix
from tests.train.test_own_data import alpaca_file, own_set, scienceqa_release


@pytest.fixture
def sets(tmp_path):
    return {"llava": own_set(tmp_path / "own", 6, 0, "set"), "alpaca": alpaca_file(tmp_path / "alpaca.json", 5),
            "scienceqa": scienceqa_release(tmp_path / "sqa")}


def test_each_format_named_reads_what_auto_detects(sets):
    for fmt, path in sets.items():
        auto, detected = read_data(path)
        named, kept = read_data(path, fmt)
        assert detected == kept == fmt and [r.turns for r in named] == [r.turns for r in auto] and auto
        assert [r.images for r in named] == [r.images for r in auto]
    alpaca, _ = read_data(sets["alpaca"])
    assert alpaca[2].turns == [Turn("user", "Add 2 and 3."), Turn("assistant", "5")]


@pytest.mark.parametrize("fmt, path, message", [
    ("alpaca", "llava", "instruction"), ("llava", "alpaca", "conversations"),
    ("scienceqa", "llava", "reads a release folder"), ("llava", "scienceqa", "this is a folder .a ScienceQA release"),
    ("alpaca", "scienceqa", "alpaca format reads a .json or .jsonl file"),
])
def test_a_format_that_does_not_fit_is_a_clear_error(sets, fmt, path, message):
    with pytest.raises(DataError, match=message):
        read_data(sets[path], fmt)
    if "scienceqa" in (fmt, path):                 # the whole file or folder is the wrong kind: no skipping that
        with pytest.raises(DataError, match=message):
            read_data(sets[path], fmt, on_error="skip")
        return
    skips = SkipCounter()
    records, _ = read_data(sets[path], fmt, on_error="skip", skips=skips)
    assert records == [] and skips.total > 0        # each record counted; the callers stop on "more than half"


def _records(name, n):
    return [Record(f"{name}{i}", [Turn("user", "q"), Turn("assistant", "a")]) for i in range(n)]


def test_a_mixture_takes_each_set_by_its_weight():
    sets = [_records("a", 10), _records("b", 30), _records("c", 4)]
    mixed = mix(sets, [1, 1, 2], seed=3)
    counts = {name: sum(r.id.startswith(name) for r in mixed) for name in "abc"}
    assert counts == {"a": 11, "b": 11, "c": 22}                          # 44 records at 1:1:2
    assert {r.id for r in mixed if r.id.startswith("c")} == {f"c{i}" for i in range(4)}   # whole passes first
    assert [r.id for r in mix(sets, [1, 1, 2], seed=3)] == [r.id for r in mixed]
    assert [r.id for r in mix(sets, [1, 1, 2], seed=4)] != [r.id for r in mixed]
    assert mix([_records("a", 5), []], [1, 1], seed=0) and all(r.id.startswith("a") for r in mix(
        [_records("a", 5), []], [1, 1], seed=0))


@pytest.mark.parametrize("mixture, message", [
    ('"a.json"', "'data.mixture': expected list, got str"),
    ('[{weight = 2}]', r"data.mixture\[0\]: expected a table with at least a path"),
    ('[{path = "demo", weight = 0}]', r"data.mixture\[0\].weight = 0"),
    ('[{path = "demo", weight = -1}]', r"data.mixture\[0\].weight = -1"),
    ('[{path = "demo", format = "csv"}]', r"data.mixture\[0\].format = 'csv'"),
    ('[{path = "demo", wieght = 2}]', r"did you mean 'data.mixture\[0\].weight'"),
    ('[{path = "demo"}, {path = "nowhere.json"}]', r"data.mixture\[1\].path"),
])
def test_a_bad_mixture_is_an_error_naming_its_entry(tmp_path, mixture, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [f"data.mixture={mixture}", f"train.run_dir={json.dumps(str(tmp_path / 'run'))}"])
    assert not (tmp_path / "run").exists()
