"""The fuzz targets: records, images, safetensors files, Hugging Face config.json files, run configs
and checkpoint folders. Each `*_target(folder)` returns (expected error types, case(rng)); see
tests/fuzz/harness.py for what a case must and must not do."""
import copy
import io
import json
import math
import shutil
import struct
import zlib

import torch
from PIL import Image
from safetensors.torch import save_file

from minilvlm import recipes
from minilvlm.config import ConfigError, RunConfig
from minilvlm.data.dataset import SFTDataset
from minilvlm.data.errors import DataError, SkipCounter
from minilvlm.data.images import MODES, ImageConfig
from minilvlm.data.records import read_records
from minilvlm.data.tokenizer import Tokenizer
from minilvlm.io import WeightsError, load_safetensors
from minilvlm.recipes import load_config
from minilvlm.recipes.run_folder import CheckpointError
from minilvlm.train.checkpoint import resume_latest
from minilvlm.train.logging import read_rows
from minilvlm.train.sharding import make_optimizer
from minilvlm.weights import from_pretrained
from tests.data.fixtures import make_images
from tests.data.toy_chat import ByteTokenizer, toy_template
from tests.test_config_values import bad_values, leaves, toml

# ---- records --------------------------------------------------------------------------------------

ODD_VALUES = [None, 0, -1, 10**30, 1.5, math.inf, "", "x" * 300, "<image>", "<image><image>\n", "a\0b", [], {}, [[[]]],
              {"from": "human"}, True, "human", "gpt", {"from": "gpt", "value": 3}, ["a", 1]]
IMAGE_NAMES = ["good.png", "good2.png", "good.jpg", "nope.png", "../outside.png", "/etc/hostname", "x" * 300 + ".png",
               "a\0b.png", "a_folder.png", "link.png", "trunc.png", "bomb.png", "huge.png", "text.png", "",
               "sub/../good.png", "./good.png", "/".join(["d" * 250] * 20)]
FILE_LEVEL = {"json_syntax", "unreadable_file"}   # a file that cannot be read as a whole: always raised


def _good_record(rng, fmt, i):
    if fmt == "alpaca":
        return {"id": f"r{i}", "instruction": rng.choice(["Add 1 and 2.", "Say hi.", "x"]), "output": "3"}
    turns = [{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A cup."}]
    if rng.random() < 0.3:
        turns += [{"from": "human", "value": "And?"}, {"from": "gpt", "value": "Red."}]
    return {"id": f"r{i}", "image": "good.png", "conversations": turns}


def _mutate(rng, obj):
    """Replace, drop or add a random part of a JSON value."""
    if isinstance(obj, dict) and obj and rng.random() < 0.8:
        key = rng.choice(sorted(obj))
        choice = rng.random()
        if choice < 0.2:
            obj.pop(key)
        elif choice < 0.6:
            obj[key] = _mutate(rng, obj[key])
        else:
            obj[key] = copy.deepcopy(rng.choice(ODD_VALUES + IMAGE_NAMES if key == "image" else ODD_VALUES))
        return obj
    if isinstance(obj, list) and obj and rng.random() < 0.8:
        i = rng.randrange(len(obj))
        obj[i] = _mutate(rng, obj[i])
        return obj
    return copy.deepcopy(rng.choice(ODD_VALUES))


def _record_text(rng, fmt, i):
    if rng.random() < 0.08:
        depth = rng.choice([70, 900, 3000, 6000])
        return '{"id": "deep", "x": ' + "[" * depth + "]" * depth + "}"
    if rng.random() < 0.05:
        return '{"id": "num", "n": ' + "9" * rng.choice([4000, 4400, 9000]) + "}"
    obj = _good_record(rng, fmt, i)
    for _ in range(rng.choice([0, 0, 1, 1, 2, 3])):
        obj = _mutate(rng, obj)
    return json.dumps(obj)


def _corrupt_line(rng, line):
    data = bytearray(line.encode("utf-8", "surrogatepass"))
    for _ in range(rng.randint(1, 3)):
        if data:
            data[rng.randrange(len(data))] = rng.choice([0x00, 0xFF, 0x5B, 0x7B, 0x22, 0x2C, 0x0A, 0x5D, 0xC3])
    return bytes(data)


def records_target(folder):
    """Under on_error="skip", every element of the file is a record or a counted skip (never dropped
    silently), and every record a sample or a counted skip; only a file that cannot be read as a
    whole may raise."""
    images = make_images(folder)

    def case(rng):
        fmt, jsonl = rng.choice(["llava", "alpaca"]), rng.random() < 0.5
        texts = [_record_text(rng, fmt, i) for i in range(rng.randint(1, 8))]
        path = folder / ("d.jsonl" if jsonl else "d.json")
        if jsonl:
            lines = [_corrupt_line(rng, t) if rng.random() < 0.2 else t.encode() for t in texts]
            data = b"\n".join(lines) + b"\n"
            expected = sum(1 for line in data.split(b"\n") if line.strip())
        else:
            data = ("[" + ",\n".join(texts) + "]").encode()
            if rng.random() < 0.1:
                data += rng.choice([b"\n[]", b"garbage", b"}", b"\n\n  "])
            expected = len(texts)
        path.write_bytes(data)
        skips = SkipCounter()
        try:
            records = read_records(path, fmt, image_root=images, on_error="skip", skips=skips)
        except DataError as err:
            assert err.reason in FILE_LEVEL, f"a record-level error raised under skip: {err}"
            return
        assert len(records) + skips.total == expected, (len(records), dict(skips.counts), expected)
        encoded = SkipCounter()
        dataset = SFTDataset(records, ByteTokenizer(), toy_template, 4, rng.choice([8, 40, 256]),
                             image=ImageConfig(size=16, max_pixels=10**7), on_error="skip", skips=encoded)
        decoded = [dataset[i] for i in range(len(dataset))]
        assert len(decoded) + encoded.total == len(records)
    return (), case


# ---- images -----------------------------------------------------------------------------------------

def _image_pool():
    pool = []
    for fmt, modes in [("PNG", ["RGB", "L", "P", "RGBA", "I;16", "1"]), ("JPEG", ["RGB", "L", "CMYK"]),
                       ("WEBP", ["RGB", "RGBA"]), ("GIF", ["P", "L"]), ("BMP", ["RGB", "P", "1"]),
                       ("TIFF", ["RGB", "L", "I;16", "F", "CMYK"]), ("EPS", ["RGB"]), ("TGA", ["RGB"]),
                       ("ICO", ["RGBA"]), ("PPM", ["RGB"]), ("DDS", ["RGB"])]:
        for mode in modes:
            buf = io.BytesIO()
            try:
                Image.new("RGB", (13, 7), (200, 30, 30)).convert(mode).save(buf, fmt)
            except (OSError, ValueError, KeyError):
                continue
            pool.append(buf.getvalue())
    return pool


def _png_header(width, height):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    raw = zlib.compress(b"\0\0" * 4)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", raw) + chunk(b"IEND", b""))


def images_target(folder):
    """Every file is a model-sized uint8 image, or a DataError that says bad_image or huge_image."""
    pool = _image_pool()

    def case(rng):
        if rng.random() < 0.15:
            data = bytearray(_png_header(rng.choice([0, 1, 3, 10**5, 2**31 - 1, 7]), rng.choice([0, 1, 5, 10**6, 4])))
        elif rng.random() < 0.05:
            data = bytearray(rng.randbytes(rng.randint(0, 300)))
        else:
            data = bytearray(rng.choice(pool))
            for _ in range(rng.choice([0, 1, 2, 5, 20])):
                op = rng.random()
                if op < 0.6 and data:
                    data[rng.randrange(len(data))] = rng.randrange(256)
                elif op < 0.8:
                    data = data[:rng.randrange(len(data) + 1)]
                else:
                    data[rng.randrange(len(data) + 1):0] = rng.randbytes(rng.randint(1, 16))
        path = folder / rng.choice(["x.png", "x.jpg", "x.dat"])
        path.write_bytes(bytes(data))
        size = rng.choice([1, 8, 16, 33])
        config = ImageConfig(size=size, mode=rng.choice(MODES), max_pixels=rng.choice([10**4, 10**6, 64 * 2**20]))
        try:
            out = config.load(path)
        except DataError as err:
            assert err.reason in ("bad_image", "huge_image"), err
            return
        assert out.shape == (3, size, size) and out.dtype == torch.uint8
    return (), case


# ---- safetensors files and config.json --------------------------------------------------------------

def _valid_safetensors(rng, path):
    tensors = {f"t{i}": torch.randn(rng.randint(0, 3), rng.randint(1, 4)).to(rng.choice(
        [torch.float32, torch.float16, torch.int64, torch.bool])) for i in range(rng.randint(1, 4))}
    save_file(tensors, str(path))
    return path.read_bytes(), tensors


def _mutate_header(rng, data):
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + length])
    names = [k for k in header if k != "__metadata__"]
    name = rng.choice(names)
    field = rng.choice(["dtype", "shape", "data_offsets", None])
    values = {"dtype": ["F32", "I32", "F8_E4M3", "C64", "BOGUS", 3, None],
              "shape": [[-1], [10**12], [2**62, 2**62], ["a"], [], [1, 2, 3, 4, 5], None, 7],
              "data_offsets": [[0, 10**15], [-4, 0], [8, 4], [0], None, "x", [0, 0]]}
    if field is None:
        header = rng.choice([[], "x", {"__metadata__": {"a": 1}}, {name: 5}, {name: {}}])
    else:
        header[name][field] = rng.choice(values[field])
    text = json.dumps(header).encode()
    prefix = len(text) if rng.random() < 0.8 else rng.choice([0, 7, 2**63, len(text) + 100])
    return prefix.to_bytes(8, "little") + text + data[8 + length:]


def safetensors_target(folder):
    """A file is its tensors, or a WeightsError; a claimed size is never allocated before it is checked."""
    def case(rng):
        path = folder / "x.safetensors"
        data, tensors = _valid_safetensors(rng, path)
        op = rng.random()
        if op < 0.5:
            data = _mutate_header(rng, data)
        elif op < 0.7:
            data = data[:rng.randrange(len(data) + 1)]
        elif op < 0.9:
            data = bytearray(data)
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            data = bytes(data)
        path.write_bytes(data)
        expected = {k: v for k, v in tensors.items()} if rng.random() < 0.5 else None
        out = load_safetensors(path, "fuzz.key", expected=expected)
        assert isinstance(out, dict)
    return (WeightsError,), case


CONFIG_FIELDS = ["hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size",
                 "vocab_size", "rms_norm_eps", "rope_theta", "hidden_act", "rope_scaling", "tie_word_embeddings",
                 "head_dim", "model_type", "max_position_embeddings", "attention_bias"]
CONFIG_VALUES = [None, 0, -1, 1, 3, 7, 10**6, 1e6, "32", "silu", "linear", ["silu"], {"type": "linear"}, True, 1e-6,
                 math.nan, "llama", "qwen2", "phi", 2**40, 16, 64]


def hf_config_target(folder, source):
    """A config.json is a model or a WeightsError, quickly, whatever its values."""
    def case(rng):
        target = folder / "m"
        if not target.exists():
            shutil.copytree(source, target)
        config = json.loads((source / "config.json").read_text())
        for _ in range(rng.choice([0, 1, 1, 2, 3])):
            field = rng.choice(CONFIG_FIELDS)
            config[field] = rng.choice(CONFIG_VALUES + [config.get(field)] * 4)
        text = json.dumps(config) if rng.random() < 0.95 else rng.choice(["[]", '"x"', "{", "null"])
        (target / "config.json").write_text(text)
        from_pretrained(target)
    return (WeightsError,), case


# ---- run configs and checkpoint folders ------------------------------------------------------------

def config_target(folder):
    """Any set of overrides gives a checked RunConfig or a ConfigError, within the time limit."""
    fields = [(key, bad_values(kind, current) + [current]) for key, kind, current in leaves(RunConfig())]

    def case(rng):
        overrides = [f"train.run_dir={json.dumps(str(folder / 'run'))}"]
        for _ in range(rng.randint(1, 4)):
            key, values = rng.choice(fields)
            overrides.append(f"{key}={toml(rng.choice(values))}")
        cfg = load_config(None, overrides)
        t = cfg.train
        assert t.global_batch % t.micro_batch == 0 and math.isfinite(cfg.optim.lr) and cfg.optim.lr > 0
    return (ConfigError,), case


def _damage(rng, folder):
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    path = rng.choice(files)
    op = rng.random()
    if op < 0.2:
        path.unlink()
    elif op < 0.45:
        data = path.read_bytes()
        path.write_bytes(data[:rng.randrange(len(data) + 1)])
    elif op < 0.7:
        data = bytearray(path.read_bytes())
        for _ in range(rng.randint(1, 6)):
            if data:
                data[rng.randrange(min(len(data), 4096 if rng.random() < 0.7 else len(data)))] = rng.randrange(256)
        path.write_bytes(bytes(data))
    elif path.name == "state.json" or path.suffix == ".json":
        try:
            state = json.loads(path.read_text())
        except ValueError:
            return
        key = rng.choice(sorted(state) or ["x"]) if isinstance(state, dict) else "x"
        value = copy.deepcopy(rng.choice(ODD_VALUES + [{"sampler": 1}, {"steps": {"0": "x"}}]))
        path.write_text(json.dumps({**state, key: value} if isinstance(state, dict) else value))


def checkpoint_target(folder, run):
    """A run whose checkpoints are damaged at random resumes from one that loads (falling back), or
    ends in a CheckpointError or WeightsError; its metrics.jsonl, damaged too, still reads."""
    cfg = recipes.config_from_dict(json.loads((run / "config.json").read_text()))
    recipe = recipes.of(cfg)
    model = recipe.build_model(cfg, Tokenizer(run))
    recipe.set_stage(model, cfg)
    optimizer = make_optimizer(cfg, model, 1)
    log = io.StringIO()

    def case(rng):
        copy = folder / "run"
        if copy.exists():
            shutil.rmtree(copy)
        shutil.copytree(run / "checkpoints", copy / "checkpoints")
        shutil.copy(run / "metrics.jsonl", copy / "metrics.jsonl")
        for _ in range(rng.randint(1, 3)):
            _damage(rng, copy)
        if (copy / "metrics.jsonl").exists():   # MetricsLog reads it only when it is there
            rows, _ = read_rows(copy / "metrics.jsonl")
            assert all(isinstance(r["step"], int) for r in rows)
        checkpoint, state, _ = resume_latest(copy, recipe, model, optimizer, stream=log)
        assert isinstance(state["step"], int) and checkpoint.name == f"step_{state['step']:06d}"
    return (CheckpointError, WeightsError), case
