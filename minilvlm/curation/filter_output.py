"""What perplexity filtering writes: the kept records in the input's own format (a LLaVA or Alpaca
.json array or .jsonl file, each kept object copied as it was read), and a PNG histogram of the
scores with the cut marked, drawn with pillow in the style of minilvlm.train.logging's plot."""
import json
import math
from pathlib import Path

from PIL import Image, ImageDraw

from minilvlm.data.errors import DataError, SkipCounter
from minilvlm.data.jsonfile import iter_json
from minilvlm.data.records import PARSERS
from minilvlm.io import atomic_write_text, atomic_write_with


def read_with_objects(path, fmt="llava", image_root=None, skips=None):
    """[(Record, the JSON object it was parsed from)] of a LLaVA or Alpaca .json/.jsonl file; bad
    records are counted in `skips` (a SkipCounter) by reason, as read_records(on_error="skip")."""
    path = Path(path)
    image_root = Path(image_root) if image_root is not None else path.parent
    skips = skips if skips is not None else SkipCounter()
    pairs = []
    for line, _, obj in iter_json(path):
        try:
            if isinstance(obj, DataError):
                raise obj
            record = PARSERS[fmt](obj, f"{path.name}:{line}", image_root)
        except DataError as err:
            skips.add(err.at(file=path, line=line))
            continue
        record.source, record.line = str(path), line
        pairs.append((record, obj))
    return pairs


def write_subset(objects, flags, out):
    """Write the objects flagged True to `out`: JSONL when `out` ends in .jsonl, else a JSON array."""
    kept = [obj for obj, keep in zip(objects, flags) if keep]
    out = Path(out)
    if out.suffix == ".jsonl":
        text = "".join(json.dumps(obj, ensure_ascii=False) + "\n" for obj in kept)
    else:
        text = json.dumps(kept, ensure_ascii=False, indent=1) + "\n"
    atomic_write_text(text, out)
    return len(kept)


def plot_histogram(scores, cut, path, bins=40, title="mean target NLL per record"):
    """A 720x420 PNG: a bar per bin (kept bins green, dropped red) and the cut as a vertical line."""
    values = [s for s in scores if s is not None]
    image = Image.new("RGB", (720, 420), "white")
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = 50, 30, 680, 370
    draw.rectangle((left, top, right, bottom), outline=(160, 160, 160))
    draw.text((left + 4, top - 16), f"{title} ({len(values)} records)", fill=(0, 0, 0))
    if not values:
        draw.text((left + 8, top + 8), "no data", fill=(120, 120, 120))
    else:
        lo, hi = min(values), max(values)
        hi = hi if hi > lo else lo + 1e-6
        width = (hi - lo) / bins
        counts = [0] * bins
        for v in values:
            counts[min(bins - 1, int((v - lo) / width))] += 1
        peak = max(counts)
        sx = lambda x: left + 4 + (right - left - 8) * (x - lo) / (hi - lo)   # noqa: E731
        for b, n in enumerate(counts):
            x0, x1 = sx(lo + b * width), sx(lo + (b + 1) * width)
            y = bottom - 4 - (bottom - top - 8) * n / peak
            kept = lo + (b + 0.5) * width <= cut
            draw.rectangle((x0, y, max(x0, x1 - 1), bottom - 4), fill=(30, 150, 60) if kept else (200, 40, 40))
        if math.isfinite(cut) and lo <= cut <= hi:
            x = sx(cut)
            draw.line((x, top, x, bottom), fill=(0, 0, 0), width=2)
            draw.text((x + 4, top + 4), f"cut {cut:.3g}", fill=(0, 0, 0))
        draw.text((left, bottom + 4), f"{lo:.3g}", fill=(0, 0, 0))
        draw.text((right - 40, bottom + 4), f"{hi:.3g}", fill=(0, 0, 0))
        draw.text((right + 4, top), f"{peak}", fill=(0, 0, 0))
    atomic_write_with(path, lambda tmp: image.save(tmp, format="PNG"))
