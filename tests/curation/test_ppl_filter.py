"""tools/ppl_filter.py: on demo records polluted with 20% scrambled replies, a demo-trained model
at keep=0.8 keeps at least 90% of the clean records; the outputs (kept subset in the input's
format, histogram, stats, scores) and the threshold mode; unreadable records counted."""
import json
import os
import random
import subprocess
import sys

from PIL import Image

from minilvlm.curation.perplexity import select
from tests.tools_main import TOOLS, tool_main


def polluted(run_dir, path, n=100, fraction=0.2, seed=0):
    """The run's first n training records, `fraction` of them with the reply replaced by the shuffled
    words of the question (in-vocabulary nonsense). Returns the ids of the polluted records."""
    rng = random.Random(seed)
    records = json.loads((run_dir / "data" / "train.json").read_text())[:n]
    bad = set(rng.sample(range(n), round(fraction * n)))
    for i in bad:
        words = records[i]["conversations"][0]["value"].replace("<image>", "").split()
        rng.shuffle(words)
        records[i]["conversations"][1]["value"] = " ".join(words[:8])
    path.write_text(json.dumps(records))
    return records, {records[i]["id"] for i in bad}


def test_keep_80_percent_keeps_the_clean_records(tiny_run, tmp_path, capsys):
    data = tmp_path / "polluted.json"
    records, bad = polluted(tiny_run, data)
    out = tmp_path / "kept.json"
    assert tool_main("ppl_filter")([str(data), "--model", str(tiny_run), "--keep", "0.8", "--out", str(out),
                                    "--image-root", str(tiny_run / "data")]) == 0
    kept = json.loads(out.read_text())
    kept_ids = {r["id"] for r in kept}
    clean = {r["id"] for r in records} - bad
    assert len(kept) == 80
    assert len(kept_ids & clean) >= 0.9 * len(clean), f"kept {len(kept_ids & clean)} of {len(clean)} clean records"
    by_id = {r["id"]: r for r in records}
    assert all(r == by_id[r["id"]] for r in kept)           # copied as read
    stats = json.loads((tmp_path / "kept.stats.json").read_text())
    assert stats["scored"] == 100 and stats["kept"] == 80 and stats["kept_mean"] < stats["dropped_mean"]
    scores = [json.loads(line) for line in (tmp_path / "kept.scores.jsonl").read_text().splitlines()]
    assert {s["id"] for s in scores if s["kept"]} == kept_ids
    assert max(s["score"] for s in scores if s["kept"]) == stats["cut"]
    assert Image.open(tmp_path / "kept.hist.png").size == (720, 420)
    print(f"clean kept: {len(kept_ids & clean)}/{len(clean)}; polluted kept: {len(kept_ids & bad)}/{len(bad)}")
    capsys.readouterr()


def test_threshold_jsonl_and_skipped_records(tiny_run, tmp_path, capsys):
    rows = json.loads((tiny_run / "data" / "train.json").read_text())[:12]
    rows[3] = {"id": "broken", "conversations": "not a list"}
    data = tmp_path / "small.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "kept.jsonl"
    assert tool_main("ppl_filter")([str(data), "--model", str(tiny_run), "--threshold", "1e9", "--out", str(out),
                                    "--image-root", str(tiny_run / "data")]) == 0
    kept = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in kept] == [r["id"] for i, r in enumerate(rows) if i != 3]
    stats = json.loads((tmp_path / "kept.stats.json").read_text())
    assert stats["skipped"] == {"wrong_type": 1} and stats["scored"] == 11
    assert "skipped" in capsys.readouterr().out
    assert tool_main("ppl_filter")([str(data), "--model", str(tmp_path), "--keep", "0.5", "--out", str(out)]) == 2
    assert "neither a checkpoint folder" in capsys.readouterr().err


def test_select_by_fraction_and_threshold():
    scores = [3.0, None, 1.0, 2.0, 5.0, 4.0]
    flags, cut = select(scores, keep=0.6)
    assert flags == [True, False, True, True, False, False] and cut == 3.0
    flags, cut = select(scores, threshold=4.0)
    assert flags == [True, False, True, True, False, True] and cut == 4.0


def test_torchrun_two_ranks_give_the_single_process_scores(tiny_run, tmp_path):
    rows = json.loads((tiny_run / "data" / "train.json").read_text())[:10]
    rows[3] = {"id": "broken", "conversations": "not a list"}
    data = tmp_path / "small.json"
    data.write_text(json.dumps(rows))
    args = [str(data), "--model", str(tiny_run), "--keep", "0.5", "--image-root", str(tiny_run / "data"),
            "--batch", "3"]
    assert tool_main("ppl_filter")([*args, "--out", str(tmp_path / "one.json")]) == 0
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "--monitor_interval", "0.5", str(TOOLS / "ppl_filter.py"), *args, "--out", str(tmp_path / "two.json")],
                          capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    one, two = ([json.loads(line) for line in (tmp_path / f"{n}.scores.jsonl").read_text().splitlines()]
                for n in ("one", "two"))
    assert [r["id"] for r in one] == [r["id"] for r in two]
    assert all(abs(a["score"] - b["score"]) < 1e-5 for a, b in zip(one, two))
    assert json.loads((tmp_path / "two.json").read_text()) == json.loads((tmp_path / "one.json").read_text())
    stats = json.loads((tmp_path / "two.stats.json").read_text())
    assert stats["ranks"] == 2 and stats["skipped"] == {"wrong_type": 1} and stats["scored"] == 9
