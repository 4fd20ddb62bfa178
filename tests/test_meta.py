"""Meta-test: in every solution notebook, each exercise's check fails on the student stub and on
every plausible wrong solution declared in tests/mutants.py, and passes on the solution. One
execution of the notebook serves all its exercises (see course.grading.grader.verify_solution)."""

import pytest
from conftest import REPO
from mutants import MUTANTS, for_notebook

from course.grading import exercises as ex
from course.grading import grader

SOLUTIONS = sorted((REPO / "solutions").glob("*.ipynb"))


@pytest.mark.slow
@pytest.mark.parametrize("path", SOLUTIONS, ids=[p.stem for p in SOLUTIONS])
def test_every_check_fails_on_its_stub_and_its_mutants_and_passes_on_the_solution(path):
    manifest = ex.parse_exercises(ex.read(path), path.stem)
    mutants = for_notebook(path.stem)
    result = grader.verify_solution(path, mutants=mutants)
    for exercise, outcome in result.exercises.items():  # with -s: how each mutant was caught
        for name, wrong in outcome.get("mutants", {}).items():
            print(f"{exercise} {name} ({wrong['seconds']:.1f} s): {wrong['message'].splitlines()[0][:160]!r}")
    print(f"{path.stem}: {result.seconds:.0f} s in all, {result.mutant_seconds():.1f} s in mutants")
    assert result.problems(manifest) == []
    assert set(result.exercises) == {e.id for e in manifest.exercises}
    assert {e: set(o.get("mutants", {})) for e, o in result.exercises.items() if e in mutants} == \
        {e: {m.name for m in found} for e, found in mutants.items()}


def test_every_mutant_names_an_exercise_and_applies_to_its_solution():
    """Cheap (no execution): a mutant whose exercise was renumbered or whose solution text changed
    is found here, before the slow meta-test."""
    exercises = {}
    for path in SOLUTIONS:
        nb = ex.read(path)
        for e in ex.parse_exercises(nb, path.stem).exercises:
            exercises[e.id] = [ex.source(nb.cells[j]) for j in e.solution_cells]
    for exercise, found in MUTANTS.items():
        assert exercise in exercises, f"mutants declared for exercise {exercise}, which no solution has"
        assert len({m.name for m in found}) == len(found), f"two mutants of {exercise} share a name"
        for mutant in found:
            assert mutant.why, f"mutant {mutant.name} of {exercise} does not say why it is wrong"
            assert mutant.sources(exercises[exercise]) != exercises[exercise]


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


@pytest.mark.slow
def test_meta_test_reports_a_mutant_the_check_cannot_catch(toy_course, tmp_path):
    """In the same single run: a mutant the check misses is a problem, a caught one is not, and a
    mutant that no longer applies, or whose own cell raises, is reported rather than counted as caught."""
    import nbformat
    from conftest import TOY_CELLS, make_notebook

    path = tmp_path / "90_toy.ipynb"
    nbformat.write(make_notebook(TOY_CELLS), str(path))
    mutants = {
        "90.1": [grader.Mutant("subtracts", "a - b", edits=(("return a + b", "return a - b"),)),
                 grader.Mutant("wrong-past-100", "the check only tries |a|, |b| <= 6",
                               edits=(("return a + b", "return a + b if abs(a) < 100 else 0"),)),
                 grader.Mutant("stale", "its text is not in the solution", edits=(("return b + a", "return 0"),))],
        "90.2": [grader.Mutant("sum-not-mean", "forgets to divide", edits=(("/ x.numel()", ""),)),
                 grader.Mutant("raises", "its cell fails before defining mean", cells=("1 / 0",))],
    }
    result = grader.verify_solution(path, mutants=mutants)
    problems = result.problems(ex.parse_exercises(ex.read(path), "90_toy"))
    assert problems == [
        "Exercise 90.1: Add two numbers: mutant 'stale': expected the text 'return b + a' once in the solution "
        "cells, found it 0 times (did the solution change?)",
        "Exercise 90.1: Add two numbers: check PASSES on mutant wrong-past-100",
        "Exercise 90.2: Mean of a tensor: mutant raises tests nothing: its cells raised ZeroDivisionError: "
        "division by zero"]
    assert not result.exercises["90.1"]["mutants"]["subtracts"]["passed"]
    assert "add(0, 1) should be 1" in result.exercises["90.1"]["mutants"]["subtracts"]["message"]
    assert not result.exercises["90.2"]["mutants"]["sum-not-mean"]["passed"]


def test_a_mutant_is_an_edit_found_once_or_whole_cells_one_per_solution_cell():
    solutions = ["def f(x):\n    return x + 1", "def g(x):\n    return 2 * x"]
    twice_wrong = grader.Mutant("both", "why", edits=(("x + 1", "x - 1"), ("2 * x", "3 * x")))
    assert twice_wrong.sources(solutions) == ["def f(x):\n    return x - 1", "def g(x):\n    return 3 * x"]
    assert grader.Mutant("whole", "why", cells=("a = 1", "b = 2")).sources(solutions) == ["a = 1", "b = 2"]
    with pytest.raises(ValueError, match="found it 2 times"):
        grader.Mutant("ambiguous", "why", edits=(("return", "yield"),)).sources(solutions)
    with pytest.raises(ValueError, match="gives 1 cells; the exercise has 2"):
        grader.Mutant("short", "why", cells=("a = 1",)).sources(solutions)
    with pytest.raises(ValueError, match="either edits or cells"):
        grader.Mutant("neither", "why").sources(solutions)
    with pytest.raises(ValueError, match="changes nothing"):
        grader.Mutant("same", "why", edits=(("x + 1", "x + 1"),)).sources(solutions)
