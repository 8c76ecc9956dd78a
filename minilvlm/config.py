"""Run configuration: dataclasses filled from a TOML file (tomllib) and dotted command-line
overrides (`optim.lr=1e-4`). Every key is checked: an unknown key is an error that names the
closest valid one, and a value of the wrong type is an error naming the key, the expected type and
where the value came from. The defaults are the embedded demo (`python tools/train.py`).

Every value is checked before anything runs by `minilvlm.recipes.validate`: the rules that hold for
every recipe (minilvlm/recipes/checks.py), then the recipe's own (`Recipe.validate`);
`minilvlm.recipes.load_config` and `config_from_dict` run them."""
import dataclasses
import difflib
import tomllib
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from minilvlm.data.templates import TEMPLATES
from minilvlm.device import PRECISIONS, DeviceError, parse_device
from minilvlm.models.decoder import DecoderConfig
from minilvlm.models.vision import VisionConfig


SHARDINGS = ("zero1", "fsdp")


class ConfigError(ValueError):
    """A run config (file, override or value) that cannot be used, with what to do about it."""


def _demo_vision():
    # 32 px pictures in 8x8 patches: 16 image tokens, each seeing more of a shape's outline than
    # 16x16 patches of 64 px did. Trained from scratch (no pretrained tower here).
    return VisionConfig(image_size=32, patch_size=8, dim=96, n_layers=3, n_heads=4, mlp_dim=256, act="gelu")


def _demo_decoder():
    # vocab_size is taken from the tokenizer when the model is built.
    return DecoderConfig(vocab_size=0, dim=128, n_layers=3, n_heads=4, mlp_dim=352, max_seq_len=512)


@dataclass
class EveSection:
    """The eve recipe (minilvlm/models/eve.py). model.vision (weights: model.vision_weights) is its
    frozen teacher ViT, model.feature_layer the teacher layer it aligns to; model.projector maps the
    embedder to the LM."""
    image_size: int = 0                # 0: model.vision.image_size (the teacher sees its own size)
    patch_size: int = 8                # the embedder's conv stride
    pool: int = 2                      # pool x pool patches -> one LM token (local attention pooling)
    dim: int = 128                     # the embedder's width
    heads: int = 4
    align_layers: list = field(default_factory=list)   # LM hidden states fused; []: every 4th from the last
    align_weight: float = 1.0          # lambda in CE + lambda * (1 - cos)
    random_teacher: bool = False       # no model.vision_weights: align to a random frozen ViT (demo only)


@dataclass
class MMASection:
    """Recipe `mma` (LaVIN): adapters on a frozen base. The base comes from a llava-recipe minilvlm
    checkpoint (base_checkpoint) or from Hugging Face folders (vision_weights and lm_weights)."""
    base_checkpoint: str = ""          # e.g. runs/demo/checkpoints/step_001000 (its model.safetensors)
    vision_weights: str = ""           # a CLIP vision folder (config.json + safetensors)
    lm_weights: str = ""               # a LLaMA folder
    hidden: int = 8                    # MM-Adapter bottleneck r
    groups: int = 2
    scale: float = 1.0
    temperature: float = 10.0          # LaVIN: 10 for 7B, 5 for 13B
    dropout: float = 0.1
    vision_layers: list = field(default_factory=list)   # [] = every 4th block: [4, 8, ..., n_layers]
    visual_hidden: int = 128
    # "router": LaVIN's MM-Adapter; the ablations: "fixed" (one path, no router: RepAdapters) and
    # "no_token" (the router stays but its token is the same for every sample: no modality signal)
    routing: str = "router"
    # "class" (LaVIN): the chosen layers' class tokens; "patches": a diagnostic past the paper, the
    # deepest chosen layer's patch tokens instead (is MMA bounded by what class tokens carry?)
    visual_tokens: str = "class"
    text_only_prefix: str = "Image: N/A\n"   # put before the first question of records without images


@dataclass
class LoRASection:
    """Low-rank adapters (minilvlm/models/lora.py) on the matching Linear layers, for the llava and eve
    recipes: W x + (alpha / rank) B A dropout(x), with A [rank, in] and B [out, rank] (B starts at 0).
    The base weights of the parts they sit in stay frozen; the projector trains fully as before."""
    rank: int = 0                      # 0: no LoRA
    alpha: float = 16.0
    dropout: float = 0.0
    # fnmatch patterns on module names; default: the LM's attention (wq wk wv wo) and MLP projections
    targets: list = field(default_factory=lambda: ["lm.layers.*.attn.w*", "lm.layers.*.mlp.w*"])


@dataclass
class ModelSection:
    recipe: str = "llava"              # "llava" | "mma" | "eve"
    projector: str = "mlp2x_gelu"      # "linear" | "mlp2x_gelu"
    feature_layer: int = -2            # LLaVA reads the penultimate layer
    vision: VisionConfig = field(default_factory=_demo_vision)
    decoder: DecoderConfig = field(default_factory=_demo_decoder)
    eve: EveSection = field(default_factory=EveSection)
    # Pretrained weights ("": trained from scratch): a Hugging Face folder, or one of our .safetensors
    # checkpoints (a run's model.safetensors: the tower's tensors under vision., the LM's under lm.).
    vision_weights: str = ""           # the ViT (llava: the tower; eve: the frozen teacher)
    lm_weights: str = ""
    init_from: str = ""                # a previous stage's model.safetensors, or a HF LLaVA folder (after the above)
    mma: MMASection = field(default_factory=MMASection)
    lora: LoRASection = field(default_factory=LoRASection)


@dataclass
class DataSection:
    dataset: str = "demo"              # "demo" (generated into the run folder), a LLaVA/Alpaca file or a ScienceQA folder
    format: str = "auto"               # of dataset and eval_file: "auto" | "llava" | "alpaca" | "scienceqa"
    image_root: str = ""               # for a LLaVA file: default its folder
    eval_file: str = ""                # held-out file or ScienceQA folder (the demo uses its val/test splits)
    # Several sets mixed into one training set, instead of dataset: [{path, weight, format, image_root}],
    # path "demo" for the demo set; weight: the set's share of each epoch's samples (docs/data.md)
    mixture: list = field(default_factory=list)
    on_error: str = "raise"            # a bad record or image: "raise" | "skip" (counted by reason)
    demo_sizes: dict = field(default_factory=lambda: {"train": 16000, "val": 300, "test": 600})
    demo_seed: int = 0
    demo_tasks: str = "shapes"         # demo question set: "shapes" | "mma" (new types for the mma demo) | "captions"
    demo_mc_fraction: float = 0.5      # share of the demo's colour/shape/count/position/comparison questions asked as multiple choice
    tokenizer: str = ""                # a tokenizer.json or model folder; "" builds one from the demo texts
    template: str = "auto"             # plain | vicuna_v1 | chatml | phi; auto: from the tokenizer or the LM
    max_len: int = 256
    image_mode: str = "pad"
    blank_images: bool = False         # the text-only baseline: every image becomes flat grey
    num_workers: int = 0


@dataclass
class OptimSection:
    lr: float = 1e-3                   # the demo: at 2e-3 the tower from scratch never learns to see
    projector_lr: float | None = None  # None: lr
    vision_lr: float | None = None     # None: lr
    min_lr: float = 2e-5               # the floor of every cosine schedule (eta_min)
    weight_decay: float = 0.0
    betas: list = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-8
    clip: float = 1.0                  # max grad norm; 0 turns clipping off
    schedule: str = "cosine"           # "cosine" | "warm_restarts" | "lavin" | "constant"
    warmup_steps: int = 30
    restart_steps: int = 100           # warm_restarts: T_0 in optimizer steps
    restart_mult: int = 1              # warm_restarts: T_mult
    warmup_epochs: float = 0.2         # lavin: linear warmup over this many epochs, then half-cosine


@dataclass
class TrainSection:
    stage: str = "finetune"            # "pretrain" | "finetune"
    pretrain_lm: bool = False          # pretrain stage: also train the LM
    train_vision: bool = False         # LLaVA keeps its tower frozen (the demo too, once pretrained)
    # llava with a from-scratch tower (no model.vision_weights / init_from): first pretrain it this many
    # steps as a classifier of the image records' answers (minilvlm/train/vision_pretrain.py); 0: off
    vision_pretrain_steps: int = 1500
    vision_pretrain_batch: int = 64
    global_batch: int = 32
    micro_batch: int = 32
    steps: int = 3000
    seed: int = 0
    device: str = "auto"               # "auto" (CUDA when present, else CPU) | "cpu" | "cuda" | "cuda:N" | "meta"
    precision: str = "fp32"            # "fp32" | "bf16" (pure bf16, fp32 masters) | "bf16-autocast" | "fp16-autocast"
    bf16: bool = False                 # deprecated: true means precision = "bf16-autocast"
    peak_tflops: float = 0.0           # the device's peak for MFU in metrics.jsonl; 0: from a table of GPUs
    sharding: str = "zero1"            # several processes: "zero1" (ZeroAdamW) | "fsdp" (FSDP2, ZeRO-3)
    reshard_after_forward: bool = True # fsdp: free the gathered weights after forward (ZeRO-3); false: ZeRO-2
    activation_checkpointing: bool = False   # recompute each decoder block in backward
    deterministic: bool = False        # torch.use_deterministic_algorithms, for bitwise resume
    threads: int = 0                   # torch intra-op threads; 0 keeps torch's default
    log_every: int = 10
    eval_every: int = 1000
    ckpt_every: int = 500
    stop_at: int = 0                   # stop (with a checkpoint) after this step; 0 runs to the end
    run_dir: str = "runs/demo"
    nonfinite_limit: int = 3           # stop with an error after this many steps with a NaN/inf loss or grad norm
    tensorboard: bool = False          # also write the metrics through torch.utils.tensorboard (pip install .[tensorboard])


@dataclass
class EvalSection:
    split: str = "test"                # demo split for the final evaluation ("val" during training)
    limit: int = 150                   # records evaluated during training (0: all); the final eval uses all
    max_new_tokens: int = 8
    batch: int = 100
    samples: int = 6                   # sample answers printed and logged


@dataclass
class RunConfig:
    """A run's config. `set_keys` (an attribute, not a field) holds the dotted keys a TOML file or an
    override set explicitly: values read from a weights folder may fill only the others."""
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    train: TrainSection = field(default_factory=TrainSection)
    eval: EvalSection = field(default_factory=EvalSection)


# ---- parsing ------------------------------------------------------------------------------

def _describe(kind):
    return getattr(kind, "__name__", str(kind))


def _coerce(value, kind, where):
    """value checked against the annotation kind (ints are accepted for floats)."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        options = typing.get_args(kind)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0])
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    base = typing.get_origin(kind) or kind
    if base is tuple and isinstance(value, list):
        return tuple(value)
    if base is bool and not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if base is int and isinstance(value, bool):
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if not isinstance(value, base):
        raise ConfigError(f"{where}: expected {_describe(base)}, got {type(value).__name__} {value!r}")
    return value


def unknown_key(key, valid, where):
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(sorted(valid))}"
    return ConfigError(f"{where}: unknown key '{key}'{hint}")


# Fields that a config's __post_init__ derives from others (None: derive): when their sources
# change and they are not given, they are derived again rather than kept stale.
_DERIVED = {DecoderConfig: {"n_kv_heads": ("n_heads",), "head_dim": ("dim", "n_heads")}}


def _fill(obj, data, prefix, source):
    """Set obj's fields from a dict, recursing into nested dataclasses."""
    hints = typing.get_type_hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    for key, value in data.items():
        path = f"{prefix}{key}"
        if key not in names:
            raise unknown_key(path, [f"{prefix}{n}" for n in names], source)
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: '{path}' is a section; give it a table, not {value!r}")
            _fill(current, value, path + ".", source)
        elif isinstance(current, dict) and isinstance(value, dict):
            for sub in value:
                if sub not in current:
                    raise unknown_key(f"{path}.{sub}", [f"{path}.{n}" for n in current], source)
            current.update(value)
        else:
            setattr(obj, key, _coerce(value, hints[key], f"{source}: '{path}'"))
    derived = _DERIVED.get(type(obj), {})
    stale = [k for k, sources in derived.items() if k not in data and any(s in data for s in sources)]
    if stale:
        for key in stale:
            setattr(obj, key, None)
        try:
            obj.__post_init__()
        except (ValueError, TypeError, ZeroDivisionError) as err:
            raise ConfigError(f"{source}: '{prefix.rstrip('.')}': {err}") from None


def _parse_value(text):
    """An override's value as TOML (numbers, booleans, strings, arrays); bare words are strings."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _nest(dotted, value):
    out = value
    for part in reversed(dotted.split(".")):
        out = {part: out}
    return out


def _leaf_keys(data, prefix=""):
    for key, value in data.items():
        if isinstance(value, dict):
            yield from _leaf_keys(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


def _mark_set(config, data):
    """Record the dotted keys that `data` sets (RunConfig.set_keys)."""
    config.set_keys = set(getattr(config, "set_keys", ())) | set(_leaf_keys(data))


def apply_overrides(config, overrides):
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r}: expected key=value, e.g. optim.lr=1e-4")
        data = _nest(key.strip(), _parse_value(text.strip()))
        _fill(config, data, "", f"override '{item}'")
        _mark_set(config, data)
    return config


def parse_dict(data, source="config"):
    """The RunConfig of a dict (a run's saved config.json), checked by `check`."""
    config = RunConfig()
    _fill(config, data, "", source)
    return check(config)


def _read_toml(path):
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path} is a folder; give a .toml config file") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the config file: {err.strerror or err}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text ({err}); a config is a TOML file") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: invalid TOML: {err}") from None


def parse_config(path=None, overrides=()):
    """The RunConfig of a TOML file (None: the demo defaults) with dotted overrides applied, checked
    by `check` (the recipe's own checks come on top: minilvlm.recipes.load_config)."""
    config = RunConfig()
    if path is not None:
        data = _read_toml(path)
        _fill(config, data, "", str(path))
        _mark_set(config, data)
    apply_overrides(config, overrides)
    return check(config)


def check(c):
    """What parsing itself needs: the device and precision settings (the old train.bf16 switch becomes
    train.precision here). Every other value is checked by minilvlm.recipes.validate
    (minilvlm/recipes/checks.py), which load_config and config_from_dict run."""
    _check_device_and_precision(c.train)
    return c


def _check_device_and_precision(t):
    def require(ok, message):
        if not ok:
            raise ConfigError(message)
    try:
        parse_device(t.device)
    except DeviceError as err:
        raise ConfigError(f"train.device: {err}") from None
    if t.bf16:   # the old switch, kept working: it names the precision that replaced it
        require(t.precision in ("fp32", "bf16-autocast"),
                f"train.bf16 = true asks for bf16 autocast, but train.precision = {t.precision!r}; set only "
                f"train.precision")
        warnings.warn('train.bf16 is deprecated; it now means train.precision = "bf16-autocast"', FutureWarning,
                      stacklevel=4)
        t.precision, t.bf16 = "bf16-autocast", False
    require(t.precision in PRECISIONS,
            f"train.precision: expected one of {', '.join(PRECISIONS)}, got {t.precision!r}")
    require(t.sharding in SHARDINGS, f"train.sharding: expected one of {', '.join(SHARDINGS)}, got {t.sharding!r}")


def to_dict(config):
    return dataclasses.asdict(config)
