"""The emulator module as the builds leave it: `cmake --build` gives an importable minilvlm._emu, and a
missing or broken _emu fails the emulator tests instead of skipping them in CI and after the full build
(tests/conftest.py; docs/emulator.md, "Tests and CI")."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import minilvlm

ROOT = Path(__file__).resolve().parents[2]


def in_ci():
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def cmake_emu_module():
    """build/cmake/minilvlm/_emu*.so (or under MINILVLM_CMAKE_BUILD), as `cmake --build` writes it."""
    build = Path(os.environ.get("MINILVLM_CMAKE_BUILD", ROOT / "build" / "cmake"))
    found = sorted(build.glob("minilvlm/_emu*.so"))
    return found[0] if found else None


LOAD_AND_RUN = """
import importlib.util, sys, torch, minilvlm
spec = importlib.util.spec_from_file_location("minilvlm._emu", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
ops = torch.ops.minilvlm_emu
x = torch.arange(4096, dtype=torch.float32)
sums = ops.selftest_block_sum(x, 256, 4)
assert torch.equal(sums.double(), x.double().view(-1, 4, 256).sum((0, 2))), sums
assert issubclass(module.EmulatorError, RuntimeError)
print("ok", module.__file__, ops.checks_available())
"""


def test_cmake_built_emu_module_imports_and_runs_a_kernel():
    module = cmake_emu_module()
    if module is None:
        if in_ci():
            pytest.fail("CI builds minilvlm._emu with CMake (cmake --build build/cmake --target minilvlm_emu), "
                        "but build/cmake/minilvlm/_emu*.so is missing")
        pytest.skip("no CMake build of minilvlm._emu in build/cmake (set MINILVLM_CMAKE_BUILD); CI makes one")
    # A fresh process: a second _emu in this one would register torch.ops.minilvlm_emu twice.
    result = subprocess.run([sys.executable, "-c", LOAD_AND_RUN, str(module)], cwd=ROOT, capture_output=True,
                            text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert result.returncode == 0 and result.stdout.startswith("ok"), result.stdout + result.stderr


def run_emu_test_without_emu(tmp_path, **env):
    """pytest on one emulator test in a process where `import minilvlm._emu` fails (as when the module
    was deleted after the build): a sitecustomize blocks it."""
    (tmp_path / "sitecustomize.py").write_text("import sys\nsys.modules['minilvlm._emu'] = None\n")
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]), **env)
    environment.pop("MINILVLM_EMU_MODULE", None)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "tests/test_emu.py::test_transpose"], cwd=ROOT, capture_output=True, text=True,
                          env=environment)


def test_missing_emu_fails_the_emulator_tests_in_ci(tmp_path):
    result = run_emu_test_without_emu(tmp_path, CI="true")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "5 errors" in result.stdout and "skipped" not in result.stdout, result.stdout
    assert "minilvlm._emu cannot be imported" in result.stdout and "it is required because CI=true" in result.stdout


def test_missing_emu_fails_after_the_full_build_and_skips_only_without_it(tmp_path):
    result = run_emu_test_without_emu(tmp_path, CI="")
    if minilvlm.ops.native_available() and torch.ops.minilvlm.built_with_cuda():
        assert result.returncode == 1, result.stdout + result.stderr
        assert "5 errors" in result.stdout and "minilvlm._C has the CUDA kernels" in result.stdout, result.stdout
    else:  # a CPU-only build without CUDA headers cannot build _emu: the emulator tests may skip
        assert result.returncode == 0 and "5 skipped" in result.stdout, result.stdout + result.stderr


ASAN_MASKED_TAIL = """
import importlib.util, sys, torch, minilvlm
spec = importlib.util.spec_from_file_location("minilvlm._emu", sys.argv[1])
module = importlib.util.module_from_spec(spec)
sys.modules["minilvlm._emu"] = module
spec.loader.exec_module(module)
rows, v = torch.randn(5, 40), torch.randn(40)
torch.ops.minilvlm_emu.planted_masked_tail(rows, v, False)
print("correct twin ok", flush=True)
torch.ops.minilvlm_emu.planted_masked_tail(rows, v, True)
"""


def asan_emu_module():
    """The AddressSanitizer build of _emu: the one under test in .ci/run's ASan step, else build/cmake-asan's."""
    if "libasan" in os.environ.get("LD_PRELOAD", "") and os.environ.get("MINILVLM_EMU_MODULE"):
        return Path(os.environ["MINILVLM_EMU_MODULE"])
    found = sorted((ROOT / "build" / "cmake-asan").glob("minilvlm/_emu*.so"))
    return found[0] if found else None


@pytest.mark.emu
def test_asan_build_reports_the_planted_masked_tail_read(tmp_path):
    """The ASan step is not vacuous: on the AddressSanitizer build, the masked tail read of
    tests/emu/planted_bugs.cuh (the bug that only ASan found in the audit) ends the process with
    ASan's report at its line, while the correct twin runs clean."""
    module = asan_emu_module()
    if module is None:
        pytest.skip("no AddressSanitizer build of minilvlm._emu (build/cmake-asan); .ci/run makes one and runs this "
                    "test in its AddressSanitizer step")
    compiler = os.environ.get("CXX", "c++")
    preload = [subprocess.run([compiler, f"-print-file-name={lib}"], capture_output=True, text=True,
                              check=True).stdout.strip() for lib in ("libasan.so", "libstdc++.so")]
    log = tmp_path / "asan"
    env = dict(os.environ, PYTHONPATH=str(ROOT), LD_PRELOAD=" ".join(preload),
               ASAN_OPTIONS=f"detect_leaks=0:abort_on_error=1:log_path={log}")
    result = subprocess.run([sys.executable, "-c", ASAN_MASKED_TAIL, str(module)], cwd=ROOT, env=env,
                            capture_output=True, text=True)
    reports = "".join(path.read_text() for path in tmp_path.glob("asan.*"))
    assert result.returncode != 0 and "correct twin ok" in result.stdout, result.stdout + result.stderr + reports
    assert "ERROR: AddressSanitizer" in reports and "READ of size 4" in reports, reports
    line = 1 + next(i for i, text in enumerate((ROOT / "tests/emu/planted_bugs.cuh").read_text().splitlines())
                    if "const float a = __ldg(rows" in text)
    assert "masked_tail_kernel<true>" in reports and f"planted_bugs.cuh:{line}" in reports, reports
