"""Image loading: modes, colour handling, size limits and the image root."""
import numpy as np
import pytest
from PIL import Image

from minilvlm.data.errors import DataError
from minilvlm.data.images import load_image, resolve_image_path
from tests.data.fixtures import make_images


def save(tmp_path, name, img):
    path = tmp_path / name
    img.save(path)
    return path


def test_pad_keeps_the_whole_image_and_pads_with_the_colour(tmp_path):
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    out = load_image(save(tmp_path, "wide.png", img), 20, "pad", pad_color=(1, 2, 3))
    assert out.shape == (3, 20, 20) and out.dtype.is_floating_point is False
    assert out[:, 0, 10].tolist() == [1, 2, 3] and out[:, 19, 10].tolist() == [1, 2, 3]
    assert out[:, 10, 10].tolist() == [255, 0, 0] and out[:, 10, 0].tolist() == [255, 0, 0]


def test_crop_takes_the_centre(tmp_path):
    img = np.zeros((10, 30, 3), np.uint8)
    img[:, 10:20] = (0, 255, 0)   # the centre third is green, the sides black
    out = load_image(save(tmp_path, "strip.png", Image.fromarray(img)), 10, "crop")
    assert out.shape == (3, 10, 10)
    assert (out[1, :, 2:8] > 200).all() and (out[0] < 30).all()


def test_resize_and_modes_give_the_model_size(tmp_path):
    path = save(tmp_path, "odd.jpg", Image.new("RGB", (37, 91), (10, 20, 30)))
    for mode in ("pad", "crop", "resize"):
        assert load_image(path, 24, mode).shape == (3, 24, 24)
    with pytest.raises(ValueError, match="mode"):
        load_image(path, 24, "stretch")


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "CMYK", "I;16"])
def test_other_pixel_formats_become_rgb(tmp_path, mode):
    img = Image.new("RGB", (12, 12), (200, 100, 50)).convert(mode)
    suffix = "jpg" if mode == "CMYK" else "png"
    out = load_image(save(tmp_path, f"x.{suffix}", img), 12, "pad")
    assert out.shape == (3, 12, 12)


def test_large_jpeg_matches_a_full_decode(tmp_path):
    # draft mode decodes big JPEGs at reduced scale; the result must stay close to a full decode
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
    img = Image.fromarray(base).resize((800, 800), Image.BICUBIC)
    path = save(tmp_path, "big.jpg", img)
    ours = load_image(path, 64, "resize").permute(1, 2, 0).numpy().astype(float)
    full = np.asarray(Image.open(path).convert("RGB").resize((64, 64), Image.BICUBIC), float)
    assert np.abs(ours - full).mean() < 4.0


def test_pixel_limit(tmp_path):
    path = save(tmp_path, "big.png", Image.new("RGB", (100, 100)))
    with pytest.raises(DataError, match="more than the limit") as info:
        load_image(path, 8, max_pixels=9_999)
    assert info.value.reason == "huge_image"
    assert load_image(path, 8, max_pixels=10_000).shape == (3, 8, 8)


def test_paths_stay_under_the_root(tmp_path):
    images = make_images(tmp_path)
    assert resolve_image_path(images, "good.png") == (images / "good.png").absolute()
    (images / "sub").mkdir()
    (images / "sub" / "x.png").write_bytes((images / "good.png").read_bytes())
    assert resolve_image_path(images, "sub/../sub/x.png").name == "x.png"
    for name in ("../outside.png", str(tmp_path / "outside.png"), "sub/../../outside.png"):
        with pytest.raises(DataError, match="leaves the image root"):
            resolve_image_path(images, name)
    # a symlink inside the root is the user's layout, not the record's doing: followed
    assert load_image(resolve_image_path(images, "link.png"), 4).shape == (3, 4, 4)
