"""Recipes: a run config turned into a model, its data and its checkpoint contents, one module per
recipe (llava.py, mma.py, eve.py; the interface in base.py) and the registry below. The trainer,
evaluation, soup, export and the tools ask the recipe; none of them tests a recipe's name.

Also here, because every front end shares them: the pretrained weights a config names
(pretrained.py), a run's records and tokenizer (run_data.py) and the layout of a run folder
(run_folder.py)."""
from minilvlm import config
from minilvlm.config import ConfigError
from minilvlm.recipes import eve, llava, mma
from minilvlm.recipes.base import Recipe
from minilvlm.recipes.checks import check_values
from minilvlm.recipes.inputs import check_inputs
from minilvlm.recipes.resolve import resolve

_REGISTRY = {}


def register(recipe: Recipe):
    """Make `recipe` available as model.recipe = recipe.name."""
    if not recipe.name or not recipe.stages:
        raise ValueError(f"a recipe needs a name and at least one stage, got {recipe.name!r} {recipe.stages!r}")
    _REGISTRY[recipe.name] = recipe
    return recipe


def names():
    return tuple(_REGISTRY)


def get(name):
    if name not in _REGISTRY:
        raise ConfigError(f"model.recipe: expected one of {', '.join(_REGISTRY)}, got {name!r}")
    return _REGISTRY[name]


def of(cfg):
    """The recipe of a run config."""
    return get(cfg.model.recipe)


def validate(cfg, check_paths=False):
    """Every value checked (checks.py), then the recipe's own checks; with check_paths also the files
    and folders the config names (inputs.py: what a run reads and writes must be there)."""
    config.check(cfg)
    check_values(cfg)
    of(cfg).validate(cfg)
    if check_paths:
        check_inputs(cfg)
    return cfg


def load_config(path=None, overrides=(), notes=None, check_paths=True):
    """The RunConfig of a TOML file (None: the demo) with dotted overrides, completed from the
    folders it names (minilvlm/recipes/resolve.py; one line per decision appended to `notes`) and
    fully checked, the paths it names included unless check_paths is False (a dry run reads none)."""
    return validate(resolve(config.parse_config(path, overrides), notes), check_paths)


def config_from_dict(data, source="config"):
    """A saved config (a run's config.json, a checkpoint's state.json entry), fully checked."""
    return validate(config.parse_dict(data, source))


for _module in (llava, mma, eve):
    register(_module.RECIPE)
