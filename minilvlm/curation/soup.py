"""Model soups: the element-wise mean of N fine-tuned checkpoints of one architecture (uniform),
or a greedy soup that takes members in order of held-out accuracy and keeps one only when the
soup's accuracy does not drop (Wortsman et al., 2022). Members must agree on the model config,
the trained parts, the tokenizer and every tensor's name, shape and dtype."""
from dataclasses import dataclass
from pathlib import Path

import torch

from minilvlm import recipes
from minilvlm.config import ConfigError, to_dict
from minilvlm.eval.benchmark import eval_records, load_split
from minilvlm.eval.load import LoadError, load_model, load_weights, resolve_checkpoint
from minilvlm.io import atomic_save_safetensors, atomic_write_json, load_safetensors
from minilvlm.recipes.run_data import copy_tokenizer
from minilvlm.recipes.run_folder import read_state


class SoupError(ValueError):
    """Checkpoints that cannot be averaged, and why."""


@dataclass
class Member:
    folder: Path
    run_dir: Path
    state: dict
    tensors: dict

    @property
    def name(self):
        return str(self.folder)


def read_member(path):
    try:
        folder, run_dir = resolve_checkpoint(path)
    except LoadError as err:
        raise SoupError(str(err)) from None
    state = read_state(folder)
    if "config" not in state:
        raise SoupError(f"{folder / 'state.json'} has no 'config' entry (not written by the trainer or soup)")
    try:   # checked, with every section filled in, so that members compare field by field
        state["config"] = to_dict(recipes.config_from_dict(state["config"], str(folder / "state.json")))
    except ConfigError as err:
        raise SoupError(str(err)) from None
    if (folder / "model.safetensors").is_file():
        return Member(folder, run_dir, state, load_safetensors(folder / "model.safetensors"))
    # An FSDP run's sharded checkpoint: gathered into a model built from its config.
    loaded = load_model(folder, device="cpu")
    tensors = {k: v.detach().clone() for k, v in loaded.recipe.checkpoint_state(loaded.model).items()}
    return Member(folder, run_dir, state, tensors)


def trained_parts(config):
    """The parts a run trained, from its saved config, as its recipe decides them."""
    try:
        cfg = recipes.config_from_dict(config, "a member's state.json")
    except ConfigError as err:
        raise SoupError(str(err)) from None
    return recipes.of(cfg).trained_parts(cfg)


def _differences(a, b, prefix=""):
    if isinstance(a, dict) and isinstance(b, dict):
        found = []
        for key in sorted(set(a) | set(b)):
            found += _differences(a.get(key), b.get(key), f"{prefix}{key}.")
        return found
    return [] if a == b else [f"{prefix[:-1]}: {a!r} vs {b!r}"]


def tokenizer_file(member):
    """The member's tokenizer.json: beside its weights, else its run folder's copy, else (runs from
    before the copy) the one its config names; None when there is none."""
    for place in (member.folder, member.run_dir):
        if (place / "tokenizer.json").is_file():
            return place / "tokenizer.json"
    name = member.state["config"]["data"].get("tokenizer")
    if name:
        path = Path(name)
        return path if path.is_file() else path / "tokenizer.json"
    return None


def check_compatible(members):
    """Raise SoupError naming the first member that differs from the first one, and how."""
    if len(members) < 2:
        raise SoupError(f"a soup needs at least two checkpoints, got {len(members)}")
    first = members[0]
    for other in members[1:]:
        where = f"{other.name} and {first.name}"
        diffs = _differences(first.state["config"]["model"], other.state["config"]["model"], "model.")
        if diffs:
            raise SoupError(f"{where} have different architectures: {'; '.join(diffs[:4])}")
        a, b = trained_parts(first.state["config"]), trained_parts(other.state["config"])
        if a != b:
            raise SoupError(f"{where} trained different parts ({', '.join(b)} vs {', '.join(a)}); "
                            "soup checkpoints of the same stage")
        missing, extra = sorted(set(first.tensors) - set(other.tensors)), sorted(set(other.tensors) - set(first.tensors))
        if missing or extra:
            raise SoupError(f"{where} hold different tensors: missing {missing[:3]}, extra {extra[:3]}")
        for key, tensor in first.tensors.items():
            theirs = other.tensors[key]
            if theirs.shape != tensor.shape or theirs.dtype != tensor.dtype:
                raise SoupError(f"{where} disagree on {key!r}: {tuple(theirs.shape)} {theirs.dtype} vs "
                                f"{tuple(tensor.shape)} {tensor.dtype}")
        mine, theirs = tokenizer_file(first), tokenizer_file(other)
        if mine and theirs and mine.read_bytes() != theirs.read_bytes():
            raise SoupError(f"{where} use different tokenizers ({theirs} vs {mine}); their token ids do not agree")


def check_scorer(scorer_config, scorer_tensors, scorer_name, members):
    """Raise SoupError unless the run that scores a greedy soup (its config and its model's
    state_dict) can take the members' weights: same architecture, every member tensor present
    with the same shape."""
    first = members[0]
    where = f"the scoring run {scorer_name} and {first.name}"
    diffs = _differences(scorer_config["model"], first.state["config"]["model"], "model.")
    if diffs:
        raise SoupError(f"{where} have different architectures: {'; '.join(diffs[:4])}; pass --run a run "
                        "of the members' architecture (or leave it out to score with the first member's run)")
    for key, tensor in first.tensors.items():
        mine = scorer_tensors.get(key)
        if mine is None or mine.shape != tensor.shape:
            found = "no such tensor" if mine is None else f"shape {tuple(mine.shape)}"
            raise SoupError(f"{where} disagree on {key!r}: {found} vs {tuple(tensor.shape)} (a different "
                            "tokenizer or vocabulary?); pass --run a run of the members' architecture")


def uniform_soup(tensor_dicts):
    """Element-wise mean of floating tensors, accumulated in fp32 (fp64 for fp64) and cast back;
    integer tensors must be equal and are taken as they are."""
    soup = {}
    for key, tensor in tensor_dicts[0].items():
        if not tensor.is_floating_point():
            if any(not torch.equal(d[key], tensor) for d in tensor_dicts[1:]):
                raise SoupError(f"integer tensor {key!r} differs between checkpoints and cannot be averaged")
            soup[key] = tensor
            continue
        acc_dtype = torch.float64 if tensor.dtype == torch.float64 else torch.float32
        total = torch.zeros(tensor.shape, dtype=acc_dtype)
        for d in tensor_dicts:
            total += d[key].to(acc_dtype)
        soup[key] = (total / len(tensor_dicts)).to(tensor.dtype)
    return soup


def greedy_soup(members, accuracy):
    """(tensors, log): members sorted by accuracy(tensors) (best first); each next one joins the
    soup only if the soup's accuracy does not drop. The log lists every trial."""
    scored = sorted(((accuracy(m.tensors), i, m) for i, m in enumerate(members)), key=lambda s: (-s[0], s[1]))
    best_score, _, best = scored[0]
    ingredients = [best]
    log = [{"member": m.name, "accuracy": s} for s, _, m in scored]
    trials = [{"added": best.name, "soup_accuracy": best_score, "kept": True}]
    soup = best.tensors
    for _, _, member in scored[1:]:
        candidate = uniform_soup([m.tensors for m in ingredients + [member]])
        score = accuracy(candidate)
        kept = score >= best_score
        trials.append({"added": member.name, "soup_accuracy": score, "kept": kept})
        if kept:
            ingredients.append(member)
            soup, best_score = candidate, score
    return soup, {"members": log, "trials": trials, "ingredients": [m.name for m in ingredients],
                  "accuracy": best_score}


def check_output(out, members, force=False):
    """A soup is written into a new or empty folder (or, with force, over an earlier soup), never into
    a member's checkpoint or run folder nor among a run's checkpoints: it would replace a member's
    weights, or pass for a checkpoint of that run."""
    out = Path(out).absolute()
    resolved = out.resolve()
    for member in members:
        for place in (member.folder, member.run_dir):
            if resolved == Path(place).resolve():
                raise SoupError(f"--out {out} is the folder of {member.name}: a soup never overwrites its members; "
                                "choose a new folder")
        if resolved.is_relative_to((Path(member.run_dir) / "checkpoints").resolve()):
            raise SoupError(f"--out {out} lies among the checkpoints of {member.run_dir}, where it would pass for "
                            "one of the run's checkpoints; choose a folder outside checkpoints/")
    if out.exists() and not out.is_dir():
        raise SoupError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise SoupError(f"--out {out} is not empty; choose a new folder, or pass --force to replace an earlier soup there")


def write_soup(out, tensors, members, info):
    """out/model.safetensors, out/state.json (the members' config, so tools/eval.py loads it) and
    the members' tokenizer files."""
    out = Path(out)
    atomic_save_safetensors(tensors, out / "model.safetensors")
    source = tokenizer_file(members[0])
    if source is not None and source.is_file():
        copy_tokenizer(source, out)
    state = {"step": max(m.state.get("step", 0) for m in members), "config": members[0].state["config"],
             "soup": info}
    atomic_write_json(state, out / "state.json")
    return out


def soup_of(paths, greedy=False, run=None, split="val", data=None, device="auto", out=None, force=False):
    """(tensors, info, members) of the soup of checkpoint or run folders: uniform, or greedy by
    held-out accuracy on `split` of `run` (default: the first member's run) or on `data`. With `out`,
    the output folder is checked first (check_output)."""
    members = [read_member(path) for path in paths]
    if out is not None:
        check_output(out, members, force)
    check_compatible(members)
    if not greedy:
        return uniform_soup([m.tensors for m in members]), {"method": "uniform",
                                                             "ingredients": [m.name for m in members]}, members
    loaded = load_model(run or members[0].folder, device=device)
    check_scorer(to_dict(loaded.cfg), loaded.model.state_dict(), run or members[0].folder, members)
    records, _ = load_split(loaded, split, data)

    def accuracy(tensors):
        load_weights(loaded, tensors, "the soup")
        return eval_records(loaded, records)["average"]
    tensors, info = greedy_soup(members, accuracy)
    info.update(method="greedy", split=split, data=data or "run", questions=len(records))
    return tensors, info, members
