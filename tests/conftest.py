"""Shared fixtures: the emulator module and small helpers for comparing against references."""
import pytest
import torch


@pytest.fixture(scope="session")
def emu():
    """minilvlm._emu: our CUDA kernels compiled against the SIMT emulator, run on the CPU."""
    try:
        import minilvlm._emu  # noqa: F401  (registers torch.ops.minilvlm_emu.*)
    except ImportError as exc:
        pytest.skip(f"minilvlm._emu not built (it needs CUDA headers at build time): {exc}")
    return torch.ops.minilvlm_emu


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
