"""What a run reports: metrics.jsonl (one JSON object per line; with train.tensorboard also
TensorBoard event files), a text progress line on stderr, and a PNG plot of loss, learning rate,
every held-out accuracy and the held-out loss, drawn with pillow."""
import json
import math
import sys
import time

from PIL import Image, ImageDraw

from minilvlm.device import memory_metrics, peak_tflops
from minilvlm.io import atomic_write_text, atomic_write_with


def read_rows(path, up_to_step=None):
    """(rows, lines that are not a metrics row) of a metrics.jsonl; rows past up_to_step left out. A
    process killed mid-append leaves a partial last line, which is such a line."""
    rows, bad = [], 0
    for line in path.read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if not isinstance(row, dict) or not isinstance(row.get("step"), int):
            bad += int(bool(line.strip()))
            continue
        if up_to_step is None or row["step"] <= up_to_step:
            rows.append(row)
    return rows, bad


class MetricsLog:
    """Appends to run_dir/metrics.jsonl. On resume, lines past the checkpoint's step are dropped
    (the interrupted run logged them after its last checkpoint; the resumed run logs them again),
    and so are lines that are not rows; the kept rows are written back atomically, so a kill during
    the rewrite loses nothing. With path None (ranks other than 0) it only keeps the rows in memory.
    `tensorboard`: a folder for TensorBoard event files of the same rows."""

    def __init__(self, path, resume_step=None, stream=None, tensorboard=None):
        self.path = path
        self.rows = []
        self.writer = None
        if path is None:
            return
        if resume_step is not None and path.exists():
            self.rows, bad = read_rows(path, resume_step)
            if bad:
                print(f"note: {path}: {bad} line(s) that are not metrics rows dropped", file=stream or sys.stderr)
            atomic_write_text("".join(json.dumps(r) + "\n" for r in self.rows), path)
        elif not path.exists() or resume_step is None:
            atomic_write_text("", path)
        if tensorboard is not None:
            from torch.utils.tensorboard import SummaryWriter   # optional: checked up front (train.tensorboard)
            self.writer = SummaryWriter(str(tensorboard))

    def write(self, row):
        self.rows.append(row)
        if self.path is None:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.writer is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.writer.add_scalar(key, value, row["step"])
            self.writer.flush()

    def close(self):
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def step_metrics(device, flops_per_token, tokens_per_s, world, peak_override=0.0):
    """Peak memory (CUDA: allocated; CPU: the process's RSS) and, where the device's peak FLOP/s is
    known, MFU: model FLOP/s over the peak of all ranks' devices."""
    row = memory_metrics(device)
    peak = peak_tflops(device, peak_override)
    if peak:
        row["mfu"] = flops_per_token * tokens_per_s / (peak * 1e12 * world)
    return row


def _format_time(seconds):
    seconds = int(seconds)
    return f"{seconds // 60}:{seconds % 60:02d}"


class Progress:
    """One stderr line per update: step/total, elapsed and ETA, loss, lr, tokens/s, images/s."""

    def __init__(self, total, start_step=0, stream=None):
        self.total, self.start_step = total, start_step
        self.stream = stream or sys.stderr
        self.t0 = time.perf_counter()

    def update(self, step, loss, lr, tokens_per_s, images_per_s):
        elapsed = time.perf_counter() - self.t0
        done = step - self.start_step
        eta = elapsed / done * (self.total - step) if done else 0.0
        width = 24
        filled = int(width * step / self.total)
        bar = "#" * filled + "." * (width - filled)
        print(f"[{bar}] {step}/{self.total} {_format_time(elapsed)}<{_format_time(eta)} loss {loss:.4f} "
              f"lr {lr:.2e} {tokens_per_s:,.0f} tok/s {images_per_s:,.1f} img/s", file=self.stream, flush=True)


# ---- plot ---------------------------------------------------------------------------------

def _panel(draw, box, title, series, colour, fixed=None):
    """A line chart of [(x, y)] in box (left, top, right, bottom) with min/max labels; `fixed`: the
    y range (several series drawn into one panel share it)."""
    left, top, right, bottom = box
    draw.rectangle(box, outline=(160, 160, 160))
    if title:
        draw.text((left + 4, top - 14), title, fill=(0, 0, 0))
    if not series:
        draw.text((left + 8, top + 8), "no data", fill=(120, 120, 120))
        return
    xs, ys = [p[0] for p in series], [p[1] for p in series]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = fixed or (min(ys), max(ys) if max(ys) > min(ys) else min(ys) + 1e-9)
    sx = lambda x: left + 4 + (right - left - 8) * (x - x0) / (x1 - x0)    # noqa: E731
    sy = lambda y: bottom - 4 - (bottom - top - 8) * (y - y0) / (y1 - y0)  # noqa: E731
    points = [(sx(x), sy(y)) for x, y in series]
    if len(points) > 1:
        draw.line(points, fill=colour, width=2)
    for p in points if len(points) < 30 else []:
        draw.ellipse((p[0] - 2, p[1] - 2, p[0] + 2, p[1] + 2), fill=colour)
    draw.text((right + 4, top), f"{y1:.3g}", fill=(0, 0, 0))
    draw.text((right + 4, bottom - 12), f"{y0:.3g}", fill=(0, 0, 0))
    draw.text((left, bottom + 2), f"step {x0:g}", fill=(0, 0, 0))
    draw.text((right - 60, bottom + 2), f"{x1:g}", fill=(0, 0, 0))


def accuracy_keys(rows):
    """Every held-out accuracy the evaluations logged (eval/<question type>, eval/task/<task>), by name."""
    return sorted({k for r in rows for k in r if k.startswith("eval/") and not k.startswith("eval/n/")
                   and k != "eval/loss"})


_COLOURS = [(30, 150, 60), (200, 120, 20), (120, 40, 180), (20, 140, 160), (180, 40, 110), (90, 90, 90)]


def plot_metrics(rows, path):
    """Write a PNG with four panels: training loss, learning rate, every held-out accuracy (a line
    each, named), the held-out loss."""
    loss = [(r["step"], r["loss"]) for r in rows if "loss" in r and math.isfinite(r["loss"])]
    lr = [(r["step"], r["lr"]) for r in rows if "lr" in r]
    heldout = [(r["step"], r["eval/loss"]) for r in rows if "eval/loss" in r and math.isfinite(r["eval/loss"])]
    keys = accuracy_keys(rows)
    image = Image.new("RGB", (720, 800), "white")
    draw = ImageDraw.Draw(image)
    _panel(draw, (40, 24, 640, 184), "training loss", loss, (200, 40, 40))
    _panel(draw, (40, 220, 640, 380), "learning rate", lr, (40, 90, 200))
    box = (40, 416, 640, 576)
    if not keys:
        _panel(draw, box, "held-out accuracy", [], (30, 150, 60))
    for i, key in enumerate(keys):
        series = [(r["step"], r[key]) for r in rows if key in r]
        colour = _COLOURS[i % len(_COLOURS)]
        _panel(draw, box, "held-out accuracy" if i == 0 else "", series, colour, fixed=(0.0, 1.0))
        draw.text((box[0] + 4 + 150 * (i % 4), box[3] + 16 + 12 * (i // 4)), key[5:], fill=colour)
    _panel(draw, (40, 630, 640, 790), "held-out loss", heldout, (160, 60, 20))
    atomic_write_with(path, lambda tmp: image.save(tmp, format="PNG"))
