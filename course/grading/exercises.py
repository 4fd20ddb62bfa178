"""Find the exercises in a solution notebook and turn it into the student version.

An exercise is written in a solution notebook as three things in order:

1. a markdown cell with a heading ``### Exercise 1.2: Scaled dot-product attention`` (optionally
   ending in ``(2 points)``; one point otherwise);
2. one or more code cells holding the solution between ``### BEGIN SOLUTION`` and
   ``### END SOLUTION`` lines (put the markers inside a function body so the signature and the
   docstring stay in the student copy);
3. a code cell that calls the check, e.g. ``check.scaled_dot_product_attention(attention)``.

In the student copy each solution region becomes
``raise NotImplementedError("Exercise 1.2: Scaled dot-product attention")`` at the same indent,
outputs and execution counts are cleared, ``# NBVAL_*`` markers are removed, and cells tagged
``solution-only`` are dropped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
SOLUTION_ONLY = "solution-only"
HEADING = re.compile(r"^#{1,6}\s*Exercise\s+(\d+)\.(\d+)\s*:\s*(.+?)\s*(?:\((\d+)\s*points?\))?\s*$",
                     re.MULTILINE)
CHECK_CALL = re.compile(r"\bcheck\.(\w+)\(")
CHECK_IMPORT = re.compile(r"^from\s+(course\.checks)\s+import\s+(\w+)\s+as\s+check\b", re.MULTILINE)
NBVAL_LINE = re.compile(r"^[ \t]*# NBVAL_\w+[ \t]*\n?", re.MULTILINE)


class NotebookFormatError(ValueError):
    """The solution notebook breaks the exercise conventions (the message says which and where)."""


@dataclass
class Exercise:
    id: str
    title: str
    points: int
    solution_cells: list[int] = field(default_factory=list)
    check_cell: int | None = None
    check_source: str = ""

    @property
    def label(self) -> str:
        return f"Exercise {self.id}: {self.title}"

    def to_dict(self) -> dict:
        return {"id": self.id, "title": self.title, "points": self.points, "check_source": self.check_source}


@dataclass
class Manifest:
    """What the grader needs to know about a notebook: its exercises and their checks."""

    notebook: str
    check_module: str
    exercises: list[Exercise]

    @property
    def max_points(self) -> int:
        return sum(e.points for e in self.exercises)


def source(cell) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def notebook_number(name: str) -> int | None:
    match = re.match(r"^(\d+)_", name)
    return int(match.group(1)) if match else None


def read(path: str | Path):
    return nbformat.read(str(path), as_version=4)


def parse_exercises(nb, name: str) -> Manifest:
    """Collect the exercises of a solution notebook, enforcing the conventions above."""
    exercises: list[Exercise] = []
    current: Exercise | None = None
    check_module = ""
    for index, cell in enumerate(nb.cells):
        text = source(cell)
        if cell.cell_type == "markdown":
            for match in HEADING.finditer(text):
                if current is not None and current.check_cell is None:
                    raise NotebookFormatError(f"{name}: {current.label} has no check cell before the next exercise")
                current = Exercise(f"{match.group(1)}.{match.group(2)}", match.group(3),
                                   int(match.group(4) or 1))
                exercises.append(current)
            continue
        if cell.cell_type != "code":
            continue
        if not check_module and (found := CHECK_IMPORT.search(text)):
            check_module = f"{found.group(1)}.{found.group(2)}"
        if BEGIN in text or END in text:
            if current is None:
                raise NotebookFormatError(f"{name}: cell {index} has a solution region but no "
                                          "'### Exercise n.k: title' heading before it")
            if current.check_cell is not None:
                raise NotebookFormatError(f"{name}: cell {index} holds a solution for {current.label} after its "
                                          "check cell; give it its own exercise heading")
            _validate_markers(text, f"{name}: cell {index}")
            current.solution_cells.append(index)
        elif current is not None and current.solution_cells and current.check_cell is None and CHECK_CALL.search(text):
            current.check_cell = index
            current.check_source = NBVAL_LINE.sub("", text)
    for exercise in exercises:
        if not exercise.solution_cells:
            raise NotebookFormatError(f"{name}: {exercise.label} has no cell with a solution region")
        if exercise.check_cell is None:
            raise NotebookFormatError(f"{name}: {exercise.label} has no check cell (a cell calling check.<name>(...))")
    _validate_numbering(exercises, name)
    if exercises and not check_module:
        raise NotebookFormatError(f"{name}: no 'from course.checks import <module> as check' import found")
    return Manifest(name, check_module, exercises)


def _validate_markers(text: str, where: str) -> None:
    depth = 0
    for line in text.splitlines():
        marker = line.strip()
        if marker.startswith(BEGIN):
            if depth:
                raise NotebookFormatError(f"{where}: nested {BEGIN}")
            depth = 1
        elif marker.startswith(END):
            if not depth:
                raise NotebookFormatError(f"{where}: {END} without {BEGIN}")
            depth = 0
    if depth:
        raise NotebookFormatError(f"{where}: {BEGIN} without {END}")


def _validate_numbering(exercises: list[Exercise], name: str) -> None:
    number = notebook_number(name)
    for k, exercise in enumerate(exercises, start=1):
        expected = f"{number}.{k}" if number is not None else None
        if expected and exercise.id != expected:
            raise NotebookFormatError(f"{name}: exercise {k} is numbered {exercise.id}, expected {expected} "
                                      "(notebook number, then 1, 2, 3 ...)")


def stub_source(text: str, label: str) -> str:
    """Replace every solution region with a ``raise NotImplementedError`` at the marker's indent."""
    out, inside = [], False
    for line in text.splitlines(keepends=True):
        marker = line.strip()
        if marker.startswith(BEGIN):
            indent = line[: len(line) - len(line.lstrip())]
            out.append(f"{indent}raise NotImplementedError({label!r})\n")
            inside = True
        elif marker.startswith(END):
            inside = False
        elif not inside:
            out.append(line)
    result = "".join(out)
    return result[:-1] if result.endswith("\n") and not text.endswith("\n") else result


def student_notebook(solution, name: str):
    """The student version of a solution notebook (a new notebook object; the input is untouched)."""
    manifest = parse_exercises(solution, name)
    owner = {i: e for e in manifest.exercises for i in e.solution_cells}
    nb = nbformat.v4.new_notebook()
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
        "course": {"notebook": name, "generated_from": f"solutions/{name}.ipynb",
                   "note": "Generated by `python -m course build`; edit the solution, not this file."},
    }
    for index, cell in enumerate(solution.cells):
        tags = list(cell.get("metadata", {}).get("tags", []))
        if SOLUTION_ONLY in tags:
            continue
        text = source(cell)
        if index in owner:
            text = stub_source(text, owner[index].label)
        if cell.cell_type == "code":
            text = NBVAL_LINE.sub("", text)
            new = nbformat.v4.new_code_cell(text)
        elif cell.cell_type == "markdown":
            new = nbformat.v4.new_markdown_cell(text)
        else:
            new = nbformat.v4.new_raw_cell(text)
        new.id = cell.get("id") or f"cell-{index}"
        if tags:
            new.metadata["tags"] = tags
        if "attachments" in cell:
            new.attachments = cell.attachments
        nb.cells.append(new)
    return nb


def write_deterministic(nb, path: str | Path) -> bool:
    """Write ``nb`` to ``path`` byte-for-byte reproducibly; return True when the file changed."""
    text = nbformat.writes(nb, version=4)
    if not text.endswith("\n"):
        text += "\n"
    path = Path(path)
    if path.exists() and path.read_text() == text:
        return False
    path.write_text(text)
    return True


def build(solutions_dir: str | Path, notebooks_dir: str | Path) -> list[Path]:
    """Regenerate every student notebook; return the paths that changed."""
    solutions_dir, notebooks_dir = Path(solutions_dir), Path(notebooks_dir)
    if not solutions_dir.is_dir():
        raise FileNotFoundError(f"solutions directory not found: {solutions_dir}")
    notebooks_dir.mkdir(parents=True, exist_ok=True)
    changed = []
    for path in sorted(solutions_dir.glob("*.ipynb")):
        target = notebooks_dir / path.name
        if write_deterministic(student_notebook(read(path), path.stem), target):
            changed.append(target)
    return changed


def drift(solutions_dir: str | Path, notebooks_dir: str | Path) -> list[str]:
    """Names of student notebooks that are missing, stale, or have no solution."""
    solutions_dir, notebooks_dir = Path(solutions_dir), Path(notebooks_dir)
    problems = []
    expected = {p.name: p for p in solutions_dir.glob("*.ipynb")}
    for name, path in sorted(expected.items()):
        target = notebooks_dir / name
        text = nbformat.writes(student_notebook(read(path), path.stem), version=4)
        if not text.endswith("\n"):
            text += "\n"
        if not target.exists():
            problems.append(f"{name}: missing from {notebooks_dir}")
        elif target.read_text() != text:
            problems.append(f"{name}: differs from what `python -m course build` makes")
    for path in sorted(notebooks_dir.glob("*.ipynb")):
        if path.name not in expected:
            problems.append(f"{path.name}: has no solution in {solutions_dir}")
    return problems
