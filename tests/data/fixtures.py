"""Small files for the data tests: good and broken images, written into a temporary folder."""
import io
import struct
import zlib

from PIL import Image


def png_bytes(size=(20, 12), colour=(200, 30, 30)):
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return buf.getvalue()


def jpeg_bytes(size=(40, 30), colour=(30, 30, 200)):
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def png_with_header_size(width, height):
    """A PNG whose header claims width x height (valid CRC) but holds a tiny image's data: what a
    decompression bomb or a corrupt header looks like before decoding."""
    data = bytearray(png_bytes())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4:ihdr + 12] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr:ihdr + 17]))
    data[ihdr + 17:ihdr + 21] = struct.pack(">I", crc)
    return bytes(data)


def make_images(root):
    """root/images holds one file per case; root/outside.png lies outside it."""
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    big_png = io.BytesIO()
    Image.effect_noise((64, 64), 40).convert("RGB").save(big_png, "PNG")
    big_jpeg = jpeg_bytes((64, 64))
    files = {
        "good.png": png_bytes(), "good2.png": png_bytes((9, 31), (10, 200, 10)),
        "good.jpg": jpeg_bytes(),
        "trunc.png": big_png.getvalue()[: len(big_png.getvalue()) // 2],
        "trunc.jpg": big_jpeg[: len(big_jpeg) // 2],
        "empty.png": b"",
        "zero.png": png_with_header_size(0, 0),
        "huge.png": png_with_header_size(30000, 30000),
        "bomb.png": png_with_header_size(9000, 9000),
        "text.png": b"this is not an image\n",
        "garbage.png": b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 10,
    }
    for name, data in files.items():
        (images / name).write_bytes(data)
    (images / "a_folder.png").mkdir(exist_ok=True)
    (root / "outside.png").write_bytes(png_bytes())
    link = images / "link.png"
    if not link.exists():
        link.symlink_to(root / "outside.png")
    return images
