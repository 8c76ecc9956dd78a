"""What a run reports: metrics.jsonl (one JSON object per line), a text progress line on stderr,
and a PNG plot of loss, learning rate and eval accuracy drawn with pillow."""
import json
import sys
import time

from PIL import Image, ImageDraw

from minilvlm.device import memory_metrics, peak_tflops
from minilvlm.io import atomic_write_with


class MetricsLog:
    """Appends to run_dir/metrics.jsonl. On resume, lines past the checkpoint's step are dropped
    (the interrupted run logged them after its last checkpoint; the resumed run logs them again).
    With path None (ranks other than 0) it only keeps the rows in memory."""

    def __init__(self, path, resume_step=None):
        self.path = path
        self.rows = []
        if path is None:
            return
        if resume_step is not None and path.exists():
            self.rows = [r for r in map(json.loads, path.read_text().splitlines()) if r["step"] <= resume_step]
        with open(path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in self.rows)

    def write(self, row):
        self.rows.append(row)
        if self.path is None:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")


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

def _panel(draw, box, title, series, colour):
    """A line chart of [(x, y)] in box (left, top, right, bottom) with min/max labels."""
    left, top, right, bottom = box
    draw.rectangle(box, outline=(160, 160, 160))
    draw.text((left + 4, top - 14), title, fill=(0, 0, 0))
    if not series:
        draw.text((left + 8, top + 8), "no data", fill=(120, 120, 120))
        return
    xs, ys = [p[0] for p in series], [p[1] for p in series]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = min(ys), max(ys) if max(ys) > min(ys) else min(ys) + 1e-9
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


def plot_metrics(rows, path, accuracy_key="eval/multiple_choice"):
    """Write a PNG with three panels: training loss, learning rate, eval accuracy."""
    loss = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    lr = [(r["step"], r["lr"]) for r in rows if "lr" in r]
    acc = [(r["step"], r[accuracy_key]) for r in rows if accuracy_key in r]
    image = Image.new("RGB", (720, 600), "white")
    draw = ImageDraw.Draw(image)
    _panel(draw, (40, 24, 640, 184), "training loss", loss, (200, 40, 40))
    _panel(draw, (40, 220, 640, 380), "learning rate", lr, (40, 90, 200))
    _panel(draw, (40, 416, 640, 576), f"held-out accuracy ({accuracy_key})", acc, (30, 150, 60))
    atomic_write_with(path, lambda tmp: image.save(tmp, format="PNG"))
