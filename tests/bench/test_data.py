"""Data loading throughput: images per second out of ResumableLoader (decode, fit, tokens,
collate) with 0 and 2 workers, on the demo set (64-px PNGs) and on 336-px JPEGs made here.

Run: pytest -m bench tests/bench/test_data.py -s
The baseline is the bare minimum a PyTorch input pipeline does per image in one process: pillow
open, convert to RGB, resize, torch.from_numpy; no tokens, no batching. "vs bare" is our rate
divided by that one.
"""
import json
import time

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from minilvlm.data.dataset import ImageConfig, SFTDataset
from minilvlm.data.demo import generate, load_demo
from minilvlm.data.loader import ResumableLoader
from minilvlm.data.records import read_records
from minilvlm.data.sampler import ResumableBatchSampler
from tests.bench.common import print_table
from tests.data.toy_chat import ByteTokenizer, toy_template

pytestmark = pytest.mark.bench


def make_jpegs(root, n, size=336):
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    records = []
    for i in range(n):
        # a smooth gradient with shapes and noise: compresses like a photo, not like flat colour
        y, x = np.mgrid[0:size, 0:size]
        base = np.stack([x * 255 / size, y * 255 / size, (x + y) * 127 / size], -1)
        base += rng.normal(0, 12, base.shape)
        img = Image.fromarray(base.clip(0, 255).astype(np.uint8))
        pen = ImageDraw.Draw(img)
        for _ in range(5):
            x0, y0 = rng.integers(0, size - 60, 2)
            pen.ellipse([x0, y0, x0 + 60, y0 + 40], fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
        img.save(root / "images" / f"{i}.jpg", quality=90)
        records.append({"id": str(i), "image": f"{i}.jpg", "conversations": [
            {"from": "human", "value": "<image>\nDescribe the picture."},
            {"from": "gpt", "value": "Coloured ellipses on a gradient."}]})
    (root / "data.json").write_text(json.dumps(records))
    return read_records(root / "data.json", "llava", root / "images")


def bare_rate(paths, size):
    start = time.perf_counter()
    for path in paths:
        img = Image.open(path).convert("RGB").resize((size, size), Image.BICUBIC)
        torch.from_numpy(np.array(img))
    return len(paths) / (time.perf_counter() - start)


def loader_rate(records, size, workers):
    dataset = SFTDataset(records, ByteTokenizer(), toy_template, image_tokens=16, max_len=512,
                         image=ImageConfig(size=size, mode="pad"))
    loader = ResumableLoader(dataset, ResumableBatchSampler(dataset.lengths, batch_size=16, seed=0),
                             pad_id=0, num_workers=workers)
    rates = []
    for _ in range(3):   # the first epoch starts the workers; report the best later epoch
        start = time.perf_counter()
        images = sum(batch["images"].shape[0] for batch in loader)
        rates.append(images / (time.perf_counter() - start))
    loader.close()
    return max(rates[1:]), rates[0]


def test_data_throughput(tmp_path):
    generate(tmp_path / "demo", seed=0, sizes={"train": 1500})
    demo = load_demo(tmp_path / "demo", "train")
    jpegs = make_jpegs(tmp_path / "jpeg", 400)
    rows = []
    for name, records, size in (("demo 64-px PNG", demo, 64), ("336-px JPEG", jpegs, 336)):
        paths = [r.images[0] for r in records if r.images]
        bare = max(bare_rate(paths, size) for _ in range(3))
        rows.append((name, "bare pillow loop, 1 process", f"{bare:.0f}", "", "1.00x"))
        for workers in (0, 2):
            rate, first = loader_rate(records, size, workers)
            rows.append((name, f"ResumableLoader, {workers} workers", f"{rate:.0f}", f"{first:.0f}",
                         f"{rate / bare:.2f}x"))
    print_table("Data loading, images/s (best of epochs 2-3; epoch 1 includes starting workers)",
                ["data", "pipeline", "images/s", "epoch 1", "vs bare"], rows)
