"""scripts/make_course_map.py: the README's course map, one row and one thumbnail per solution notebook."""

from __future__ import annotations

import base64
import importlib.util
import io
import sys
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parent.parent


def load_script():
    spec = importlib.util.spec_from_file_location("make_course_map", REPO / "scripts" / "make_course_map.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


cm = load_script()


def png_bytes(width_in=6.0, height_in=4.0) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(width_in, height_in), dpi=100)
    ax.plot([0, 1], [0, 1])
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def image_output(png: bytes):
    return nbformat.v4.new_output("display_data", data={"image/png": base64.b64encode(png).decode(),
                                                        "text/plain": "<Figure>"})


def fake_notebook(folder: Path, stem: str, plots: int) -> Path:
    """A new notebook as a helper would add it: header, one exercise, ``plots`` cells with a stored plot."""
    nb = nbformat.v4.new_notebook()
    nb.cells.append(nbformat.v4.new_markdown_cell(
        "# 99 · New paper: a subtitle\n\n**Paper:** Ada Lovelace, Alan Turing. *A New Paper.* ICML 2031. "
        "[arXiv:3101.01234](https://arxiv.org/abs/3101.01234)\n\n**What you will build:** things.\n\n"
        "**Prerequisites:** none. **Time:** about 45 minutes."))
    nb.cells.append(nbformat.v4.new_code_cell("import course\nfrom course.checks import demo as check"))
    nb.cells.append(nbformat.v4.new_markdown_cell("### Exercise 99.1: Build the thing"))
    nb.cells.append(nbformat.v4.new_code_cell("def thing():\n    ### BEGIN SOLUTION\n    return 1\n    ### END SOLUTION"))
    nb.cells.append(nbformat.v4.new_code_cell("check.thing(thing)"))
    for k in range(plots):
        cell = nbformat.v4.new_code_cell(f"plot({k})")
        cell.id = f"plot-{k}"
        cell.outputs = [image_output(png_bytes(6 + k, 4))]
        nb.cells.append(cell)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}.ipynb"
    nbformat.write(nb, str(path))
    return path


def test_the_table_lists_every_solution_notebook_with_a_link_and_its_thumbnail(tmp_path):
    rows = cm.rows(REPO / "solutions", tmp_path / "img")
    stems = sorted(p.stem for p in (REPO / "solutions").glob("*.ipynb"))
    assert [r.stem for r in rows] == stems
    text = cm.table(rows, notebooks_link="../notebooks/", img_link="img/")
    assert text.splitlines()[0] == ("| # | notebook | paper | what you build | time to complete | CPU/GPU needs "
                                   "| image | Colab |")
    for r in rows:
        assert f"(../notebooks/{r.stem}.ipynb)" in text, r.stem
        assert f"[Open in Colab]({cm.colab_url(r.stem)})" in text, r.stem
        if r.image:
            assert (tmp_path / "img" / r.image).is_file()
            assert f'src="img/{r.image}"' in text
    assert len(text.strip().splitlines()) == 2 + len(stems)


def test_the_start_here_and_flash_attention_rows_read_their_headers(tmp_path):
    rows = {r.stem: r for r in cm.rows(REPO / "solutions", tmp_path / "img")}
    start, flash = rows["00_start_here"], rows["02_flash_attention"]
    assert (start.paper, start.time) == ("—", "20 minutes")
    assert flash.title == "FlashAttention" and "2205.14135" in flash.paper and "Dao et al." in flash.paper
    assert flash.time == "3 hours" and "Triton" in flash.hardware
    assert "Online softmax" in flash.build
    assert start.plot_cell == cm.PLOT_CELLS["00_start_here"]


def test_every_chosen_plot_cell_exists_in_its_solution_notebook():
    for stem, cell_id in cm.PLOT_CELLS.items():
        path = REPO / "solutions" / f"{stem}.ipynb"
        if not path.is_file():
            continue  # a notebook being written: its row appears when it lands
        ids = [c.get("id") for c in nbformat.read(str(path), as_version=4).cells]
        assert cell_id in ids, f"{stem}: PLOT_CELLS names {cell_id!r}, not a cell of the notebook"


def test_a_new_notebook_without_a_plot_gets_a_fallback_row(tmp_path):
    fake_notebook(tmp_path / "solutions", "99_new_paper", plots=0)
    (row,) = cm.rows(tmp_path / "solutions", tmp_path / "img")
    assert (row.number, row.title, row.image) == ("99", "New paper", None)
    assert row.paper == "Lovelace et al., *A New Paper*, ICML 2031 ([3101.01234](https://arxiv.org/abs/3101.01234))"
    assert (row.build, row.time, row.hardware) == ("Build the thing", "45 minutes", "CPU")
    assert "| no plot yet |" in cm.table([row], notebooks_link="", img_link="")


def test_a_notebook_not_in_the_plot_list_uses_its_last_stored_plot_shrunk_to_a_thumbnail(tmp_path):
    fake_notebook(tmp_path / "solutions", "99_new_paper", plots=2)
    (row,) = cm.rows(tmp_path / "solutions", tmp_path / "img")
    assert (row.image, row.plot_cell) == ("99_new_paper.png", "plot-1")
    from PIL import Image

    with Image.open(tmp_path / "img" / "99_new_paper.png") as image:
        assert image.size[0] <= cm.THUMBNAIL[0] and image.size[1] <= cm.THUMBNAIL[1]
        assert image.size[0] == cm.THUMBNAIL[0]  # 800x400 px scaled by width: 320x160


def test_write_makes_the_markdown_file_and_main_prints_readme_links(tmp_path, capsys):
    fake_notebook(tmp_path / "solutions", "99_new_paper", plots=1)
    assert cm.main(["--solutions", str(tmp_path / "solutions"), "--docs", str(tmp_path / "docs"),
                    "--for-readme"]) == 0
    text = (tmp_path / "docs" / "course_map.md").read_text()
    assert text.startswith("# Course map") and "(../notebooks/99_new_paper.ipynb)" in text
    assert 'src="img/99_new_paper.png"' in text and (tmp_path / "docs" / "img" / "99_new_paper.png").is_file()
    printed = capsys.readouterr().out  # --for-readme: the same table with links from the repository root
    assert "](notebooks/99_new_paper.ipynb)" in printed and 'src="docs/img/99_new_paper.png"' in printed


def test_a_missing_solutions_folder_is_named_in_the_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="solutions: no such folder"):
        cm.rows(tmp_path / "nope", tmp_path / "img")


def test_colab_links_open_the_student_notebook_of_the_repository_named_once(monkeypatch):
    assert cm.colab_url("02_flash_attention", "ada/p2k", "dev") == (
        "https://colab.research.google.com/github/ada/p2k/blob/dev/notebooks/02_flash_attention.ipynb")
    monkeypatch.setenv("COURSE_GITHUB_REPO", "ada/p2k")  # the script reads it once, when loaded
    module = load_script()
    try:
        assert module.GITHUB_REPO == "ada/p2k"
        row = module.Row("02", "02_flash_attention", "FlashAttention", "—", "—", "3 hours", "CPU", None, None)
        assert "(https://colab.research.google.com/github/ada/p2k/blob/main/notebooks/02_flash_attention.ipynb)" \
            in module.table([row], notebooks_link="", img_link="")
    finally:
        monkeypatch.delenv("COURSE_GITHUB_REPO")
        load_script()  # leave sys.modules with the default constant for other tests
