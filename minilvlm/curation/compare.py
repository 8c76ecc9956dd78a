"""Controlled comparisons: a few arms, each a config with overrides, trained over the same seeds as
processes of their own (minilvlm/curation/trials.py) and reported as mean ± spread (half the range) of
held-out accuracy, overall and per question type. tools/compare.py is its command line; the recipes'
comparisons are configs/compare/*.toml (docs/recipes.md).

A comparison file:

    title = "what it shows"
    base = "runs/demo"                  # optional: a finished run the arms may start from
    folder = "runs/compare/lavin"       # optional: where the runs go (default runs/compare/FILE_STEM);
                                        # files sharing one reuse each other's identical runs
    columns = ["task/count_left"]       # summary.json accuracy keys shown beside the overall figure
    [[arm]]
    name = "mma"
    config = "configs/demo_mma.toml"    # optional: the demo config when left out
    set = ["model.mma.routing=fixed"]   # dotted overrides
    note = "..."
    after = "stage1"                    # optional: another arm this one continues (a stage chain)

In `set`, `{base}` stands for the base run folder and `{base_checkpoint}` for its last checkpoint
folder, so one file serves the demo base and a test's tiny one (--base); in an arm with `after`,
`{after}` stands for the final checkpoint folder of that arm's run with the same seed, which then runs
first (an arm whose earlier stage failed fails too, saying so)."""
import re
from dataclasses import dataclass, field
from pathlib import Path

import tomllib

from minilvlm import recipes
from minilvlm.config import ConfigError
from minilvlm.curation.trials import Trial, mean_and_spread, run_trials, say, trial_config
from minilvlm.eval.load import LoadError, resolve_checkpoint
from minilvlm.io import atomic_write_json

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_KEYS = {"title", "base", "columns", "arm", "seeds", "folder"}
_ARM_KEYS = {"name", "config", "set", "note", "after"}


@dataclass
class Arm:
    name: str
    config: str = ""              # a TOML config ("" = the demo's defaults)
    overrides: list = field(default_factory=list)
    note: str = ""
    after: str = ""               # the arm whose final checkpoint this one starts from ({after})


@dataclass
class Comparison:
    title: str
    arms: list
    columns: list
    base: str = ""
    seeds: int = 3
    source: str = ""
    folder: str = ""


def _fail(source, message):
    raise ConfigError(f"{source}: {message}")


def _strings(value, what, source):
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        _fail(source, f"{what} must be a list of strings")
    return value


def _arm(table, source):
    if not isinstance(table, dict):
        _fail(source, "each [[arm]] must be a table")
    unknown = set(table) - _ARM_KEYS
    if unknown:
        _fail(source, f"[[arm]] has unknown keys {sorted(unknown)} (known: {sorted(_ARM_KEYS)})")
    name = table.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        _fail(source, f"arm name {name!r}: give letters, digits, '_', '-' or '.' (it names run folders)")
    config = table.get("config", "")
    if not isinstance(config, str):
        _fail(source, f"arm {name}: config must be a path string")
    return Arm(name, config, list(_strings(table.get("set", []), f"arm {name}: set", source)),
               str(table.get("note", "")), str(table.get("after", "")))


def read_comparison(path):
    """The Comparison of a TOML file; every key checked (the arms' configs are checked by arm_config)."""
    source = str(path)
    try:
        data = tomllib.loads(Path(path).read_text())
    except OSError as err:
        _fail(source, f"cannot read it ({err.strerror or err})")
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        _fail(source, f"not valid TOML ({err})")
    unknown = set(data) - _KEYS
    if unknown:
        _fail(source, f"unknown keys {sorted(unknown)} (known: {sorted(_KEYS)})")
    arms = [_arm(t, source) for t in data.get("arm", [])]
    if len(arms) < 2:
        _fail(source, f"a comparison needs at least two [[arm]] tables, got {len(arms)}")
    names = [a.name for a in arms]
    if len(set(names)) != len(names):
        _fail(source, f"arm names repeat: {names}")
    for arm in arms:
        if arm.after and arm.after not in names[:names.index(arm.name)]:
            _fail(source, f"arm {arm.name}: after = {arm.after!r} names no arm listed before it")
    seeds = data.get("seeds", 3)
    if not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1:
        _fail(source, f"seeds = {seeds!r}: give a whole number of at least 1")
    return Comparison(str(data.get("title", Path(path).stem)), arms,
                      list(_strings(data.get("columns", []), "columns", source)), str(data.get("base", "")),
                      seeds, source, str(data.get("folder", "")) or str(Path("runs/compare") / Path(path).stem))


def _placeholders(base):
    """{base} and {base_checkpoint} for the arms' overrides ({} when the comparison has no base)."""
    if not base:
        return {}
    try:
        checkpoint, run_dir = resolve_checkpoint(base)
    except LoadError as err:
        raise ConfigError(f"base {base}: {err} (train it first: python tools/train.py)") from None
    return {"base": str(run_dir), "base_checkpoint": str(checkpoint)}


def _expand(text, values, arm):
    def one(match):
        key = match.group(1)
        if key not in values:
            raise ConfigError(f"arm {arm.name}: {{{key}}} in {text!r} has no value "
                              f"({'known: ' + ', '.join(sorted(values)) if values else 'the comparison names no base'})")
        return values[key]
    return re.sub(r"\{(\w+)\}", one, text)


def arm_config(arm, seed, values, extra=(), check_paths=True):
    """The arm's full run config (a dict) at `seed`: its TOML config, its overrides with the placeholders
    filled in, then `extra` (the command line's --set), the seed, and no mid-run evaluation. An arm that
    continues another names a checkpoint not written yet: its paths are checked when its run starts."""
    check_paths = check_paths and not arm.after
    overrides = [_expand(o, values, arm) for o in arm.overrides] + list(extra)
    overrides += [f"train.seed={seed}", "train.eval_every=0", "eval.samples=0"]
    try:
        cfg = recipes.load_config(arm.config or None, overrides, check_paths=check_paths)
    except ConfigError as err:
        raise ConfigError(f"arm {arm.name}: {err}") from None
    data = trial_config(cfg)
    data["train"]["ckpt_every"] = data["train"]["steps"]   # only the final checkpoint: trials are many
    return data


def _final_checkpoint(trial):
    steps = trial.config["train"]["steps"]
    return trial.run_dir / "checkpoints" / f"step_{steps:06d}"


def _row(arm, trials, columns):
    done = [t for t in trials if t.ok]
    column = {c: mean_and_spread([t.summary.get("accuracy", {}).get(c) if t.ok else None for t in trials])
              for c in columns}
    trained = {t.summary.get("trained_params") for t in done}
    return {"arm": arm.name, "note": arm.note, "accuracy": mean_and_spread([t.accuracy for t in trials]),
            "columns": column, "heldout_loss": mean_and_spread([t.summary.get("heldout_loss") if t.ok else None
                                                                for t in trials]),
            "trained_params": trained.pop() if len(trained) == 1 else None,
            "seconds": mean_and_spread([t.seconds or None for t in trials]),
            "failed": [t.error for t in trials if not t.ok]}


def run_comparison(comparison, out, seeds=None, jobs=1, extra=(), base=None, arms=None, report=None):
    """Train every arm over the seeds (finished runs under OUT/runs are reused) and return the table as a
    dict, also written to OUT/FILE_STEM.json (so comparisons sharing a folder keep their tables apart)."""
    report = report or say
    seeds = seeds or comparison.seeds
    chosen = [a for a in comparison.arms if not arms or a.name in arms]
    missing = set(arms or ()) - {a.name for a in comparison.arms}
    if missing:
        raise ConfigError(f"--arms {sorted(missing)}: {comparison.source} has arms "
                          f"{[a.name for a in comparison.arms]}")
    by_name = {a.name: a for a in comparison.arms}
    for arm in list(chosen):   # an arm's earlier stages run too
        if arm.after and by_name[arm.after] not in chosen:
            chosen.insert(chosen.index(arm), by_name[arm.after])
    values, out = _placeholders(comparison.base if base is None else base), Path(out)
    trials = {}
    for arm in chosen:   # listed in order: an arm's earlier stage is made before it
        for s in range(seeds):
            own = dict(values)
            if arm.after:
                own["after"] = str(_final_checkpoint(trials[(arm.after, s)]))
            trials[(arm.name, s)] = Trial(out / "runs" / f"{arm.name}@seed{s}", arm_config(arm, s, own, extra),
                                          label=f"{arm.name} (seed {s})", after=trials.get((arm.after, s)))
    report(f"{comparison.title}: {len(chosen)} arms x {seeds} seeds, {jobs} at a time, in {out}/runs")
    run_trials(list(trials.values()), jobs=jobs, report=report)
    rows = [_row(a, [trials[(a.name, s)] for s in range(seeds)], comparison.columns) for a in chosen]
    result = {"title": comparison.title, "source": comparison.source, "seeds": seeds,
              "columns": comparison.columns, "arms": rows}
    out.mkdir(parents=True, exist_ok=True)
    result["written"] = str(out / f"{Path(comparison.source).stem}.json")
    atomic_write_json(result, result["written"])
    return result


def _cell(stat):
    if stat["mean"] is None:
        return "-"   # no run has it: failed (listed under the table), or a question type this arm's data lacks
    return f"{100 * stat['mean']:.1f} ± {100 * stat['spread']:.1f}"


def _count(n):
    if not n:
        return "-"
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k"


def format_table(result):
    """The comparison as a Markdown table: accuracy (%) mean ± spread per arm, each seed's figure, the
    chosen columns, trained parameters and seconds per run."""
    columns = result["columns"]
    head = ["arm", "accuracy", "seeds", *[c.removeprefix("task/") for c in columns], "trained", "s/run"]
    lines = [f"{result['title']} ({result['seeds']} seeds; mean ± half the range, %)", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in result["arms"]:
        seeds = ", ".join("-" if v is None else f"{100 * v:.1f}" for v in row["accuracy"]["values"])
        trained = row["trained_params"]
        cells = [row["arm"], _cell(row["accuracy"]), seeds, *[_cell(row["columns"][c]) for c in columns],
                 _count(trained),
                 f"{row['seconds']['mean']:.0f}" if row["seconds"]["mean"] else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    for row in result["arms"]:
        for error in row["failed"]:
            lines.append(f"{row['arm']}: FAILED {error}")
    return "\n".join(lines)
