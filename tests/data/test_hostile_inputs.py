"""Hostile records and images (issue 17, D1-D6): each is a counted skip under on_error="skip" and a
DataError under "raise", never another exception, a silent drop or unbounded memory."""
import io
import json
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import pytest
from PIL import Image

from minilvlm.data.errors import DataError, SkipCounter
from minilvlm.data.images import ImageConfig, load_image, resolve_image_path
from minilvlm.data.records import read_records

ROOT = Path(__file__).resolve().parents[2]
GOOD = {"id": "good", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "ok"}]}


def png_of_size(width, height):
    """A valid PNG of width x height black pixels, a few hundred bytes however large (zlib)."""
    row = b"\0" + b"\0" * width   # filter byte, then one byte per pixel (greyscale)
    raw = zlib.compress(row * height, 9)

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def read_skipping(path, root=None):
    skips = SkipCounter()
    records = read_records(path, "llava", image_root=root, on_error="skip", skips=skips)
    return [r.id for r in records], dict(skips.counts)


def test_d1_an_image_name_longer_than_the_file_system_takes_is_a_skip(tmp_path):
    names = ["x" * 300 + ".png", "a\0b.png", "/".join(["d" * 200] * 30) + ".png"]
    rows = [GOOD] + [{**GOOD, "id": f"bad{i}", "image": name} for i, name in enumerate(names)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ids, skips = read_skipping(tmp_path / "d.jsonl")
    assert ids == ["good"] and sum(skips.values()) == 3 and set(skips) <= {"bad_image_path", "missing_image"}
    with pytest.raises(DataError) as info:
        resolve_image_path(tmp_path, names[0])
    assert info.value.reason == "bad_image_path" and "characters" in str(info.value)


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_d2_d3_deep_nesting_and_huge_integers_are_counted_skips(tmp_path, suffix):
    deep = "[" * 5000 + "]" * 5000
    bad = ['{"id": "deep", "x": ' + deep + "}", '{"id": "big", "n": ' + "7" * 5000 + "}",
           '{"id": "deeper", "x": ' + "[" * 100 + "]" * 100 + "}"]
    items = [json.dumps(GOOD), *bad, json.dumps({**GOOD, "id": "after"})]
    path = tmp_path / f"d{suffix}"
    path.write_text("[" + ",\n".join(items) + "]" if suffix == ".json" else "\n".join(items) + "\n")
    ids, skips = read_skipping(path)
    assert ids == ["good", "after"] and skips == {"json_limit": 3}
    with pytest.raises(DataError, match=r"line 2.*nests too deeply|line 2.*cannot be decoded"):
        read_records(path, "llava")


@pytest.mark.parametrize("tail", ["\n[" + json.dumps(GOOD) + "]", "garbage", "\n{}", "]"])
def test_d4_nothing_may_follow_the_top_level_array(tmp_path, tail):
    path = tmp_path / "d.json"
    path.write_text("[" + json.dumps(GOOD) + "]" + tail)
    for on_error in ("raise", "skip"):   # the file is malformed: always an error, never 1 record
        with pytest.raises(DataError, match="line .*extra data after the top-level JSON value") as info:
            read_records(path, "llava", on_error=on_error)
        assert info.value.reason == "json_syntax"


def _blp_as_png():
    buf = io.BytesIO()
    Image.new("P", (8, 8)).save(buf, "BLP")
    data = bytearray(buf.getvalue())
    data[8] = 0   # an encoding the BLP plugin does not know: BLPFormatError
    return bytes(data)


def _dds_zero_flags():
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "DDS")
    data = bytearray(buf.getvalue())
    data[80:84] = bytes(4)   # pixel-format flags 0: NotImplementedError in the DDS plugin
    return bytes(data)


def _other_format(fmt):
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (9, 9, 9)).save(buf, fmt)
    return buf.getvalue()


@pytest.mark.parametrize("name,data", [("blp.png", _blp_as_png()), ("dds.png", _dds_zero_flags()),
                                       ("eps.png", _other_format("EPS")), ("tga.jpg", _other_format("TGA")),
                                       ("ico.png", _other_format("ICO")), ("ppm.bmp", _other_format("PPM"))])
def test_d5_only_the_allowed_formats_are_decoded(tmp_path, name, data):
    (tmp_path / name).write_bytes(data)
    with pytest.raises(DataError) as info:
        load_image(tmp_path / name, 16)
    assert info.value.reason == "bad_image" and name in str(info.value)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF"])
def test_d5_the_allowed_formats_still_load_whatever_their_name(tmp_path, fmt):
    path = tmp_path / "picture.dat"
    path.write_bytes(_other_format(fmt))
    assert load_image(path, 16).shape == (3, 16, 16)


MEMORY_PROBE = textwrap.dedent("""
    import resource, sys
    from minilvlm.data.errors import DataError
    from minilvlm.data.images import load_image
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    outcomes = []
    for path, mode in zip(sys.argv[1::2], sys.argv[2::2]):
        try:
            outcomes.append(tuple(load_image(path, 32, mode).shape))
        except DataError as err:
            outcomes.append(err.reason)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(outcomes, (after - before) / 1024)
""")


def test_d6_memory_is_bounded_whatever_the_aspect_ratio(tmp_path):
    """A 1x20,000 PNG of a few hundred bytes cost 1.57 GB in pad mode (a 20,000^2 canvas); 1x60,000
    and 1x3,000,000 (crop) raised MemoryError. Measured in a fresh process: the peak RSS may grow by
    less than 100 MB over all of them, and every one gives a 32x32 image or a counted reason."""
    cases = []
    for i, (w, h, mode) in enumerate([(1, 20_000, "pad"), (1, 60_000, "pad"), (1, 3_000_000, "crop"),
                                      (60_000, 1, "pad"), (3_000_000, 1, "resize"), (24, 2_000_000, "pad")]):
        path = tmp_path / f"thin{i}.png"
        path.write_bytes(png_of_size(w, h))
        cases += [str(path), mode]
    proc = subprocess.run([sys.executable, "-c", MEMORY_PROBE, *cases], capture_output=True, text=True, timeout=300,
                          cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    outcomes, grown_mb = proc.stdout.strip().rsplit("] ", 1)
    assert outcomes.count("(3, 32, 32)") == 6, outcomes
    assert float(grown_mb) < 100, f"peak RSS grew by {grown_mb} MB"


def test_d6_pad_and_crop_keep_their_meaning_without_the_big_canvas(tmp_path):
    path = tmp_path / "wide.png"
    Image.new("RGB", (400, 100), (255, 0, 0)).save(path)
    padded = ImageConfig(size=32, mode="pad", pad_color=(0, 0, 255)).load(path)
    assert padded[:, 16, 16].tolist() == [255, 0, 0] and padded[:, 0, 16].tolist() == [0, 0, 255]
    assert padded[:, 31, 16].tolist() == [0, 0, 255] and padded[:, 16, 0].tolist() == [255, 0, 0]
    cropped = ImageConfig(size=32, mode="crop").load(path)
    assert (cropped[0] == 255).all()
