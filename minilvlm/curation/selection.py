"""Which instruction sets are worth their cost: greedy forward selection of candidate data sets by
fine-tuning trials from one base (tools/select_data.py is its command line; docs/data-efficiency.md).

Each round fine-tunes the base once per remaining candidate added to the chosen mixture, for the same
number of steps, and scores every trial on the held-out file; the best joins the mixture if it gains at
least `min_gain` over the mixture so far, else the selection stops. Trials within `min_gain` of the round's
best count as tied, and the cheapest of them (in tokens) is the one considered. Before a round, a set
whose records the chosen mixture already holds (the same pictures and replies, more than `max_overlap`
of them; minilvlm/curation/overlap.py) leaves as a near-duplicate, without a trial, and before the first
round so does an off-target set, one whose questions and answers the held-out file hardly asks
(relevance below `min_relevance`; minilvlm/curation/relevance.py).
Every set's leave-one-out loss is measured against the model of all sets. The final comparison, on the
test file and over `seeds` seeds, sets the chosen mixture beside the all-sets model, the best
single-set model and (with soup) the greedy soup of one model per chosen set. Trials are separate
processes in folders of their own under OUT/trials (minilvlm/curation/trials.py): a crashed trial is
reported and its set leaves the selection, and a rerun reuses every finished trial."""
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from minilvlm import recipes
from minilvlm.config import ConfigError, apply_overrides, to_dict
from minilvlm.curation.overlap import ContentKeys
from minilvlm.curation.relevance import HeldoutProfile, relevance
from minilvlm.curation.selection_report import mixture_snippet, plot_selection
from minilvlm.curation.soup import SoupError, soup_of, write_soup
from minilvlm.curation.trials import Trial, mean_and_spread, run_trials, say, trial_config
from minilvlm.curation.untried import drop_near_duplicates, drop_off_target
from minilvlm.data.errors import SkipCounter, check_most_not_skipped
from minilvlm.data.formats import read_data
from minilvlm.data.tokenizer import Tokenizer
from minilvlm.eval.benchmark import eval_records, load_split
from minilvlm.eval.load import LoadError, load_model, resolve_checkpoint
from minilvlm.io import atomic_write_json, atomic_write_text, read_json_object, read_safetensors_header

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class Candidate:
    name: str
    path: Path
    records: int
    tokens: int        # text tokens (base tokenizer) plus image tokens, over one pass of the set
    keys: frozenset = frozenset()   # its records' content keys (minilvlm/curation/overlap.py)
    relevance: object = None        # a Relevance to the held-out file (minilvlm/curation/relevance.py)


@dataclass
class SelectJob:
    base: str                  # a finished run folder (fine-tune from its last checkpoint) or a TOML config
    sets: list                 # "NAME=PATH" or "PATH" (named by the file's stem)
    heldout: str               # the file every trial is scored on
    out: str                   # the pipeline's folder (trials/, selection.json, ...)
    steps: int                 # optimizer steps per trial
    test: str = ""             # the final comparison's file ("" = heldout)
    min_gain: float = 0.01     # a set joins only if it adds at least this much held-out accuracy (a fraction)
    jobs: int = 1
    seeds: int = 1
    soup: bool = False
    overrides: tuple = ()      # dotted config overrides for every trial
    max_rounds: int = 0        # 0: until no set gains enough
    max_overlap: float = 0.5   # a set more than this share of which the chosen sets hold is a near-duplicate
    min_relevance: float = 0.1  # a set less relevant than this to the held-out file is off-target


# ---- inputs -----------------------------------------------------------------------------------

def base_config(base):
    """(RunConfig for the trials before their data, where it came from). A run folder: its saved config
    as a fine-tune from its last checkpoint's weights with its tokenizer; a TOML file: as written."""
    path = Path(base)
    if path.is_dir():
        try:
            folder, run_dir = resolve_checkpoint(path)
        except LoadError as err:
            raise ConfigError(f"--base {base}: {err}") from None
        weights = folder / "model.safetensors"
        if not weights.is_file():
            raise ConfigError(f"--base {base}: {folder} holds no model.safetensors (a sharded FSDP checkpoint?); "
                              "consolidate it first with tools/consolidate.py")
        read_safetensors_header(weights)   # damaged weights fail here, not in every trial
        saved = Path(run_dir) / "config.json"
        cfg = recipes.config_from_dict(read_json_object(saved, ConfigError), str(saved))
        tokenizer = Path(run_dir) / "tokenizer.json"
        apply_overrides(cfg, [f"model.init_from={json.dumps(str(weights))}", "train.stage=finetune",
                              "train.vision_pretrain_steps=0", "model.vision_weights=''", "model.lm_weights=''"])
        if tokenizer.is_file():
            apply_overrides(cfg, [f"data.tokenizer={json.dumps(str(tokenizer))}"])
        return cfg, f"{base} (fine-tuned from {weights})"
    if path.suffix == ".toml" or path.is_file():
        return recipes.load_config(path, check_paths=False), str(base)
    raise ConfigError(f"--base {base}: no such run folder or config file")


def parse_sets(specs):
    """[(name, path)] from "NAME=PATH" or "PATH"; names are unique, and usable as folder names."""
    named = []
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = Path(spec).stem, spec
        if not _NAME.match(name):
            raise ConfigError(f"set {spec!r}: the name {name!r} must be letters, digits, '_', '-' or '.' "
                              "(it names trial folders); give NAME=PATH")
        if not Path(path).is_file():
            raise ConfigError(f"set {name}: {path}: no such file")
        if name in {n for n, _ in named}:
            raise ConfigError(f"two sets are named {name!r}; name them apart with NAME=PATH")
        named.append((name, Path(path)))
    if len(named) < 2:
        raise ConfigError(f"selection needs at least two candidate sets, got {len(named)}")
    return named


def read_candidates(named, cfg, content_keys=True, heldout=None):
    """Candidate per (name, path): its records read and counted in tokens with the trials' tokenizer,
    (content_keys) keyed by content, which reads every picture once, and (heldout, a HeldoutProfile)
    measured for relevance. A set that cannot be read, or holds no records, is an error naming it."""
    tokenizer_path = cfg.data.tokenizer
    tokenizer = Tokenizer(Path(tokenizer_path).parent if Path(tokenizer_path).is_file() else tokenizer_path) \
        if tokenizer_path else None
    image_tokens = (cfg.model.vision.image_size // cfg.model.vision.patch_size) ** 2   # the tower's patches
    candidates, content = [], ContentKeys()
    for name, path in named:
        skips = SkipCounter()
        records, _ = read_data(path, "auto", None, "train", cfg.data.on_error, skips)
        check_most_not_skipped(skips.counts, len(records) + skips.total, path, skips.examples)
        if not records:
            raise ConfigError(f"set {name}: {path} holds no usable records")
        text = [t.text for r in records for t in r.turns]
        tokens = sum(len(tokenizer.encode(t)) for t in text) if tokenizer else sum(len(t.split()) for t in text)
        tokens += image_tokens * sum(len(r.images) for r in records)
        keys = content.of(records) if content_keys else frozenset()
        relevant = relevance(records, heldout) if heldout is not None else None
        candidates.append(Candidate(name, path, len(records), tokens, keys, relevant))
    return candidates


def read_heldout(file):
    """The records of a held-out file, read before any trial so that a bad file fails first."""
    if not Path(file).exists():
        raise ConfigError(f"{file}: no such held-out file or folder")
    skips = SkipCounter()
    records, _ = read_data(file, "auto", None, "test", "skip", skips)
    check_most_not_skipped(skips.counts, len(records) + skips.total, file, skips.examples)
    if not records:
        raise ConfigError(f"{file}: no held-out records to score trials on")
    return records


# ---- trials -------------------------------------------------------------------------------------

class Pipeline:
    """The base config, the candidates and every trial made from them; each trial is made once per
    (mixture, seed) and so shared by the rounds, leave-one-out and the final comparison."""

    def __init__(self, job, report=None):
        self.job, self.report = job, report or say
        self.out = Path(job.out)
        self.cfg, self.base_name = base_config(job.base)
        apply_overrides(self.cfg, list(job.overrides))
        heldout = read_heldout(job.heldout)
        if job.test:
            read_heldout(job.test)   # read now, so that a bad test file fails before any trial
        # --max-overlap 100 drops nothing, so the pictures need not be read for it
        self.candidates = read_candidates(parse_sets(job.sets), self.cfg, content_keys=job.max_overlap < 1,
                                          heldout=HeldoutProfile.of(heldout))
        self.by_name = {c.name: c for c in self.candidates}
        self.trials = {}    # folder -> Trial, every trial this pipeline made

    def tokens(self, names):
        return sum(self.by_name[n].tokens for n in names)

    def trial(self, names, seed=0):
        """The Trial that fine-tunes the base on the mixture of `names` (equal weights) with `seed`."""
        names = [c.name for c in self.candidates if c.name in names]   # candidate order: one folder per mixture
        key = "+".join(names)
        if len(key) > 80:
            key = f"{len(names)}sets-{hashlib.sha1(key.encode()).hexdigest()[:12]}"
        folder = self.out / "trials" / f"{key}@seed{seed}"
        if folder in self.trials:
            return self.trials[folder]
        cfg = recipes.config_from_dict(to_dict(self.cfg), "the base config")
        mixture = [{"path": str(self.by_name[n].path.resolve()), "weight": 1.0} for n in names]
        cfg.data.mixture = mixture
        apply_overrides(cfg, ["data.dataset=demo", f"data.eval_file={json.dumps(str(Path(self.job.heldout).resolve()))}",
                              f"train.steps={self.job.steps}", f"train.seed={seed}", "train.eval_every=0",
                              "train.ckpt_every=0", "train.stop_at=0", "eval.split=test", "eval.samples=0",
                              f"train.run_dir={json.dumps(str(folder / 'run'))}"])
        recipes.validate(cfg, check_paths=True)
        trial = Trial(folder, trial_config(cfg), label=f"{' + '.join(names)} (seed {seed})",
                      extra={"sets": names})
        self.trials[folder] = trial
        return trial

    def run(self, trials):
        return run_trials(trials, self.job.jobs, report=self.report)


def _row(round_no, name, trial, tokens, steps, previous):
    acc = trial.accuracy
    return {"round": round_no, "candidate": name, "mixture": trial.extra["sets"], "tokens": tokens, "steps": steps,
            "accuracy": acc, "gain": None if acc is None else acc - previous,
            "status": "failed" if not trial.ok else "", "error": trial.error or None,
            "trial": str(trial.folder)}


def forward_selection(p):
    """The rounds of greedy forward selection: (chosen names, table rows, failed set names)."""
    job = p.job
    chosen, remaining, failed, rows = [], [c.name for c in p.candidates], [], []
    current = 0.0
    round_no = 0
    rows += drop_off_target(p, remaining)
    while remaining and (not job.max_rounds or round_no < job.max_rounds):
        round_no += 1
        rows += drop_near_duplicates(p, chosen, remaining, round_no)
        if not remaining:
            break
        p.report(f"round {round_no}: {len(remaining)} candidates on top of [{', '.join(chosen) or 'the base'}]")
        trials = {name: p.trial(chosen + [name]) for name in remaining}
        p.run(list(trials.values()))
        scored = []
        for name, trial in trials.items():
            row = _row(round_no, name, trial, p.tokens(chosen + [name]), job.steps, current)
            rows.append(row)
            if trial.ok:
                scored.append(row)
            else:
                failed.append(name)
                remaining.remove(name)
        if not scored:
            break
        # Differences below min_gain are not worth tokens: of the sets that gain enough and come within
        # min_gain of the best, the cheapest joins (a cheaper near-tie that gains too little stops nothing).
        min_gain = job.min_gain - 1e-9   # accuracies are fractions of whole questions
        top = max(scored, key=lambda r: r["accuracy"])
        enough = [r for r in scored if r["gain"] >= min_gain and r["accuracy"] >= top["accuracy"] - max(min_gain, 0.0)]
        if not enough:
            best = top
            best["status"] = "best, gain too small"
            p.report(f"round {round_no}: the best, {best['candidate']}, gains {100 * best['gain']:+.1f} points "
                     f"(< {100 * job.min_gain:.1f}); selection stops")
            break
        best = min(enough, key=lambda r: (r["tokens"], -r["accuracy"]))
        best["status"] = "chosen"
        chosen.append(best["candidate"])
        remaining.remove(best["candidate"])
        current = best["accuracy"]
        p.report(f"round {round_no}: chose {best['candidate']} ({100 * current:.1f}%, {100 * best['gain']:+.1f} points)")
    return chosen, rows, failed


def leave_one_out(p, names):
    """({name: accuracy(all) - accuracy(all without name)}, the all-sets trial); a positive loss means
    the set helps the all-sets model."""
    everything = p.trial(names)
    without = {n: p.trial([m for m in names if m != n]) for n in names}
    p.report(f"leave-one-out: all {len(names)} sets, and each left out")
    p.run([everything] + list(without.values()))
    losses = {n: (everything.accuracy - t.accuracy if everything.ok and t.ok else None) for n, t in without.items()}
    return losses, everything


# ---- the final comparison ------------------------------------------------------------------------

def _test_accuracy(p, loaded):
    """The loaded model's accuracy on the test file (the held-out file when none is given)."""
    records, _ = load_split(loaded, "test", p.job.test or p.job.heldout)
    return eval_records(loaded, records)["average"]


def _trial_test_accuracy(p, trial):
    """_test_accuracy of a finished trial's model, cached in its folder (a rerun evaluates nothing again)."""
    test, cache = str(Path(p.job.test or p.job.heldout).resolve()), trial.folder / "test_accuracy.json"
    try:
        saved = json.loads(cache.read_text())
        if saved.get("file") == test:
            return saved["accuracy"]
    except (OSError, ValueError):
        pass
    accuracy = _test_accuracy(p, load_model(trial.run_dir, device="cpu"))
    atomic_write_json({"file": test, "accuracy": accuracy}, cache)
    return accuracy


def _soup(p, names, seed):
    """The greedy soup (scored on the held-out file) of one model per set in `names` at `seed`: its test
    accuracy and what went in."""
    members = [p.trial([n], seed) for n in names]
    members = [t for t in members if t.ok]
    if len(members) < 2:
        return None, {"ingredients": [str(t.folder) for t in members], "note": "fewer than two members"}
    out = p.out / f"soup@seed{seed}"
    try:
        tensors, info, loaded_members = soup_of([str(t.run_dir) for t in members], greedy=True,
                                                split="val", data=str(Path(p.job.heldout).resolve()), device="cpu",
                                                out=out, force=True)
    except SoupError as err:   # e.g. trials that built their own tokenizers: reported, the rest stands
        p.report(f"soup of seed {seed}: {err}")
        return None, {"ingredients": [], "note": str(err)}
    write_soup(out, tensors, loaded_members, info)
    return _test_accuracy(p, load_model(out, device="cpu")), info


def final_comparison(p, chosen, everything, best_single):
    """Test accuracy over the seeds: the chosen mixture, all sets, the best single set, and the soup."""
    job = p.job
    arms = {"chosen mixture": chosen, "all sets": everything, "best single set": [best_single]}
    seeds = range(job.seeds)
    trials = [p.trial(names, s) for names in arms.values() for s in seeds]
    if job.soup:
        trials += [p.trial([n], s) for n in chosen for s in seeds]
    p.report(f"final comparison on {job.test or job.heldout}: {len(arms)} models{' and the soup' if job.soup else ''} "
             f"x {job.seeds} seeds")
    p.run(trials)
    table = {}
    for arm, names in arms.items():
        accs = [_trial_test_accuracy(p, p.trial(names, s)) if p.trial(names, s).ok else None for s in seeds]
        table[arm] = {"sets": names, "tokens": p.tokens(names), **mean_and_spread(accs)}
    if job.soup:
        accs, infos = [], []
        for s in seeds:
            acc, info = _soup(p, chosen, s)
            accs.append(acc)
            infos.append(info)
        table["greedy soup of the chosen sets' models"] = {"sets": chosen, "tokens": p.tokens(chosen),
                                                            **mean_and_spread(accs), "soups": infos}
    return table


# ---- the whole pipeline ---------------------------------------------------------------------------

def select(job, report=None):
    """Run the selection, leave-one-out and the final comparison; write OUT/selection.json,
    OUT/selection.png and OUT/mixture.toml; returns the result dict."""
    if job.steps < 1 or job.jobs < 1 or job.seeds < 1:
        raise ConfigError("--steps, --jobs and --seeds must be at least 1")
    p = Pipeline(job, report)
    p.out.mkdir(parents=True, exist_ok=True)
    chosen, rows, failed = forward_selection(p)
    off_target = [r["candidate"] for r in rows if r.get("relevance") is not None]
    if len(off_target) == len(p.candidates):
        raise ConfigError(f"every candidate set is off-target for {job.heldout} (its questions and answers occur "
                          f"there less than --min-relevance {100 * job.min_relevance:g}% of the time); check "
                          "--heldout, or lower --min-relevance (0 turns the check off)")
    if not chosen:
        raise ConfigError("no candidate set gained enough to be chosen (or every trial failed); see "
                          f"{p.out / 'trials'} and lower --min-gain or raise --steps")
    usable = [c.name for c in p.candidates if c.name not in failed]
    losses, everything = leave_one_out(p, usable)
    round_one = [r for r in rows if r["round"] == 1 and r["accuracy"] is not None]
    best_single = max(round_one, key=lambda r: r["accuracy"])["candidate"]
    comparison = final_comparison(p, chosen, usable, best_single)
    result = {
        "base": p.base_name, "heldout": job.heldout, "test": job.test or job.heldout, "steps": job.steps,
        "min_gain": job.min_gain, "seeds": job.seeds,
        "candidates": [{"name": c.name, "path": str(c.path), "records": c.records, "tokens": c.tokens,
                        "relevance": vars(c.relevance)} for c in p.candidates],
        "rounds": rows, "chosen": chosen, "failed": failed, "max_overlap": job.max_overlap,
        "near_duplicates": [r["candidate"] for r in rows if r.get("overlap") is not None],
        "min_relevance": job.min_relevance,
        "off_target": off_target,
        "leave_one_out": {"all_sets_accuracy": everything.accuracy, "loss": losses},
        "comparison": comparison,
        "token_ratio": p.tokens(chosen) / p.tokens(usable),
    }
    atomic_write_json(result, p.out / "selection.json")
    atomic_write_text(mixture_snippet(chosen, {c.name: c.path for c in p.candidates}, len(p.candidates)),
                      p.out / "mixture.toml")
    plot_selection(rows, chosen, everything.accuracy, p.tokens(usable), p.out / "selection.png")
    return result
