"""Drawing for the demo data set: flat shapes on a plain background, with pillow.

A scene is a list of `Shape`s; `draw_scene` renders it. `place` finds non-overlapping positions
by rejection sampling, with an optional constraint on x (used for the left/right questions).
"""
import math
import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

COLOURS = {"red": (215, 45, 45), "green": (45, 165, 70), "blue": (45, 85, 215), "yellow": (230, 195, 35)}
SHAPES = ("circle", "square", "triangle", "diamond")


@dataclass
class Shape:
    kind: str
    colour: str
    x: float   # centre, pixels
    y: float
    r: float   # half the bounding box's side


def _jitter(rgb, rng, amount=18):
    return tuple(max(0, min(255, c + rng.randint(-amount, amount))) for c in rgb)


def _outline(shape):
    x, y, r = shape.x, shape.y, shape.r
    if shape.kind == "square":
        return [(x - r, y - r), (x + r, y - r), (x + r, y + r), (x - r, y + r)]
    if shape.kind == "triangle":
        return [(x, y - r), (x + r, y + r * 0.85), (x - r, y + r * 0.85)]
    if shape.kind == "diamond":
        return [(x, y - r), (x + r, y), (x, y + r), (x - r, y)]
    raise ValueError(f"unknown shape {shape.kind!r}")


def draw_scene(shapes, size, rng):
    """An RGB image of `size` x `size` pixels: a light, slightly varying background and the shapes
    in slightly varying tones of their colours."""
    background = tuple(rng.randint(225, 250) for _ in range(3))
    img = Image.new("RGB", (size, size), background)
    pen = ImageDraw.Draw(img)
    for shape in shapes:
        fill = _jitter(COLOURS[shape.colour], rng)
        if shape.kind == "circle":
            pen.ellipse([shape.x - shape.r, shape.y - shape.r, shape.x + shape.r, shape.y + shape.r],
                        fill=fill)
        else:
            pen.polygon(_outline(shape), fill=fill)
    return img


def place(rng: random.Random, radii, size, x_ranges=None, tries=500):
    """Centres (x, y) for shapes of the given radii, inside the image and not overlapping.
    x_ranges[i], if given, is the (min, max) fraction of the width for shape i's centre."""
    for _ in range(tries):
        centres = []
        for i, r in enumerate(radii):
            lo, hi = (x_ranges[i] if x_ranges else (0.0, 1.0))
            x_min, x_max = max(r + 1, lo * size), min(size - r - 1, hi * size)
            if x_min > x_max:
                raise ValueError(f"no room for a shape of radius {r} in {size} px")
            x = rng.uniform(x_min, x_max)
            y = rng.uniform(r + 1, size - r - 1)
            if all(math.hypot(x - cx, y - cy) > r + cr + 2 for (cx, cy), cr in zip(centres, radii)):
                centres.append((x, y))
            else:
                break
        if len(centres) == len(radii):
            return centres
    raise RuntimeError(f"could not place {len(radii)} shapes in {size} px after {tries} tries")
