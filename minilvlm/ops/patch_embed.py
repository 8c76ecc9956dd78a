"""patch_embed: images -> patch tokens, the ViT conv stem and EVE's patch embedder.

    patch_embed(pixels, weight, bias, pos_embed, *, patch_size, mean=None, std=None,
                channels_last=False, cls_token=None) -> [B, N(+1), D]

  pixels      uint8 (scaled by 1/255) or float, [B,C,H,W], or [B,H,W,C] when channels_last
  weight      [D, C, p, p], as nn.Conv2d stores it; its dtype (float32, bfloat16, float16, float64)
              is the output's
  bias        [D] or None
  pos_embed   [N, D], or [N+1, D] with a class token (row 0 is the class token's position), or None
  cls_token   [D] or None; prepended as cls_token + pos_embed[0]
  mean, std   per-channel sequences, or None (no normalization)

Patches are non-overlapping, in row-major order, each flattened in Conv2d weight order
(c, ky, kx). Gradients flow to weight, bias, pos_embed and cls_token, never to pixels.

Native ops (schemas in csrc/common/schemas.h; kernels csrc/cpu/patch_embed.cpp and
csrc/cuda/patch_embed.cu):
  minilvlm::patch_embed(pixels, weight, bias?, pos_embed?, cls_token?, patch_size, mean?, std?,
                        channels_last) -> out
  minilvlm::patch_embed_backward(grad_out, pixels, weight, patch_size, mean?, std?,
                                 channels_last, has_cls) -> (grad_weight, grad_bias, grad_tokens)
grad_tokens is grad_out summed over the batch: the gradient of pos_embed, whose row 0 is also the
gradient of cls_token. The backward recomputes the patches from the pixels instead of saving them.

Under torch.autocast (CPU or CUDA, bf16 or fp16) the public function casts weight, bias, pos_embed
and cls_token to the autocast dtype, as autocast does for a conv stem; the pixels stay as they are.
The kernels compute in float32 (float64 for float64 weights) and round once into the weight's dtype,
except the GEMM, which is ATen's in that dtype (fp32 accumulation).
"""
import torch
import torch.nn.functional as F

from minilvlm.ops._registry import autocast_off, check_same_device, use_native

_WEIGHT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
_NATIVE_PIXEL_DTYPES = (torch.uint8, torch.float32)


def _shape_check(pixels, weight, bias, pos_embed, cls_token, patch_size, mean, std, channels_last):
    """The native op's checks, raised before dispatch with the same wording (ValueError/TypeError)."""
    p = patch_size
    if not isinstance(p, int) or p <= 0:
        raise ValueError(f"patch_embed: patch_size must be a positive int, got {p!r}")
    if not (pixels.dtype == torch.uint8 or pixels.dtype.is_floating_point):
        raise TypeError(f"patch_embed: pixels must be uint8 or a float dtype, got {pixels.dtype}")
    if weight.dtype not in _WEIGHT_DTYPES:
        raise TypeError(f"patch_embed: weight must be float32, bfloat16, float16 or float64, got {weight.dtype}")
    layout = "[B,H,W,C]" if channels_last else "[B,C,H,W]"
    if pixels.dim() != 4:
        raise ValueError(f"patch_embed: pixels must be 4-D {layout}, got shape {list(pixels.shape)}")
    if weight.dim() != 4 or weight.shape[2] != p or weight.shape[3] != p:
        raise ValueError(f"patch_embed: weight must be [D, C, {p}, {p}] for patch_size {p}, "
                         f"got shape {list(weight.shape)}")
    b, c, h, w = (pixels.shape[0], pixels.shape[3], pixels.shape[1], pixels.shape[2]) if channels_last \
        else tuple(pixels.shape)
    d = weight.shape[0]
    if weight.shape[1] != c:
        raise ValueError(f"patch_embed: pixels of shape {list(pixels.shape)} have {c} channels"
                         f"{' (channels_last)' if channels_last else ''} but weight of shape "
                         f"{list(weight.shape)} expects {weight.shape[1]}")
    if h % p or w % p:
        raise ValueError(f"patch_embed: image size {h}x{w} (pixels of shape {list(pixels.shape)}) is not a "
                         f"multiple of patch_size {p}")
    n = (h // p) * (w // p)
    tokens = n + (cls_token is not None)
    for name, t, shape in (("bias", bias, [d]), ("cls_token", cls_token, [d])):
        if t is not None and list(t.shape) != shape:
            raise ValueError(f"patch_embed: {name} must have shape {shape}, got {list(t.shape)}")
    if pos_embed is not None and list(pos_embed.shape) != [tokens, d]:
        extra = " plus the class token" if cls_token is not None else ""
        raise ValueError(f"patch_embed: pos_embed must be [{tokens}, {d}] ({n} patches of pixels "
                         f"{list(pixels.shape)}{extra}, D={d}), got {list(pos_embed.shape)}")
    for name, t in (("bias", bias), ("pos_embed", pos_embed), ("cls_token", cls_token)):
        if t is not None and t.dtype != weight.dtype:
            raise TypeError(f"patch_embed: {name} is {t.dtype} but weight is {weight.dtype}")
    for name, values in (("mean", mean), ("std", std)):
        if values is not None and len(values) != c:
            raise ValueError(f"patch_embed: {name} has {len(values)} values but the image has {c} channels")


def _autocast_dtype(device):
    """The dtype autocast computes in on this device, or None when it is off."""
    if device.type in ("cpu", "cuda") and torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return None


def _normalize(x, mean, std):
    """(x - mean[c]) / std[c] on each channel c of x [B, C, H, W]. The constants stay Python scalars:
    a tensor of them would be built on the host and copied to x's device, a sync on every call."""
    if mean is None and std is None:
        return x
    out = torch.empty_like(x)
    for c in range(x.shape[1]):
        channel = x[:, c]
        if mean is not None:
            channel = channel - mean[c]
        if std is not None:
            channel = channel / std[c]
        out[:, c] = channel
    return out


def patch_embed_reference(pixels, weight, bias, pos_embed, *, patch_size, mean=None, std=None,
                          channels_last=False, cls_token=None):
    """The specification, in plain PyTorch: normalize -> conv2d(stride=p) -> tokens -> + pos (+ cls)."""
    x = pixels.permute(0, 3, 1, 2) if channels_last else pixels
    # Normalize in float32 (float64 beside float64 weights), then compute in the weight's dtype.
    norm_dtype = torch.float64 if weight.dtype == torch.float64 else torch.float32
    x = x.to(norm_dtype)
    if pixels.dtype == torch.uint8:
        x = x / 255
    x = _normalize(x, mean, std).to(weight.dtype)
    tokens = F.conv2d(x, weight, bias, stride=patch_size)   # [B, D, H/p, W/p]
    tokens = tokens.flatten(2).transpose(1, 2)              # [B, N, D], patches in row-major order
    if cls_token is not None:
        first = cls_token.view(1, 1, -1).expand(tokens.shape[0], 1, -1)
        if pos_embed is not None:
            first = first + pos_embed[:1]
            tokens = tokens + pos_embed[1:]
        tokens = torch.cat([first.to(tokens.dtype), tokens], dim=1)
    elif pos_embed is not None:
        tokens = tokens + pos_embed
    return tokens


def patch_embed(pixels, weight, bias, pos_embed, *, patch_size, mean=None, std=None, channels_last=False,
                cls_token=None):
    """Patch tokens [B, N(+1), D] from images; the native kernel where one serves this device and dtype."""
    _shape_check(pixels, weight, bias, pos_embed, cls_token, patch_size, mean, std, channels_last)
    cast = _autocast_dtype(weight.device)
    if cast is not None and weight.dtype == torch.float32:
        weight, bias, pos_embed, cls_token = (None if t is None else t.to(cast)
                                              for t in (weight, bias, pos_embed, cls_token))
    mean = None if mean is None else [float(v) for v in mean]
    std = None if std is None else [float(v) for v in std]
    if use_native(weight.device) and pixels.dtype != torch.float64:
        if pixels.dtype not in _NATIVE_PIXEL_DTYPES:
            pixels = pixels.float()  # bf16/fp16 images: exact in float32
        with autocast_off(weight.device):
            return torch.ops.minilvlm.patch_embed(pixels, weight, bias, pos_embed, cls_token, patch_size, mean, std,
                                                  channels_last)
    return patch_embed_reference(pixels, weight, bias, pos_embed, patch_size=patch_size, mean=mean, std=std,
                                 channels_last=channels_last, cls_token=cls_token)


def register_patch_embed(namespace="minilvlm"):
    """Fakes for `namespace`::patch_embed(_backward) and autograd for patch_embed through the native backward.

    minilvlm.ops registers them for minilvlm; tests may register them for minilvlm_emu (the emulated CUDA kernels).
    """
    lib = getattr(torch.ops, namespace)

    @torch.library.register_fake(f"{namespace}::patch_embed")
    def _fake(pixels, weight, bias, pos_embed, cls_token, patch_size, mean, std, channels_last):
        check_same_device("patch_embed", "weight", weight, pixels=pixels, bias=bias, pos_embed=pos_embed,
                          cls_token=cls_token)
        h, w = (pixels.shape[1], pixels.shape[2]) if channels_last else (pixels.shape[2], pixels.shape[3])
        tokens = (h // patch_size) * (w // patch_size) + (cls_token is not None)
        return weight.new_empty(pixels.shape[0], tokens, weight.shape[0])

    @torch.library.register_fake(f"{namespace}::patch_embed_backward")
    def _fake_backward(grad_out, pixels, weight, patch_size, mean, std, channels_last, has_cls):
        check_same_device("patch_embed_backward", "weight", weight, pixels=pixels, grad_out=grad_out)
        return (torch.empty_like(weight), weight.new_empty(weight.shape[0]),
                weight.new_empty(grad_out.shape[1], weight.shape[0]))

    def _setup_context(ctx, inputs, output):
        pixels, weight, bias, pos_embed, cls_token, patch_size, mean, std, channels_last = inputs
        ctx.save_for_backward(pixels, weight)
        ctx.args = (patch_size, mean, std, channels_last)
        ctx.present = (bias is not None, pos_embed is not None, cls_token is not None)

    def _backward(ctx, grad_out):
        pixels, weight = ctx.saved_tensors
        patch_size, mean, std, channels_last = ctx.args
        has_bias, has_pos, has_cls = ctx.present
        grad_weight, grad_bias, grad_tokens = lib.patch_embed_backward(
            grad_out.contiguous(), pixels, weight, patch_size, mean, std, channels_last, has_cls)
        return (None, grad_weight, grad_bias if has_bias else None, grad_tokens if has_pos else None,
                grad_tokens[0].clone() if has_cls else None, None, None, None, None)  # no .grad aliasing

    torch.library.register_autograd(f"{namespace}::patch_embed", _backward, setup_context=_setup_context)
