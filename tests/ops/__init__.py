"""Tests of minilvlm.ops, one file per op."""

_registered_on_emulator = set()


def register_on_emulator(register):
    """Run an op module's register_<op>("minilvlm_emu") once per session (torch refuses a second fake), so
    that opcheck can test the emulated CUDA kernels like the native ones."""
    if register.__name__ not in _registered_on_emulator:
        register("minilvlm_emu")
        _registered_on_emulator.add(register.__name__)
