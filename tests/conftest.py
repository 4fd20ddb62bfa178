"""Fixtures for the course's own tests: a toy course notebook for the grader."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parent.parent


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
