"""What makes a VisionConfig or DecoderConfig buildable, as a list of problems (empty: fine).

The run config (minilvlm/config.py) and the reading of a Hugging Face config.json
(minilvlm/weights.py) both check with these functions before anything is allocated, so a value
that could only fail deep inside a model (heads that do not divide the width, a patch that does not
tile the image, a NaN epsilon, a million layers) is refused up front with the field's name.

The upper bounds are far above any model minilvlm targets (LLaMA-405B has 126 layers and a width of
16,384); they exist so that a typo such as `n_layers = 1000000` is an error, not minutes of
allocation ending in MemoryError."""
import math

from minilvlm.models.layers import ACTIVATIONS

MAX_LAYERS = 1024
MAX_WIDTH = 1 << 16           # dim, head_dim
MAX_MLP = 1 << 18
MAX_VOCAB = 1 << 22
MAX_IMAGE_SIZE = 1 << 14
MAX_SEQ_LEN = 1 << 24


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def int_in_range(value, name, low, high):
    """A problem string unless value is an integer in [low, high]."""
    if not _is_int(value):
        return f"{name}: expected an integer, got {value!r}"
    if not low <= value <= high:
        return f"{name} = {value}: expected {low}..{high}"
    return None


def positive_float(value, name, high=math.inf):
    if not _is_number(value) or not math.isfinite(value) or not 0 < value <= high:
        return f"{name} = {value!r}: expected a finite number > 0" + (f" and <= {high:g}" if high < math.inf else "")
    return None


def _choice(value, name, options):
    if value not in options:
        return f"{name} = {value!r}: expected one of {', '.join(sorted(options))}"
    return None


def vision_problems(c, prefix=""):
    """Problems of a VisionConfig; field names are prefixed (e.g. "model.vision.")."""
    p = prefix
    found = [int_in_range(c.image_size, f"{p}image_size", 1, MAX_IMAGE_SIZE),
             int_in_range(c.patch_size, f"{p}patch_size", 1, MAX_IMAGE_SIZE),
             int_in_range(c.channels, f"{p}channels", 1, 4),
             int_in_range(c.dim, f"{p}dim", 1, MAX_WIDTH),
             int_in_range(c.n_layers, f"{p}n_layers", 1, MAX_LAYERS),
             int_in_range(c.n_heads, f"{p}n_heads", 1, MAX_WIDTH),
             int_in_range(c.mlp_dim, f"{p}mlp_dim", 1, MAX_MLP),
             _choice(c.act, f"{p}act", ACTIVATIONS),
             positive_float(c.norm_eps, f"{p}norm_eps", 1.0)]
    found = [f for f in found if f]
    if found:
        return found
    if c.image_size % c.patch_size:
        found.append(f"{p}patch_size = {c.patch_size} does not tile {p}image_size = {c.image_size} (it must divide it)")
    if c.dim % c.n_heads:
        found.append(f"{p}n_heads = {c.n_heads} does not divide {p}dim = {c.dim}")
    for name in ("pixel_mean", "pixel_std"):
        values = getattr(c, name)
        if (not isinstance(values, (list, tuple)) or len(values) != c.channels
                or not all(_is_number(v) and math.isfinite(v) for v in values)):
            found.append(f"{p}{name}: expected {c.channels} finite numbers, got {values!r}")
        elif name == "pixel_std" and min(values) <= 0:
            found.append(f"{p}pixel_std: every value must be > 0, got {values!r}")
    return found


def decoder_problems(c, prefix="", vocab_low=1):
    """Problems of a DecoderConfig. vocab_low=0 where the tokenizer sets the vocabulary later."""
    p = prefix
    found = [int_in_range(c.vocab_size, f"{p}vocab_size", vocab_low, MAX_VOCAB),
             int_in_range(c.dim, f"{p}dim", 1, MAX_WIDTH),
             int_in_range(c.n_layers, f"{p}n_layers", 1, MAX_LAYERS),
             int_in_range(c.n_heads, f"{p}n_heads", 1, MAX_WIDTH),
             int_in_range(c.n_kv_heads, f"{p}n_kv_heads", 1, MAX_WIDTH),
             int_in_range(c.head_dim, f"{p}head_dim", 1, MAX_WIDTH),
             int_in_range(c.mlp_dim, f"{p}mlp_dim", 1, MAX_MLP),
             int_in_range(c.max_seq_len, f"{p}max_seq_len", 1, MAX_SEQ_LEN),
             _choice(c.mlp, f"{p}mlp", ("swiglu", "plain")),
             _choice(c.act, f"{p}act", ACTIVATIONS),
             _choice(c.norm, f"{p}norm", ("rms", "layer")),
             positive_float(c.norm_eps, f"{p}norm_eps", 1.0),
             positive_float(c.rope_theta, f"{p}rope_theta", 1e12)]
    if not _is_number(c.rotary_fraction) or not 0 < c.rotary_fraction <= 1:
        found.append(f"{p}rotary_fraction = {c.rotary_fraction!r}: expected a number in (0, 1]")
    for name in ("parallel_block", "qkv_bias", "out_bias", "mlp_bias", "lm_head_bias", "qk_norm", "tie_embeddings"):
        if not isinstance(getattr(c, name), bool):
            found.append(f"{p}{name}: expected true or false, got {getattr(c, name)!r}")
    found = [f for f in found if f]
    if found:
        return found
    if c.n_heads % c.n_kv_heads:
        found.append(f"{p}n_kv_heads = {c.n_kv_heads} does not divide {p}n_heads = {c.n_heads}")
    if c.dim % c.n_heads and c.head_dim == c.dim // c.n_heads:
        found.append(f"{p}n_heads = {c.n_heads} does not divide {p}dim = {c.dim}")
    if c.rotary_dim < 2 or c.rotary_dim % 2:
        found.append(f"{p}rotary_fraction = {c.rotary_fraction} gives {c.rotary_dim} rotary channels of "
                     f"{p}head_dim = {c.head_dim}; RoPE needs an even number, at least 2")
    return found


def feature_layer_problem(feature_layer, n_layers, name):
    """A hidden-state index of a tower with n_layers blocks: -(n_layers + 1)..n_layers."""
    return int_in_range(feature_layer, name, -(n_layers + 1), n_layers)
