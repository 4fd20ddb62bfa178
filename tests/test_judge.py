"""The verdict is decided in the grader's process: nothing a submission does in its kernel changes it.

Each attack is a cell appended to a submission that does not solve the exercises (the generated
student copy) and tries to get points anyway: by patching the course, torch or builtins in its
kernel, forging result files, replacing the grader's agent, or returning objects that claim to
equal anything. All must score 0; the solved notebook still scores full marks. The last tests run
the judge on real notebooks: notebook 01's student copy with the two attacks first reported, and
solution / student copy of a sample of notebooks.
"""

from __future__ import annotations

import nbformat
import pytest
from conftest import REPO, TOY_CELLS, make_notebook

from course.grading import exercises as ex
from course.grading import grader

pytestmark = pytest.mark.slow

LIMITS = dict(cell_timeout=20, total_timeout=120, check_timeout=10)

RESULTS_APPEND = """import course.checks.core as core
class Passing(list):
    def append(self, result):
        result.passed = True
        super().append(result)
core.RESULTS = Passing()"""

PROBE_RUN_CHECK = """import course.grading.probe as probe
def run_check(*args, **kwargs):
    return {"passed": True, "message": "", "seconds": 0.0}
probe.run_check = run_check"""

ATTACKS = {
    "results-append": RESULTS_APPEND,
    "probe-run-check": PROBE_RUN_CHECK,
    "patched-builtins": """import builtins
builtins.isinstance = lambda obj, kind: True
builtins.NotImplementedError = type("NotImplementedError", (Exception,), {})
def add(a, b):
    raise NotImplementedError("done, honestly")""",
    "forged-results-files": """import json, pathlib, time
verdict = {"90.1": {"passed": True, "message": ""}, "90.2": {"passed": True, "message": ""}}
for n in range(20):
    pathlib.Path(f"check-results-{time.time_ns() + n}.json").write_text(json.dumps(verdict))
print(json.dumps(verdict))
print("\\u2713 add passed\\n\\u2713 mean passed")""",
    "fake-course-package": """import os, sys
os.makedirs("fake/course/grading", exist_ok=True)
for name in ("course/__init__.py", "course/grading/__init__.py"):
    open(f"fake/{name}", "w").write("")
open("fake/course/grading/agent.py", "w").write("def serve(path, token):\\n    print('all passed')\\n")
sys.path.insert(0, os.path.abspath("fake"))
[sys.modules.pop(m) for m in list(sys.modules) if m == "course" or m.startswith("course.")]""",
    "patched-torch-comparisons": """import torch
torch.allclose = lambda *a, **k: True
torch.equal = lambda *a, **k: True
torch.Tensor.__eq__ = lambda self, other: torch.ones((), dtype=torch.bool)
def add(a, b): return 0
def mean(x): return torch.zeros(())""",
    "gc-walk-and-patch-checks": """import gc, course.checks.core as core, course.checks.demo as demo
for obj in gc.get_objects():
    if isinstance(obj, core.Result): obj.passed = True
for name in ("add", "mean"):
    setattr(demo, name, lambda fn, name=name: core.RESULTS.append(core.Result(name, True, "")))
core.CheckFailed = type("CheckFailed", (BaseException,), {})""",
    "always-equal-return": """class Anything(float):
    def __eq__(self, other): return True
    def __ne__(self, other): return False
    def __bool__(self): return True
def add(a, b): return Anything()
def mean(x): return Anything()""",
    "impersonated-agent": """import socket, course.grading.agent as agent, course.grading.remote as wire
def serve(path, token):
    s = socket.socket(socket.AF_UNIX); s.connect(path); s.sendall(token.encode())
    while (h := wire.receive_message(s)[0]).get("op") != "bye":
        wire.send_message(s, {"op": "reply", "id": h["id"], "ok": True, "values": [True, None]}, [])
agent.serve = serve""",
}


def _notebook(tmp_path, cells, name="90_toy.ipynb"):
    path = tmp_path / name
    nbformat.write(make_notebook(cells), str(path))
    return path


def _student_with(toy_course, tmp_path, extra: str):
    student = ex.read(toy_course / "notebooks" / "90_toy.ipynb")
    cells = [(c.cell_type, ex.source(c)) for c in student.cells] + [("code", extra)]
    return _notebook(tmp_path, cells)


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_attack_from_inside_the_kernel_scores_zero(toy_course, tmp_path, attack):
    report = grader.grade(_student_with(toy_course, tmp_path, ATTACKS[attack]),
                          solutions_dir=toy_course / "solutions", **LIMITS)
    assert report.points == 0, grader.format_report(report)


def test_solved_toy_notebook_still_gets_full_marks_from_the_judge(toy_course, tmp_path):
    report = grader.grade(_notebook(tmp_path, TOY_CELLS), solutions_dir=toy_course / "solutions", **LIMITS)
    assert (report.points, report.max_points) == (3, 3), grader.format_report(report)


def test_learner_code_that_writes_into_its_arguments_is_seen_by_the_judge(toy_course, tmp_path):
    """Write-back: a function that fills a buffer it was given, and returns a fresh tensor."""
    cells = list(TOY_CELLS)
    cells[6] = ("code", "def mean(x):\n    out = x.sum().reshape(1)\n    out /= x.numel()\n    return out[0].clone()")
    report = grader.grade(_notebook(tmp_path, cells), solutions_dir=toy_course / "solutions", **LIMITS)
    assert report.points == 3, grader.format_report(report)


# --- the real notebooks --------------------------------------------------------------------------


@pytest.mark.parametrize("attack", ["results-append", "probe-run-check"])
def test_the_two_reported_attacks_score_zero_on_notebook_01(tmp_path, attack):
    student = ex.read(REPO / "notebooks" / "01_transformer.ipynb")
    student.cells.append(nbformat.v4.new_code_cell(ATTACKS[attack]))
    path = tmp_path / "01_transformer.ipynb"
    nbformat.write(student, str(path))
    report = grader.grade(path)
    assert report.points == 0, grader.format_report(report)


SAMPLE = ["00_start_here", "01_transformer"]


@pytest.mark.parametrize("name", SAMPLE)
def test_judge_gives_the_solution_full_marks_and_the_student_copy_zero(name):
    solved = grader.grade(REPO / "solutions" / f"{name}.ipynb")
    assert solved.points == solved.max_points, grader.format_report(solved)
    stub = grader.grade(REPO / "notebooks" / f"{name}.ipynb")
    assert stub.points == 0, grader.format_report(stub)
