"""Meta-test: in every solution notebook, each exercise's check fails on the student stub and
passes on the solution. One execution of the notebook serves all its exercises (see
course.grading.grader.verify_solution)."""

import pytest
from conftest import REPO

from course.grading import exercises as ex
from course.grading import grader

SOLUTIONS = sorted((REPO / "solutions").glob("*.ipynb"))


@pytest.mark.slow
@pytest.mark.parametrize("path", SOLUTIONS, ids=[p.stem for p in SOLUTIONS])
def test_every_check_fails_on_its_stub_and_passes_on_the_solution(path):
    manifest = ex.parse_exercises(ex.read(path), path.stem)
    result = grader.verify_solution(path)
    assert result.problems(manifest) == []
    assert set(result.exercises) == {e.id for e in manifest.exercises}


@pytest.mark.slow
def test_meta_test_catches_a_check_that_cannot_fail(toy_course, tmp_path):
    import nbformat
    from conftest import TOY_CELLS, make_notebook

    cells = list(TOY_CELLS)
    cells[4] = ("code", "check.add(lambda a, b: a + b)")  # checks a fixed lambda, not the learner's add
    path = tmp_path / "90_toy.ipynb"
    nbformat.write(make_notebook(cells), str(path))
    problems = grader.verify_solution(path).problems(ex.parse_exercises(ex.read(path), "90_toy"))
    assert problems == ["Exercise 90.1: Add two numbers: check PASSES on the student stub (a check that cannot fail)"]
