"""Code that runs checks *inside* a kernel: for the meta-test (``python -m course verify``, which
runs the course's own solutions, not submissions) and, in grading, only for a check a module still
lists in ``NOT_JUDGED``, whose result the report marks as not tamper-proof. Grading otherwise never
reads a verdict from the kernel: see :mod:`course.grading.judge`.

It runs the solution's check source against the namespace, with the check module bound to
``check`` afresh, stdout captured, and a time limit. Results go to a JSON file, not stdout.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import linecache
import signal
import time
import traceback

from course.checks import core


class CheckTimeout(BaseException):
    """Raised by the alarm when a check runs past its limit (BaseException: code can't swallow it)."""


@contextlib.contextmanager
def time_limit(seconds: float):
    def on_alarm(signum, frame):
        raise CheckTimeout()

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _shell():
    from IPython import get_ipython

    shell = get_ipython()
    if shell is None:
        raise RuntimeError("course.grading.probe runs inside an IPython kernel")
    return shell


def _user_namespace() -> dict:
    return _shell().user_ns


def _python(cell_source: str) -> str:
    """Cell source as plain Python (IPython magics such as %time translated)."""
    try:
        return _shell().transform_cell(cell_source)
    except RuntimeError:
        return cell_source


def run_check(check_source: str, namespace: dict, check_module, timeout: float) -> dict:
    """Run one check cell's source; return ``{passed, message, seconds}``. Never raises."""
    scope = dict(namespace)
    scope["check"] = check_module
    before = len(core.RESULTS)
    start = time.perf_counter()
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
                time_limit(timeout):
            exec(compile(_python(check_source), "<check cell>", "exec"), scope)
    except CheckTimeout:
        return _fail(f"the check did not finish within {timeout:g} s (an infinite loop, or far too slow?)", start)
    except NameError as error:
        return _fail(f"{error}: the check needs this name; was it deleted, renamed, or its cell not run?", start)
    except SystemExit as error:
        return _fail(f"the code called exit ({error}) during the check", start)
    except BaseException as error:  # noqa: BLE001 - a check must never take the grader down
        return _fail(f"running the check raised {type(error).__name__}: {error}\n"
                     + "".join(traceback.format_exception_only(type(error), error)).strip(), start)
    new = core.RESULTS[before:]
    if not new:
        return _fail("the check cell ran but no check reported a result", start)
    failed = [r for r in new if not r.passed]
    message = "\n".join(r.message for r in failed) if failed else "; ".join(r.message for r in new if r.message)
    return {"passed": not failed, "message": message, "seconds": time.perf_counter() - start}


def _exec_cell(text: str, kind: str, namespace: dict) -> None:
    """Run a cell's source in ``namespace`` as the notebook would, its source findable by ``inspect``.

    Code needs its source after it ran: ``@triton.jit`` reads a kernel's source when the kernel is
    compiled (notebook 02 compiles the learner's kernel for a GPU after the exercise), so the source is
    registered in ``linecache`` under a unique name, as IPython does for every cell it runs.
    """
    global _cells_run
    _cells_run += 1
    filename = f"<course {kind} {_cells_run}>"
    code = _python(text)
    linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
    exec(compile(code, filename, "exec"), namespace)


_cells_run = 0


def _fail(message: str, start: float) -> dict:
    return {"passed": False, "message": message, "seconds": time.perf_counter() - start}


def _write(path: str, results) -> None:
    with open(path, "w") as f:
        json.dump(results, f)


def grade_checks(check_module: str, exercises: list[dict], out_path: str, timeout: float) -> None:
    """Grade mode, only for checks a module lists in ``NOT_JUDGED`` (not yet ported to the judge,
    course.grading.judge): the grader labels these results as not tamper-proof."""
    module = importlib.import_module(check_module)
    namespace = _user_namespace()
    results = {}
    for exercise in exercises:
        results[exercise["id"]] = run_check(exercise["check_source"], namespace, module, timeout)
        _write(out_path, results)  # written after each check: a kernel death keeps what came before
    _write(out_path, results)


def verify_exercise(check_module: str, exercise: dict, stub_sources: list[str], solution_sources: list[str],
                    out_path: str, timeout: float, mutants: list[list] = ()) -> None:
    """Meta-test mode: the check must pass on the solution and fail on the stub and on every mutant
    (``[name, sources]``: a plausible wrong solution); then the solution is restored for later cells.

    Each wrong version costs one run of its cells and one run of the check, nothing more.
    """
    module = importlib.import_module(check_module)
    namespace = _user_namespace()
    results = {"solution": run_check(exercise["check_source"], namespace, module, timeout)}
    results["stub"] = _check_with(stub_sources, "stub", exercise, namespace, module, timeout)
    results["mutants"] = {name: _check_with(sources, f"mutant {name}", exercise, namespace, module, timeout)
                          for name, sources in mutants}
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        for text in solution_sources:
            _exec_cell(text, "solution", namespace)
    _write(out_path, results)


def _check_with(sources: list[str], kind: str, exercise: dict, namespace: dict, check_module, timeout: float) -> dict:
    """Run ``sources`` in place of the solution cells, then the check. A version whose own cells raise
    is recorded with ``error``: the check would then see the names an earlier version left behind, so
    its verdict says nothing about this version. ``seconds`` counts its cells and the check: what this
    version adds to the meta-test."""
    start = time.perf_counter()
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            for text in sources:
                _exec_cell(text, kind, namespace)
    except BaseException as error:  # noqa: BLE001 - report it, keep probing the other versions
        failed = _fail(f"its cells raised {type(error).__name__}: {error}", start)
        return {**failed, "error": failed["message"]}
    return {**run_check(exercise["check_source"], namespace, check_module, timeout),
            "seconds": time.perf_counter() - start}
