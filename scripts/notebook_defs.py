"""What a solution notebook defines (its imports, functions and classes), without running its cells.

The seed scripts (``scripts/seeds_*.py``) measure what a notebook teaches by calling the notebook's
own solution code: this module parses every code cell of ``solutions/NN_name.ipynb``, keeps the
``import``, ``def`` and ``class`` statements, and executes only those, in one namespace. Globals
that those functions read (a tokenizer, a constant) are passed as keyword arguments.
"""

from __future__ import annotations

import ast
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]


def load(notebook: str | Path, **globals_) -> dict:
    """The namespace of ``notebook``'s imports, functions and classes, plus ``globals_``."""
    path = ROOT / notebook
    namespace: dict = {"__name__": "__notebook__", **globals_}
    for cell in nbformat.read(str(path), as_version=4).cells:
        if cell.cell_type != "code":
            continue
        tree = ast.parse(cell.source)
        kept = [node for node in tree.body
                if isinstance(node, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.ClassDef))]
        exec(compile(ast.Module(body=kept, type_ignores=[]), str(path), "exec"), namespace)
    namespace.update(globals_)
    return namespace
