"""Kernel images: the default TORCH_CUDA_ARCH_LIST and its trimming to nvcc (csrc/build_support.py),
what the build reports (torch.ops.minilvlm.cuda_archs), the rule that says whether a device can run
the kernels (has_kernel_image), and the fallback to the reference with one warning on a device
without an image, forced with MINILVLM_ASSUME_CUDA_CAPABILITY on fake CUDA tensors."""
import runpy
import warnings
from pathlib import Path

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import minilvlm
from minilvlm.ops import has_kernel_image, mm_adapter, patch_embed, reset_kernel_image_checks
from tests.ops.dispatch_log import DispatchLog
from tests.ops.test_meta_and_fake import mm_adapter_inputs, patch_embed_inputs

ROOT = Path(__file__).resolve().parents[2]
build_support = runpy.run_path(str(ROOT / "csrc" / "build_support.py"))
DEFAULT = "8.0;9.0;10.0;12.0+PTX"


@pytest.mark.parametrize("capability,expected", [
    ((8, 0), True), ((8, 6), True), ((8, 9), True),      # A100; RTX 30xx and L4/RTX 4090 run the 8.0 image
    ((9, 0), True), ((10, 0), True), ((10, 3), True),    # H100/H200; B200; B300
    ((12, 0), True), ((12, 1), True),                    # RTX 50xx; GB10
    ((13, 0), True),                                     # newer than every image: the 12.0 PTX
    ((7, 5), False), ((7, 0), False),                    # Turing, Volta: older than every image
    ((11, 0), False),                                    # Thor: no 11.x SASS, and 12.0 PTX cannot go back
])
def test_default_list_covers_every_gpu_we_name(capability, expected):
    assert has_kernel_image(DEFAULT, capability) is expected


def test_kernel_image_rule_for_other_lists():
    assert not has_kernel_image("8.0;9.0", (10, 0))          # SASS never crosses a major version
    assert not has_kernel_image("8.6", (8, 0))               # nor runs on an older minor
    assert has_kernel_image("8.0;9.0+PTX", (12, 0))          # PTX JIT-compiles forward
    assert has_kernel_image("9.0a", (9, 0)) and not has_kernel_image("9.0a", (9, 1))
    assert not has_kernel_image("", (9, 0))


def test_trim_to_what_nvcc_supports():
    trim = build_support["trim_cuda_arch_list"]
    old_nvcc = ({"sm_75", "sm_80", "sm_86", "sm_90"}, {"compute_75", "compute_80", "compute_90"})
    assert trim(DEFAULT, *old_nvcc) == ("8.0;9.0+PTX", ["10.0", "12.0"])  # the PTX moves to the newest kept
    new_nvcc = ({f"sm_{a}" for a in (75, 80, 90, 100, 120)}, {f"compute_{a}" for a in (75, 80, 90, 100, 120)})
    assert trim(DEFAULT, *new_nvcc) == (DEFAULT, [])
    gencode = ["-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_120,code=sm_120",
               "-gencode=arch=compute_120,code=compute_120", "-gencode=arch=compute_90a,code=sm_90a"]
    assert build_support["arch_list_from_gencode"](gencode) == "8.0;9.0a;12.0+PTX"


@pytest.mark.skipif(not minilvlm.ops.native_available(), reason="minilvlm._C is not built")
def test_the_build_reports_its_images():
    archs = torch.ops.minilvlm.cuda_archs()
    assert archs == minilvlm.ops.cuda_archs()
    if not torch.ops.minilvlm.built_with_cuda():
        assert archs == ""
        return
    home = build_support["find_cuda_home"]()
    targets = build_support["nvcc_targets"](str(Path(home) / "bin" / "nvcc"))
    for entry in archs.split(";"):  # every image is one this toolkit can emit
        assert f"sm_{entry.removesuffix('+PTX').replace('.', '')}" in targets[0], entry
    assert has_kernel_image(archs, (8, 0)) and has_kernel_image(archs, (9, 0))  # cuda_check's targets at least


@pytest.fixture
def assumed_capability(monkeypatch):
    """Sets MINILVLM_ASSUME_CUDA_CAPABILITY; the checks are forgotten before and after."""
    def assume(value):
        monkeypatch.setenv("MINILVLM_ASSUME_CUDA_CAPABILITY", value)
        reset_kernel_image_checks()
    yield assume
    monkeypatch.delenv("MINILVLM_ASSUME_CUDA_CAPABILITY", raising=False)
    reset_kernel_image_checks()


def run_ops_on_fake_cuda(times=2):
    """patch_embed and mm_adapter, `times` each, on fake CUDA tensors; returns (log, warnings)."""
    with warnings.catch_warnings(record=True) as caught, FakeTensorMode(), DispatchLog() as log:
        warnings.simplefilter("always")
        for _ in range(times):
            args, kwargs = patch_embed_inputs("cuda", torch.float16)
            assert patch_embed(*args, **kwargs).shape == (2, 7, 40)
            assert mm_adapter(**mm_adapter_inputs("cuda", torch.bfloat16), temperature=5.0, scale=0.5,
                              groups=2).shape == (2, 9, 74)
    return log, [w for w in caught if "no image for cuda" in str(w.message)]


@pytest.mark.skipif(not (minilvlm.ops.native_available() and torch.ops.minilvlm.built_with_cuda()),
                    reason="needs the CUDA kernels built into minilvlm._C")
def test_device_without_an_image_falls_back_to_the_reference_with_one_warning(assumed_capability):
    assumed_capability("7.5")
    log, caught = run_ops_on_fake_cuda()
    assert len(caught) == 1, [str(w.message) for w in caught]
    message = str(caught[0].message)
    assert "compute capability 7.5" in message and torch.ops.minilvlm.cuda_archs() in message
    assert 'TORCH_CUDA_ARCH_LIST="7.5"' in message
    assert not log.ran("minilvlm.patch_embed") and not log.ran("minilvlm.mm_adapter")  # the references ran:
    assert log.ran("aten.convolution") and log.ran("aten._softmax")
    assumed_capability("8.6")  # a device the 8.0 image serves: the kernels, silently
    log, caught = run_ops_on_fake_cuda()
    assert caught == [] and log.ran("minilvlm.patch_embed") and log.ran("minilvlm.mm_adapter")


def test_bad_assumed_capability_is_a_clear_error(assumed_capability):
    if not (minilvlm.ops.native_available() and torch.ops.minilvlm.built_with_cuda()):
        pytest.skip("needs the CUDA kernels built into minilvlm._C")
    assumed_capability("sm_90")
    with pytest.raises(ValueError, match=r"MINILVLM_ASSUME_CUDA_CAPABILITY='sm_90': expected major.minor"):
        minilvlm.ops.use_native(torch.device("cuda", 0))
