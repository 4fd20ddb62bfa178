"""pytest settings for every run from the repository root, nbval runs of solutions/ included.

Kernels started by nbval inherit this process's environment, so the settings the solutions were
recorded with (`python -m course execute`) are set here: headless (no progress bars, static
widgets), one torch thread, Jupyter's inline plots. It also records how long each solution takes
under nbval and fails the run when one exceeds the budget (120 s by default).
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from pathlib import Path

import pytest

NOTEBOOK_BUDGET_S = float(os.environ.get("COURSE_NOTEBOOK_BUDGET_S", "120"))

os.environ["COURSE_HEADLESS"] = "1"
os.environ.pop("MPLBACKEND", None)

# --- record how long each solution takes under nbval, and enforce the budget ---------------------

_notebook_seconds: dict[str, float] = defaultdict(float)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    start = time.perf_counter()
    yield
    if item.fspath and str(item.fspath).endswith(".ipynb"):
        _notebook_seconds[Path(str(item.fspath)).name] += time.perf_counter() - start


def pytest_terminal_summary(terminalreporter):
    if not _notebook_seconds:
        return
    terminalreporter.section(f"solution notebook run times under nbval (budget {NOTEBOOK_BUDGET_S:.0f} s each)")
    for name, seconds in sorted(_notebook_seconds.items()):
        flag = "  OVER BUDGET" if seconds > NOTEBOOK_BUDGET_S else ""
        terminalreporter.write_line(f"{name:<40} {seconds:7.1f} s{flag}")


def pytest_sessionfinish(session, exitstatus):
    over = {n: s for n, s in _notebook_seconds.items() if s > NOTEBOOK_BUDGET_S}
    if over and exitstatus == 0:
        session.exitstatus = 1
