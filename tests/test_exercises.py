"""Student notebooks are generated deterministically from solutions, and never drift."""

import nbformat
import pytest
from conftest import REPO, TOY_CELLS, make_notebook

from course.grading import exercises as ex


def test_stub_keeps_signature_and_indent_and_drops_the_solution():
    text = "def f(x):\n    \"\"\"Doc.\"\"\"\n    ### BEGIN SOLUTION\n    return x + 1\n    ### END SOLUTION\n"
    stub = ex.stub_source(text, "Exercise 1.1: f")
    assert stub == "def f(x):\n    \"\"\"Doc.\"\"\"\n    raise NotImplementedError('Exercise 1.1: f')\n"


def test_student_notebook_clears_outputs_drops_solution_only_and_nbval_markers():
    cells = TOY_CELLS + [("code", "# NBVAL_IGNORE_OUTPUT\nprint(1)"), ("code", "secret = 1")]
    nb = make_notebook(cells)
    nb.cells[-1].metadata["tags"] = ["solution-only"]
    nb.cells[4].outputs = [nbformat.v4.new_output("stream", text="✓ add passed")]
    nb.cells[4].execution_count = 3
    student = ex.student_notebook(nb, "90_toy")
    sources = [ex.source(c) for c in student.cells]
    assert "secret = 1" not in sources and "print(1)" in sources
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in student.cells if c.cell_type == "code")
    assert "raise NotImplementedError('Exercise 90.2: Mean of a tensor')" in sources[6]
    assert student.metadata["course"]["notebook"] == "90_toy"


def test_manifest_reads_titles_points_and_check_source():
    manifest = ex.parse_exercises(make_notebook(TOY_CELLS), "90_toy")
    assert [(e.id, e.title, e.points) for e in manifest.exercises] == [("90.1", "Add two numbers", 1),
                                                                       ("90.2", "Mean of a tensor", 2)]
    assert manifest.exercises[0].check_source == "check.add(add)"
    assert manifest.check_module == "course.checks.demo"


@pytest.mark.parametrize("cells, message", [
    ([("code", "def f():\n    ### BEGIN SOLUTION\n    pass\n    ### END SOLUTION")], "no '### Exercise n.k: title'"),
    ([("markdown", "### Exercise 90.1: f"), ("code", "def f():\n    ### BEGIN SOLUTION\n    pass")], "without"),
    ([("markdown", "### Exercise 90.1: f"), ("code", "def f():\n    ### BEGIN SOLUTION\n    pass\n    ### END SOLUTION")],
     "has no check cell"),
    ([("markdown", "### Exercise 90.2: f"), ("code", "def f():\n    ### BEGIN SOLUTION\n    pass\n    ### END SOLUTION"),
      ("code", "check.f(f)")], "expected 90.1"),
])
def test_broken_conventions_are_reported_with_where_and_what(cells, message):
    with pytest.raises(ex.NotebookFormatError, match=message):
        ex.parse_exercises(make_notebook([("code", "from course.checks import demo as check")] + cells), "90_toy")


def test_build_is_byte_for_byte_deterministic(tmp_path):
    solutions = tmp_path / "solutions"
    solutions.mkdir()
    nbformat.write(make_notebook(TOY_CELLS), str(solutions / "90_toy.ipynb"))
    assert ex.build(solutions, tmp_path / "a") and ex.build(solutions, tmp_path / "b")
    assert (tmp_path / "a" / "90_toy.ipynb").read_bytes() == (tmp_path / "b" / "90_toy.ipynb").read_bytes()
    assert ex.build(solutions, tmp_path / "a") == []  # nothing changes on a re-run
    (tmp_path / "a" / "90_toy.ipynb").write_text("{}")
    assert ex.drift(solutions, tmp_path / "a") == ["90_toy.ipynb: differs from what `python -m course build` makes"]


def test_committed_student_notebooks_match_the_solutions():
    problems = ex.drift(REPO / "solutions", REPO / "notebooks")
    assert problems == [], "run `make notebooks`:\n" + "\n".join(problems)


def test_every_solution_follows_the_course_conventions():
    for path in sorted((REPO / "solutions").glob("*.ipynb")):
        nb = ex.read(path)
        manifest = ex.parse_exercises(nb, path.stem)
        assert len(manifest.exercises) >= 4, f"{path.name}: fewer than 4 graded exercises"
        first_code = next(ex.source(c) for c in nb.cells if c.cell_type == "code")
        assert "import course" in first_code, f"{path.name}: the first code cell must import course"
        for i, cell in enumerate(nb.cells):
            for output in cell.get("outputs", []):
                assert output.get("output_type") != "error", f"{path.name}: cell {i} stored an error"
