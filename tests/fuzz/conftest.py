"""Reports the fuzz campaign's totals at the end of the run: cases and failures per target."""
from tests.fuzz.harness import RESULTS


def pytest_terminal_summary(terminalreporter):
    if not RESULTS:
        return
    total = sum(c for c, _ in RESULTS.values())
    failed = sum(f for _, f in RESULTS.values())
    terminalreporter.write_sep("=", "fuzz campaign")
    for target, (cases, failures) in sorted(RESULTS.items()):
        terminalreporter.write_line(f"fuzz {target}: {cases} cases, {failures} failures")
    terminalreporter.write_line(f"fuzz: {total} cases, {failed} failures")
