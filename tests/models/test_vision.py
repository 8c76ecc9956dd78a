"""The vision tower on its own: the stem against a convolution, uint8 images normalised inside the
stem, input checks, presets."""
import pytest
import torch

from minilvlm.models import VisionConfig, VisionTransformer
from minilvlm.ops import patch_embed, patch_embed_reference


@pytest.mark.parametrize("cls, bias", [(True, False), (False, True)], ids=["clip", "siglip"])
def test_stem_matches_an_explicit_patch_matmul(cls, bias):
    torch.manual_seed(0)
    B, C, p, D, side = 2, 3, 5, 24, 15  # odd sizes: 3x3 = 9 patches
    pixels = torch.randn(B, C, side, side, dtype=torch.float64)
    weight = torch.randn(D, C, p, p, dtype=torch.float64)
    bias_t = torch.randn(D, dtype=torch.float64) if bias else None
    cls_t = torch.randn(D, dtype=torch.float64) if cls else None
    pos = torch.randn(9 + int(cls), D, dtype=torch.float64)
    patches = pixels.unfold(2, p, p).unfold(3, p, p).permute(0, 2, 3, 1, 4, 5).reshape(B, 9, C * p * p)
    expected = patches @ weight.reshape(D, -1).T + (0 if bias_t is None else bias_t)
    if cls:
        expected = torch.cat((cls_t.expand(B, 1, D), expected), dim=1)
    expected = expected + pos
    assert torch.allclose(patch_embed(pixels, weight, bias_t, pos, patch_size=p, cls_token=cls_t), expected, atol=1e-10)
    reference = patch_embed_reference(pixels, weight, bias_t, pos, patch_size=p, cls_token=cls_t)
    assert torch.allclose(reference, expected, atol=1e-10)


@pytest.mark.parametrize("mean, std", [((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
                                       ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))], ids=["clip", "siglip"])
def test_uint8_images_are_normalised_in_the_stem_with_the_configs_mean_and_std(mean, std):
    """uint8 images are raw pixels: the tower scales and normalises them in the fused stem, and
    gives what float pixel values normalised beforehand (a transformers image processor's) give."""
    config = VisionConfig(image_size=14, patch_size=7, dim=16, n_layers=2, n_heads=2, mlp_dim=24, pixel_mean=mean,
                          pixel_std=std)
    torch.manual_seed(0)
    model = VisionTransformer(config)
    images = torch.randint(0, 256, (2, 3, 14, 14), dtype=torch.uint8)
    pixels = (images.double() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(model(images), model(pixels.float()), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(model(images), model(images.float()))   # floats are not normalised again


def test_wrong_image_size_is_an_error():
    model = VisionTransformer(VisionConfig(image_size=28, patch_size=7, dim=32, n_layers=1, n_heads=4, mlp_dim=48))
    with pytest.raises(ValueError, match=r"expected images \[B, 3, 28, 28\], got \[1, 3, 32, 32\]"):
        model(torch.randn(1, 3, 32, 32))


def test_siglip_has_no_class_token_to_pool():
    model = VisionTransformer(VisionConfig.preset("siglip-base-16-224", n_layers=1, dim=32, n_heads=4, mlp_dim=8))
    out = model(torch.randn(1, 3, 224, 224))
    assert out.shape == (1, 196, 32)
    with pytest.raises(ValueError, match="no class token"):
        model.pooled(out)


def test_vision_gradients_flow_to_every_parameter():
    model = VisionTransformer(VisionConfig(image_size=14, patch_size=7, dim=16, n_layers=2, n_heads=2, mlp_dim=24))
    model(torch.randn(2, 3, 14, 14)).square().mean().backward()
    # post_norm only feeds CLIP's pooled output, so it is the one parameter without a gradient here.
    assert all(p.grad is not None for n, p in model.named_parameters() if not n.startswith("post_norm"))
