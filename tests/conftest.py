"""Shared fixtures, and a per-notebook time budget for nbval runs of the solutions."""

from __future__ import annotations

import os
import time
from collections import defaultdict
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK_BUDGET_S = float(os.environ.get("COURSE_NOTEBOOK_BUDGET_S", "120"))

os.environ.setdefault("COURSE_HEADLESS", "1")  # kernels started by nbval inherit this
os.environ.setdefault("MPLBACKEND", "Agg")


# --- the toy course used by the grader's tests ---------------------------------------------------

TOY_CELLS = [
    ("markdown", "# Toy notebook\nTwo exercises, used by the grader's tests."),
    ("code", "import course\nfrom course.checks import demo as check"),
    ("markdown", "### Exercise 90.1: Add two numbers"),
    ("code", "def add(a, b):\n    \"\"\"Return a + b.\"\"\"\n    ### BEGIN SOLUTION\n    return a + b\n    ### END SOLUTION"),
    ("code", "check.add(add)"),
    ("markdown", "### Exercise 90.2: Mean of a tensor (2 points)"),
    ("code", "def mean(x):\n    ### BEGIN SOLUTION\n    return x.sum() / x.numel()\n    ### END SOLUTION"),
    ("code", "check.mean(mean)"),
    ("code", "print('done')"),
]


def make_notebook(cells) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    for i, (kind, text) in enumerate(cells):
        cell = nbformat.v4.new_code_cell(text) if kind == "code" else nbformat.v4.new_markdown_cell(text)
        cell.id = f"toy-{i}"
        nb.cells.append(cell)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


@pytest.fixture(scope="session")
def toy_course(tmp_path_factory):
    """A solutions/ folder holding 90_toy.ipynb, and its generated student notebook."""
    from course.grading import exercises

    root = tmp_path_factory.mktemp("toy_course")
    (root / "solutions").mkdir()
    nbformat.write(make_notebook(TOY_CELLS), str(root / "solutions" / "90_toy.ipynb"))
    exercises.build(root / "solutions", root / "notebooks")
    return root


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
