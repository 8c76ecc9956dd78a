"""Images: resolve paths safely, decode with pillow, fit to the model's square size, as uint8.

This is the one way an image file becomes model input: training (the data set), evaluation,
generation and the tower's pretraining all decode through `ImageConfig.load` / `load_batch`.
Normalisation (mean/std) happens later, inside the models' `patch_embed` stem, so the loader hands
over uint8 CHW tensors: 4x less to move between processes than float32.
Modes: "pad" pads to a square with a flat colour, then resizes (LLaVA's `pad`: nothing is cut
off); "crop" resizes the short side and takes the centre square; "resize" squashes.
`blank=True` is the text-only baseline: every image is flat grey, the file is not decoded.

Image files are untrusted input. Only the formats image data sets use are decoded (PNG, JPEG, WebP,
GIF's first frame, BMP, TIFF), whatever a file's name says; any other kind of file is a `bad_image`
(this also keeps Pillow's EPS plugin, which runs Ghostscript, away). Memory is bounded by the pixel
count in the header (`max_pixels`, checked before decoding) and by fitting without any canvas
larger than the model's square: `pad` scales the image into the square, `crop` resizes only the
centre square of the source. Decoding and converting an image of `max_pixels` pixels holds at most
about 8 bytes per pixel (Pillow keeps 4-byte pixels; an RGB copy is another 4); greyscale images,
1 byte per pixel, are fitted before they become RGB.
"""
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from minilvlm.data.errors import DataError

MODES = ("pad", "crop", "resize")
# CLIP's normalisation mean in 0..255: padding with it makes the padded area zero after
# normalisation, as in LLaVA.
CLIP_MEAN_RGB = (122, 116, 104)
# Decompression-bomb guard: refuse images with more pixels than this before decoding them
# (pillow's own limit only warns below 2x its threshold).
DEFAULT_MAX_PIXELS = 64 * 1024 * 1024
BLANK_VALUE = 128   # the text-only baseline's flat grey
ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")


def resolve_image_path(image_root, name):
    """`name` under `image_root`, refusing paths that escape it (`..`, absolute paths) and files
    that do not exist. The check is on the path as written: records are untrusted, but symlinks
    inside the root are the user's own layout (e.g. images/coco -> /mnt/coco) and are followed. A
    name the file system cannot take (too long, a NUL byte) is that record's error too."""
    root = Path(os.path.abspath(image_root))
    if not name:
        raise DataError("empty image path", reason="missing_image")
    shown = name if len(name) <= 80 else f"{name[:60]}... ({len(name)} characters)"
    path = Path(os.path.normpath(root / name))
    if path != root and root not in path.parents:
        raise DataError(f"image path {shown!r} leaves the image root {str(root)!r}", reason="path_outside_root")
    try:
        found = path.is_file()
    except (OSError, ValueError) as exc:   # ENAMETOOLONG, ELOOP, an embedded NUL byte
        raise DataError(f"image path {shown!r} cannot be used: {getattr(exc, 'strerror', None) or exc}",
                        reason="bad_image_path") from None
    if not found:
        raise DataError(f"image {shown!r} not found under {str(root)!r}", reason="missing_image")
    return path


def _open(path, max_pixels):
    try:
        img = Image.open(path, formats=ALLOWED_FORMATS)
        width, height = img.size   # read from the header: nothing is decoded yet
    except Image.DecompressionBombError as exc:
        raise DataError(f"image {str(path)!r} is too large: {exc}", reason="huge_image") from None
    except UnidentifiedImageError:
        raise DataError(f"cannot read image {str(path)!r}: not a {', '.join(ALLOWED_FORMATS)} file (or "
                        f"damaged)", reason="bad_image") from None
    except Exception as exc:   # a plugin's own error on a crafted header (struct.error and the like)
        raise DataError(f"cannot read image {str(path)!r}: {type(exc).__name__}: {exc}", reason="bad_image") from None
    if width <= 0 or height <= 0:
        raise DataError(f"image {str(path)!r} has zero size ({width}x{height})", reason="bad_image")
    if width * height > max_pixels:
        raise DataError(f"image {str(path)!r} has {width}x{height} pixels, more than the limit of "
                        f"{max_pixels} (raise max_pixels if this image is genuine)", reason="huge_image")
    return img


def _fit(img, size, mode, pad_color):
    """The model's size x size square, never building anything much larger than the source or the square."""
    width, height = img.size
    # pad and crop follow transformers' image processors (pad to a square of the long side, or resize
    # the short side to `size` with the long side truncated, then centre-crop), so that an exported
    # processor reproduces them pixel for pixel. Where that would build an image more than 4x larger
    # than both the source and the model's square (an extreme aspect ratio), the same geometry is
    # computed on the small side instead.
    limit = 4 * max(width * height, size * size)
    if mode == "crop":
        short, long = min(width, height), max(width, height)
        new_long = int(size * long / short)
        if size * new_long <= limit:
            new_w, new_h = (size, new_long) if width <= height else (new_long, size)
            img = img.resize((new_w, new_h), Image.BICUBIC)
            left, top = (new_w - size) // 2, (new_h - size) // 2
            return img.crop((left, top, left + size, top + size))
        left, top = (width - short) // 2, (height - short) // 2
        return img.resize((size, size), Image.BICUBIC, box=(left, top, left + short, top + short))
    if mode == "pad" and width != height:
        side = max(width, height)
        if side * side <= limit:
            square = Image.new("RGB", (side, side), pad_color)
            square.paste(img, ((side - width) // 2, (side - height) // 2))
            img = square
        else:
            scale = size / side
            new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
            square = Image.new("RGB", (size, size), pad_color)
            square.paste(img.resize((new_w, new_h), Image.BICUBIC), ((size - new_w) // 2, (size - new_h) // 2))
            return square
    if img.size != (size, size):
        img = img.resize((size, size), Image.BICUBIC)
    return img


def load_image(path, size, mode="pad", max_pixels=DEFAULT_MAX_PIXELS, pad_color=CLIP_MEAN_RGB):
    """Decode `path` into a uint8 tensor [3, size, size]. Raises DataError for unreadable,
    truncated, zero-size or too-large images."""
    if mode not in MODES:
        raise ValueError(f"image mode must be one of {MODES}, got {mode!r}")
    img = _open(path, max_pixels)
    try:
        # JPEG only: let libjpeg decode at a reduced scale that still covers `size` (much less work
        # for big photos; the resize below does the rest).
        img.draft("RGB", (size, size))
        if img.mode not in ("RGB", "L"):   # decodes; palette, CMYK, 16-bit and alpha images become RGB
            img = img.convert("RGB")
        # Grey stays grey until it is model-sized: resizing commutes with grey -> RGB, at a third of the memory
        img = _fit(img, size, mode, tuple(pad_color)).convert("RGB")
    except MemoryError:
        raise DataError(f"image {str(path)!r} does not fit in memory to decode", reason="huge_image") from None
    except Exception as exc:   # any decoder failure on untrusted bytes is this file's problem
        raise DataError(f"cannot decode image {str(path)!r} (truncated or corrupt?): {type(exc).__name__}: {exc}",
                        reason="bad_image") from None
    # The HWC -> CHW copy is done by numpy: torch's copy kernels use the intra-op thread pool,
    # which costs milliseconds per small image on a busy machine (measured: 10x slower).
    pixels = np.ascontiguousarray(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1))
    return torch.from_numpy(pixels if pixels.flags.writeable else pixels.copy())


@dataclass
class ImageConfig:
    """How the images of a run become model input: side, fit mode, limits, and the blank baseline."""
    size: int = 224
    mode: str = "pad"                 # "pad" | "crop" | "resize" (see the module docstring)
    max_pixels: int = DEFAULT_MAX_PIXELS
    pad_color: tuple = CLIP_MEAN_RGB
    blank: bool = False               # every image flat grey (the text-only baseline)

    def load(self, path):
        """uint8 [3, size, size] of one image file; DataError for one that cannot be read."""
        if self.blank:
            return torch.full((3, self.size, self.size), BLANK_VALUE, dtype=torch.uint8)
        return load_image(path, self.size, self.mode, self.max_pixels, self.pad_color)

    def load_batch(self, paths):
        """uint8 [N, 3, size, size] of image files (N may be 0)."""
        if not paths:
            return self.empty()
        return torch.from_numpy(np.stack([self.load(p).numpy() for p in paths]))

    def empty(self):
        return torch.empty(0, 3, self.size, self.size, dtype=torch.uint8)
