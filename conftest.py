"""pytest settings for every run from the repository root, nbval runs of solutions/ included.

Kernels started by nbval inherit this process's environment, so the settings the solutions were
recorded with (`python -m course execute`) are set here: headless (no progress bars, static
widgets), one torch thread, Jupyter's inline plots. It also records how long each solution takes
under nbval and fails the run when one's kernel used more CPU time than the budget (120 s by
default). The budget is on CPU seconds, not wall seconds: wall time depends on what else the
machine runs (CI runs two notebooks at once on two cores), CPU time on the notebook alone. Wall
time is printed next to it.
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
# OpenMP threads that wait for work sleep instead of spinning. With more torch threads than free
# cores (the second numeric configuration runs 2 threads per notebook, two notebooks at once on 2
# cores), spinning made a small training loop 30x slower here (61 s vs 2 s wall for 200 steps).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# --- record how long each solution takes under nbval, and enforce the budget ---------------------

_notebook_seconds: dict[str, float] = defaultdict(float)
_notebook_cpu: dict[str, float] = {}


def _kernel_cpu_seconds(item) -> float | None:
    """CPU time (user + system) the notebook's kernel process has used so far, from /proc."""
    try:
        pid = item.parent.kernel.km.provisioner.process.pid
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (AttributeError, OSError, ValueError, IndexError):
        return None  # not an nbval item, not Linux, or the kernel is gone


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    # Measured where the cell runs (an xdist worker, perhaps) and carried to the controller in
    # the test report's user_properties, which xdist serialises.
    start = time.perf_counter()
    yield
    if item.fspath and str(item.fspath).endswith(".ipynb"):
        item.user_properties.append(("notebook_seconds", time.perf_counter() - start))
        cpu = _kernel_cpu_seconds(item)
        if cpu is not None:
            item.user_properties.append(("notebook_cpu", cpu))


def pytest_runtest_logreport(report):
    if report.when != "call" or not report.nodeid.split("::")[0].endswith(".ipynb"):
        return
    name = Path(report.nodeid.split("::")[0]).name
    for key, value in report.user_properties:
        if key == "notebook_seconds":
            _notebook_seconds[name] += value
        elif key == "notebook_cpu":
            _notebook_cpu[name] = value  # cumulative for the kernel: the last cell's reading is the total


def pytest_terminal_summary(terminalreporter):
    if not _notebook_seconds:
        return
    terminalreporter.section(f"solution notebooks under nbval: wall and kernel CPU seconds (budget {NOTEBOOK_BUDGET_S:.0f} s CPU)")
    for name, seconds in sorted(_notebook_seconds.items()):
        cpu = f"{_notebook_cpu[name]:7.1f} s CPU" if name in _notebook_cpu else "    ? s CPU"
        flag = "  OVER BUDGET" if name in _over_budget() else ""
        terminalreporter.write_line(f"{name:<40} {seconds:7.1f} s wall {cpu}{flag}")
    terminalreporter.write_line(f"{'all solutions':<40} {sum(_notebook_seconds.values()):7.1f} s wall "
                                f"{sum(_notebook_cpu.values()):7.1f} s CPU")


def _over_budget() -> set[str]:
    """Solutions whose kernel used more CPU seconds than the budget (wall time where /proc has no
    reading, e.g. not Linux: better a flaky budget than none)."""
    return {name for name, wall in _notebook_seconds.items()
            if _notebook_cpu.get(name, wall) > NOTEBOOK_BUDGET_S}


def pytest_sessionfinish(session, exitstatus):
    if _over_budget() and exitstatus == 0:
        session.exitstatus = 1
