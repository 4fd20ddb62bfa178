"""Every notebook's first code cell installs the course on Colab (and does nothing elsewhere)."""

import sys
from pathlib import Path

import nbformat
import pytest

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
sys.path.insert(0, str(SCRIPTS))
from solution_code import load_script  # noqa: E402

colab = load_script("colab_setup_cell")
NOTEBOOKS = sorted((SCRIPTS.parent / "solutions").glob("*.ipynb")) + sorted((SCRIPTS.parent / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_first_code_cell_starts_with_the_colab_setup_before_import_course(path):
    source = colab.first_code_cell(nbformat.read(str(path), as_version=4)).source
    assert source.startswith(colab.setup_lines()), f"run: python scripts/colab_setup_cell.py && python -m course build"
    assert source.index(colab.END) < source.index("import course")


def test_setup_block_is_replaced_not_repeated():
    once = colab.with_setup("import course\n", colab.setup_lines(ref="v1"))
    twice = colab.with_setup(once, colab.setup_lines(ref="v2"))
    assert twice.count(colab.BEGIN) == 1 and "@v2" in twice and "@v1" not in twice
    assert twice.endswith("import course\n")


def test_setup_runs_quietly_off_colab():
    namespace = {}
    exec(colab.setup_lines(), namespace)  # not on Colab: must not try to install anything
    assert "subprocess" not in namespace


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_title_cell_links_to_colab_and_triton_notebooks_say_where_they_run(path):
    title = nbformat.read(str(path), as_version=4).cells[0].source
    assert title.endswith(colab.where_it_runs(path.stem)), "run: python scripts/colab_setup_cell.py && python -m course build"
    assert ("Triton ships for Linux only" in title) == (path.stem[:2] in colab.TRITON_NOTEBOOKS)


def test_link_block_is_replaced_not_repeated():
    once = colab.with_link("# Title\n", colab.where_it_runs("02_flash_attention"))
    assert colab.with_link(once, colab.where_it_runs("02_flash_attention")) == once


def test_triton_notebook_list_matches_the_course():
    from course import runtime

    assert colab.TRITON_NOTEBOOKS == runtime.TRITON_NOTEBOOKS
