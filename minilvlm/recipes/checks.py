"""Every value of a run config checked before any data is read or any step runs (issue 16's "every
value checked up front"): one rule per key (`RULES`: enumerations, ranges, finite numbers), the
architectures (minilvlm/models/checks.py), the rules that relate two values, the lists and tables
(data.mixture), and the values that are legal but odd (a warning). One ConfigError names every
problem with its key and value. `minilvlm.recipes.validate` runs this before the recipe's own checks."""
import importlib.util
import math
import warnings

from minilvlm.config import ConfigError, unknown_key
from minilvlm.data.demo_questions import TASK_SETS
from minilvlm.data.errors import ON_ERROR_CHOICES
from minilvlm.data.formats import FORMATS
from minilvlm.data.images import MODES
from minilvlm.data.templates import TEMPLATES
from minilvlm.models.checks import MAX_IMAGE_SIZE, MAX_WIDTH, decoder_problems, feature_layer_problem, vision_problems
from minilvlm.models.mma import ROUTINGS, VISUAL_TOKENS


def _int(low, high=None):
    def rule(v):
        ok = isinstance(v, int) and not isinstance(v, bool) and low <= v and (high is None or v <= high)
        return None if ok else (f"expected an integer >= {low}" if high is None else
                                f"expected an integer in {low}..{high}")
    return rule


def _number(low=0.0, high=math.inf, low_open=False, high_open=False, optional=False):
    def rule(v):
        if v is None and optional:
            return None
        ok = (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
              and (v > low if low_open else v >= low) and (v < high if high_open else v <= high))
        return None if ok else (f"expected a finite number {'>' if low_open else '>='} {low:g}"
                                + (f" and {'<' if high_open else '<='} {high:g}" if high < math.inf else ""))
    return rule


def _one_of(*options):
    return lambda v: None if v in options else f"expected one of {', '.join(map(str, options))}"


def _nonempty(v):
    return None if isinstance(v, str) and v.strip() else "expected a non-empty string"


_POSITIVE = _number(low_open=True)
RULES = {
    "model.projector": _one_of("linear", "mlp2x_gelu"),
    "model.eve.image_size": _int(0, MAX_IMAGE_SIZE), "model.eve.patch_size": _int(1, MAX_IMAGE_SIZE),
    "model.eve.pool": _int(1, MAX_IMAGE_SIZE), "model.eve.dim": _int(1, MAX_WIDTH), "model.eve.heads": _int(1, MAX_WIDTH),
    "model.eve.align_weight": _number(),
    "model.mma.hidden": _int(1, MAX_WIDTH), "model.mma.groups": _int(1, MAX_WIDTH), "model.mma.scale": _number(-1e6, 1e6),
    "model.mma.temperature": _POSITIVE, "model.mma.dropout": _number(0, 1, high_open=True),
    "model.mma.visual_hidden": _int(1, MAX_WIDTH), "model.mma.routing": _one_of(*ROUTINGS),
    "model.mma.visual_tokens": _one_of(*VISUAL_TOKENS),
    "model.lora.rank": _int(0, MAX_WIDTH), "model.lora.alpha": _POSITIVE, "model.lora.dropout": _number(0, 1, high_open=True),
    "data.dataset": _nonempty, "data.format": _one_of(*FORMATS), "data.demo_seed": _int(0, 2**32 - 1),
    "data.demo_tasks": _one_of(*TASK_SETS), "data.demo_mc_fraction": _number(0, 1),
    "data.template": _one_of("auto", *TEMPLATES), "data.max_len": _int(1, 1 << 20), "data.image_mode": _one_of(*MODES),
    "data.num_workers": _int(0, 256), "data.on_error": _one_of(*ON_ERROR_CHOICES),
    "optim.lr": _number(),   # 0: a run that changes nothing (a round trip through the trainer)
    "optim.projector_lr": _number(low_open=True, optional=True),
    "optim.vision_lr": _number(low_open=True, optional=True), "optim.min_lr": _number(), "optim.weight_decay": _number(0, 10),
    "optim.eps": _number(0, 1, low_open=True), "optim.clip": _number(),
    "optim.schedule": _one_of("cosine", "warm_restarts", "lavin", "constant"),
    "optim.warmup_steps": _int(0), "optim.restart_steps": _int(1), "optim.restart_mult": _int(1, 1 << 20),
    "optim.warmup_epochs": _number(),
    "train.vision_pretrain_steps": _int(0), "train.vision_pretrain_batch": _int(1, 1 << 16),
    "train.global_batch": _int(1, 1 << 24), "train.micro_batch": _int(1, 1 << 16), "train.steps": _int(1),
    "train.seed": _int(0, 2**32 - 1), "train.peak_tflops": _number(), "train.threads": _int(0, 4096),
    "train.log_every": _int(0), "train.eval_every": _int(0), "train.ckpt_every": _int(0), "train.stop_at": _int(0),
    "train.run_dir": _nonempty, "train.nonfinite_limit": _int(1),
    "eval.split": _nonempty, "eval.limit": _int(0), "eval.max_new_tokens": _int(1, 1 << 16),
    "eval.batch": _int(1, 1 << 16), "eval.samples": _int(0, 1 << 20),
}


def _value(c, key):
    for part in key.split("."):
        c = getattr(c, part)
    return c


def check_values(c):
    """Every value of a run config, as far as it holds for every recipe (the recipe's own checks:
    Recipe.validate); one ConfigError lists every problem, each with its key."""
    problems = []
    for key, rule in RULES.items():
        value = _value(c, key)
        expected = rule(value)
        if expected:
            problems.append(f"{key} = {value!r}: {expected}")
    problems += vision_problems(c.model.vision, "model.vision.") + decoder_problems(c.model.decoder, "model.decoder.", 0)
    problems += [p for p in [feature_layer_problem(c.model.feature_layer, c.model.vision.n_layers, "model.feature_layer")]
                 if p and isinstance(c.model.vision.n_layers, int)]
    problems += _cross_problems(c) if not problems else []
    if problems:
        raise ConfigError("; ".join(problems))
    _warn_odd(c)
    return c


def _int_list_problem(values, key, low, high):
    if not isinstance(values, list) or not all(_int(low, high)(v) is None for v in values):
        return f"{key}: expected a list of integers in {low}..{high}, got {values!r}"
    return None


def _cross_problems(c):
    """Rules that relate two values, and the values that are lists or tables."""
    t, o, d = c.train, c.optim, c.data
    found = [_int_list_problem(c.model.eve.align_layers, "model.eve.align_layers", -4096, 4096),
             _int_list_problem(c.model.mma.vision_layers, "model.mma.vision_layers", 1, 4096)]
    targets = c.model.lora.targets
    if not (isinstance(targets, list) and targets and all(isinstance(x, str) and x for x in targets)):
        found.append(f"model.lora.targets = {targets!r}: expected a non-empty list of module-name patterns")
    if t.global_batch % t.micro_batch:
        found.append(f"train.global_batch ({t.global_batch}) must be a positive multiple of train.micro_batch "
                     f"({t.micro_batch})")
    if t.stop_at > t.steps:
        found.append(f"train.stop_at = {t.stop_at} is past train.steps = {t.steps}; 0 runs to the end")
    if not (isinstance(o.betas, list) and len(o.betas) == 2 and all(_number(0, 1, high_open=True)(b) is None
                                                                     for b in o.betas)):
        found.append(f"optim.betas = {o.betas!r}: expected two numbers in [0, 1)")
    if any(not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= 1_000_000 for n in d.demo_sizes.values()):
        found.append(f"data.demo_sizes = {d.demo_sizes!r}: expected record counts in 0..1000000")
    elif d.demo_sizes.get("train", 0) < 1:
        found.append("data.demo_sizes.train must be at least 1")
    found += mixture_problems(d.mixture)
    if d.mixture and d.dataset != "demo":
        found.append(f"data.mixture and data.dataset = {d.dataset!r}: give the training sets in one of them")
    held_out = {s for s in d.demo_sizes if s != "train"} | {"val", "test"}
    if c.eval.split not in held_out:
        found.append(f"eval.split = {c.eval.split!r}: expected a held-out split: {', '.join(sorted(held_out))}")
    return [f for f in found if f]


MIXTURE_KEYS = {"path": _nonempty, "weight": _POSITIVE, "format": _one_of(*FORMATS), "image_root": lambda v: (
    None if isinstance(v, str) else "expected a string")}


def mixture_problems(mixture):
    """data.mixture: a list of tables {path, weight = 1, format = "auto", image_root = ""}."""
    if not isinstance(mixture, list):
        return [f"data.mixture: expected a list of tables, got {mixture!r}"]
    found = []
    for i, entry in enumerate(mixture):
        where = f"data.mixture[{i}]"
        if not isinstance(entry, dict) or "path" not in entry:
            found.append(f"{where}: expected a table with at least a path, e.g. {{path = \"a.json\", weight = 2}}")
            continue
        for key, value in entry.items():
            if key not in MIXTURE_KEYS:
                found.append(str(unknown_key(f"{where}.{key}", [f"{where}.{k}" for k in MIXTURE_KEYS], "config")))
            elif MIXTURE_KEYS[key](value):
                found.append(f"{where}.{key} = {value!r}: {MIXTURE_KEYS[key](value)}")
    return found


def _warn_odd(c):
    """Values that are legal but probably not meant."""
    if c.optim.schedule != "lavin" and c.optim.warmup_steps >= c.train.steps:
        warnings.warn(f"optim.warmup_steps = {c.optim.warmup_steps} is not below train.steps = {c.train.steps}: "
                      f"the run ends before its learning rate has warmed up", UserWarning, stacklevel=3)
    if c.train.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise ConfigError("train.tensorboard = true needs the tensorboard package: pip install -e .[tensorboard] "
                          "(or pip install tensorboard)")
