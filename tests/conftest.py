"""Shared fixtures: the emulator module and small helpers for comparing against references.

minilvlm._emu is imported here, when pytest loads this file and before any test makes a tensor: the
module installs the tracking CPU allocator that memcheck reads (csrc/emu/tracked_alloc.cpp), and a
tensor allocated before it is one memcheck cannot bound. MINILVLM_EMU_MODULE=/path/to/_emu*.so
loads that build instead of the package's (the CI's AddressSanitizer and CMake builds).

A missing or broken minilvlm._emu fails every test that asks for it (it does not skip them) when
CI is set or when minilvlm._C was built with the CUDA kernels (the full build, which builds
minilvlm._emu too): docs/emulator.md, "Tests and CI".
"""
import importlib.util
import os
import sys

import pytest
import torch


def _import_emu():
    """Imports minilvlm._emu (or MINILVLM_EMU_MODULE); returns the error instead of raising it."""
    path = os.environ.get("MINILVLM_EMU_MODULE")
    try:
        if path:
            if not os.path.isfile(path):
                raise ImportError(f"MINILVLM_EMU_MODULE={path} is not a file")
            import minilvlm
            spec = importlib.util.spec_from_file_location("minilvlm._emu", path)
            module = importlib.util.module_from_spec(spec)
            sys.modules["minilvlm._emu"] = module
            spec.loader.exec_module(module)
            minilvlm._emu = module
        else:
            import minilvlm._emu  # noqa: F401  (registers torch.ops.minilvlm_emu.*)
    except ImportError as exc:
        sys.modules.pop("minilvlm._emu", None)
        return exc
    return None


EMU_IMPORT_ERROR = _import_emu()


def emu_required_because():
    """Why a missing minilvlm._emu is a failure here, or None where skipping is allowed."""
    if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
        return f"CI={os.environ['CI']}"
    if os.environ.get("MINILVLM_EMU_MODULE"):
        return "MINILVLM_EMU_MODULE names the build to test"
    import minilvlm
    if minilvlm.ops.native_available() and torch.ops.minilvlm.built_with_cuda():
        return "minilvlm._C has the CUDA kernels, so the full build ran, and it builds minilvlm._emu too"
    return None


def pytest_configure(config):
    config.addinivalue_line("markers", "emu: uses the SIMT emulator (minilvlm._emu); set by conftest for every "
                                       "test that takes the emu fixture")
    config.addinivalue_line("markers", "emu_checks: needs racecheck/memcheck, i.e. an _emu with the access "
                                       "instrumentation (not the AddressSanitizer build)")


def pytest_collection_modifyitems(items):
    for item in items:
        if "emu" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.emu)


def default_checks(ops):
    """The checks every emulator test runs under: all of them where the build has them, or
    MINILVLM_EMU_CHECKS (to measure what they cost)."""
    return os.environ.get("MINILVLM_EMU_CHECKS", "all" if ops.checks_available() else "none")


@pytest.fixture
def emu():
    """torch.ops.minilvlm_emu: our CUDA kernels compiled against the SIMT emulator, run on the CPU, with
    racecheck and memcheck on. Seed, OS threads, checks and GPU profile are reset around each test."""
    if EMU_IMPORT_ERROR is not None:
        message = f"minilvlm._emu cannot be imported: {EMU_IMPORT_ERROR}"
        because = emu_required_because()
        if because:
            pytest.fail(f"{message}; it is required because {because}", pytrace=False)
        pytest.skip(f"{message} (it needs CUDA headers at build time)")
    ops = torch.ops.minilvlm_emu

    def reset():
        ops.set_seed(0)
        ops.set_num_threads(0)
        ops.set_gpu("")
        ops.set_checks(default_checks(ops))

    reset()
    yield ops
    reset()


def max_rel_diff(actual, expected, floor=1e-6):
    """Largest elementwise |actual - expected| / max(|expected|, floor)."""
    actual, expected = actual.double(), expected.double()
    return ((actual - expected).abs() / expected.abs().clamp_min(floor)).max().item()


def adamw_mismatch(actual, expected, exact, floor=1e-6):
    """max_rel_diff of an fp32 AdamW result from an fp32 reference, over the elements whose error
    against the fp64 computation `exact` exceeds twice the reference's own largest error (the 2x
    rule of docs/design.md, "Numerics"). A parameter that passes near zero ends with an absolute rounding error set
    by the size of its updates, not by its value, so there a relative difference between two correct
    fp32 results can exceed 1e-6; a difference counts only if our error is beyond the reference's."""
    actual, expected, exact = actual.double(), expected.double(), exact.double()
    rel = (actual - expected).abs() / expected.abs().clamp_min(floor)
    reference_error = (expected - exact).abs().max()
    beyond = (actual - exact).abs() > 2 * reference_error
    return (rel * beyond).max().item() if rel.numel() else 0.0


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """The folder of a tiny demo run (tests/tiny_run.py), trained once per session."""
    from tests.tiny_run import train_tiny
    run_dir = tmp_path_factory.mktemp("tiny_run") / "run"
    train_tiny(run_dir)
    return run_dir
