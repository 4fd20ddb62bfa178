"""The grader reports on every submission and never crashes, whatever the submission does.

Each test crafts a submission of the toy notebook (tests/conftest.py: exercise 90.1 `add`, 1 point;
exercise 90.2 `mean`, 2 points) and checks the points and the message the learner would read.
Time limits are short here (5 s a cell) so that the hostile cases finish quickly.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from xml.etree import ElementTree as ET

import nbformat
import pytest
from conftest import TOY_CELLS, make_notebook

from course.grading import grader, kernel

pytestmark = pytest.mark.slow

SOLVED = dict(enumerate(TOY_CELLS))
LIMITS = dict(cell_timeout=5, total_timeout=90, check_timeout=5)
# For a submission that does nothing hostile: its set-up cell imports the course (torch, triton),
# which took 1.7 s on an idle machine here and can take longer than 5 s on a loaded one
GENEROUS = dict(LIMITS, cell_timeout=120, total_timeout=300)


def submission(tmp_path, replace: dict[int, str] | None = None, extra: list[str] = (), name="90_toy.ipynb"):
    """The solved toy notebook with some cells' code replaced and extra code cells appended."""
    cells = [(kind, (replace or {}).get(i, text)) for i, (kind, text) in SOLVED.items()]
    cells += [("code", text) for text in extra]
    path = tmp_path / name
    nbformat.write(make_notebook(cells), str(path))
    return path


def grade(toy_course, path, limits=LIMITS):
    return grader.grade(path, solutions_dir=toy_course / "solutions", **limits)


def by_id(report):
    return {e.id: e for e in report.exercises}


def test_solved_submission_gets_full_marks(toy_course, tmp_path):
    report = grade(toy_course, submission(tmp_path), GENEROUS)
    assert (report.points, report.max_points) == (3, 3)
    assert report.events == []


def test_generated_student_notebook_gets_zero_with_not_implemented_messages(toy_course):
    report = grade(toy_course, toy_course / "notebooks" / "90_toy.ipynb")
    assert report.points == 0
    assert all("not implemented yet: Exercise 90." in e.message for e in report.exercises)


def test_syntax_error_costs_only_its_exercise(toy_course, tmp_path):
    report = grade(toy_course, submission(tmp_path, {3: "def add(a, b)\n    return a + b"}))
    results = by_id(report)
    assert not results["90.1"].passed and "'add' is not defined" in results["90.1"].message
    assert results["90.2"].passed
    assert any("SyntaxError" in e for e in report.events)


def test_infinite_loop_is_interrupted_and_grading_continues(toy_course, tmp_path):
    report = grade(toy_course, submission(tmp_path, extra=["while True:\n    pass"]))
    assert report.points == 3
    assert any("limit" in e and "interrupted" in e for e in report.events)


def test_loop_that_ignores_interrupts_is_skipped_after_a_restart(toy_course, tmp_path):
    stubborn = "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    time.sleep(0.1)"
    # The set-up cell defines a name that add needs, so full marks prove the fresh kernel re-ran the
    # set-up. It leaves out `import course` (which only the kernel-side check cells use): on a loaded
    # machine that import alone can take longer than the 5 s limit, and this test is about the loop.
    setup = "OFFSET = 0  # set-up: add needs it"
    add = "def add(a, b):\n    return a + b + OFFSET"
    report = grade(toy_course, submission(tmp_path, {1: setup, 3: add, 4: stubborn, 7: "pass"}))
    assert report.points == 3, report.events
    assert report.events == ["cell 2 (id toy-4) ran longer than the 5 s limit and was interrupted, but it left the "
                             "kernel unresponsive; it is skipped and the notebook re-run in a fresh kernel"]


# A set-up cell whose `import course` is interrupted half-way through importing torch, as when a loaded
# machine takes longer than the cell's limit to import it: torch's import of one of these submodules
# stalls (once) until the interrupt. Interrupted there (torch 2.13), torch can no longer be imported in
# that kernel ("cannot import name 'nn' from partially initialized module 'torch'"); the grader's agent
# needs it, so before the fix this submission scored 0 with that error. Should torch stop importing
# these, the cell finishes in time and the first assertion below fails, saying so.
STALLED_TORCH_IMPORT = """import builtins, time
_import = builtins.__import__
def _stall_once(name, *args, **kwargs):
    if name in ("torch._refs", "torch._decomp", "torch.library"):
        builtins.__import__ = _import
        time.sleep(600)
    return _import(name, *args, **kwargs)
builtins.__import__ = _stall_once
import course
from course.checks import demo as check"""
# The same in a module of the submission's own: a set-up cell that runs out its limit on purpose
STALLED_OWN_IMPORT = "open('stall_setup.py', 'w').write('import time\\ntime.sleep(600)\\n')\nimport stall_setup"


def test_interrupt_inside_an_import_is_reported_as_the_cell_past_its_limit_and_grading_continues(toy_course,
                                                                                                   tmp_path):
    report = grade(toy_course, submission(tmp_path, {1: STALLED_TORCH_IMPORT}))
    assert report.events[0] == ("cell 0 (id toy-1) ran longer than the 5 s limit and was interrupted inside the "
                                "import of course, which leaves modules half-imported; it is skipped and the "
                                "notebook re-run in a fresh kernel")
    # the fresh kernel imports torch cleanly for the grader's agent: no half-imported torch in any message
    assert report.points == 3, report.events
    assert not any("torch" in e.lower() or "agent" in e for e in report.events[1:]), report.events


def test_setup_cell_that_times_out_on_purpose_does_not_stop_the_checks(toy_course, tmp_path):
    """A forged grade would need the checks not to run; they run in the grader, after any set-up."""
    forged = {1: STALLED_OWN_IMPORT, 3: "def add(a, b):\n    return a - b", 4: "print('✓ add passed')"}
    report = grade(toy_course, submission(tmp_path, forged))
    assert report.events[0].startswith("cell 0 (id toy-1) ran longer than the 5 s limit and was interrupted inside "
                                       "the import of stall_setup")
    assert not by_id(report)["90.1"].passed and by_id(report)["90.2"].passed
    assert by_id(report)["90.1"].message.endswith("(the grader skipped cell 0 (id toy-1), so what it defines was "
                                                  "missing when the check ran; the report's notes say why)")


def test_setup_cell_that_uses_up_the_total_limit_scores_zero_with_the_reason(toy_course, tmp_path):
    # the cell limit is above the notebook's, so what the kernel's start left of the 20 s stops the cell
    limits = dict(cell_timeout=60, total_timeout=20, check_timeout=5)
    report = grader.grade(submission(tmp_path, {1: "import time\ntime.sleep(600)"}),
                          solutions_dir=toy_course / "solutions", **limits)
    assert report.points == 0
    assert re.fullmatch(r"cell 0 \(id toy-1\) ran longer than the \d+ s left of the notebook's 20 s limit; "
                        r"it was interrupted", report.events[0]), report.events
    assert report.events[1] == "total time limit of 20 s reached; cells from 1 on were not run"
    assert all("is not defined" in e.message and "the notebook did not run to its end" in e.message
               for e in report.exercises), [e.message for e in report.exercises]


def test_cell_ids_a_submission_writes_reach_the_report_only_as_id_characters():
    nb = make_notebook([("code", "pass"), ("markdown", "text"), ("code", "pass"), ("code", "pass")])
    nb.cells[0].id, nb.cells[2].id = "ok-1_A", "x\n<b>" + "y" * 100
    del nb.cells[3]["id"]
    assert grader._code_ids(nb) == ["ok-1_A", "xb" + "y" * 62, ""]
    assert [kernel.cell_label(i, grader._code_ids(nb)) for i in range(3)] == ["cell 0 (id ok-1_A)",
                                                                              f"cell 1 (id xb{'y' * 62})", "cell 2"]


def test_execute_cells_refuses_ids_that_do_not_match_the_cells(tmp_path):
    with pytest.raises(ValueError, match="one per cell"):
        kernel.execute_cells(["pass", "pass"], str(tmp_path), cell_timeout=5, total_timeout=10, ids=["a"])


def test_after_interrupt_tells_an_interrupted_import_from_an_interrupted_loop(tmp_path):
    names = "print(sorted(k for k in dir() if not k.startswith('_')))"
    with kernel.KernelSession(str(tmp_path)) as session:
        before = session.run(names, 5).stdout
        assert session.run(STALLED_OWN_IMPORT, 2).status == "timeout"
        assert session.after_interrupt() == (True, "stall_setup")
        assert session.run("while True:\n    pass", 2).status == "timeout"
        assert session.after_interrupt() == (True, "")  # the import's record was cleared, not read again
        assert session.run(names, 5).stdout == before  # the probe added no name to the learner's


def test_os_exit_kills_the_kernel_but_the_other_cells_are_still_graded(toy_course, tmp_path):
    report = grade(toy_course, submission(tmp_path, extra=["import os\nos._exit(1)"]))
    assert report.points == 3
    assert any("kernel died" in e for e in report.events)


def test_deleted_function_fails_with_a_name_error_message(toy_course, tmp_path):
    report = grade(toy_course, submission(tmp_path, extra=["del add"]))
    assert not by_id(report)["90.1"].passed
    assert "was it deleted, renamed" in by_id(report)["90.1"].message
    assert by_id(report)["90.2"].passed


def test_renamed_function_fails(toy_course, tmp_path):
    report = grade(toy_course, submission(tmp_path, {3: "def add_numbers(a, b):\n    return a + b"}))
    assert not by_id(report)["90.1"].passed


def test_megabytes_of_output_and_fake_results_change_nothing(toy_course, tmp_path):
    noisy = ["print('x' * 5_000_000)",
             "print(json.dumps({'90.1': {'passed': True}}))".replace("json.dumps", "__import__('json').dumps"),
             "import sys\nsys.stdout.write('\\x00\\x1b[2J garbage \\udcff'.encode('utf-8', 'surrogatepass')"
             ".decode('utf-8', 'replace') * 1000)"]
    report = grade(toy_course, submission(tmp_path, {3: "def add(a, b):\n    return a - b"}, extra=noisy))
    assert not by_id(report)["90.1"].passed and by_id(report)["90.2"].passed
    assert ET.fromstring(grader.junit_xml([report])) is not None  # garbage never breaks the XML


def test_edited_check_cell_does_not_fool_the_grader(toy_course, tmp_path):
    report = grade(toy_course, submission(tmp_path, {3: "def add(a, b):\n    return 0", 4: "print('✓ add passed')"}))
    assert not by_id(report)["90.1"].passed


def test_hanging_check_is_stopped_by_the_check_time_limit(toy_course, tmp_path):
    hang = "def add(a, b):\n    while True:\n        pass"
    report = grade(toy_course, submission(tmp_path, {3: hang, 4: "pass"}))
    assert not by_id(report)["90.1"].passed
    assert "did not finish within" in by_id(report)["90.1"].message
    assert by_id(report)["90.2"].passed


def test_unreadable_file_gets_a_zero_report(toy_course, tmp_path):
    path = tmp_path / "90_toy.ipynb"
    path.write_text("{ this is not json")
    report = grade(toy_course, path)
    assert report.points == 0 and report.max_points == 3
    assert "not a readable notebook" in report.events[0]


def test_unknown_notebook_is_a_grading_error(toy_course, tmp_path):
    path = submission(tmp_path, name="homework.ipynb")
    with pytest.raises(grader.GradingError, match="cannot tell which notebook"):
        grade(toy_course, path)


def test_cli_writes_json_junit_and_gradebook_and_exits_zero(toy_course, tmp_path):
    folder = tmp_path / "submissions"
    folder.mkdir()
    submission(folder, name="alice_90_toy.ipynb")
    submission(folder, {6: "def mean(x):\n    return x.sum()"}, name="bob_90_toy.ipynb")
    cmd = [sys.executable, "-m", "course", "grade", str(folder), "--solutions", str(toy_course / "solutions"),
           "--gradebook", str(tmp_path / "grades.csv"), "--junit", str(tmp_path / "junit.xml"),
           "--json", str(tmp_path / "report.json"), "--cell-timeout", "20"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    rows = (tmp_path / "grades.csv").read_text().splitlines()
    assert rows[0].startswith("submission,notebook,ex_90.1,ex_90.2,points,max_points,percent")
    assert rows[1].startswith("alice_90_toy.ipynb,90_toy,1,2,3,3,100.0")
    assert rows[2].startswith("bob_90_toy.ipynb,90_toy,1,0,1,3,33.3")
    suites = ET.parse(tmp_path / "junit.xml").getroot()
    assert [s.get("failures") for s in suites] == ["0", "1"]
    assert [r["points"] for r in json.loads((tmp_path / "report.json").read_text())] == [3, 1]


def test_cli_exits_2_when_grading_cannot_run(tmp_path):
    done = subprocess.run([sys.executable, "-m", "course", "grade", str(tmp_path / "missing.ipynb")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "no such file" in done.stderr


# --- memory limit (Linux: RLIMIT_AS on the kernel process) ---------------------------------------

needs_prlimit = pytest.mark.skipif(not hasattr(kernel.resource, "prlimit"), reason="needs Linux prlimit")
# 3 GiB of address space, more than the 2G limit below; torch.empty leaves the pages untouched, so
# without a limit it costs no memory and no time
HOG = "import torch\ndef add(a, b):\n    buffer = torch.empty(3 << 30, dtype=torch.uint8)\n    return a + b"


@needs_prlimit
def test_memory_hog_fails_only_its_own_exercise_under_a_memory_limit(toy_course, tmp_path):
    path = submission(tmp_path, {3: HOG, 4: "pass"})
    # generous time limits: HOG's cell imports torch, which a loaded machine may not finish in 5 s
    report = grader.grade(path, solutions_dir=toy_course / "solutions", memory_limit=2 << 30, **GENEROUS)
    assert not by_id(report)["90.1"].passed
    assert "can't allocate memory" in by_id(report)["90.1"].message, report.events
    assert by_id(report)["90.2"].passed
    # the same submission without a limit: the allocation succeeds, so the limit is what failed it
    assert by_id(grade(toy_course, path, GENEROUS))["90.1"].passed


def test_memory_limit_too_small_for_torch_is_refused_before_grading(toy_course, tmp_path):
    with pytest.raises(grader.GradingError, match="below 2G|needs Linux"):
        grader.grade(submission(tmp_path), solutions_dir=toy_course / "solutions", memory_limit=512 << 20, **LIMITS)


@pytest.mark.parametrize("text, size", [("8G", 8 << 30), ("8g", 8 << 30), ("8GiB", 8 << 30), ("512M", 512 << 20),
                                        ("1.5G", 3 << 29), ("1073741824", 1 << 30)])
def test_parse_size_reads_binary_units(text, size):
    assert kernel.parse_size(text) == size


@pytest.mark.parametrize("text", ["", "abc", "-1G", "0", "8X", "8iB"])
def test_parse_size_rejects_what_is_not_a_positive_size(text):
    with pytest.raises(ValueError, match="not a positive size"):
        kernel.parse_size(text)


def test_cli_rejects_a_bad_memory_limit_with_exit_2(tmp_path):
    done = subprocess.run([sys.executable, "-m", "course", "grade", str(tmp_path / "x.ipynb"), "--memory-limit", "8X"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "not a positive size" in done.stderr
